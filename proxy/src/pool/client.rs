//! A pooled client for one upstream endpoint, HTTP/1.1 or h2c (prior knowledge). The connector
//! always dials the endpoint's address, whatever the URI says, so the request keeps its logical
//! authority (`Host` for HTTP/1.1, `:authority` for HTTP/2).
//!
//! * HTTP/1.1 ([`Http1Pool`]): hyper's connection API under a pool of our own. A connection goes
//!   back to the pool when its response body has ended, from the task that read that end: no task
//!   per request, as hyper-util's pool needs to wait for the connection to be ready again. A
//!   request that finds its pooled connection closed before it could be written (the upstream
//!   closed an idle connection) is sent again on another one.
//! * h2c: hyper-util's client (one multiplexed connection, shared).

use crate::body::{ProxyBody, boxed};
use crate::dial::{ActiveGuard, ClusterDialer, EndpointStats};
use crate::drive::ConnExecutor;
use crate::sync::lock;
use crate::transport::{Io, Originate, Purpose};
use bytes::Bytes;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Why a cluster could not produce a response. Each maps to Envoy's local reply and flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The route names a cluster the cluster manager does not have (503, flag `NC`).
    #[error("cluster {0:?} not found")]
    ClusterNotFound(String),
    /// No endpoint to send to (503 `no healthy upstream`, flag `UH`).
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// Connection-pool limits reached (503 with `x-envoy-overloaded: true`, flag `UO`).
    #[error("upstream connection pool overflow")]
    Overflow,
    /// Connecting failed (503, flag `UF`; retried under `connect-failure`).
    #[error("upstream connect error: {reason}")]
    ConnectFailure {
        /// The endpoint tried, if one was picked.
        endpoint: Option<SocketAddr>,
        /// What failed.
        reason: String,
    },
    /// The upstream reset the stream or closed the connection before the response headers
    /// (503, flag `UC`; retried under `reset`).
    #[error("upstream reset: {reason}")]
    Reset {
        /// The endpoint tried.
        endpoint: Option<SocketAddr>,
        /// What happened.
        reason: String,
    },
    /// HTTP/2 REFUSED_STREAM (503, flag `UR`... retried under `refused-stream`).
    #[error("upstream refused the stream")]
    RefusedStream {
        /// The endpoint tried.
        endpoint: Option<SocketAddr>,
    },
}

impl UpstreamError {
    /// The endpoint involved, if any.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            UpstreamError::ConnectFailure { endpoint, .. }
            | UpstreamError::Reset { endpoint, .. }
            | UpstreamError::RefusedStream { endpoint } => *endpoint,
            _ => None,
        }
    }
}

/// How long an HTTP/1.1 connection may sit unused in the pool when the cluster sets no
/// `idleTimeout` (hyper-util's default, which the h2c pool keeps).
pub const IDLE_TIMEOUT: Duration = crate::dial::DEFAULT_POOL_IDLE_TIMEOUT;

/// Most unused HTTP/1.1 connections kept per endpoint; more are closed as they come back.
///
/// Envoy keeps every connection a burst opened until its idle timeout. rustmesh keeps 128 per
/// endpoint: a burst of 500 concurrent requests to one endpoint otherwise leaves 500 idle
/// connections (about 20 KiB each in the proxy, and as many sockets in the upstream) for the
/// whole idle timeout. A later burst above 128 dials again. Decision recorded in
/// docs/limits.md ("Unused connections to upstreams").
pub const MAX_IDLE: usize = 128;

pub use crate::dial::{NO_IDLE_TIMEOUT, PoolOptions};

/// The local address of the upstream connection a response came over (Envoy's
/// `%UPSTREAM_LOCAL_ADDRESS%`), in the response's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamLocal(pub SocketAddr);

/// A pooled connection: the stream (plain, or mutual TLS) and its guard.
pub struct PooledIo {
    io: TokioIo<Io>,
    /// Counts the connection in the cluster's and endpoint's `cx_active` until it closes.
    _guard: ActiveGuard,
}

impl PooledIo {
    /// The connection's local address.
    fn local_addr(&self) -> Option<SocketAddr> {
        self.io.inner().tcp().local_addr().ok()
    }
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
        hyper_util::client::legacy::connect::Connection::connected(self.io.inner().tcp())
    }
}

/// Dials one fixed address through its cluster's dialer (source address, `connectTimeout`,
/// connection counters, the endpoint's too when it is one), whatever the URI says (a
/// `tower::Service<Uri>`, as hyper-util's client wants).
#[derive(Clone, Debug)]
pub struct FixedConnector {
    addr: SocketAddr,
    connect_timeout: Duration,
    dialer: ClusterDialer,
    endpoint: Option<Arc<EndpointStats>>,
    /// Mutual TLS to originate on each connection.
    tls: Option<Arc<Originate>>,
    /// What the connections carry (the ALPN offered under TLS).
    purpose: Purpose,
    /// The SPIFFE id the last connection's server proved (mutual TLS), for the source side's
    /// `destination_principal`; `None` after a plain-text connection.
    proved: Arc<arc_swap::ArcSwapOption<String>>,
}

impl tower::Service<Uri> for FixedConnector {
    type Response = PooledIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<PooledIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        self.dial()
    }
}

impl FixedConnector {
    /// Opens a connection to the address with the cluster's dialer (which enforces
    /// `connectTimeout`; the pool's own limit is only a backstop), with `TCP_NODELAY`.
    fn dial(&self) -> Pin<Box<dyn Future<Output = std::io::Result<PooledIo>> + Send>> {
        let (dialer, addr, endpoint, timeout, tls, purpose, proved) = (
            self.dialer.clone(),
            self.addr,
            self.endpoint.clone(),
            self.connect_timeout,
            self.tls.clone(),
            self.purpose,
            self.proved.clone(),
        );
        Box::pin(async move {
            let connecting = dialer.connect_with(addr, endpoint, tls.as_deref(), purpose);
            let (stream, guard) = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))?
                .map_err(std::io::Error::other)?;
            let _ = stream.set_nodelay(true);
            proved.store(stream.peer_identity().map(|id| Arc::new(id.to_string())));
            Ok(PooledIo {
                io: TokioIo::new(stream),
                _guard: guard,
            })
        })
    }
}

/// A connection pool to one endpoint.
#[derive(Clone, Debug)]
pub struct EndpointClient {
    addr: SocketAddr,
    pool: Pool,
}

#[derive(Clone, Debug)]
enum Pool {
    Http1(Arc<Http1Pool>),
    Http2(Arc<Http2Pool>),
}

/// The h2c pool: hyper-util's client (one multiplexed connection), replaced by a new one once
/// it has carried `maxRequestsPerConnection` requests, as Envoy counts them on HTTP/2 too
/// (hyper-util's pool has no such setting). The old client's connection closes once its
/// streams in flight end and the last clone of it is dropped.
#[derive(Debug)]
struct Http2Pool {
    connector: FixedConnector,
    options: PoolOptions,
    /// The client, the requests it carried, and its generation (to retire it only once).
    current: Mutex<(Client<FixedConnector, ProxyBody>, u32, u64)>,
}

impl Http2Pool {
    fn new(connector: FixedConnector, options: PoolOptions) -> Self {
        let client = Self::client(&connector, &options);
        Http2Pool {
            connector,
            options,
            current: Mutex::new((client, 0, 0)),
        }
    }

    fn client(
        connector: &FixedConnector,
        options: &PoolOptions,
    ) -> Client<FixedConnector, ProxyBody> {
        let mut b = Client::builder(ConnExecutor::default());
        b.pool_idle_timeout(options.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true);
        b.build(connector.clone())
    }

    /// The client to send the next request with, and its generation.
    fn checkout(&self) -> (Client<FixedConnector, ProxyBody>, u64) {
        let mut current = lock(&self.current);
        if self
            .options
            .max_requests_per_connection
            .is_some_and(|max| current.1 >= max)
        {
            let generation = current.2 + 1;
            *current = (Self::client(&self.connector, &self.options), 0, generation);
        }
        current.1 += 1;
        (current.0.clone(), current.2)
    }

    /// Replaces the client of `generation` (if still current) by a new one, so the next
    /// requests open a new connection: the server sent GOAWAY on this one, which Envoy's pool
    /// stops using at once (hyper-util's keeps sending on it, and those streams are refused).
    fn retire(&self, generation: u64) {
        let mut current = lock(&self.current);
        if current.2 == generation {
            *current = (
                Self::client(&self.connector, &self.options),
                0,
                generation + 1,
            );
        }
    }
}

impl EndpointClient {
    /// A pool to `addr` speaking HTTP/1.1, or h2c with prior knowledge when `http2`, its
    /// connections opened by `dialer` (the cluster's; the pools live in the cluster's
    /// endpoints, so they hold the dialer, not the cluster) and counted in `endpoint`'s stats
    /// when `addr` is one of the cluster's endpoints. `connect_timeout` bounds a dial on top
    /// of the dialer's own `connectTimeout`. With `tls`, each connection is mutual TLS
    /// (ALPN `istio-http/1.1` or `istio-h2`, then the HTTP version itself).
    pub fn new(
        dialer: ClusterDialer,
        addr: SocketAddr,
        endpoint: Option<Arc<EndpointStats>>,
        http2: bool,
        connect_timeout: Duration,
        tls: Option<Arc<Originate>>,
    ) -> Self {
        let connector = FixedConnector {
            addr,
            connect_timeout,
            dialer,
            endpoint,
            tls,
            proved: Default::default(),
            purpose: if http2 {
                Purpose::Http2
            } else {
                Purpose::Http1
            },
        };
        let options = connector.dialer.pool_options();
        let pool = if http2 {
            Pool::Http2(Arc::new(Http2Pool::new(connector, options)))
        } else {
            Pool::Http1(Arc::new(Http1Pool {
                connector,
                options,
                idle: Mutex::new(IdleList::default()),
            }))
        };
        EndpointClient { addr, pool }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The SPIFFE id the endpoint's server proved on the pool's last connection (mutual TLS).
    pub fn server_identity(&self) -> Option<Arc<String>> {
        match &self.pool {
            Pool::Http1(p) => p.connector.proved.load_full(),
            Pool::Http2(p) => p.connector.proved.load_full(),
        }
    }

    /// Whether this pool speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self.pool, Pool::Http2(_))
    }

    /// HTTP/1.1 connections sitting unused in the pool (0 for h2c).
    pub fn idle_connections(&self) -> usize {
        match &self.pool {
            Pool::Http1(p) => lock(&p.idle).conns.len(),
            Pool::Http2(_) => 0,
        }
    }

    /// Sends a request prepared by the HTTP layer (absolute URI, `host` set).
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        match &self.pool {
            Pool::Http2(pool) => {
                *req.version_mut() = Version::HTTP_2;
                // HTTP/2 carries the authority in `:authority` (from the URI).
                req.headers_mut().remove(http::header::HOST);
                let (client, generation) = pool.checkout();
                match client.request(req).await {
                    Ok(mut resp) => {
                        // hyper-util's client copies the TCP connection's addresses into
                        // every response it carries.
                        let local = resp
                            .extensions()
                            .get::<hyper_util::client::legacy::connect::HttpInfo>()
                            .map(|i| UpstreamLocal(i.local_addr()));
                        if let Some(local) = local {
                            resp.extensions_mut().insert(local);
                        }
                        Ok(resp.map(boxed))
                    }
                    Err(e) => {
                        let error = classify(&e, Some(self.addr));
                        if matches!(error, UpstreamError::RefusedStream { .. }) {
                            pool.retire(generation);
                        }
                        Err(error)
                    }
                }
            }
            Pool::Http1(pool) => {
                *req.version_mut() = Version::HTTP_11;
                origin_form(&mut req);
                pool.send(req).await
            }
        }
    }
}

/// The request target of an HTTP/1.1 request to an origin server: `/path?query` (the authority
/// stays in `Host`); CONNECT keeps its authority-form.
fn origin_form(req: &mut Request<ProxyBody>) {
    if req.method() == Method::CONNECT {
        return;
    }
    let pq = match req.uri().path_and_query() {
        Some(_) if req.uri().scheme().is_none() && req.uri().authority().is_none() => return,
        Some(pq) => pq.clone(),
        None => http::uri::PathAndQuery::from_static("/"),
    };
    *req.uri_mut() = Uri::from(pq);
}

/// HTTP/1.1 connections to one endpoint: the unused ones, most recently used last.
pub struct Http1Pool {
    connector: FixedConnector,
    options: PoolOptions,
    /// The unused connections, and whether a reaper task is closing them at their idle timeout.
    idle: Mutex<IdleList>,
}

/// The unused connections (oldest first) and whether a reaper watches them.
#[derive(Default)]
struct IdleList {
    conns: Vec<Idle>,
    reaping: bool,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("connector", &self.connector)
            .field("idle", &lock(&self.idle).conns.len())
            .finish()
    }
}

struct Idle {
    conn: Conn1,
    since: Instant,
    /// Requests the connection has carried.
    used: u32,
}

/// An HTTP/1.1 connection: hyper's handle and the connection's local address.
struct Conn1 {
    send: http1::SendRequest<ProxyBody>,
    local: Option<UpstreamLocal>,
}

/// A connection out of the pool and the requests it carried before.
type Checked = (Conn1, u32);

impl Http1Pool {
    /// The most recently used connection that can take a request now. Closed and expired ones
    /// are dropped on the way (which closes them).
    fn checkout(&self) -> Option<Checked> {
        let mut idle = lock(&self.idle);
        while let Some(c) = idle.conns.pop() {
            if c.conn.send.is_ready() && c.since.elapsed() < self.options.idle_timeout {
                return Some((c.conn, c.used));
            }
        }
        None
    }

    /// Takes a connection back once its exchange is over (its `used`-th), unless it has
    /// carried `maxRequestsPerConnection` requests: then it is dropped, which closes it.
    /// A reaper task (one per pool, while connections are idle) closes them at the idle
    /// timeout even when no request comes to check them.
    fn checkin(self: &Arc<Self>, conn: Conn1, used: u32) {
        if conn.send.is_closed()
            || self
                .options
                .max_requests_per_connection
                .is_some_and(|max| used >= max)
        {
            return;
        }
        let mut idle = lock(&self.idle);
        let now = Instant::now();
        // The oldest are first: close the ones that waited too long.
        self.expire(&mut idle, now);
        if idle.conns.len() < MAX_IDLE {
            idle.conns.push(Idle {
                conn,
                since: now,
                used,
            });
        }
        if !idle.reaping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            rt.spawn(Self::reap(Arc::downgrade(self)));
        }
    }

    /// Closes (drops) the connections idle for the timeout or longer; they are the oldest.
    fn expire(&self, idle: &mut IdleList, now: Instant) {
        let expired = idle
            .conns
            .iter()
            .take_while(|c| now.duration_since(c.since) >= self.options.idle_timeout)
            .count();
        idle.conns.drain(..expired);
    }

    /// Sleeps until the oldest idle connection's timeout, closes what expired, and again,
    /// until none is idle (or the pool is gone). `reaping` changes only under the lock, so a
    /// connection checked in while the reaper stops starts a new one.
    async fn reap(pool: std::sync::Weak<Self>) {
        loop {
            let wake = {
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = lock(&pool.idle);
                pool.expire(&mut idle, Instant::now());
                match idle.conns.first() {
                    Some(oldest) => oldest.since + pool.options.idle_timeout,
                    None => {
                        idle.reaping = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }

    /// A new connection, its driving task spawned (holding the dialer's guard).
    async fn connect(&self) -> Result<Conn1, UpstreamError> {
        let endpoint = Some(self.connector.addr);
        let io = self
            .connector
            .dial()
            .await
            .map_err(|e| UpstreamError::ConnectFailure {
                endpoint,
                reason: e.to_string(),
            })?;
        let local = io.local_addr().map(UpstreamLocal);
        let (send, driver) = http1::Builder::new()
            .handshake::<_, ProxyBody>(io)
            .await
            .map_err(|e| UpstreamError::ConnectFailure {
                endpoint,
                reason: chain(&e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Conn1 { send, local })
    }

    async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let endpoint = Some(self.connector.addr);
        loop {
            let (mut conn, used, pooled) = match self.checkout() {
                Some((c, used)) => (c, used, true),
                None => (self.connect().await?, 0, false),
            };
            match conn.send.try_send_request(req).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    if let Some(local) = conn.local {
                        parts.extensions.insert(local);
                    }
                    // A 101 hands the connection over to the upgrade; it never comes back.
                    let back = (parts.status != http::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (self.clone(), conn, used + 1));
                    return Ok(Response::from_parts(parts, boxed(Returning { body, back })));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection had closed meanwhile. Another one.
                    Some(again) if pooled => req = again,
                    _ => {
                        return Err(UpstreamError::Reset {
                            endpoint,
                            reason: chain(e.error()),
                        });
                    }
                },
            }
        }
    }
}

/// A response body that gives its connection back to the pool once it has ended.
struct Returning {
    body: Incoming,
    back: Option<(Arc<Http1Pool>, Conn1, u32)>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((pool, conn, used)) = self.back.take() {
            if conn.send.is_ready() {
                pool.checkin(conn, used);
            } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // The connection's task has not yet taken in the end of the exchange (or the
                // request body is still going): wait for it elsewhere.
                rt.spawn(async move {
                    let mut conn = conn;
                    if conn.send.ready().await.is_ok() {
                        pool.checkin(conn, used);
                    }
                });
            }
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // Dropped unfinished, the connection cannot carry another exchange (hyper closes it).
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

/// An error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    reason
}

/// Sorts a hyper-util client error into Envoy's failure kinds.
pub fn classify(
    e: &hyper_util::client::legacy::Error,
    endpoint: Option<SocketAddr>,
) -> UpstreamError {
    let reason = chain(e);
    if e.is_connect() {
        return UpstreamError::ConnectFailure { endpoint, reason };
    }
    if refused_by_the_server(e, &reason) {
        return UpstreamError::RefusedStream { endpoint };
    }
    UpstreamError::Reset { endpoint, reason }
}

/// Whether a request failed without the server processing it, so a retry is safe and Envoy
/// counts it as `refused-stream` (retried by Istio's default policy): never sent (hyper
/// canceled it: its connection closed first), reset with REFUSED_STREAM, or not accepted
/// because the server is going away (GOAWAY with NO_ERROR: a
/// stream above its last stream id, or opened after it, "can be retried", RFC 9113 §6.8), as
/// when the upstream sidecar drains.
fn refused_by_the_server(e: &(dyn std::error::Error + 'static), reason: &str) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        // Never sent: the connection closed (or went away) before the request was written.
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        src = s.source();
    }
    let lower = reason.to_ascii_lowercase();
    lower.contains("refused stream") || lower.contains("refused_stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{empty, full};
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// What a raw HTTP/1.1 server saw: connections accepted and request heads read.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        /// Connections the client closed.
        closed: AtomicUsize,
        heads: Mutex<Vec<String>>,
    }

    /// A keep-alive HTTP/1.1 server on loopback answering every request with `body`. With
    /// `once`, it closes each connection 20 ms after its first answer, without saying so (as an
    /// upstream whose idle timeout fires).
    async fn server(body: &'static str, once: bool) -> (SocketAddr, Arc<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = l.accept().await.unwrap();
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let mut r = BufReader::new(sock);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                s.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        lock(&s.heads).push(head);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        r.get_mut().write_all(answer.as_bytes()).await.unwrap();
                        if once {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// An HTTP/1.1 pool to `addr`, dialing through a cluster's dialer (`connectTimeout` 1s).
    fn http1_client(addr: SocketAddr) -> EndpointClient {
        http1_client_with(addr, PoolOptions::default())
    }

    fn http1_client_with(addr: SocketAddr, options: PoolOptions) -> EndpointClient {
        let stats = crate::stats::Metrics::default().cluster("c");
        let dialer = ClusterDialer::new("c".to_string(), Duration::from_secs(1), None, stats)
            .with_pool_options(options);
        EndpointClient::new(dialer, addr, None, false, Duration::from_secs(1), None)
    }

    #[tokio::test]
    async fn max_requests_per_connection_closes_the_connection_after_n_requests() {
        let (addr, seen) = server("n", false).await;
        let c = http1_client_with(
            addr,
            PoolOptions {
                max_requests_per_connection: Some(2),
                ..PoolOptions::default()
            },
        );
        for _ in 0..5 {
            let resp = c.send(get("http://a/")).await.unwrap();
            assert_eq!(text(resp).await, "n");
        }
        // 2 + 2 + 1: Envoy's max_requests_per_connection.
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        assert_eq!(lock(&seen.heads).len(), 5);
    }

    /// An h2c server on loopback answering `h2` to everything; counts its connections.
    async fn h2_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(full("h2")))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                    .await;
                });
            }
        });
        (addr, connections)
    }

    #[tokio::test]
    async fn max_requests_per_connection_counts_http2_requests_too() {
        let (addr, connections) = h2_server().await;
        let stats = crate::stats::Metrics::default().cluster("c");
        let dialer = ClusterDialer::new("c".to_string(), Duration::from_secs(1), None, stats)
            .with_pool_options(PoolOptions {
                max_requests_per_connection: Some(2),
                ..PoolOptions::default()
            });
        let c = EndpointClient::new(dialer, addr, None, true, Duration::from_secs(1), None);
        for _ in 0..5 {
            let resp = c.send(get("http://a/")).await.unwrap();
            assert_eq!(text(resp).await, "h2");
        }
        // 2 + 2 + 1 streams, as Envoy counts max_requests_per_connection on HTTP/2.
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_idle_timeout_retires_pooled_connections() {
        let (addr, seen) = server("i", false).await;
        let c = http1_client_with(
            addr,
            PoolOptions {
                idle_timeout: Duration::from_millis(100),
                ..PoolOptions::default()
            },
        );
        for _ in 0..2 {
            let resp = c.send(get("http://a/")).await.unwrap();
            assert_eq!(text(resp).await, "i");
        }
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            1,
            "reused within the timeout"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let resp = c.send(get("http://a/")).await.unwrap();
        assert_eq!(text(resp).await, "i");
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            2,
            "a connection idle past idleTimeout is not used again"
        );
    }

    #[tokio::test]
    async fn idle_connections_close_at_the_timeout_without_more_requests() {
        let (addr, seen) = server("r", false).await;
        let c = http1_client_with(
            addr,
            PoolOptions {
                idle_timeout: Duration::from_millis(200),
                ..PoolOptions::default()
            },
        );
        // Two at once: two connections, both idle afterwards.
        let (a, b) = tokio::join!(c.send(get("http://a/")), c.send(get("http://a/")));
        assert_eq!(text(a.unwrap()).await, "r");
        assert_eq!(text(b.unwrap()).await, "r");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen.closed.load(Ordering::SeqCst), 0, "kept while young");
        // No request comes: the reaper closes them at the timeout.
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.closed.load(Ordering::SeqCst) < 2 {
            assert!(
                Instant::now() < deadline,
                "idle connections were never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The pool still works afterwards, and its reaper starts again.
        let resp = c.send(get("http://a/")).await.unwrap();
        assert_eq!(text(resp).await, "r");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.closed.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the reaper did not start again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn pool_options_from_the_cluster() {
        use rustmesh_xds::cluster::HttpProtocolOptions;
        assert_eq!(PoolOptions::from_def(None), PoolOptions::default());
        let o = PoolOptions::from_def(Some(&HttpProtocolOptions {
            idle_timeout: Some(rustmesh_xds::duration::Duration::from_secs(5)),
            max_requests_per_connection: Some(10),
        }));
        assert_eq!(o.idle_timeout, Duration::from_secs(5));
        assert_eq!(o.max_requests_per_connection, Some(10));
    }

    fn get(uri: &str) -> Request<ProxyBody> {
        Request::builder()
            .uri(uri)
            .header("host", "reviews.default.svc.cluster.local:9080")
            .body(empty())
            .unwrap()
    }

    async fn text(resp: Response<ProxyBody>) -> String {
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reuses_one_connection_and_sends_origin_form() {
        let (addr, seen) = server("hello", false).await;
        let c = http1_client(addr);
        for _ in 0..3 {
            let resp = c
                .send(get("http://reviews.default.svc.cluster.local:9080/r/1?x=2"))
                .await
                .unwrap();
            assert_eq!(text(resp).await, "hello");
            assert_eq!(
                c.idle_connections(),
                1,
                "the connection is back in the pool"
            );
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        let heads = lock(&seen.heads).clone();
        assert_eq!(heads.len(), 3);
        for h in heads {
            assert!(h.starts_with("GET /r/1?x=2 HTTP/1.1\r\n"), "{h}");
            assert!(
                h.to_ascii_lowercase()
                    .contains("host: reviews.default.svc.cluster.local:9080\r\n"),
                "{h}"
            );
        }
    }

    #[tokio::test]
    async fn concurrent_requests_open_their_own_connections() {
        let (addr, seen) = server("x", false).await;
        let c = http1_client(addr);
        let a = c.send(get("http://a/1")).await.unwrap();
        let b = c.send(get("http://a/2")).await.unwrap();
        // Both bodies unread: neither connection is free for the other.
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        assert_eq!(text(a).await, "x");
        assert_eq!(text(b).await, "x");
        assert_eq!(c.idle_connections(), 2);
    }

    #[tokio::test]
    async fn an_upstream_that_closed_its_idle_connection_costs_no_error() {
        let (addr, seen) = server("again", true).await;
        let c = http1_client(addr);
        for i in 1..=5 {
            let resp = c.send(get("http://a/")).await.unwrap_or_else(|e| {
                panic!("request {i}: {e}");
            });
            assert_eq!(text(resp).await, "again");
            // The connection is pooled now; the upstream closes it meanwhile.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_return_its_connection() {
        let (addr, seen) = server("0123456789", false).await;
        let c = http1_client(addr);
        let mut resp = c.send(get("http://a/")).await.unwrap();
        // Read nothing (or part of it) and drop.
        let _ = resp.body_mut().size_hint();
        drop(resp);
        assert_eq!(c.idle_connections(), 0);
        let resp = c.send(get("http://a/")).await.unwrap();
        assert_eq!(text(resp).await, "0123456789");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_body_goes_out_and_the_connection_comes_back() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (mut sock, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"payload") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            sock.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            // Keep the connection open: the client may reuse it.
            (String::from_utf8(got).unwrap(), sock)
        });
        let c = http1_client(addr);
        let req = Request::builder()
            .method("POST")
            .uri("http://a/upload")
            .header("host", "a")
            .header("content-length", "7")
            .body(full("payload"))
            .unwrap();
        let resp = c.send(req).await.unwrap();
        assert_eq!(resp.status(), 204);
        drop(resp);
        let (got, _open) = srv.await.unwrap();
        assert!(got.starts_with("POST /upload HTTP/1.1\r\n"), "{got}");
        // An empty body has ended at once: the connection is reusable when the task catches up.
        for _ in 0..100 {
            if c.idle_connections() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.idle_connections(), 1);
    }

    #[tokio::test]
    async fn refused_connections_are_connect_failures() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = http1_client(addr);
        match c.send(get("http://a/")).await {
            Err(UpstreamError::ConnectFailure { endpoint, .. }) => {
                assert_eq!(endpoint, Some(addr))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn origin_form_keeps_path_and_query_and_connect() {
        let mut r = get("http://h:1/a/b?c=d");
        origin_form(&mut r);
        assert_eq!(r.uri(), "/a/b?c=d");
        let mut r = get("http://h:1");
        origin_form(&mut r);
        assert_eq!(r.uri(), "/");
        let mut r = get("h:443");
        *r.method_mut() = Method::CONNECT;
        origin_form(&mut r);
        assert_eq!(r.uri(), "h:443");
    }
}
