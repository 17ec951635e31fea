//! A pooled client for one upstream endpoint, HTTP/1.1 or h2c (prior knowledge), built on
//! hyper-util's client. The connector always dials the endpoint's address, whatever the URI says,
//! so the request keeps its logical authority (`Host` for HTTP/1.1, `:authority` for HTTP/2).

use crate::http::UpstreamError;
use crate::http::body::{ProxyBody, boxed};
use crate::http::drive::ConnExecutor;
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// How an [`EndpointClient`] opens a connection to its endpoint: the cluster manager's own
/// dialer (source address such as 127.0.0.6, socket options, connection counters), given the
/// endpoint's address.
pub type Dialer = Arc<
    dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = std::io::Result<Dialed>> + Send>>
        + Send
        + Sync,
>;

/// A connection a [`Dialer`] opened, and whatever must live as long as it (the cluster
/// manager's `cx_active` accounting).
pub struct Dialed {
    /// The connection.
    pub stream: TcpStream,
    /// Dropped when the pool closes the connection.
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl From<TcpStream> for Dialed {
    fn from(stream: TcpStream) -> Self {
        Dialed {
            stream,
            guard: None,
        }
    }
}

/// A pooled connection: the stream and its guard.
pub struct PooledIo {
    io: TokioIo<TcpStream>,
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl hyper::rt::Read for PooledIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PooledIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl hyper_util::client::legacy::connect::Connection for PooledIo {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.io.connected()
    }
}

/// Dials one fixed address (a `tower::Service<Uri>`, as hyper-util's client wants).
#[derive(Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
    connect_timeout: Duration,
    dialer: Option<Dialer>,
}

impl std::fmt::Debug for FixedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedConnector")
            .field("addr", &self.addr)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl tower::Service<Uri> for FixedConnector {
    type Response = PooledIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<PooledIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.connect_timeout);
        let dial: Pin<Box<dyn Future<Output = std::io::Result<Dialed>> + Send>> = match &self.dialer
        {
            Some(d) => d(addr),
            None => Box::pin(async move { TcpStream::connect(addr).await.map(Dialed::from) }),
        };
        Box::pin(async move {
            let dialed = tokio::time::timeout(timeout, dial).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout")
            })??;
            let _ = dialed.stream.set_nodelay(true);
            Ok(PooledIo {
                io: TokioIo::new(dialed.stream),
                _guard: dialed.guard,
            })
        })
    }
}

/// A connection pool to one endpoint.
#[derive(Clone, Debug)]
pub struct EndpointClient {
    addr: SocketAddr,
    http2: bool,
    client: Client<FixedConnector, ProxyBody>,
}

impl EndpointClient {
    /// A pool to `addr` speaking HTTP/1.1, or h2c with prior knowledge when `http2`.
    pub fn new(addr: SocketAddr, http2: bool, connect_timeout: Duration) -> Self {
        Self::build(addr, http2, connect_timeout, None)
    }

    /// Like [`EndpointClient::new`], opening connections with `dialer`.
    pub fn with_dialer(
        addr: SocketAddr,
        http2: bool,
        connect_timeout: Duration,
        dialer: Dialer,
    ) -> Self {
        Self::build(addr, http2, connect_timeout, Some(dialer))
    }

    fn build(
        addr: SocketAddr,
        http2: bool,
        connect_timeout: Duration,
        dialer: Option<Dialer>,
    ) -> Self {
        let mut b = Client::builder(ConnExecutor::default());
        b.pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(http2);
        let client = b.build(FixedConnector {
            addr,
            connect_timeout,
            dialer,
        });
        EndpointClient {
            addr,
            http2,
            client,
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether this pool speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// Sends a request prepared by the HTTP layer (absolute URI, `host` set).
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        if self.http2 {
            *req.version_mut() = Version::HTTP_2;
            // HTTP/2 carries the authority in `:authority` (from the URI).
            req.headers_mut().remove(http::header::HOST);
        } else {
            *req.version_mut() = Version::HTTP_11;
        }
        let endpoint = Some(self.addr);
        match self.client.request(req).await {
            Ok(resp) => Ok(resp.map(boxed)),
            Err(e) => Err(classify(&e, endpoint)),
        }
    }
}

/// Sorts a hyper-util client error into Envoy's failure kinds.
pub fn classify(
    e: &hyper_util::client::legacy::Error,
    endpoint: Option<SocketAddr>,
) -> UpstreamError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_connect() {
        return UpstreamError::ConnectFailure { endpoint, reason };
    }
    let lower = reason.to_ascii_lowercase();
    if lower.contains("refused stream") || lower.contains("refused_stream") {
        return UpstreamError::RefusedStream { endpoint };
    }
    UpstreamError::Reset { endpoint, reason }
}
