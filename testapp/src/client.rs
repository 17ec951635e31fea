//! A small load client: N requests, answers counted by backend (`service/version`) and status.

use crate::Error;
use crate::server::Report;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What came back from a run of requests.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub requests: u64,
    /// Answers per `service/version` of the backend that produced them.
    pub backends: BTreeMap<String, u64>,
    /// Answers per HTTP status; transport failures counted under `errors`.
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    /// Milliseconds, per percentile: p50, p90, p99, max.
    pub latency_ms: BTreeMap<String, f64>,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client(h2c: bool) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(h2c);
    b.build_http()
}

async fn send(
    c: &HttpClient,
    method: http::Method,
    url: &str,
    headers: &[(String, String)],
) -> Result<(u16, Bytes), Error> {
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| Error::Url {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| Error::Url {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let fail = |e: String| Error::Request {
        url: url.to_string(),
        reason: e,
    };
    let resp = c.request(req).await.map_err(|e| fail(format!("{e:?}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// One POST with an empty body (e.g. `POST localhost:15020/quitquitquit`, a Job's last step);
/// returns status and body.
pub async fn post(url: &str) -> Result<(u16, Bytes), Error> {
    send(&client(false), http::Method::POST, url, &[]).await
}

/// One GET; returns status and body.
pub async fn fetch(
    url: &str,
    headers: &[(String, String)],
    h2c: bool,
) -> Result<(u16, Bytes), Error> {
    send(&client(h2c), http::Method::GET, url, headers).await
}

/// `n` GETs over `concurrency` workers (connections are reused: keep-alive or one h2c connection each).
pub async fn run(
    url: &str,
    n: u64,
    concurrency: usize,
    headers: Vec<(String, String)>,
    h2c: bool,
) -> Summary {
    let c = client(h2c);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let headers = Arc::new(headers);
    let url: Arc<str> = url.into();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (c, next, headers, url) = (c.clone(), next.clone(), headers.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut part = (Summary::default(), Vec::new());
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let start = Instant::now();
                let result = send(&c, http::Method::GET, &url, &headers).await;
                part.1.push(start.elapsed());
                part.0.requests += 1;
                match result {
                    Ok((status, body)) => {
                        *part.0.statuses.entry(status).or_default() += 1;
                        if let Ok(r) = serde_json::from_slice::<Report>(&body) {
                            *part
                                .0
                                .backends
                                .entry(format!("{}/{}", r.service, r.version))
                                .or_default() += 1;
                        }
                    }
                    Err(_) => part.0.errors += 1,
                }
            }
            part
        }));
    }
    let mut total = Summary::default();
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        if let Ok((s, l)) = t.await {
            total.requests += s.requests;
            total.errors += s.errors;
            for (k, v) in s.backends {
                *total.backends.entry(k).or_default() += v;
            }
            for (k, v) in s.statuses {
                *total.statuses.entry(k).or_default() += v;
            }
            latencies.extend(l);
        }
    }
    latencies.sort();
    if !latencies.is_empty() {
        for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)] {
            let idx = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            total
                .latency_ms
                .insert(name.to_string(), latencies[idx].as_secs_f64() * 1000.0);
        }
    }
    total
}
