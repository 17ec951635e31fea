//! Opening upstream TCP connections for a cluster ([`ClusterDialer`]: source address,
//! `connectTimeout`, `TCP_NODELAY`) and counting them, in the cluster's counters and the
//! endpoint's ([`EndpointStats`]), while they are open ([`ActiveGuard`]).
//!
//! **Original source** (TPROXY interception, Istio's `original_src` listener filter on the
//! inbound side): a dialer made [`ClusterDialer::with_original_source`] opens its connections
//! from the downstream client's own address, bound with `IP_TRANSPARENT` and marked
//! [`ORIGINAL_SOURCE_MARK`], so the app sees the real client. The capture rules' mangle table
//! saves that mark on the connection and restores it on the app's replies, and the mark's route
//! table (133, `local default dev lo`) delivers them back to the sidecar. Needs
//! `CAP_NET_ADMIN`, which a TPROXY sidecar has.
//!
//! The TCP proxy (through [`crate::cluster::UpstreamCluster::connect`]) and the HTTP
//! connection pools ([`crate::pool`]) both dial here. The dialer knows nothing of the cluster
//! it dials for beyond these: the pools live in the cluster's endpoints, and holding the
//! cluster there would keep every replaced version of it alive.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustmesh_xds::well_known::{INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6};
use tokio::net::{TcpSocket, TcpStream};

use crate::transport::{Io, Originate, Purpose};

use crate::stats::ClusterStats;

/// The mark of connections opened from the client's address (Istio's inbound TPROXY mark,
/// `ISTIO_INBOUND_TPROXY_MARK`, whose default the injector never changes).
pub const ORIGINAL_SOURCE_MARK: u32 = 1337;

/// How long a pooled HTTP connection may sit unused when the cluster sets no `idleTimeout`
/// (hyper-util's default).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What an `idleTimeout` of zero (none) becomes: a year (an `Instant` cannot take `MAX`).
pub const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A cluster's settings for its pools (a DestinationRule's `connectionPool.http`, rendered as the
/// cluster's `commonHttpProtocolOptions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// How long a connection may sit unused before it is closed (`idleTimeout`; default
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`]). An HTTP/1.1 connection past it is closed by its pool's
    /// reaper task; h2c connections are closed by hyper-util's pool timer.
    pub idle_timeout: Duration,
    /// Close a connection once it has carried this many requests, HTTP/1.1 or h2c
    /// (`maxRequestsPerConnection`, Envoy's `max_requests_per_connection`; `None`: no limit).
    pub max_requests_per_connection: Option<u32>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            max_requests_per_connection: None,
        }
    }
}

impl PoolOptions {
    /// From a cluster's `commonHttpProtocolOptions` (absent fields keep the defaults; a zero
    /// idle timeout or request count means none, as in Envoy).
    pub fn from_def(o: Option<&rustmesh_xds::cluster::HttpProtocolOptions>) -> Self {
        let mut out = PoolOptions::default();
        if let Some(o) = o {
            if let Some(t) = o.idle_timeout {
                out.idle_timeout = if t.as_std().is_zero() {
                    NO_IDLE_TIMEOUT
                } else {
                    t.as_std()
                };
            }
            out.max_requests_per_connection = o.max_requests_per_connection.filter(|n| *n > 0);
        }
        out
    }
}

/// A socket for a connection to `dst` from `client`'s address: `IP_TRANSPARENT` (to bind an
/// address that is not this host's), marked [`ORIGINAL_SOURCE_MARK`]. `client` of the other
/// family than `dst` is an error naming both.
fn original_source_socket(client: IpAddr, dst: SocketAddr) -> io::Result<TcpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let client = client.to_canonical();
    if client.is_ipv4() != dst.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("original source {client} is not of the family of {dst}"),
        ));
    }
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    let transparent = if dst.is_ipv4() {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_ip_transparent_v6(true)
    };
    transparent.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("IP_TRANSPARENT for the original source {client} (needs CAP_NET_ADMIN): {e}"),
        )
    })?;
    socket.set_mark(ORIGINAL_SOURCE_MARK)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(client, 0).into())?;
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// Per-endpoint counters, shown by `/clusters`. Shared by the runtime objects of successive
/// configurations while the endpoint stays in its cluster. The dialer counts connections; the
/// cluster's request and load guards count requests and load.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Connections opened to the endpoint.
    pub cx_total: AtomicU64,
    /// Connections open now.
    pub cx_active: AtomicU64,
    /// Failed connection attempts.
    pub cx_connect_fail: AtomicU64,
    /// Requests sent (HTTP).
    pub rq_total: AtomicU64,
    /// Requests in flight (HTTP).
    pub rq_active: AtomicU64,
    /// Requests answered (any status the HTTP side counts as success).
    pub rq_success: AtomicU64,
    /// Requests that failed (5xx, reset).
    pub rq_error: AtomicU64,
    /// Requests that timed out.
    pub rq_timeout: AtomicU64,
    /// What LEAST_REQUEST compares: requests in flight plus open TCP proxy connections.
    pub(crate) load: AtomicU64,
}

impl EndpointStats {
    /// The counters `/clusters` shows, in its order: (name, value, is_gauge).
    pub fn snapshot(&self) -> [(&'static str, u64, bool); 8] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("cx_active", g(&self.cx_active), true),
            ("cx_connect_fail", g(&self.cx_connect_fail), false),
            ("cx_total", g(&self.cx_total), false),
            ("rq_active", g(&self.rq_active), true),
            ("rq_error", g(&self.rq_error), false),
            ("rq_success", g(&self.rq_success), false),
            ("rq_timeout", g(&self.rq_timeout), false),
            ("rq_total", g(&self.rq_total), false),
        ]
    }
}

/// Why an upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `connectTimeout` expired.
    #[error("connecting to {addr} (cluster {cluster:?}) timed out after {timeout:?}")]
    Timeout {
        /// The cluster.
        cluster: String,
        /// The address.
        addr: SocketAddr,
        /// The cluster's timeout.
        timeout: Duration,
    },
    /// Mutual TLS to the endpoint failed (no certificate, the server's identity refused...).
    #[error("mutual TLS to {addr} (cluster {cluster:?}): {source}")]
    Tls {
        /// The cluster.
        cluster: String,
        /// The address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: crate::transport::TlsError,
    },
    /// The connection was refused, unreachable...
    #[error("connecting to {addr} (cluster {cluster:?}): {source}")]
    Io {
        /// The cluster.
        cluster: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// Keeps an upstream connection counted as active (in the cluster's and the endpoint's
/// `cx_active`) until dropped.
#[derive(Debug)]
pub struct ActiveGuard {
    cluster: ClusterStats,
    endpoint: Option<Arc<EndpointStats>>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.cluster.cx_active.dec();
        if let Some(e) = &self.endpoint {
            e.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What opening a connection for a cluster needs: its name, `connectTimeout`, source address
/// and counters, but not the cluster. The HTTP pools keep one: holding the cluster there would
/// keep every replaced version of it alive (cluster → endpoints → pools → dialer → cluster).
#[derive(Clone, Debug)]
pub struct ClusterDialer {
    name: String,
    connect_timeout: Duration,
    bind: Option<SocketAddr>,
    /// Connect from this address instead (see the module doc).
    original_source: Option<IpAddr>,
    stats: ClusterStats,
    /// The cluster's pool settings, for the pools that dial here.
    pool: PoolOptions,
}

impl ClusterDialer {
    /// A dialer for the cluster `name`: connections give up after `connect_timeout`, leave from
    /// `bind` (`upstreamBindConfig`) if set, and count into `stats`.
    pub fn new(
        name: String,
        connect_timeout: Duration,
        bind: Option<SocketAddr>,
        stats: ClusterStats,
    ) -> Self {
        ClusterDialer {
            name,
            connect_timeout,
            bind,
            original_source: None,
            stats,
            pool: Default::default(),
        }
    }

    /// The same dialer, its connections opened from `client` (the downstream client's address)
    /// rather than the cluster's source address, when `client` is set (see the module doc).
    pub fn with_original_source(mut self, client: Option<IpAddr>) -> Self {
        self.original_source = client;
        self
    }

    /// The same dialer, its pools built with `pool` (the cluster's `idleTimeout` and
    /// `maxRequestsPerConnection`).
    pub fn with_pool_options(mut self, pool: PoolOptions) -> Self {
        self.pool = pool;
        self
    }

    /// The settings of the pools of the cluster's endpoints.
    pub fn pool_options(&self) -> PoolOptions {
        self.pool
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.name
    }

    /// The cluster's `connectTimeout`.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The source address for a connection to `dst`: `upstreamBindConfig`, switched to the
    /// other family's inbound passthrough source (127.0.0.6 <-> ::6) when `dst` is of the other
    /// family, since an inbound passthrough connection must come from one of those for the
    /// capture rules to let it through.
    pub fn source_for(&self, dst: IpAddr) -> Option<SocketAddr> {
        let src = self.bind?;
        if src.is_ipv4() == dst.is_ipv4() {
            return Some(src);
        }
        match src.ip() {
            ip if ip == INBOUND_PASSTHROUGH_SOURCE_V4 => {
                Some(SocketAddr::new(INBOUND_PASSTHROUGH_SOURCE_V6, src.port()))
            }
            ip if ip == INBOUND_PASSTHROUGH_SOURCE_V6 => {
                Some(SocketAddr::new(INBOUND_PASSTHROUGH_SOURCE_V4, src.port()))
            }
            _ => None,
        }
    }

    /// [`ClusterDialer::connect`], then the client side of mutual TLS when `tls` is given (for
    /// `purpose`, which picks the ALPN). A failed handshake counts as a failed connection.
    pub async fn connect_with(
        &self,
        addr: SocketAddr,
        endpoint: Option<Arc<EndpointStats>>,
        tls: Option<&Originate>,
        purpose: Purpose,
    ) -> Result<(Io, ActiveGuard), ConnectError> {
        if let Some(tls) = tls
            && let Err(source) = tls.ready().await
        {
            self.stats.cx_connect_fail.inc();
            return Err(ConnectError::Tls {
                cluster: self.name.clone(),
                addr,
                source,
            });
        }
        let (stream, guard) = self.connect(addr, endpoint).await?;
        let Some(tls) = tls else {
            return Ok((Io::Plain(stream), guard));
        };
        match tls.connect(stream, purpose).await {
            Ok(io) => Ok((io, guard)),
            Err(source) => {
                self.stats.cx_connect_fail.inc();
                if let Some(e) = &guard.endpoint {
                    e.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                }
                Err(ConnectError::Tls {
                    cluster: self.name.clone(),
                    addr,
                    source,
                })
            }
        }
    }

    /// Opens a connection to `addr` within `connectTimeout`, from the cluster's source address
    /// if it has one; `TCP_NODELAY` is set, as Envoy does. Counts into the cluster's counters
    /// and, when the address is one of its endpoints, that endpoint's (`endpoint`); the guard
    /// keeps the connection counted as active.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        endpoint: Option<Arc<EndpointStats>>,
    ) -> Result<(TcpStream, ActiveGuard), ConnectError> {
        let fail = |source: io::Error| ConnectError::Io {
            cluster: self.name.clone(),
            addr,
            source,
        };
        self.stats.cx_total.inc();
        if let Some(e) = &endpoint {
            e.cx_total.fetch_add(1, Ordering::Relaxed);
        }
        let attempt = async {
            let socket = match self.original_source {
                Some(client) => original_source_socket(client, addr)?,
                None => {
                    let socket = if addr.is_ipv4() {
                        TcpSocket::new_v4()
                    } else {
                        TcpSocket::new_v6()
                    }?;
                    if let Some(src) = self.source_for(addr.ip()) {
                        socket.bind(src)?;
                    }
                    socket
                }
            };
            socket.set_nodelay(true)?;
            socket.connect(addr).await
        };
        let result = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(fail(e)),
            Err(_) => {
                self.stats.cx_connect_timeout.inc();
                Err(ConnectError::Timeout {
                    cluster: self.name.clone(),
                    addr,
                    timeout: self.connect_timeout,
                })
            }
        };
        match result {
            Ok(stream) => {
                self.stats.cx_active.inc();
                if let Some(e) = &endpoint {
                    e.cx_active.fetch_add(1, Ordering::Relaxed);
                }
                let guard = ActiveGuard {
                    cluster: self.stats.clone(),
                    endpoint,
                };
                Ok((stream, guard))
            }
            Err(e) => {
                self.stats.cx_connect_fail.inc();
                if let Some(e) = &endpoint {
                    e.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}
