//! The capture listeners and what they do with a connection (the shape of ztunnel's and
//! linkerd2-proxy's `proxy` modules): a [`VirtualListener`] binds in `new()` (a bad address
//! fails at start) and accepts in `run()`; what a connection means is per direction,
//! [`outbound::decide`] (`virtualOutbound`, 15001) and [`inbound::decide`] (`virtualInbound`,
//! 15006), pure functions of the configuration and the addresses. [`serve`] asks them and hands
//! each connection they accept to [`dispatch`]: filter chain (compiled with the
//! configuration, [`crate::snapshot::chain`]), sniffing when a chain needs it
//! ([`crate::sniff`]), then the chain's terminal filter: [`tcp`] proxying, or the HTTP
//! connection manager ([`ConnectionManager::serve`]) with the chain's route table and the
//! snapshot's clusters. On the inbound side, the pod's AuthorizationPolicies ([`crate::authz`])
//! decide a TCP chain's connection here, before any upstream connection, and an HTTP chain's
//! requests in the connection manager.
//!
//! The original destination is looked up through the [`OrigDst`] trait, so tests can hand the
//! listeners a fake ([`crate::socket::FixedAddrs`]) instead of a redirected socket.
//!
//! A router (`proxy run --type router`, a gateway) binds no capture listener: [`bound`] binds
//! the configuration's own listeners (`bindToPort`) as the configuration changes, and hands
//! their connections to the same [`dispatch`], their destination being the socket's address.

pub mod bound;
mod decision;
pub mod inbound;
pub mod outbound;
mod shared;
pub mod tcp;

pub use decision::Decision;
pub use shared::Shared;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::authz::{Attributes, Authz};
use crate::drain;
use crate::http::ConnAuthz;
use crate::http::handler::HttpConnection;
use crate::metrics::Reporter;
use crate::snapshot::{CompiledListener, Snapshot};
use crate::sniff::{self, Detected};
use crate::socket::{ClientAddr, FixedAddrs, OrigDst, OrigDstAddr};
use crate::stats::Refusal;
use crate::transport::Io;
use crate::{Error, Result};
use rustmesh_xds::peer_authn::MtlsMode;

use crate::snapshot::chain::Terminal;

/// Which capture listener a [`VirtualListener`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `virtualOutbound` (15001): [`outbound::decide`].
    Outbound,
    /// `virtualInbound` (15006): [`inbound::decide`].
    Inbound,
}

impl Direction {
    /// The listener's name, as in Istio's configuration.
    pub fn listener_name(self) -> &'static str {
        match self {
            Direction::Outbound => rustmesh_xds::names::VIRTUAL_OUTBOUND,
            Direction::Inbound => rustmesh_xds::names::VIRTUAL_INBOUND,
        }
    }
}

/// A bound capture listener (`virtualOutbound` or `virtualInbound`): [`VirtualListener::new`]
/// binds, so a bad address fails at start; [`VirtualListener::run`] waits for the first
/// configuration (connections wait in the kernel's backlog meanwhile), then accepts until
/// draining starts and hands each connection to its direction's `serve`.
pub struct VirtualListener {
    direction: Direction,
    sockets: Vec<std::net::TcpListener>,
    port: u16,
    shared: Arc<Shared>,
    transparent: bool,
}

impl VirtualListener {
    /// Binds `addr` (see [`bind`]).
    pub fn new(direction: Direction, addr: SocketAddr, shared: Arc<Shared>) -> Result<Self> {
        Self::bound(direction, addr, shared, false)
    }

    /// Binds `addr` with `IP_TRANSPARENT`, for TPROXY interception: the kernel delivers
    /// connections to any address here, and a connection's local address is its original
    /// destination. Needs `CAP_NET_ADMIN` (Istio's sidecar runs as root for TPROXY).
    pub fn new_transparent(
        direction: Direction,
        addr: SocketAddr,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        Self::bound(direction, addr, shared, true)
    }

    fn bound(
        direction: Direction,
        addr: SocketAddr,
        shared: Arc<Shared>,
        transparent: bool,
    ) -> Result<Self> {
        let sockets = bind(direction.listener_name(), addr, transparent)?;
        let port = sockets[0].local_addr().map_or(addr.port(), |a| a.port());
        Ok(VirtualListener {
            direction,
            sockets,
            port,
            shared,
            transparent,
        })
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Serves until the drain closes (it keeps accepting while draining, as Envoy's listeners
    /// do during Istio's termination drain).
    pub async fn run(self, drain: drain::Watch) {
        if self.transparent {
            self.run_with(drain, transparent_addrs).await
        } else {
            self.run_with(drain, kernel_addrs).await
        }
    }

    /// [`VirtualListener::run`] with another way of learning a connection's addresses (tests).
    pub async fn run_with<F, A>(self, drain: drain::Watch, lookup: F)
    where
        F: Fn(&TcpStream) -> std::io::Result<A> + Clone + Send + Sync + 'static,
        A: OrigDst + Send + Sync + 'static,
    {
        tokio::select! {
            () = self.shared.store.loaded() => {}
            () = drain.closed() => return,
        }
        let VirtualListener {
            direction,
            sockets,
            port,
            shared,
            transparent: _,
        } = self;
        let name = direction.listener_name();
        accept_loop(name, sockets, drain, move |stream, drain| {
            let shared = shared.clone();
            let lookup = lookup.clone();
            let active = drain.connection();
            async move {
                let _active = active;
                match lookup(&stream) {
                    Ok(addrs) => serve(direction, &shared, port, stream, &addrs, drain).await,
                    Err(e) => {
                        shared.metrics.refused(name, Refusal::NoOriginalDst);
                        tracing::warn!("{name}: no original destination: {e}");
                    }
                }
            }
        })
        .await
    }
}

/// Binds a capture listener on `addr`; when `addr` is `0.0.0.0`, also on `[::]` (IPv6 only)
/// if the host has IPv6, as Istio binds both for dual-stack pods. An unavailable IPv6 is not an
/// error; any other failure is.
pub(crate) fn bind(
    what: &'static str,
    addr: SocketAddr,
    transparent: bool,
) -> Result<Vec<std::net::TcpListener>> {
    let mut out = vec![bind_one(what, addr, false, transparent)?];
    if addr.ip() == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) {
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port());
        match bind_one(what, v6, true, transparent) {
            Ok(l) => out.push(l),
            Err(Error::Bind { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc_errno::EAFNOSUPPORT | libc_errno::EADDRNOTAVAIL)
                ) =>
            {
                tracing::debug!(%v6, "no IPv6 here: {source}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

mod libc_errno {
    pub const EAFNOSUPPORT: i32 = nix::errno::Errno::EAFNOSUPPORT as i32;
    pub const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
}

fn bind_one(
    what: &'static str,
    addr: SocketAddr,
    v6only: bool,
    transparent: bool,
) -> Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let fail = |source: io::Error| Error::Bind { what, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6only).map_err(fail)?;
    }
    if transparent {
        let set = if addr.is_ipv6() {
            socket.set_ip_transparent_v6(true)
        } else {
            socket.set_ip_transparent_v4(true)
        };
        set.map_err(|e| {
            fail(io::Error::new(
                e.kind(),
                format!("IP_TRANSPARENT (TPROXY interception needs CAP_NET_ADMIN): {e}"),
            ))
        })?;
    }
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(socket.into())
}

/// Accepts on every socket until the drain closes, handing each connection to `handle` on its
/// own task with a drain watch. Returns when all sockets are closed (new connections are then
/// refused by the kernel).
pub(crate) async fn accept_loop<F, Fut>(
    what: &'static str,
    sockets: Vec<std::net::TcpListener>,
    drain: drain::Watch,
    handle: F,
) where
    F: Fn(TcpStream, drain::Watch) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for socket in sockets {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(what, "cannot register the listening socket: {e}");
                continue;
            }
        };
        let drain = drain.clone();
        let handle = handle.clone();
        tasks.spawn(async move {
            let local = listener.local_addr().ok();
            loop {
                tokio::select! {
                    biased;
                    () = drain.closed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(handle(stream, drain.clone()));
                        }
                        Err(e) => {
                            // EMFILE and friends: back off a little instead of spinning.
                            tracing::warn!(what, ?local, "accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                }
            }
            tracing::info!(what, ?local, "stopped accepting");
        });
    }
    drop(drain);
    while tasks.join_next().await.is_some() {}
}

/// Whether `ip` is an address of this host (network namespace): loopback, unspecified, the
/// accepted socket's own address, or an interface address.
pub(crate) fn is_local(ip: IpAddr, stream: &TcpStream) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    if stream
        .local_addr()
        .is_ok_and(|l| l.ip().to_canonical() == ip)
    {
        return true;
    }
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs.into_iter().any(|a| {
                a.address.is_some_and(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()) == ip)
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()) == ip))
                        .unwrap_or(false)
                })
            })
        })
        .unwrap_or(false)
}

/// The addresses the kernel knows for a redirected connection (`SO_ORIGINAL_DST`, peer).
pub fn kernel_addrs(stream: &TcpStream) -> io::Result<FixedAddrs> {
    Ok(FixedAddrs {
        orig_dst: stream.orig_dst_addr()?,
        client: stream.client_addr()?,
    })
}

/// The addresses of a connection accepted on a transparent (TPROXY) listener: the packet kept
/// its destination, so the local address is where the client was going.
pub fn transparent_addrs(stream: &TcpStream) -> io::Result<FixedAddrs> {
    Ok(FixedAddrs {
        orig_dst: OrigDstAddr(stream.local_addr()?),
        client: stream.client_addr()?,
    })
}

/// Both addresses of an accepted connection, with IPv4-mapped addresses made plain IPv4.
pub(crate) fn addresses(conn: &impl OrigDst) -> io::Result<(OrigDstAddr, ClientAddr)> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    Ok((
        OrigDstAddr(canonical(conn.orig_dst_addr()?.0)),
        ClientAddr(canonical(conn.client_addr()?.0)),
    ))
}

/// Handles one connection accepted by the capture listener of `direction` on `own_port`: reads
/// its addresses, asks the direction's `decide`, then refuses it or [`dispatch`]es it.
pub async fn serve(
    direction: Direction,
    shared: &Shared,
    own_port: u16,
    stream: TcpStream,
    addrs: &impl OrigDst,
    drain: drain::Watch,
) {
    let name = direction.listener_name();
    let (orig_dst, client) = match addresses(addrs) {
        Ok(a) => a,
        Err(e) => {
            shared.metrics.refused(name, Refusal::NoOriginalDst);
            tracing::warn!("{name}: no original destination: {e}");
            return;
        }
    };
    let Some(snapshot) = shared.store.load() else {
        return;
    };
    let local = |ip| is_local(ip, &stream);
    let decision = match direction {
        Direction::Outbound => outbound::decide(&snapshot, own_port, orig_dst, client, local),
        Direction::Inbound => inbound::decide(&snapshot, own_port, orig_dst, client, local),
    };
    match decision {
        Decision::Refuse { listener, why } => {
            shared.metrics.refused(&listener, why);
            if why == Refusal::NoListener {
                tracing::warn!(%orig_dst, %client, "the configuration has no {name} listener: connection closed");
            } else {
                tracing::debug!(%orig_dst, %client, reason = why.as_str(), "{name}: connection closed");
            }
        }
        Decision::Serve {
            listener,
            reporter,
            accepted_by,
        } => {
            if let Some(capture) = accepted_by {
                capture.stats.cx_total.inc();
            }
            dispatch(
                shared, reporter, snapshot, listener, stream, orig_dst, client, drain,
            )
            .await
        }
    }
}

/// Gauge held up while a connection is open.
struct ActiveGauge(prometheus_client::metrics::gauge::Gauge);

impl ActiveGauge {
    fn new(g: &prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        ActiveGauge(g.clone())
    }
}

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Handles one connection on `listener` (a virtual listener, or a capture listener's own
/// chains): picks the filter chain, sniffing first if a candidate chain needs the protocol,
/// then runs the chain's terminal filter.
#[allow(clippy::too_many_arguments)]
pub async fn dispatch(
    shared: &Shared,
    reporter: Reporter,
    snapshot: Arc<Snapshot>,
    listener: Arc<CompiledListener>,
    stream: TcpStream,
    orig_dst: OrigDstAddr,
    client: ClientAddr,
    drain: drain::Watch,
) {
    listener.stats.cx_total.inc();
    let _active = ActiveGauge::new(&listener.stats.cx_active);
    let detected = if listener.chains.needs_sniff(orig_dst.0) {
        match sniff::sniff(&stream, listener.sniff_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(listener = %listener.name, %client, "connection lost while sniffing: {e}");
                return;
            }
        }
    } else {
        Detected::raw()
    };
    // Inbound, the pod's PeerAuthentication decides which chains a connection may use.
    let mode = match reporter {
        Reporter::Destination => peer_mode(&snapshot, &shared.workload.labels, orig_dst.0.port()),
        Reporter::Source => MtlsMode::Permissive,
    };
    let Some(chain) = listener
        .chains
        .select_for(orig_dst.0, &detected, mode)
        .cloned()
    else {
        shared
            .metrics
            .refused(&listener.name, Refusal::NoFilterChain);
        if mode == MtlsMode::Strict {
            tracing::debug!(listener = %listener.name, %orig_dst, %client, ?detected,
                "PeerAuthentication STRICT: a client without mutual TLS is refused");
        } else {
            tracing::debug!(listener = %listener.name, %orig_dst, %client, ?detected,
                "no filter chain matches and there is no default chain: connection closed");
        }
        return;
    };
    tracing::trace!(listener = %listener.name, chain = %chain.name, %orig_dst, %client, ?detected, "filter chain");
    let stream = match &chain.tls {
        None => Io::Plain(stream),
        Some(tls) => match tls.accept(stream).await {
            Ok(io) => io,
            Err(e) => {
                shared
                    .metrics
                    .refused(&listener.name, Refusal::TlsHandshake);
                tracing::info!(listener = %listener.name, chain = %chain.name, %orig_dst, %client,
                    "TLS refused: {e}");
                return;
            }
        },
    };
    // Envoy's `%REQUESTED_SERVER_NAME%`: the SNI the TLS inspector saw, or the handshake this
    // chain terminated.
    let requested_server_name: Option<Arc<str>> = detected
        .server_name
        .as_deref()
        .or(stream.sni())
        .map(Arc::from);
    // TPROXY inbound: the app sees the client's own address.
    let original_source =
        (reporter == Reporter::Destination && shared.original_source).then_some(client.0.ip());
    // Inbound, and on every listener of a router (Istio applies a gateway's policies to its
    // listeners), the pod's AuthorizationPolicies: a TCP chain's connection is decided here,
    // once (Envoy's network RBAC filter), an HTTP chain's requests one by one.
    let enforce = reporter == Reporter::Destination || shared.router;
    let authz = if enforce {
        snapshot.authz.as_ref()
    } else {
        None
    };
    match &chain.terminal {
        Terminal::Tcp(route) => {
            if let Some(authz) = authz
                && !authorize_connection(shared, authz, &listener.name, &stream, orig_dst, client)
            {
                return;
            }
            let conn = tcp::Conn {
                reporter,
                snapshot: &snapshot,
                listener: &listener,
                chain: &chain.name,
                orig_dst,
                client,
                original_source,
                requested_server_name,
            };
            tcp::proxy(shared, conn, route, stream).await
        }
        Terminal::Http(hcm, access_logs, tracer) => {
            let routes = snapshot.http.table(hcm);
            if routes.is_none() {
                tracing::debug!(listener = %listener.name, chain = %chain.name,
                    "no route table: every request gets 404 NR");
            }
            let chain_changed = {
                let store = shared.store.clone();
                let (listener, chain, hcm) =
                    (listener.name.clone(), chain.name.clone(), hcm.clone());
                let mut seen = snapshot.clone();
                Box::pin(async move {
                    loop {
                        let next = store.changed(Some(&seen)).await;
                        if !next.serves_http_chain(&listener, &chain, &hcm) {
                            return;
                        }
                        seen = next;
                    }
                })
            };
            let conn = HttpConnection {
                stream,
                hcm: hcm.clone(),
                access_logs: access_logs.clone(),
                tracer: tracer.clone(),
                requested_server_name,
                routes,
                clusters: snapshot.clusters.clone(),
                destinations: snapshot.destinations.clone(),
                reporter,
                orig_dst,
                client,
                drain,
                own_identity: shared.own_principal(),
                // Every inbound (or router) connection, with or without policies now: each
                // request is decided on the policies current when it arrives
                // (`http::authorize`), RequestAuthentication's JWT rules first.
                authz: enforce.then(|| ConnAuthz {
                    current: current_policies(&shared.store),
                    stats: shared.metrics.rbac_http(&hcm.stat_prefix),
                }),
                original_source,
                graceful_drain: reporter == Reporter::Destination || shared.router,
                chain_changed,
            };
            if let Err(e) = shared.http.serve(conn).await {
                tracing::debug!(listener = %listener.name, %client, "HTTP connection ended: {e}");
            }
        }
    }
}

/// The pod's JWT rules and policies in the configuration current when asked (one atomic load
/// per request).
fn current_policies(store: &Arc<crate::snapshot::Store>) -> crate::http::CurrentPolicies {
    let store = store.clone();
    Arc::new(move || match store.load() {
        Some(s) => crate::http::PodPolicies {
            jwt: s.jwt.clone(),
            authz: s.authz.clone(),
        },
        None => crate::http::PodPolicies::default(),
    })
}

/// Decides an inbound TCP connection with the pod's policies (Istio's TCP semantics), counting
/// it (`tcp.rbac.*`); a denied one is counted refused and is to be closed before any upstream
/// connection.
fn authorize_connection(
    shared: &Shared,
    authz: &Authz,
    listener: &str,
    stream: &Io,
    orig_dst: OrigDstAddr,
    client: ClientAddr,
) -> bool {
    let peer = stream.peer_identity();
    let conn = crate::authz::Connection::new(peer.as_ref(), client.0, orig_dst.0, stream.sni());
    let d = authz.evaluate(&Attributes {
        conn: &conn,
        http: None,
    });
    let t = d.tally;
    shared
        .metrics
        .rbac_tcp()
        .record(t.allowed, t.denied, t.logged, t.not_logged);
    if let Some(r) = d.audit {
        tracing::info!(policy = %authz.rule_id(r), %orig_dst, %client,
            principal = conn.principal.as_deref().unwrap_or(""),
            "AUDIT: an AuthorizationPolicy matched the connection");
    }
    if !d.allowed {
        shared.metrics.refused(listener, Refusal::RbacDenied);
        tracing::debug!(listener, %orig_dst, %client,
            principal = conn.principal.as_deref().unwrap_or(""),
            details = %authz.denial_details(&d), "RBAC: connection closed");
    }
    d.allowed
}

/// The PeerAuthentication mode in force for this pod (`labels`) on inbound `port`
/// ([`rustmesh_xds::peer_authn::effective_mode`]; PERMISSIVE when the configuration has no
/// policy).
pub fn peer_mode(
    snapshot: &Snapshot,
    labels: &std::collections::BTreeMap<String, String>,
    port: u16,
) -> MtlsMode {
    match &snapshot.config.peer_authentication {
        Some(p) => rustmesh_xds::peer_authn::effective_mode(p, labels, port).0,
        None => MtlsMode::Permissive,
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A sidecar in a test process: listeners on loopback, fake original destinations.

    use super::*;
    use crate::cluster::ClusterManager;
    use crate::http::handler::ConnectionManager;
    use crate::metrics::{Metrics as IstioMetrics, WorkloadInfo};
    use crate::snapshot::Snapshot;
    use crate::snapshot::Store;
    use crate::stats::Metrics;
    use rustmesh_xds::ProxyConfig;

    /// Shared state with `doc` loaded.
    pub fn shared(doc: serde_json::Value) -> Arc<Shared> {
        let metrics = Metrics::default();
        let istio = Arc::new(IstioMetrics::new());
        let workload = Arc::new(WorkloadInfo::default());
        let http = Arc::new(ConnectionManager::new(istio.clone(), workload.clone()));
        let store = Arc::new(Store::new());
        let config = ProxyConfig::from_json(&doc.to_string()).unwrap();
        let snapshot = Snapshot::compile(
            config,
            &ClusterManager::new(metrics.clone()),
            &metrics,
            &http,
        )
        .unwrap();
        store.swap(Arc::new(snapshot));
        Arc::new(Shared {
            store,
            metrics,
            istio,
            workload,
            http,
            identity: Arc::new(crate::identity::Store::default()),
            original_source: false,
            router: false,
        })
    }

    /// A loopback server that answers each connection with `name`, then echoes until EOF.
    pub async fn named_server(name: &'static str) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Reads what the server behind a connection says first (its name), or `None` when the
    /// connection is closed without a word.
    pub async fn first_line(stream: &mut TcpStream) -> Option<String> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stream);
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            reader.read_line(&mut line),
        )
        .await
        .expect("an answer or a close")
        .ok()?;
        (n > 0).then(|| line.trim().to_string())
    }
}
