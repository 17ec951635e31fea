//! The HTTP side: one handler for HTTP/1.1 and h2c, and for both over TLS ([`serve_https`]).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Who this server is.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub pod: String,
    /// Fixed documents by path (`serve --document PATH=TEXT`): a GET of that path answers the
    /// text as JSON instead of a report (a JSON Web Key Set served to the operator in e2e).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub documents: BTreeMap<String, String>,
}

/// What the server saw and who answered. Every response body is one of these.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub service: String,
    pub version: String,
    pub pod: String,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Lower-case header names; repeated headers joined with `,`.
    pub headers: BTreeMap<String, String>,
    /// The address the connection came from (for a sidecar-captured inbound call: 127.0.0.6 or the peer).
    pub peer: String,
    /// The local address the connection was accepted on.
    pub local: String,
    pub body_bytes: usize,
    /// The answer of `?upstream=<url>`, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Box<Report>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<String>,
    /// What the TLS handshake settled, on a `--https` port (none in plain text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
}

/// The TLS a connection was accepted with.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsReport {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: String,
    /// The server name the client asked for, if it sent one.
    #[serde(default)]
    pub sni: Option<String>,
    /// The protocol agreed by ALPN, if any.
    #[serde(default)]
    pub alpn: Option<String>,
    /// The common name of the client certificate's subject (mutual TLS, `--tls-client-ca`).
    #[serde(default)]
    pub client_cn: Option<String>,
}

const MAX_BODY: usize = 1 << 20;

/// The request headers `?upstream=<url>` copies to the upstream call, as an application in the
/// mesh must: `end-user` (bookinfo's user, which routing rules match on) and every header Istio's
/// distributed tracing documentation tells applications to propagate so the proxies' spans join
/// into one trace: Envoy's request id, B3 (multi- and single-header), W3C Trace Context,
/// OpenTracing (Lightstep), Google Cloud Trace, gRPC's binary trace context, SkyWalking and
/// Datadog.
pub const FORWARDED_HEADERS: &[&str] = &[
    "end-user",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
];

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 and h2c on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, id: Arc<Identity>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let local = stream.local_addr()?;
        tokio::spawn(serve_connection(stream, id.clone(), peer, local, None));
    }
}

/// Serves HTTP/1.1 and HTTP/2 over TLS (`config`: [`crate::tls::server_config`]) on `listener`
/// until the task is dropped. A connection whose handshake fails (plain text, no or a bad client
/// certificate under mutual TLS) is closed without an HTTP answer, after the TLS alert and
/// without a reset (the client sees the alert); the reason goes to stderr.
pub async fn serve_https(
    listener: TcpListener,
    id: Arc<Identity>,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (stream, peer) = listener.accept().await?;
        let local = stream.local_addr()?;
        let (acceptor, id) = (acceptor.clone(), id.clone());
        tokio::spawn(async move {
            let accept = acceptor.accept(stream).into_fallible();
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err((e, tcp))) => {
                    eprintln!("testapp: TLS handshake from {peer} failed: {e}");
                    close_gently(tcp).await;
                    return;
                }
                Err(_) => {
                    eprintln!("testapp: TLS handshake from {peer} timed out");
                    return;
                }
            };
            let tls = Arc::new(crate::tls::report(stream.get_ref().1));
            serve_connection(stream, id, peer, local, Some(tls)).await;
        });
    }
}

/// Closes a connection whose handshake failed so that the client reads the alert sent (TLS 1.3:
/// no or a bad client certificate is refused after the client's side of the handshake is done,
/// and its request is already on the way): the unread request would make the kernel answer the
/// close with a reset, which can discard the alert before the client reads it. So: FIN after the
/// alert, then read and drop what the client still sends until it closes (or a second passed).
async fn close_gently(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve_connection<S>(
    stream: S,
    id: Arc<Identity>,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Arc<TlsReport>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |req| handle(req, id.clone(), peer, local, tls.clone()));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn json(status: StatusCode, report: &Report) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header(
            "x-served-by",
            format!("{}/{}", report.service, report.version),
        )
        .body(Full::new(Bytes::from(
            serde_json::to_vec(report).unwrap_or_default(),
        )))
        .expect("static response parts are valid")
}

async fn handle(
    req: Request<Incoming>,
    id: Arc<Identity>,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Arc<TlsReport>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    if let Some(host) = parts.uri.authority() {
        headers
            .entry("host".into())
            .or_insert_with(|| host.to_string());
    }
    let body_bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => {
            return Ok(Response::builder()
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .body(Full::new(Bytes::from_static(b"body too large\n")))
                .expect("static response"));
        }
    };
    let path = parts.uri.path().to_string();
    if let Some(doc) = id.documents.get(&path) {
        return Ok(Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(doc.clone())))
            .expect("static response"));
    }
    let query = parts.uri.query().unwrap_or_default().to_string();
    let mut report = Report {
        service: id.service.clone(),
        version: id.version.clone(),
        pod: id.pod.clone(),
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        protocol: format!("{:?}", parts.version),
        headers,
        peer: peer.to_string(),
        local: local.to_string(),
        body_bytes,
        upstream: None,
        upstream_error: None,
        tls: tls.as_deref().cloned(),
    };
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await,
            Err(_) => status = StatusCode::BAD_REQUEST,
        }
    }
    if let Some(upstream) = query_param(&query, "upstream") {
        let forward: Vec<(String, String)> = FORWARDED_HEADERS
            .iter()
            .filter_map(|h| report.headers.get(*h).map(|v| (h.to_string(), v.clone())))
            .collect();
        match crate::client::fetch(upstream, &forward, false).await {
            Ok((code, body)) => {
                status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                match serde_json::from_slice::<Report>(&body) {
                    Ok(r) => report.upstream = Some(Box::new(r)),
                    Err(_) => {
                        report.upstream_error = Some(String::from_utf8_lossy(&body).into_owned())
                    }
                }
            }
            Err(e) => {
                status = StatusCode::BAD_GATEWAY;
                report.upstream_error = Some(e.to_string());
            }
        }
    }
    Ok(json(status, &report))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(service: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let id = Arc::new(Identity {
            service: service.into(),
            version: "v1".into(),
            ..Identity::default()
        });
        tokio::spawn(serve_http(listener, id));
        url
    }

    #[tokio::test]
    async fn upstream_calls_forward_the_user_and_every_tracing_header() {
        let (front, back) = (start("productpage").await, start("reviews").await);
        let mut sent: Vec<(String, String)> = FORWARDED_HEADERS
            .iter()
            .map(|h| (h.to_string(), format!("value-of-{h}")))
            .collect();
        sent.push(("x-not-forwarded".into(), "1".into()));
        let url = format!("{front}/?upstream={back}/");
        let (status, body) = crate::client::fetch(&url, &sent, false).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let report: Report = serde_json::from_slice(&body).unwrap();
        let upstream = report.upstream.expect("the upstream's report");
        assert_eq!(upstream.service, "reviews");
        for h in FORWARDED_HEADERS {
            assert_eq!(
                upstream.headers.get(*h).map(String::as_str),
                Some(format!("value-of-{h}").as_str()),
                "{h} is forwarded"
            );
        }
        for h in [
            "traceparent",
            "tracestate",
            "b3",
            "sw8",
            "x-datadog-trace-id",
        ] {
            assert!(FORWARDED_HEADERS.contains(&h), "{h} is in the list");
        }
        assert!(!upstream.headers.contains_key("x-not-forwarded"));
    }
}
