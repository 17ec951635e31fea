//! A small load client: N requests, answers counted by backend (`service/version`) and status.
//!
//! What `testapp get` sends with, as curl does for the e2e suite ([`Options`]):
//! - `http://` in plain text, HTTP/1.1 or with `h2c` HTTP/2 by prior knowledge;
//! - `https://` over TLS ([`crate::tls::client_config`]: `--cacert`, and `--cert`/`--key` for
//!   mutual TLS) with the URL's host as SNI and the name the server certificate must carry, ALPN
//!   `h2` and `http/1.1` (the server's pick is spoken; with `h2c`, only `h2` is offered and a
//!   server that does not pick it fails the connection);
//! - `connect_to`: TCP goes to that address instead of the URL's host and port (curl's
//!   `--connect-to`/`--resolve`); the Host header and SNI stay the URL's.
//!
//! A failed connection or handshake is the request's error ([`Error::Request`], its reason the
//! whole chain, e.g. `invalid peer certificate: UnknownIssuer` or `received fatal alert:
//! CertificateRequired`); [`run`] counts it under [`Summary::errors`] and keeps the first reason.

use crate::Error;
use crate::server::Report;
use bytes::Bytes;
use http::Uri;
use http::uri::Authority;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What came back from a run of requests.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub requests: u64,
    /// Answers per `service/version` of the backend that produced them.
    pub backends: BTreeMap<String, u64>,
    /// Answers per HTTP status; transport failures counted under `errors`.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer: refused or reset connections, failed TLS handshakes.
    pub errors: u64,
    /// The reason of a failed request, if any (the first one a worker met).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Milliseconds, per percentile: p50, p90, p99, max.
    pub latency_ms: BTreeMap<String, f64>,
}

/// How requests are sent (`testapp get --h2c --connect-to --cacert --cert --key`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// HTTP/2 only: by prior knowledge (h2c) over plain text; over TLS by offering ALPN `h2`
    /// alone (a server that does not pick it fails the connection).
    pub h2c: bool,
    /// Where TCP connects instead of the URL's host and port ([`parse_connect_to`]); the Host
    /// header and the TLS server name stay the URL's.
    pub connect_to: Option<Authority>,
    /// The TLS client for `https://` URLs ([`crate::tls::client_config`]); its ALPN is set
    /// here. Without it an https request fails, naming `--cacert`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// `--connect-to ADDR`: `host:port`, `ip:port` or `[ipv6]:port` (the port is required).
pub fn parse_connect_to(s: &str) -> Result<Authority, String> {
    let a: Authority = s
        .parse()
        .map_err(|e| format!("{s:?} is not host:port: {e}"))?;
    if a.port_u16().is_none() || a.as_str().contains('@') {
        return Err(format!("{s:?}: want host:port or ip:port"));
    }
    Ok(a)
}

/// How long a server has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept (hyper-util's default, as `build_http` sets).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its sources, `: `-joined (hyper's own messages say little: "client error
/// (Connect)"; the reason is in the sources).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The first I/O error of the client's most recently failed connection. hyper often answers a
/// request whose connection died with no reason ("channel closed", "connection closed"), e.g.
/// when a TLS 1.3 server refuses the client's certificate after the handshake: the reason,
/// the server's alert, is only seen by the connection's read. [`send`] adds it.
type LastIoError = Arc<std::sync::Mutex<Option<String>>>;

/// TCP, or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The connection under the HTTP client: what ALPN settled, and where its first I/O error goes.
struct Stream {
    io: Transport,
    h2: bool,
    failed: bool,
    last_error: LastIoError,
}

impl Stream {
    fn new(io: Transport, h2: bool, last_error: &LastIoError) -> TokioIo<Stream> {
        TokioIo::new(Stream {
            io,
            h2,
            failed: false,
            last_error: last_error.clone(),
        })
    }

    /// Keeps the first error of this connection (later ones, e.g. a broken pipe after the
    /// server's alert, say less).
    fn note<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r
            && !self.failed
        {
            self.failed = true;
            let reason = self.reason_behind(cx, e);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(reason);
            }
        }
        r
    }

    /// A TLS server that refuses the client after the handshake (TLS 1.3: no or a bad client
    /// certificate) sends an alert and closes, and the client's request, arriving after, makes
    /// its TCP reset the connection: the client's next write fails with "connection reset" or
    /// "broken pipe" while the alert still waits to be read. Read it: that is the reason.
    fn reason_behind(&mut self, cx: &mut Context<'_>, e: &std::io::Error) -> String {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        if let (Transport::Tls(s), BrokenPipe | ConnectionReset) = (&mut self.io, e.kind()) {
            let mut scratch = [0u8; 4096];
            // What is left in the socket: a few records at most.
            for _ in 0..16 {
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(s.as_mut()).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                    Poll::Ready(Err(read)) if read.kind() != e.kind() => {
                        return format!("{read} (then: {e})");
                    }
                    _ => break,
                }
            }
        }
        e.to_string()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        this.note(cx, r)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        this.note(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.note(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        };
        this.note(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        };
        this.note(cx, r)
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        let connected = match &self.io {
            Transport::Plain(s) => s.connected(),
            Transport::Tls(s) => s.get_ref().0.connected(),
        };
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

/// Connects as [`Options`] say: TCP (hyper-util's connector, to the URL's host and port or to
/// `connect_to`), then for `https://` the TLS handshake.
#[derive(Clone)]
struct Connector {
    tcp: HttpConnector,
    connect_to: Option<Authority>,
    tls: Option<tokio_rustls::TlsConnector>,
    h2_only: bool,
    last_error: LastIoError,
}

impl Connector {
    fn new(options: &Options) -> Connector {
        let mut tcp = HttpConnector::new();
        tcp.set_keepalive(Some(IDLE_TIMEOUT));
        let tls = options.tls.as_ref().map(|config| {
            let mut config = rustls::ClientConfig::clone(config);
            config.alpn_protocols = if options.h2c {
                vec![b"h2".to_vec()]
            } else {
                crate::tls::ALPN.iter().map(|p| p.to_vec()).collect()
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
        Connector {
            tcp,
            connect_to: options.connect_to.clone(),
            tls,
            h2_only: options.h2c,
            last_error: LastIoError::default(),
        }
    }

    async fn connect(mut self, uri: Uri) -> Result<TokioIo<Stream>, BoxError> {
        use tower::{Service, ServiceExt};
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => return Err(format!("scheme {other:?}: want http:// or https://").into()),
        };
        let host = uri.host().ok_or("no host in the URL")?;
        let target = match &self.connect_to {
            Some(to) => to.to_string(),
            None => {
                let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
                format!("{host}:{port}")
            }
        };
        let tcp_uri: Uri = format!("http://{target}/").parse()?;
        let tcp = self
            .tcp
            .ready()
            .await?
            .call(tcp_uri)
            .await
            .map_err(|e| format!("connecting to {target}: {}", chain(&e)))?
            .into_inner();
        if !https {
            return Ok(Stream::new(Transport::Plain(tcp), false, &self.last_error));
        }
        let tls = self.tls.ok_or(
            "https:// needs the CA certificates to verify the server with (--cacert FILE)",
        )?;
        // An IPv6 literal comes bracketed in a URL; the server name is the address itself.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| format!("TLS server name {bare:?}: {e}"))?;
        let failed = |reason: String| format!("TLS handshake with {bare} at {target}: {reason}");
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| failed(format!("not done within {HANDSHAKE_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        if self.h2_only && !h2 {
            return Err(failed(
                "the server did not pick h2 by ALPN (HTTP/2 only was asked for: --h2c)".into(),
            )
            .into());
        }
        Ok(Stream::new(
            Transport::Tls(Box::new(stream)),
            h2,
            &self.last_error,
        ))
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// The HTTP client and where its connections' I/O errors go.
#[derive(Clone)]
struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    last_error: LastIoError,
}

fn client(options: &Options) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(options.h2c);
    let connector = Connector::new(options);
    HttpClient {
        last_error: connector.last_error.clone(),
        client: b.build(connector),
    }
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
    let fail = |mut reason: String| {
        // A connection that died under the request: say what its I/O saw (a failed connect
        // says it already).
        let last = c.last_error.lock().ok().and_then(|last| last.clone());
        if let Some(io) = last
            && !reason.contains(&io)
        {
            reason = format!("{reason} (the connection's I/O error: {io})");
        }
        Error::Request {
            url: url.to_string(),
            reason,
        }
    };
    let resp = c.client.request(req).await.map_err(|e| {
        if e.is_connect() {
            Error::Request {
                url: url.to_string(),
                reason: chain(&e),
            }
        } else {
            fail(chain(&e))
        }
    })?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(chain(&e)))?
        .to_bytes();
    Ok((status, body))
}

/// One POST with an empty body (e.g. `POST localhost:15020/quitquitquit`, a Job's last step);
/// returns status and body.
pub async fn post(url: &str) -> Result<(u16, Bytes), Error> {
    send(&client(&Options::default()), http::Method::POST, url, &[]).await
}

/// One GET in plain text (HTTP/1.1, or h2c); returns status and body.
pub async fn fetch(
    url: &str,
    headers: &[(String, String)],
    h2c: bool,
) -> Result<(u16, Bytes), Error> {
    let options = Options {
        h2c,
        ..Options::default()
    };
    fetch_with(url, headers, &options).await
}

/// One GET as `options` say (https, `connect_to`); returns status and body.
pub async fn fetch_with(
    url: &str,
    headers: &[(String, String)],
    options: &Options,
) -> Result<(u16, Bytes), Error> {
    send(&client(options), http::Method::GET, url, headers).await
}

/// `n` GETs over `concurrency` workers (connections are reused: keep-alive or one h2c connection each).
pub async fn run(
    url: &str,
    n: u64,
    concurrency: usize,
    headers: Vec<(String, String)>,
    h2c: bool,
) -> Summary {
    let options = Options {
        h2c,
        ..Options::default()
    };
    run_with(url, n, concurrency, headers, &options).await
}

/// [`run`] as `options` say (https, `connect_to`).
pub async fn run_with(
    url: &str,
    n: u64,
    concurrency: usize,
    headers: Vec<(String, String)>,
    options: &Options,
) -> Summary {
    let c = client(options);
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
                    Err(e) => {
                        part.0.errors += 1;
                        part.0.first_error.get_or_insert_with(|| e.to_string());
                    }
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
            if total.first_error.is_none() {
                total.first_error = s.first_error;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_wants_a_host_or_address_and_a_port() {
        for ok in [
            "127.0.0.1:8443",
            "[::1]:443",
            "istio-ingressgateway.istio-system:443",
        ] {
            assert_eq!(parse_connect_to(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "127.0.0.1",
            "gateway",
            "user@gateway:443",
            "http://gateway:443",
        ] {
            assert!(parse_connect_to(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn an_error_shows_its_sources() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            chain(&Outer(inner)),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }
}
