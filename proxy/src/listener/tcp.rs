//! `tcp_proxy`: connect to the chain's cluster (one, or weighted) within its `connectTimeout`,
//! then copy bytes both ways until both sides are done.
//!
//! Half-close is kept: when one side finishes sending (EOF), the other side's write half is
//! shut down and the opposite direction carries on until it ends too. `idleTimeout` (default
//! one hour, `0s` for none) closes a connection with no bytes either way for that long. Bytes
//! count into the listener's (`downstream_cx_rx/tx_bytes`) and the cluster's
//! (`upstream_cx_rx/tx_bytes`) counters as they flow.
//!
//! Between two TCP sockets (the sidecar's case) bytes move with `splice(2)` through a pipe per
//! direction (up to 256 KiB at a time), never through user space; without pipes (out of
//! descriptors) and for other streams, each direction has one buffer of 16 KiB that doubles, up
//! to 256 KiB, while reads fill it (bulk transfers: one read takes all the socket has, one write
//! passes it on), and goes back to 16 KiB when a read brings less than that.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, splice};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::transport::Io;
use tokio::time::Instant;

use super::shared::Shared;
use crate::metrics::{Peers, Reporter};
use crate::snapshot::chain::TcpRoute;
use crate::snapshot::{CompiledListener, Snapshot};
use crate::socket::{ClientAddr, OrigDstAddr};
use crate::stats::Refusal;

/// Size of each direction's copy buffer to start with, and after a small read.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Largest size a direction's buffer grows to while reads fill it.
pub const MAX_BUFFER_SIZE: usize = 256 * 1024;

/// How a proxied connection ended, and the bytes it carried.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    /// Why it ended.
    pub reason: EndReason,
    /// Bytes from downstream to upstream.
    pub sent: u64,
    /// Bytes from upstream to downstream.
    pub received: u64,
}

/// Why a proxied connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Both directions finished (EOF each way).
    Closed,
    /// `idleTimeout` expired.
    Idle,
    /// A side failed (reset...).
    Error(String),
}

/// A connection's context for [`proxy`].
pub struct Conn<'a> {
    /// `source` (outbound) or `destination` (inbound).
    pub reporter: Reporter,
    /// The configuration the connection started on.
    pub snapshot: &'a Snapshot,
    /// The listener that matched.
    pub listener: &'a CompiledListener,
    /// The chain's name.
    pub chain: &'a str,
    /// Where the client was going.
    pub orig_dst: OrigDstAddr,
    /// Who the client is.
    pub client: ClientAddr,
    /// The client's address, when an ORIGINAL_DST cluster's connection leaves from it (TPROXY
    /// inbound, [`crate::dial::ClusterDialer::with_original_source`]).
    pub original_source: Option<std::net::IpAddr>,
    /// The SNI the client sent (`%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<std::sync::Arc<str>>,
}

/// Proxies `downstream` to the route's cluster. Records Envoy-style counters (listener,
/// cluster, endpoint) and Istio's `istio_tcp_*` metrics (response flags `UH` when no upstream
/// was found, `UF` when connecting failed), with the principals mutual TLS proved: on the
/// destination side the client's (from `downstream`) and this workload's, on the source side
/// this workload's and the server's (from the upstream handshake).
///
/// When the mutual TLS side (the client inbound, the server outbound) settled on
/// `istio-peer-exchange`, the two sidecars exchange their workloads ([`crate::peer::tcp`]): the
/// connection is counted opened once the peer's preface is read (or known absent), with the
/// workload it names; outbound without it, the endpoint's metadata names the server.
pub async fn proxy(shared: &Shared, conn: Conn<'_>, route: &TcpRoute, mut downstream: Io) {
    let Conn {
        reporter,
        snapshot,
        listener,
        chain,
        orig_dst,
        client,
        original_source,
        requested_server_name,
    } = conn;
    let cluster = route.pick_cluster();
    let (started, wall_start) = (Instant::now(), std::time::SystemTime::now());
    // One line per connection to each access log, when it ends (or is refused).
    let log = |flags: &str,
               upstream: Option<std::net::SocketAddr>,
               upstream_local: Option<std::net::SocketAddr>,
               received: u64,
               sent: u64| {
        if route.access_logs.is_empty() {
            return;
        }
        let none = |_: &str| None;
        let entry = rustmesh_xds::access_log::Entry {
            start_time: wall_start,
            protocol: None,
            response_code: 0,
            response_flags: flags,
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: received,
            bytes_sent: sent,
            duration: started.elapsed(),
            upstream_host: upstream,
            upstream_cluster: Some(&cluster.name),
            upstream_local_address: upstream_local,
            downstream_local_address: Some(orig_dst.0),
            downstream_remote_address: Some(client.0),
            requested_server_name: requested_server_name.as_deref(),
            route_name: None,
            request_header: &none,
            response_header: &none,
            response_trailer: &none,
        };
        route
            .access_logs
            .write(shared.http.access_log_sink(), &entry);
    };
    let own = shared.own_principal();
    let downstream_peer = downstream.peer_identity().map(|p| p.to_string());
    // Without a metadata exchange, the server's workload from the endpoint's metadata
    // (outbound); inbound, the client's workload reads `unknown`.
    let peer_at = |addr: std::net::SocketAddr| match reporter {
        Reporter::Source => snapshot.destinations.workload_at(addr).cloned(),
        Reporter::Destination => None,
    };
    let labels_for =
        |server: Option<&str>, peer: Option<&crate::metrics::WorkloadInfo>, flags: &str| {
            let (source_principal, destination_principal, security_policy) = match reporter {
                Reporter::Source => (own.as_deref(), server, "unknown"),
                Reporter::Destination => match &downstream_peer {
                    Some(peer) => (Some(peer.as_str()), own.as_deref(), "mutual_tls"),
                    None => (None, None, "none"),
                },
            };
            Peers {
                reporter,
                own: &shared.workload,
                service: snapshot.destinations.get(&cluster.name),
                security_policy,
                source_principal,
                destination_principal,
                peer,
            }
            .tcp_labels(flags)
        };
    let refuse = |refusal: Refusal, flags: &str| {
        shared.metrics.refused(&listener.name, refusal);
        let labels = labels_for(None, None, flags);
        shared.istio.tcp_opened(&labels, &route.metrics);
        shared.istio.tcp_closed(&labels, &route.metrics);
        log(flags, None, None, 0, 0);
    };
    let target = match cluster.target(orig_dst.0, None) {
        Ok(t) => t,
        Err(e) => {
            refuse(Refusal::NoHealthyUpstream, "UH");
            tracing::debug!(listener = %listener.name, chain, %orig_dst, %client, "{e}: connection closed");
            return;
        }
    };
    // `maxConnections` (a DestinationRule's connectionPool.tcp): over it the connection is
    // closed at once, as Envoy's tcp_proxy does on overflow (flag `UO`).
    let Some(_slot) = cluster.breaker.try_connection() else {
        cluster.stats.rq_overflow.inc();
        refuse(Refusal::UpstreamOverflow, "UO");
        tracing::debug!(listener = %listener.name, chain, %orig_dst, %client, "maxConnections reached: connection closed");
        return;
    };
    let upstream = match cluster.connect(target, original_source).await {
        Ok(u) => u,
        Err(e) => {
            refuse(Refusal::UpstreamConnectFailed, "UF");
            tracing::info!(listener = %listener.name, chain, %orig_dst, %client, "{e}: connection closed");
            return;
        }
    };
    let (mut up, target, _active) = upstream.into_parts();
    let server = up.peer_identity().map(|p| p.to_string());
    let upstream_local = up.tcp().local_addr().ok();
    // Counted opened once, with the peer the exchange named (or the endpoint's metadata).
    let opened = std::sync::OnceLock::new();
    let open = |exchanged: Option<crate::metrics::WorkloadInfo>| {
        opened.get_or_init(|| {
            let peer = match exchanged {
                Some(p) => Some(std::sync::Arc::new(p)),
                None => peer_at(target.addr),
            };
            let labels = labels_for(server.as_deref(), peer.as_deref(), "");
            shared.istio.tcp_opened(&labels, &route.metrics);
            labels
        });
    };
    let _load = target.endpoint.as_ref().map(|e| e.hold());
    let _ = downstream.set_nodelay(true);
    let counters = Counters {
        down_rx: &listener.stats.cx_rx_bytes,
        down_tx: &listener.stats.cx_tx_bytes,
        up_rx: &cluster.stats.cx_rx_bytes,
        up_tx: &cluster.stats.cx_tx_bytes,
    };
    let exchange = |io: &Io| io.alpn() == Some(crate::peer::tcp::ALPN);
    let preface = shared.http.own_metadata().tcp_preface();
    let ended = match (&mut downstream, &mut up) {
        // Plain on both sides: the bytes move by splice(2), never through user space.
        (Io::Plain(down), Io::Plain(upstream)) => {
            open(None);
            copy_tcp(down, upstream, counters, route.idle_timeout).await
        }
        (down, upstream) if reporter == Reporter::Destination && exchange(down) => {
            send_preface(down, preface).await;
            let mut down = crate::peer::tcp::Exchanged::new(down, &open);
            copy(&mut down, upstream, counters, route.idle_timeout).await
        }
        (down, upstream) if reporter == Reporter::Source && exchange(upstream) => {
            send_preface(upstream, preface).await;
            let mut upstream = crate::peer::tcp::Exchanged::new(upstream, &open);
            copy(down, &mut upstream, counters, route.idle_timeout).await
        }
        (down, upstream) => {
            open(None);
            copy(down, upstream, counters, route.idle_timeout).await
        }
    };
    // A connection that ended before the peer's preface came is counted opened now.
    open(None);
    let labels = opened.get().expect("set by open");
    // `ended.sent` is downstream → upstream: Istio's "received from the downstream".
    shared
        .istio
        .tcp_bytes(labels, ended.received, ended.sent, &route.metrics);
    if ended.reason == EndReason::Idle {
        cluster.stats.cx_idle_timeout.inc();
    }
    shared.istio.tcp_closed(labels, &route.metrics);
    log(
        // Envoy's flag for a tcp_proxy idle timeout.
        if ended.reason == EndReason::Idle {
            "SI"
        } else {
            ""
        },
        Some(target.addr),
        upstream_local,
        ended.sent,
        ended.received,
    );
    tracing::debug!(listener = %listener.name, chain, cluster = %cluster.name, upstream = %target.addr,
        %orig_dst, %client, ?ended, "TCP connection done");
}

/// Writes this sidecar's metadata-exchange preface at the start of the peer's stream; a peer
/// that is gone shows in the copy that follows.
async fn send_preface(peer: &mut Io, preface: &[u8]) {
    use tokio::io::AsyncWriteExt;
    if let Err(e) = async {
        peer.write_all(preface).await?;
        peer.flush().await
    }
    .await
    {
        tracing::debug!("istio-peer-exchange preface not sent: {e}");
    }
}

/// The counters bytes are added to.
pub struct Counters<'a> {
    /// Bytes read from downstream.
    pub down_rx: &'a Counter,
    /// Bytes written to downstream.
    pub down_tx: &'a Counter,
    /// Bytes read from upstream.
    pub up_rx: &'a Counter,
    /// Bytes written to upstream.
    pub up_tx: &'a Counter,
}

/// Copies both ways with half-close until both directions end, a side fails, or nothing moves
/// for `idle` (`None`: no idle limit).
pub async fn copy<A, B>(
    a: &mut A,
    b: &mut B,
    counters: Counters<'_>,
    idle: Option<Duration>,
) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut a = Counted {
        io: a,
        rx: counters.down_rx,
        tx: counters.down_tx,
        total: &sent,
        activity: &activity,
        start,
    };
    let mut b = Counted {
        io: b,
        rx: counters.up_rx,
        tx: counters.up_tx,
        total: &received,
        activity: &activity,
        start,
    };
    let why = watch_idle(bidirectional(&mut a, &mut b), &activity, start, idle).await;
    Ended {
        reason: why,
        sent: sent.load(Ordering::Relaxed),
        received: received.load(Ordering::Relaxed),
    }
}

/// Runs `copying` until it ends, or until `activity` (ms since `start`) is `idle` old.
async fn watch_idle(
    copying: impl std::future::Future<Output = io::Result<()>>,
    activity: &AtomicU64,
    start: Instant,
    idle: Option<Duration>,
) -> EndReason {
    match idle {
        None => reason(copying.await),
        Some(idle) => {
            let watchdog = async {
                loop {
                    let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    let deadline = start + last + idle;
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep_until(deadline).await;
                }
            };
            tokio::select! {
                result = copying => reason(result),
                () = watchdog => EndReason::Idle,
            }
        }
    }
}

/// Capacity asked for each direction's pipe in [`copy_tcp`].
const PIPE_SIZE: usize = 256 * 1024;

/// A pipe for `splice(2)`: bytes move from one socket into it and on to the other socket as
/// page references, without a copy into or out of user space.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Best effort: the default is 64 KiB.
        let _ = nix::fcntl::fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        Ok(Pipe { r, w })
    }
}

/// One direction's counters in [`copy_tcp`].
struct Way<'a> {
    rx: &'a Counter,
    tx: &'a Counter,
    total: &'a AtomicU64,
    activity: &'a AtomicU64,
    start: Instant,
}

impl Way<'_> {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }
}

/// [`copy`] for two TCP sockets, moving the bytes with `splice(2)` through a pipe per
/// direction; falls back to [`copy`] when the pipes cannot be made (e.g. out of descriptors).
pub async fn copy_tcp(
    a: &mut TcpStream,
    b: &mut TcpStream,
    counters: Counters<'_>,
    idle: Option<Duration>,
) -> Ended {
    let (Ok(ab), Ok(ba)) = (Pipe::new(), Pipe::new()) else {
        return copy(a, b, counters, idle).await;
    };
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let (a, b) = (&*a, &*b);
    let a_to_b = Way {
        rx: counters.down_rx,
        tx: counters.up_tx,
        total: &sent,
        activity: &activity,
        start,
    };
    let b_to_a = Way {
        rx: counters.up_rx,
        tx: counters.down_tx,
        total: &received,
        activity: &activity,
        start,
    };
    let copying = async {
        tokio::try_join!(
            splice_one_way(a, b, &ab, a_to_b),
            splice_one_way(b, a, &ba, b_to_a)
        )
        .map(|_| ())
    };
    let why = watch_idle(copying, &activity, start, idle).await;
    Ended {
        reason: why,
        sent: sent.load(Ordering::Relaxed),
        received: received.load(Ordering::Relaxed),
    }
}

/// Moves bytes from `from` to `to` through `pipe` until `from`'s EOF, then shuts down `to`'s
/// write half. The pipe is emptied before it is filled again, so `EAGAIN` always means a socket
/// is not ready.
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    way: Way<'_>,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from, None, &pipe.w, None, PIPE_SIZE, flags).map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            return socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
        }
        way.rx.inc_by(n as u64);
        way.total.fetch_add(n as u64, Ordering::Relaxed);
        way.touch();
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.r, None, to, None, left, flags).map_err(io::Error::from)
                })
                .await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
            way.tx.inc_by(m as u64);
            way.touch();
        }
    }
}

fn reason(result: io::Result<()>) -> EndReason {
    match result {
        Ok(()) => EndReason::Closed,
        Err(e) => EndReason::Error(e.to_string()),
    }
}

/// One direction of [`bidirectional`]: bytes read and not yet written are `buf[start..end]`.
struct Direction {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The reader reached EOF.
    read_done: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// The writer was shut down after EOF (the direction is done).
    done: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: Vec::new(),
            start: 0,
            end: 0,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Copies from `r` to `w` until `r`'s EOF has been passed on (`w` shut down).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start == self.end && !self.read_done {
                if self.buf.is_empty() {
                    self.buf = vec![0; BUFFER_SIZE];
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.start = 0;
                        self.end = n;
                        if n == 0 {
                            self.read_done = true;
                        } else if n == self.buf.len() && n < MAX_BUFFER_SIZE {
                            // More is probably waiting: take it in one read next time.
                            self.buf.resize(n * 2, 0);
                        } else if n < BUFFER_SIZE && self.buf.len() > BUFFER_SIZE {
                            self.buf.truncate(BUFFER_SIZE);
                            self.buf.shrink_to_fit();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.need_flush {
                            std::task::ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let n =
                    std::task::ready!(w.as_mut().poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.need_flush = true;
            }
            if self.read_done {
                std::task::ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                self.buf = Vec::new();
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions reached EOF (each passed on as a
/// shutdown of the other side's write half) or one fails.
async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::new(), Direction::new());
    std::future::poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (ab, ba) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await
}

/// A stream that counts its bytes and notes when they moved.
struct Counted<'a, S> {
    io: &'a mut S,
    rx: &'a Counter,
    tx: &'a Counter,
    total: &'a AtomicU64,
    activity: &'a AtomicU64,
    start: Instant,
}

impl<S> Counted<'_, S> {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.rx.inc_by(n as u64);
            self.total.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll
            && n > 0
        {
            self.tx.inc_by(n as u64);
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counters() -> [Counter; 4] {
        Default::default()
    }

    /// The four counters as the relay's `Counters`: down rx, down tx, up rx, up tx.
    fn view(c: &[Counter; 4]) -> Counters<'_> {
        Counters {
            down_rx: &c[0],
            down_tx: &c[1],
            up_rx: &c[2],
            up_tx: &c[3],
        }
    }

    #[tokio::test]
    async fn half_close_both_ways_and_counts() {
        let (mut client, mut proxy_down) = tokio::io::duplex(64);
        let (mut proxy_up, mut server) = tokio::io::duplex(64);
        let c = counters();
        let proxying = async {
            copy(
                &mut proxy_down,
                &mut proxy_up,
                view(&c),
                Some(Duration::from_secs(60)),
            )
            .await
        };
        let talking = async {
            client.write_all(b"request").await.unwrap();
            client.shutdown().await.unwrap();
            // The server sees the EOF, and only then answers: the reply must still come back.
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"request");
            server.write_all(b"reply after EOF").await.unwrap();
            server.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"reply after EOF");
        };
        let (ended, ()) = tokio::join!(proxying, talking);
        assert_eq!(
            ended,
            Ended {
                reason: EndReason::Closed,
                sent: 7,
                received: 15
            }
        );
        assert_eq!(
            c.iter().map(Counter::get).collect::<Vec<_>>(),
            [7, 15, 15, 7]
        );
    }

    #[tokio::test]
    async fn bulk_bytes_arrive_whole_and_in_order_as_the_buffers_grow_and_shrink() {
        let (mut client, mut proxy_down) = tokio::io::duplex(1 << 20);
        let (mut proxy_up, mut server) = tokio::io::duplex(1 << 20);
        let c = counters();
        let proxying = async { copy(&mut proxy_down, &mut proxy_up, view(&c), None).await };
        // 3 MiB in writes of 1 MiB (reads fill the buffer: it grows), then small ones.
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
        let talking = async {
            let writing = async {
                for chunk in data.chunks(1 << 20) {
                    client.write_all(chunk).await.unwrap();
                }
                for i in 0..100u8 {
                    client.write_all(&[i; 10]).await.unwrap();
                }
                client.shutdown().await.unwrap();
            };
            let reading = async {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(writing, reading);
            assert_eq!(got.len(), data.len() + 1000);
            assert!(got[..data.len()] == data[..], "bulk bytes changed");
            assert!(
                got[data.len()..]
                    .chunks(10)
                    .enumerate()
                    .all(|(i, c)| c == [i as u8; 10])
            );
            server.shutdown().await.unwrap();
        };
        let (ended, ()) = tokio::join!(proxying, talking);
        assert_eq!(ended.reason, EndReason::Closed);
        assert_eq!((ended.sent, ended.received), (data.len() as u64 + 1000, 0));
    }

    /// A connected pair of loopback TCP sockets.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn splice_relay_keeps_bytes_order_half_close_and_counts() {
        let (mut client, mut proxy_down) = tcp_pair().await;
        let (mut proxy_up, mut server) = tcp_pair().await;
        let c = counters();
        let proxying = async {
            copy_tcp(
                &mut proxy_down,
                &mut proxy_up,
                view(&c),
                Some(Duration::from_secs(60)),
            )
            .await
        };
        let data: Vec<u8> = (0..5 * 1024 * 1024 + 3).map(|i| (i % 253) as u8).collect();
        let talking = async {
            let (mut cr, mut cw) = client.split();
            let writing = async {
                cw.write_all(&data).await.unwrap();
                cw.shutdown().await.unwrap();
            };
            let serving = async {
                // The server reads to EOF, and only then answers: the answer must still arrive.
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                assert!(got == data, "bytes changed on the way");
                server.write_all(b"reply after EOF").await.unwrap();
                server.shutdown().await.unwrap();
            };
            let reading = async {
                let mut reply = Vec::new();
                cr.read_to_end(&mut reply).await.unwrap();
                reply
            };
            let ((), (), reply) = tokio::join!(writing, serving, reading);
            assert_eq!(reply, b"reply after EOF");
        };
        let (ended, ()) = tokio::join!(proxying, talking);
        let n = data.len() as u64;
        assert_eq!(
            ended,
            Ended {
                reason: EndReason::Closed,
                sent: n,
                received: 15
            }
        );
        assert_eq!(
            c.iter().map(Counter::get).collect::<Vec<_>>(),
            [n, 15, 15, n]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes_a_silent_connection_but_not_a_busy_one() {
        let (mut client, mut down) = tokio::io::duplex(64);
        let (mut up, mut server) = tokio::io::duplex(64);
        let c = counters();
        let proxying = copy(&mut down, &mut up, view(&c), Some(Duration::from_secs(10)));
        let chatting = async {
            // Busy for 30 s (a byte every 5 s), then silent.
            for _ in 0..6 {
                client.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                server.read_exact(&mut b).await.unwrap();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            std::future::pending::<()>().await;
        };
        let started = Instant::now();
        let ended = tokio::select! {
            e = proxying => e,
            () = chatting => unreachable!(),
        };
        assert_eq!(ended.reason, EndReason::Idle);
        assert_eq!((ended.sent, ended.received), (6, 0));
        assert!(
            started.elapsed() >= Duration::from_secs(35),
            "not closed while busy"
        );
    }
}
