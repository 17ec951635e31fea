//! Istio's metrics merging, served on the status port (15020) at `/stats/prometheus` (and
//! `/metrics`): the sidecar's own metrics followed by the app's, scraped from where the app's
//! own `prometheus.io/*` annotations said. The injector points Prometheus at 15020 and moves the
//! app's annotations into `ISTIO_PROMETHEUS_ANNOTATIONS` (`{"scrape":"true","path":"/metrics",
//! "port":"8080"}`), so one scrape of the pod gets both, as with Istio's agent.
//!
//! As Istio's agent: `scrape: "false"` scrapes no app; the path defaults to `/metrics` and the
//! port to 80; a port equal to the status port is refused at start (it would scrape itself); the
//! scrape passes Prometheus's `Accept`, `User-Agent` and `X-Prometheus-Scrape-Timeout-Seconds`
//! on; the app's format (Prometheus text or OpenMetrics) is the answer's content type, and the
//! app's metrics come last (an OpenMetrics `# EOF` ends the exposition). A failed app scrape
//! still answers with the sidecar's metrics (logged, never an error). Unlike Istio's, an unknown
//! key in the variable is refused, and the app's answer is read up to [`MAX_APP_METRICS`] bytes
//! within a time-out (the header's, capped at [`MAX_SCRAPE_TIMEOUT`], else
//! [`DEFAULT_SCRAPE_TIMEOUT`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// The variable the injector writes the app's `prometheus.io/*` annotations into.
pub const ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

/// The longest `ISTIO_PROMETHEUS_ANNOTATIONS` accepted (three short strings fit many times over).
pub const MAX_ANNOTATIONS_LEN: usize = 4096;

/// The most of the app's metrics that is read.
pub const MAX_APP_METRICS: usize = 16 << 20;

/// The app scrape's time-out when Prometheus sends none.
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest time-out a scrape header may ask for.
pub const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(60);

/// Prometheus text, the format of the sidecar's own metrics.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The headers of Prometheus's request passed on to the app.
const PASSED_ON: [&str; 3] = [
    "accept",
    "user-agent",
    "x-prometheus-scrape-timeout-seconds",
];

/// Where the app's metrics are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMetrics {
    /// The app's port, on localhost.
    pub port: u16,
    /// The path, starting with `/`.
    pub path: String,
}

/// Reads `ISTIO_PROMETHEUS_ANNOTATIONS`: `None` when the app is not to be scraped
/// (`scrape: "false"`). `status_port` is the sidecar's own port, which the app's may not be.
pub fn parse(json: &str, status_port: u16) -> Result<Option<AppMetrics>, String> {
    if json.len() > MAX_ANNOTATIONS_LEN {
        return Err(format!(
            "{} bytes, more than {MAX_ANNOTATIONS_LEN}",
            json.len()
        ));
    }
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| format!("not a JSON object: {e}"))?;
    let text = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{key} is {other}, not a string")),
        }
    };
    let (scrape, path, port) = (text("scrape")?, text("path")?, text("port")?);
    if let Some(unknown) = map
        .keys()
        .find(|k| !["scrape", "path", "port"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown key {unknown:?} (the keys are scrape, path and port)"
        ));
    }
    if scrape.as_deref() == Some("false") {
        return Ok(None);
    }
    let port = match port.as_deref().filter(|p| !p.is_empty()) {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {p:?} is not a port number"))?,
    };
    if port == status_port {
        return Err(format!(
            "the app's port is the status port {status_port}: the sidecar would scrape itself \
             (the pod must not carry prometheus.io/port={status_port} as its own, and must not be \
             injected twice)"
        ));
    }
    let mut path = path
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/metrics".into());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("path {path:?} is not a URL path"));
    }
    Ok(Some(AppMetrics { port, path }))
}

/// The content type of the merged answer: the app's OpenMetrics version when it answered in
/// OpenMetrics, else Prometheus text.
pub fn negotiate(app_content_type: Option<&str>) -> &'static str {
    let Some(ct) = app_content_type else {
        return TEXT_FORMAT;
    };
    let mut parts = ct.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("application/openmetrics-text"))
    {
        return TEXT_FORMAT;
    }
    let version = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("version"))
        .map(|(_, v)| v.trim().trim_matches('"'));
    match version {
        Some("1.0.0") => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Some("0.0.1") | None | Some("") => {
            "application/openmetrics-text; version=0.0.1; charset=utf-8"
        }
        Some(_) => TEXT_FORMAT,
    }
}

/// The scrape's time-out: Prometheus's header (seconds, fractions allowed), capped.
pub fn timeout(headers: &http::HeaderMap) -> Duration {
    headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_SCRAPE_TIMEOUT, |s| {
            Duration::from_secs_f64(s.min(MAX_SCRAPE_TIMEOUT.as_secs_f64()))
        })
}

/// The app's metrics and their content type.
#[derive(Debug)]
pub struct Scraped {
    /// The body.
    pub body: Bytes,
    /// The app's `Content-Type`.
    pub content_type: Option<String>,
}

/// Scrapes the app on `127.0.0.1:<port><path>`, passing Prometheus's headers on.
pub async fn scrape(app: &AppMetrics, incoming: &http::HeaderMap) -> Result<Scraped, String> {
    tokio::time::timeout(timeout(incoming), scrape_now(app, incoming))
        .await
        .map_err(|_| format!("no answer within {:?}", timeout(incoming)))?
}

async fn scrape_now(app: &AppMetrics, incoming: &http::HeaderMap) -> Result<Scraped, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], app.port));
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let mut req = Request::get(app.path.as_str())
        .header(http::header::HOST, format!("localhost:{}", app.port))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    for name in PASSED_ON {
        if let Some(v) = incoming.get(name) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let answer = async {
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {}: {e}", app.path))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("GET {} answered {}", app.path, response.status()));
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), MAX_APP_METRICS)
            .collect()
            .await
            .map_err(|e| format!("reading the metrics (at most {MAX_APP_METRICS} bytes): {e}"))?
            .to_bytes();
        Ok(Scraped { body, content_type })
    }
    .await;
    conn.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_read_as_istios_agent_reads_them() {
        assert_eq!(
            parse(r#"{"scrape":"true","path":"/stats","port":"8080"}"#, 15020).unwrap(),
            Some(AppMetrics {
                port: 8080,
                path: "/stats".into()
            })
        );
        assert_eq!(
            parse("{}", 15020).unwrap(),
            Some(AppMetrics {
                port: 80,
                path: "/metrics".into()
            }),
            "Istio's defaults"
        );
        assert_eq!(
            parse(r#"{"path":"metrics","port":""}"#, 15020)
                .unwrap()
                .unwrap()
                .path,
            "/metrics"
        );
        assert_eq!(
            parse(r#"{"scrape":"false","port":"8080"}"#, 15020).unwrap(),
            None
        );
        for (bad, why) in [
            (r#"{"port":"15020"}"#, "scrape itself"),
            (r#"{"port":"http"}"#, "not a port number"),
            (r#"{"port":8080}"#, "not a string"),
            (r#"{"scheme":"https"}"#, "unknown key"),
            (r#"["scrape"]"#, "not a JSON object"),
            (r#"{"path":"/a b"}"#, "not a URL path"),
            (
                &format!(r#"{{"path":"/{}"}}"#, "a".repeat(5000)),
                "more than 4096",
            ),
        ] {
            let err = parse(bad, 15020).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_answer_takes_the_apps_format() {
        assert_eq!(negotiate(None), TEXT_FORMAT);
        assert_eq!(negotiate(Some("text/plain; version=0.0.4")), TEXT_FORMAT);
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            "application/openmetrics-text; version=0.0.1; charset=utf-8"
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=9")),
            TEXT_FORMAT
        );
    }

    #[test]
    fn the_scrape_time_out_follows_prometheus_capped() {
        let mut h = http::HeaderMap::new();
        assert_eq!(timeout(&h), DEFAULT_SCRAPE_TIMEOUT);
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            "2.5".parse().unwrap(),
        );
        assert_eq!(timeout(&h), Duration::from_millis(2500));
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            "3600".parse().unwrap(),
        );
        assert_eq!(timeout(&h), MAX_SCRAPE_TIMEOUT);
        h.insert("x-prometheus-scrape-timeout-seconds", "x".parse().unwrap());
        assert_eq!(timeout(&h), DEFAULT_SCRAPE_TIMEOUT);
    }
}
