//! Serving a part's own ports (not the data path): the webhook's HTTPS and ops ports, the
//! operator's metrics and CA ports, the sidecar's admin, readiness and Prometheus ports.
//!
//! One implementation of what each of them needs so that idle or slow clients cannot use up the
//! process's file descriptors (`docs/limits.md`, "Connections to ..."):
//! - [`Gate`]: a cap on connections open at once; a connection over it is closed as it is
//!   accepted, counted, and logged (each at debug, at most one warning per
//!   [`REFUSAL_LOG_EVERY`] with the number refused since);
//! - [`accept`]: the accept loop's step (accept errors such as `EMFILE` pause instead of
//!   spinning, warned about as sparingly);
//! - [`Conn`]: an accepted connection holding its place under the cap and noting when bytes
//!   last moved, optionally failing once it has been idle too long (for servers whose
//!   connection handling we do not drive, e.g. tonic's);
//! - [`serve_http`] / [`run_http`]: hyper (HTTP/1.1 and HTTP/2) on such a connection with
//!   [`ConnLimits`]: a request head must arrive in time (HTTP/1.1), an idle connection and one
//!   past its maximum age are shut down gracefully (HTTP/2 GOAWAY, HTTP/1.1 after the
//!   response in flight);
//! - [`raise_fd_limit`]: the open-files soft limit raised to the hard one at start.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The most often a refusal or an accept error is logged at warn (the rest go to debug).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a connection asked to shut down (too old, or the server stopping) may take to
/// finish the request in flight before it is dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The same for a connection shut down because no byte moved (idle, or no request): nothing is
/// in flight, so this only bounds the goodbye. HTTP/2's graceful shutdown waits for the client
/// to acknowledge a PING after the first GOAWAY; a client that never reads would otherwise keep
/// its descriptor for the whole [`SHUTDOWN_GRACE`].
pub const IDLE_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The limits of one port's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Time for a TLS handshake (TLS ports only).
    pub handshake_timeout: Duration,
    /// Time for a request head to arrive on a new connection, and between requests of an
    /// HTTP/1.1 connection (hyper's `header_read_timeout`).
    pub request_head_timeout: Duration,
    /// A connection on which no byte moved for this long is shut down.
    pub idle_timeout: Duration,
    /// A connection older than this is shut down; `None`: no maximum.
    pub max_age: Option<Duration>,
}

impl ConnLimits {
    /// Health, readiness and metrics ports (scraped by Prometheus, probed by the kubelet, each
    /// with a connection of its own): 64 connections, 5 s for a request head, 5 s idle, 5 min
    /// at most. The sidecar's admin ports use the same.
    pub const OPS: ConnLimits = ConnLimits {
        max_connections: 64,
        handshake_timeout: Duration::from_secs(10),
        request_head_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_age: Some(Duration::from_secs(300)),
    };
}

/// A cap on the connections a port serves at once, with the count of those refused.
pub struct Gate {
    what: &'static str,
    limit: usize,
    permits: Arc<Semaphore>,
    refused: AtomicU64,
    log: Mutex<RateLog>,
    on_refused: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("what", &self.what)
            .field("limit", &self.limit)
            .field("open", &self.open())
            .field("refused", &self.refused())
            .finish()
    }
}

/// A place under a [`Gate`]'s cap, given back when dropped.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

#[derive(Default)]
struct RateLog {
    last: Option<Instant>,
    since: u64,
}

impl RateLog {
    /// Whether to warn now, and how many were suppressed before this one.
    fn warn_now(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + REFUSAL_LOG_EVERY) {
            self.since += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

impl Gate {
    /// A gate for port `what` (named in logs) letting `limit` connections in at once (at least 1).
    pub fn new(what: &'static str, limit: usize) -> Self {
        let limit = limit.max(1);
        Gate {
            what,
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            refused: AtomicU64::new(0),
            log: Mutex::new(RateLog::default()),
            on_refused: None,
        }
    }

    /// Also calls `f` for each refused connection (e.g. a metric's counter).
    pub fn on_refused(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Box::new(f));
        self
    }

    /// The cap.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A place for a connection from `peer`, or `None` (counted and logged) when the cap is
    /// reached.
    pub fn admit(&self, peer: SocketAddr) -> Option<Permit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(Permit(p));
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = &self.on_refused {
            f();
        }
        let warn = self.log.lock().map(|mut l| l.warn_now()).unwrap_or(None);
        match warn {
            Some(suppressed) => tracing::warn!(
                port = self.what,
                limit = self.limit,
                %peer,
                refused_since_last_warning = suppressed,
                "connection limit reached: closing new connections"
            ),
            None => tracing::debug!(port = self.what, %peer, "connection limit reached: closed"),
        }
        None
    }

    /// Resolves once no admitted connection is open (e.g. after a server stopped accepting).
    pub async fn closed(&self) {
        let n = u32::try_from(self.limit).unwrap_or(u32::MAX);
        if let Ok(all) = self.permits.acquire_many(n).await {
            drop(all);
        }
    }
}

/// Accepts the next connection `gate` admits: connections over the cap are closed here,
/// accept errors (e.g. `EMFILE`) pause 100 ms rather than spin.
pub async fn accept(listener: &TcpListener, gate: &Gate) -> (TcpStream, SocketAddr, Permit) {
    let mut errors = RateLog::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(permit) = gate.admit(peer) {
                    return (stream, peer, permit);
                }
                drop(stream);
            }
            Err(e) => {
                match errors.warn_now() {
                    Some(_) => tracing::warn!(port = gate.what, error = %e, "accept failed"),
                    None => tracing::debug!(port = gate.what, error = %e, "accept failed"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// When bytes last moved on a connection.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    last_ms: AtomicU64,
    read_any: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            read_any: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn touch(&self, read: bool) {
        if read {
            self.read_any.store(true, Ordering::Relaxed);
        }
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved (the connection's start if never).
    pub fn last(&self) -> Instant {
        self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves with why the connection should end: [`Ending::NoRequest`] when no byte was
    /// read within `first` of the call, [`Ending::Idle`] once no byte moved for `idle`,
    /// [`Ending::MaxAge`] once it is `max_age` old.
    pub async fn expired(
        &self,
        first: Duration,
        idle: Duration,
        max_age: Option<Duration>,
    ) -> Ending {
        let start = Instant::now();
        let age_deadline = max_age.map(|a| self.born + a);
        let due = || {
            if self.read_any.load(Ordering::Relaxed) {
                (self.last() + idle, Ending::Idle)
            } else {
                (start + first, Ending::NoRequest)
            }
        };
        loop {
            let (deadline, _) = due();
            let next = age_deadline.map_or(deadline, |a| a.min(deadline));
            tokio::time::sleep_until(next).await;
            let now = Instant::now();
            if age_deadline.is_some_and(|a| now >= a) {
                return Ending::MaxAge;
            }
            let (deadline, why) = due();
            if now >= deadline {
                return why;
            }
        }
    }
}

/// Why a served connection is asked to shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// No byte was read within the request head timeout.
    NoRequest,
    /// No byte moved for the idle timeout.
    Idle,
    /// The connection reached its maximum age.
    MaxAge,
    /// The server is stopping.
    Stopping,
}

impl Ending {
    /// For logs.
    pub fn reason(self) -> &'static str {
        match self {
            Ending::NoRequest => "no request",
            Ending::Idle => "idle",
            Ending::MaxAge => "max_age",
            Ending::Stopping => "server stopping",
        }
    }

    /// How long the graceful shutdown may take: nothing is in flight on a connection that
    /// moved no byte ([`IDLE_SHUTDOWN_GRACE`]); otherwise [`SHUTDOWN_GRACE`].
    pub fn grace(self) -> Duration {
        match self {
            Ending::NoRequest | Ending::Idle => IDLE_SHUTDOWN_GRACE,
            Ending::MaxAge | Ending::Stopping => SHUTDOWN_GRACE,
        }
    }
}

/// An admitted connection: holds its [`Permit`] and notes each time bytes move.
#[derive(Debug)]
pub struct Conn<I> {
    io: I,
    activity: Arc<Activity>,
    _permit: Permit,
    fail_when_idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<I> Conn<I> {
    /// Wraps `io`, admitted with `permit`.
    pub fn new(io: I, permit: Permit) -> Self {
        Conn {
            io,
            activity: Activity::new(),
            _permit: permit,
            fail_when_idle: None,
        }
    }

    /// The same connection, whose reads fail with `TimedOut` once no byte moved either way for
    /// `idle`: for servers that always keep a read pending (hyper's, so tonic's) and whose
    /// connections we cannot shut down gracefully ourselves.
    pub fn fail_when_idle(mut self, idle: Duration) -> Self {
        let deadline = self.activity.last() + idle;
        self.fail_when_idle = Some((idle, Box::pin(tokio::time::sleep_until(deadline))));
        self
    }

    /// When bytes last moved.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// Applies `f` to the wrapped connection (e.g. a TLS handshake), keeping the permit and the
    /// activity record.
    pub async fn map<J, F, Fut>(self, f: F) -> io::Result<Conn<J>>
    where
        F: FnOnce(I) -> Fut,
        Fut: Future<Output = io::Result<J>>,
    {
        let io = f(self.io).await?;
        Ok(Conn {
            io,
            activity: self.activity,
            _permit: self._permit,
            fail_when_idle: self.fail_when_idle,
        })
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Conn<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.activity.touch(true);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some((idle, sleep)) = &mut this.fail_when_idle {
                    let deadline = this.activity.last() + *idle;
                    if sleep.deadline() != deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no bytes for {idle:?}: idle connection closed"),
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Conn<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch(false);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch(false);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The error type of services and bodies served here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves HTTP/1.1 or HTTP/2 (by the client's preface) on `conn` with `service` under
/// `limits` (no byte within the request head timeout closes it; a partial HTTP/1.1 head, idle
/// and age shut the connection down gracefully) until the
/// client leaves, the connection expires, or `stop` resolves (graceful shutdown too). Requests
/// in flight get [`SHUTDOWN_GRACE`] to finish ([`IDLE_SHUTDOWN_GRACE`] when the connection was
/// idle).
pub async fn serve_http<I, S, B>(
    conn: Conn<I>,
    service: S,
    limits: &ConnLimits,
    stop: impl Future<Output = ()>,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = conn.activity();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout);
    builder.http2().timer(TokioTimer::new());
    let served = builder.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    let why = tokio::select! {
        r = served.as_mut() => return r,
        why = activity.expired(limits.request_head_timeout, limits.idle_timeout, limits.max_age) => why,
        () = stop => Ending::Stopping,
    };
    tracing::debug!(reason = why.reason(), "shutting a connection down");
    served.as_mut().graceful_shutdown();
    match tokio::time::timeout(why.grace(), served).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// Accepts on `listener` under `gate`, hands each admitted connection to `handshake` (e.g.
/// TLS; `limits.handshake_timeout`), then [`serve_http`] with `service`, until `shutdown`
/// resolves; then stops accepting, asks every connection to shut down gracefully, and waits for
/// them for at most [`SHUTDOWN_GRACE`].
pub async fn run_http<S, B, H, HF, IO>(
    listener: TcpListener,
    gate: Arc<Gate>,
    limits: ConnLimits,
    handshake: H,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(TcpStream) -> HF + Clone + Send + 'static,
    HF: Future<Output = io::Result<IO>> + Send,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer, permit) = tokio::select! {
            a = accept(&listener, &gate) => a,
            () = &mut shutdown => break,
        };
        let handshake = handshake.clone();
        let service = service.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let conn = Conn::new(stream, permit);
            let conn =
                match tokio::time::timeout(limits.handshake_timeout, conn.map(handshake)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "handshake timed out");
                        return;
                    }
                };
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = serve_http(conn, service, &limits, stopping).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), gate.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            port = gate.what,
            "connections still open after the grace period"
        );
    }
}

/// Raises the soft limit of open files to the hard one, as Envoy and Istio's agent do: every
/// connection costs a descriptor, and the default soft limit (often 1024) would let a few
/// hundred idle clients stop a server. Returns the (soft, hard) limits now in force.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?)
}

/// [`raise_fd_limit`], logging the outcome (info: the limits; warn: why it failed).
pub fn raise_fd_limit_logged() {
    match raise_fd_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(e) => tracing::warn!("could not raise the open files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn hello() -> impl hyper::service::Service<
        http::Request<Incoming>,
        Response = http::Response<String>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<Result<http::Response<String>, std::convert::Infallible>>,
    > + Clone {
        hyper::service::service_fn(|_req| {
            std::future::ready(Ok(http::Response::new("hi\n".to_owned())))
        })
    }

    async fn start(
        limits: ConnLimits,
    ) -> (SocketAddr, Arc<Gate>, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Gate::new("test", limits.max_connections));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run_http(
            listener,
            gate.clone(),
            limits,
            |s| async move { Ok(s) },
            hello(),
            async move {
                let _ = rx.await;
            },
        ));
        (addr, gate, tx)
    }

    async fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads until the peer closes (Ok(0)) or errors; panics after `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) {
        let mut buf = [0u8; 256];
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server closed the connection");
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_counted_and_freed_places_serve_again() {
        let limits = ConnLimits {
            max_connections: 3,
            request_head_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..ConnLimits::OPS
        };
        let (addr, gate, _stop) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Wait until the three are admitted.
        while gate.open() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        closed_within(&mut over, Duration::from_secs(10)).await;
        assert!(gate.refused() >= 1);
        idle.pop();
        while gate.open() > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(get(addr).await.ends_with("hi\n"));
    }

    #[tokio::test]
    async fn a_silent_connection_and_an_idle_one_are_closed() {
        let limits = ConnLimits {
            max_connections: 8,
            request_head_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(60),
            ..ConnLimits::OPS
        };
        let (addr, gate, _stop) = start(limits).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        closed_within(&mut silent, Duration::from_secs(10)).await;
        // A kept-alive HTTP/1.1 connection: answered, then closed once idle.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        closed_within(&mut kept, Duration::from_secs(10)).await;
        while gate.open() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_http2_connection_is_shut_down_when_idle_and_when_too_old() {
        for (idle, age) in [
            (Duration::from_millis(300), None),
            (Duration::from_secs(60), Some(Duration::from_millis(300))),
        ] {
            let limits = ConnLimits {
                max_connections: 8,
                idle_timeout: idle,
                max_age: age,
                ..ConnLimits::OPS
            };
            let (addr, _gate, _stop) = start(limits).await;
            let mut s = TcpStream::connect(addr).await.unwrap();
            // The HTTP/2 preface and an empty SETTINGS frame; then nothing.
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await
                .unwrap();
            // The server's SETTINGS, its ack, then GOAWAY and the close: this client never acks
            // the server's PING, so the close comes after the grace (1 s idle, 10 s too old).
            // The bound is generous: CI runs many tests at once on two cores.
            closed_within(&mut s, Duration::from_secs(40)).await;
        }
    }

    #[tokio::test]
    async fn fail_when_idle_ends_a_read_that_waits_too_long() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::new("test", 1);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _, permit) = accept(&listener, &gate).await;
        let mut conn = Conn::new(stream, permit).fail_when_idle(Duration::from_millis(200));
        let mut buf = [0u8; 8];
        let err = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the read ended")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(gate.open(), 1);
        drop(conn);
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = raise_fd_limit().unwrap();
        assert_eq!(soft, hard);
    }
}
