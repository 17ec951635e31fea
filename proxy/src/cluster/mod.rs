//! Clusters at run time: their endpoints with health and stats, load balancing, and upstream
//! connections.
//!
//! [`ClusterManager`] turns the `clusters` (and `endpoints`) of a configuration into a
//! [`Clusters`] table. A cluster whose definition (the cluster and its endpoints) did not change
//! keeps its runtime object, and with it its round-robin position and active request counts;
//! a changed cluster keeps the stats of the endpoints it still has. Discovery types:
//!
//! * `EDS`: the endpoints listed under its `edsClusterConfig.serviceName`;
//! * `STATIC` (and `STRICT_DNS`, whose addresses are used as given): `loadAssignment`;
//! * `ORIGINAL_DST`: the connection's original destination (`PassthroughCluster`,
//!   `InboundPassthroughClusterIpv4/6`), from `upstreamBindConfig`'s source address if set;
//! * `BlackHoleCluster` (or any cluster without usable endpoints): no upstream, the connection
//!   is closed.
//!
//! Endpoints that are `UNHEALTHY` or `DRAINING` are skipped; of the others, the lowest
//! `priority` that has any is used. A RING_HASH or MAGLEV cluster builds its consistent-hash
//! table ([`lb::HashTable`]) over those endpoints once, with the cluster; a request with a hash
//! key is picked from it.

pub mod lb;
pub mod maglev;
pub mod outlier;
pub mod ring_hash;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustmesh_xds::ProxyConfig;
use rustmesh_xds::cluster::{
    Cluster as ClusterDef, ClusterLoadAssignment, DiscoveryType, HealthStatus, Locality,
};
use rustmesh_xds::names::BLACKHOLE_CLUSTER;
use rustmesh_xds::well_known::{INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6};
use tokio::net::{TcpSocket, TcpStream};

use crate::stats::{ClusterStats, Metrics};

/// Per-endpoint counters, shown by `/clusters`. Shared by the runtime objects of successive
/// configurations while the endpoint stays in its cluster.
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
    load: AtomicU64,
    /// Outlier detection's view of the endpoint (consecutive errors, ejection).
    pub outlier: outlier::HostState,
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

/// One endpoint of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// As the control plane reports it.
    pub health: HealthStatus,
    /// `loadBalancingWeight`, 1 when unset.
    pub weight: u32,
    /// Locality priority (0 is tried first).
    pub priority: u32,
    /// Region / zone / sub-zone.
    pub locality: Option<Locality>,
    /// Host name, for STRICT_DNS endpoints.
    pub hostname: Option<String>,
    /// Counters and outlier state.
    pub stats: Arc<EndpointStats>,
    /// HTTP connection pools to it (kept while the cluster's definition is unchanged).
    pub pools: Arc<crate::http::upstreams::EndpointPools>,
}

impl Endpoint {
    /// Whether load balancing may pick it (`HEALTHY` or `UNKNOWN`).
    pub fn usable(&self) -> bool {
        matches!(self.health, HealthStatus::Healthy | HealthStatus::Unknown)
    }

    /// Starts an HTTP request on this endpoint: counts it in `rq_total` and `rq_active` (and in
    /// LEAST_REQUEST's load) until the guard is finished or dropped (dropped = error).
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        self.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        self.stats.load.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            endpoint: self.clone(),
            done: false,
        }
    }

    /// Counts a TCP proxy connection in LEAST_REQUEST's load while the guard lives.
    pub fn hold(self: &Arc<Self>) -> LoadGuard {
        self.stats.load.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            endpoint: self.clone(),
        }
    }
}

impl lb::Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> u64 {
        self.stats.load.load(Ordering::Relaxed)
    }
}

/// How an HTTP request on an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Answered (counted in `rq_success`).
    Success,
    /// Failed (5xx, reset; `rq_error`).
    Error,
    /// Timed out (`rq_timeout` and `rq_error`).
    Timeout,
}

/// An HTTP request in flight on an endpoint (see [`Endpoint::start_request`]).
#[derive(Debug)]
pub struct RequestGuard {
    endpoint: Arc<Endpoint>,
    done: bool,
}

impl RequestGuard {
    /// Ends the request with its outcome.
    pub fn finish(mut self, outcome: RequestOutcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: RequestOutcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let s = &self.endpoint.stats;
        s.rq_active.fetch_sub(1, Ordering::Relaxed);
        s.load.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            RequestOutcome::Success => s.rq_success.fetch_add(1, Ordering::Relaxed),
            RequestOutcome::Error => s.rq_error.fetch_add(1, Ordering::Relaxed),
            RequestOutcome::Timeout => {
                s.rq_error.fetch_add(1, Ordering::Relaxed);
                s.rq_timeout.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.record(RequestOutcome::Error);
    }
}

/// A TCP proxy connection counted in an endpoint's load (see [`Endpoint::hold`]).
#[derive(Debug)]
pub struct LoadGuard {
    endpoint: Arc<Endpoint>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.endpoint.stats.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a cluster finds where to connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Load-balanced over listed endpoints (EDS, STATIC, STRICT_DNS).
    Balanced,
    /// The connection's original destination.
    OriginalDst,
    /// `BlackHoleCluster`: nowhere.
    BlackHole,
}

/// A cluster at run time.
#[derive(Debug)]
pub struct UpstreamCluster {
    /// `outbound|9080|v1|reviews.default.svc.cluster.local`, `PassthroughCluster`...
    pub name: String,
    /// The definition it was built from (compared on reload).
    pub def: ClusterDef,
    /// Its endpoints as listed (EDS or inline), compared on reload.
    pub assignment: Option<ClusterLoadAssignment>,
    /// How it finds upstreams.
    pub kind: Kind,
    /// `connectTimeout`.
    pub connect_timeout: Duration,
    /// Every listed endpoint (usable or not), for `/clusters`.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The usable endpoints of the best priority: what load balancing picks from.
    usable: Vec<Arc<Endpoint>>,
    /// RING_HASH / MAGLEV: the table over `usable` (indices into it).
    table: Option<lb::HashTable>,
    rr: AtomicUsize,
    /// Prometheus counters.
    pub stats: ClusterStats,
    /// Connection-pool limits (a DestinationRule's `connectionPool`).
    pub breaker: Arc<crate::http::limits::CircuitBreaker>,
    /// Outlier detection, when the cluster has it.
    pub outlier: Option<outlier::Policy>,
    /// Until when (see [`outlier::now_ms`]) some endpoint may be ejected: before that, picks
    /// filter out ejected endpoints; after it, nothing is ejected and picks take the fast path.
    ejected_until: AtomicU64,
}

/// Where a connection goes: an address, and the endpoint it is (not for ORIGINAL_DST).
#[derive(Clone, Debug)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// The endpoint picked by load balancing.
    pub endpoint: Option<Arc<Endpoint>>,
}

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `BlackHoleCluster`, or no usable endpoint.
    #[error("no healthy upstream in cluster {0:?}")]
    NoHealthyUpstream(String),
    /// `connectTimeout` expired.
    #[error("connecting to {addr} (cluster {cluster:?}) timed out after {timeout:?}")]
    ConnectTimeout {
        /// The cluster.
        cluster: String,
        /// The address.
        addr: SocketAddr,
        /// The cluster's timeout.
        timeout: Duration,
    },
    /// The connection was refused, unreachable...
    #[error("connecting to {addr} (cluster {cluster:?}): {source}")]
    Connect {
        /// The cluster.
        cluster: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// An open upstream connection. Counts in the cluster's and endpoint's `cx_active` until dropped.
#[derive(Debug)]
pub struct Upstream {
    /// The connection.
    pub stream: TcpStream,
    /// Where it goes.
    pub target: Target,
    guard: ActiveGuard,
}

impl Upstream {
    /// The stream, and a guard to keep while it is in use.
    pub fn into_parts(self) -> (TcpStream, Target, ActiveGuard) {
        (self.stream, self.target, self.guard)
    }
}

/// Keeps an upstream connection counted as active.
#[derive(Debug)]
pub struct ActiveGuard {
    cluster: ClusterStats,
    endpoint: Option<Arc<Endpoint>>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.cluster.cx_active.dec();
        if let Some(e) = &self.endpoint {
            e.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl UpstreamCluster {
    /// Picks a usable endpoint (load balancing). `hash` is the request's consistent-hash key
    /// for RING_HASH / MAGLEV clusters (`None`: no key). `None` when nothing is usable or the
    /// cluster is not load-balanced.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        if self.kind != Kind::Balanced {
            return None;
        }
        if let (Some(hash), Some(table)) = (hash, &self.table) {
            return self.pick_hashed(table, hash, &[]);
        }
        let candidates = self.candidates();
        let mut rng = lb::random;
        lb::pick(self.def.lb_policy, &candidates, &self.rr, &mut rng).map(|i| candidates[i].clone())
    }

    /// The consistent-hash pick: the table's endpoint for `hash`, walking on (as Envoy does)
    /// past ejected endpoints and, while another candidate is left, those in `exclude`.
    fn pick_hashed(
        &self,
        table: &lb::HashTable,
        hash: u64,
        exclude: &[SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        let candidates = self.candidates();
        // Borrowed: every usable endpoint is a candidate (nothing ejected, or panic mode).
        let all = matches!(candidates, std::borrow::Cow::Borrowed(_));
        let is_candidate = |e: &Arc<Endpoint>| all || candidates.iter().any(|c| Arc::ptr_eq(c, e));
        let exclude = if candidates.iter().all(|e| exclude.contains(&e.addr)) {
            &[][..]
        } else {
            exclude
        };
        table
            .pick(hash, |i| {
                let e = &self.usable[i];
                !exclude.contains(&e.addr) && is_candidate(e)
            })
            .map(|i| self.usable[i].clone())
    }

    /// The usable endpoints outlier detection has not ejected (all of them in panic mode).
    fn candidates(&self) -> std::borrow::Cow<'_, [Arc<Endpoint>]> {
        use std::borrow::Cow;
        let Some(policy) = &self.outlier else {
            return Cow::Borrowed(&self.usable);
        };
        let now = outlier::now_ms();
        if now >= self.ejected_until.load(Ordering::Relaxed) {
            return Cow::Borrowed(&self.usable);
        }
        let left: Vec<Arc<Endpoint>> = self
            .usable
            .iter()
            .filter(|e| !e.stats.outlier.is_ejected(now))
            .cloned()
            .collect();
        if outlier::panic(policy, left.len(), self.usable.len()) {
            Cow::Borrowed(&self.usable)
        } else {
            Cow::Owned(left)
        }
    }

    /// Whether outlier detection keeps `e` out of load balancing now.
    pub fn is_ejected(&self, e: &Endpoint) -> bool {
        self.outlier.is_some() && e.stats.outlier.is_ejected(outlier::now_ms())
    }

    /// Tells outlier detection how a request to (or a connection attempt to) `e` went; ejects
    /// it when its errors reach the cluster's thresholds and the cluster may lose it.
    pub fn report(&self, e: &Endpoint, outcome: outlier::Outcome) {
        let Some(policy) = &self.outlier else {
            return;
        };
        if !e.stats.outlier.record(policy, outcome) {
            return;
        }
        let now = outlier::now_ms();
        if e.stats.outlier.is_ejected(now) {
            return;
        }
        let ejected = self
            .usable
            .iter()
            .filter(|o| o.stats.outlier.is_ejected(now))
            .count();
        if !outlier::may_eject(policy, ejected, self.usable.len()) {
            tracing::debug!(cluster = %self.name, endpoint = %e.addr, ejected,
                "outlier: not ejected (maxEjectionPercent reached)");
            return;
        }
        let until = e.stats.outlier.eject(policy, now);
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
        self.stats.outlier_ejections.inc();
        tracing::info!(cluster = %self.name, endpoint = %e.addr,
            for_ms = until - now, "outlier: endpoint ejected");
    }

    /// [`UpstreamCluster::pick`] avoiding `exclude` (the hosts a retry already tried, Istio's
    /// `previous_hosts` predicate); when every usable endpoint is excluded, any may be picked.
    pub fn pick_excluding(
        &self,
        hash: Option<u64>,
        exclude: &[SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        if exclude.is_empty() || self.kind != Kind::Balanced {
            return self.pick(hash);
        }
        if let (Some(hash), Some(table)) = (hash, &self.table) {
            return self.pick_hashed(table, hash, exclude);
        }
        let left: Vec<Arc<Endpoint>> = self
            .candidates()
            .iter()
            .filter(|e| !exclude.contains(&e.addr))
            .cloned()
            .collect();
        if left.is_empty() {
            return self.pick(hash);
        }
        let mut rng = lb::random;
        lb::pick(self.def.lb_policy, &left, &self.rr, &mut rng).map(|i| left[i].clone())
    }

    /// Where a connection whose original destination is `orig_dst` goes in this cluster.
    pub fn target(&self, orig_dst: SocketAddr, hash: Option<u64>) -> Result<Target, UpstreamError> {
        let target = match self.kind {
            Kind::OriginalDst => Some(Target {
                addr: orig_dst,
                endpoint: None,
            }),
            Kind::Balanced => self.pick(hash).map(|e| Target {
                addr: e.addr,
                endpoint: Some(e),
            }),
            Kind::BlackHole => None,
        };
        target.ok_or_else(|| {
            self.stats.cx_none_healthy.inc();
            UpstreamError::NoHealthyUpstream(self.name.clone())
        })
    }

    /// The usable endpoints load balancing picks from.
    pub fn usable_endpoints(&self) -> &[Arc<Endpoint>] {
        &self.usable
    }

    /// The source address for a connection to `dst` (see [`ClusterDialer::source_for`]).
    pub fn source_for(&self, dst: IpAddr) -> Option<SocketAddr> {
        self.dialer().source_for(dst)
    }

    /// What opening connections for this cluster needs, without the cluster itself.
    pub fn dialer(&self) -> ClusterDialer {
        ClusterDialer {
            name: self.name.clone(),
            connect_timeout: self.connect_timeout,
            bind: self
                .def
                .upstream_bind_config
                .map(|b| SocketAddr::from(b.source_address)),
            stats: self.stats.clone(),
        }
    }

    /// Opens a connection to `target` ([`ClusterDialer::connect`]); a failure to connect to an
    /// endpoint counts for outlier detection.
    pub async fn connect(&self, target: Target) -> Result<Upstream, UpstreamError> {
        let endpoint = target.endpoint.clone();
        let result = self.dialer().connect(target).await;
        if result.is_err()
            && let Some(ep) = &endpoint
        {
            self.report(ep, outlier::Outcome::LocalFailure);
        }
        result
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
    stats: ClusterStats,
}

impl ClusterDialer {
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

    /// Opens a connection to `target` within `connectTimeout`, from the cluster's source
    /// address if it has one; `TCP_NODELAY` is set, as Envoy does.
    pub async fn connect(&self, target: Target) -> Result<Upstream, UpstreamError> {
        let addr = target.addr;
        let fail = |source: io::Error| UpstreamError::Connect {
            cluster: self.name.clone(),
            addr,
            source,
        };
        self.stats.cx_total.inc();
        if let Some(e) = &target.endpoint {
            e.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        }
        let attempt = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }?;
            if let Some(src) = self.source_for(addr.ip()) {
                socket.bind(src)?;
            }
            socket.set_nodelay(true)?;
            socket.connect(addr).await
        };
        let result = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(fail(e)),
            Err(_) => {
                self.stats.cx_connect_timeout.inc();
                Err(UpstreamError::ConnectTimeout {
                    cluster: self.name.clone(),
                    addr,
                    timeout: self.connect_timeout,
                })
            }
        };
        match result {
            Ok(stream) => {
                self.stats.cx_active.inc();
                if let Some(e) = &target.endpoint {
                    e.stats.cx_active.fetch_add(1, Ordering::Relaxed);
                }
                let guard = ActiveGuard {
                    cluster: self.stats.clone(),
                    endpoint: target.endpoint.clone(),
                };
                Ok(Upstream {
                    stream,
                    target,
                    guard,
                })
            }
            Err(e) => {
                self.stats.cx_connect_fail.inc();
                if let Some(ep) = &target.endpoint {
                    ep.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

/// The clusters of one configuration, by name. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Clusters {
    by_name: Arc<HashMap<String, Arc<UpstreamCluster>>>,
}

impl Clusters {
    /// The cluster called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamCluster>> {
        self.by_name.get(name)
    }

    /// Every cluster, sorted by name.
    pub fn sorted(&self) -> Vec<&Arc<UpstreamCluster>> {
        let mut v: Vec<_> = self.by_name.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// How many clusters there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Builds [`Clusters`] for each configuration, carrying runtime state over from the previous
/// one (the manager keeps the clusters last committed).
pub struct ClusterManager {
    metrics: Metrics,
    current: Mutex<Clusters>,
}

impl ClusterManager {
    /// A manager whose clusters count into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        ClusterManager {
            metrics,
            current: Mutex::new(Clusters::default()),
        }
    }

    /// The clusters of `config`, reusing the runtime objects of unchanged clusters. Nothing is
    /// committed: a configuration refused later leaves the manager as it was.
    pub fn build(&self, config: &ProxyConfig) -> Clusters {
        let previous = self.committed();
        let mut by_name = HashMap::with_capacity(config.clusters.len());
        for def in &config.clusters {
            let assignment = config.load_assignment(def).cloned();
            let old = previous.get(&def.name);
            let cluster = match old {
                Some(old) if old.def == *def && old.assignment == assignment => old.clone(),
                _ => Arc::new(self.new_cluster(def, assignment, old.map(|c| &**c))),
            };
            by_name.insert(def.name.clone(), cluster);
        }
        Clusters {
            by_name: Arc::new(by_name),
        }
    }

    /// Makes `clusters` the base of the next [`ClusterManager::build`].
    pub fn commit(&self, clusters: &Clusters) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = clusters.clone();
    }

    fn committed(&self) -> Clusters {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn new_cluster(
        &self,
        def: &ClusterDef,
        assignment: Option<ClusterLoadAssignment>,
        old: Option<&UpstreamCluster>,
    ) -> UpstreamCluster {
        let kind = match def.type_ {
            _ if def.name == BLACKHOLE_CLUSTER => Kind::BlackHole,
            DiscoveryType::OriginalDst => Kind::OriginalDst,
            DiscoveryType::Eds | DiscoveryType::Static | DiscoveryType::StrictDns => Kind::Balanced,
        };
        let old_stats: HashMap<SocketAddr, Arc<EndpointStats>> = old
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| (e.addr, e.stats.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // Pools (open connections) survive an endpoint change, not a change of how to
        // connect (protocol, timeouts, source address).
        let old_pools: HashMap<SocketAddr, Arc<crate::http::upstreams::EndpointPools>> = old
            .filter(|c| c.def == *def)
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| (e.addr, e.pools.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut endpoints = Vec::new();
        if kind == Kind::Balanced
            && let Some(la) = &assignment
        {
            for locality in &la.endpoints {
                for e in &locality.lb_endpoints {
                    let addr = e.endpoint.address.socket_addr();
                    endpoints.push(Arc::new(Endpoint {
                        addr,
                        health: e.health_status,
                        weight: e.load_balancing_weight.unwrap_or(1).max(1),
                        priority: locality.priority,
                        locality: locality.locality.clone(),
                        hostname: e.endpoint.hostname.clone(),
                        stats: old_stats.get(&addr).cloned().unwrap_or_default(),
                        pools: old_pools.get(&addr).cloned().unwrap_or_default(),
                    }));
                }
            }
        }
        let best = endpoints
            .iter()
            .filter(|e| e.usable())
            .map(|e| e.priority)
            .min();
        let usable: Vec<Arc<Endpoint>> = endpoints
            .iter()
            .filter(|e| e.usable() && Some(e.priority) == best)
            .cloned()
            .collect();
        let table = (kind == Kind::Balanced)
            .then(|| {
                let weighted: Vec<(SocketAddr, u32)> =
                    usable.iter().map(|e| (e.addr, e.weight)).collect();
                lb::HashTable::build(def, &weighted)
            })
            .flatten();
        let breaker = match old {
            Some(o) if o.def.circuit_breakers == def.circuit_breakers => o.breaker.clone(),
            _ => Arc::new(crate::http::limits::CircuitBreaker::new(
                def.circuit_breakers
                    .as_ref()
                    .and_then(|cb| cb.thresholds.first()),
            )),
        };
        let outlier = outlier::Policy::from_def(def.outlier_detection.as_ref());
        // Ejections carried over with the endpoints' state.
        let ejected_until = usable
            .iter()
            .map(|e| e.stats.outlier.ejected_until())
            .max()
            .unwrap_or(0);
        UpstreamCluster {
            name: def.name.clone(),
            def: def.clone(),
            assignment,
            kind,
            connect_timeout: def.connect_timeout.as_std(),
            endpoints,
            usable,
            table,
            rr: AtomicUsize::new(old.map_or(0, |c| c.rr.load(Ordering::Relaxed))),
            stats: self.metrics.cluster(&def.name),
            breaker,
            outlier,
            ejected_until: AtomicU64::new(ejected_until),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config(json: serde_json::Value) -> ProxyConfig {
        ProxyConfig::from_json(&json.to_string()).unwrap()
    }

    fn eds(name: &str, lb: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "type": "EDS", "lbPolicy": lb,
            "edsClusterConfig": {"serviceName": name}})
    }

    fn endpoints(name: &str, eps: &[(&str, &str, u32)]) -> serde_json::Value {
        let mut by_priority: std::collections::BTreeMap<u32, Vec<serde_json::Value>> =
            Default::default();
        for (addr, health, priority) in eps {
            let (ip, port) = addr.rsplit_once(':').unwrap();
            by_priority.entry(*priority).or_default().push(serde_json::json!({
                "endpoint": {"address": {"socketAddress": {"address": ip, "portValue": port.parse::<u16>().unwrap()}}},
                "healthStatus": health,
            }));
        }
        serde_json::json!({"clusterName": name, "endpoints": by_priority.into_iter().map(|(p, l)| serde_json::json!({"priority": p, "lbEndpoints": l})).collect::<Vec<_>>()})
    }

    fn manager() -> ClusterManager {
        ClusterManager::new(Metrics::default())
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_and_priorities_fall_back() {
        let c = config(serde_json::json!({
            "clusters": [eds("a", "ROUND_ROBIN")],
            "endpoints": [endpoints("a", &[
                ("10.0.0.1:80", "UNHEALTHY", 0),
                ("10.0.0.2:80", "DRAINING", 0),
                ("10.0.0.3:80", "HEALTHY", 1),
                ("10.0.0.4:80", "UNKNOWN", 1),
                ("10.0.0.5:80", "HEALTHY", 2),
            ])],
        }));
        let clusters = manager().build(&c);
        let a = clusters.get("a").unwrap();
        assert_eq!(a.endpoints.len(), 5);
        let picked: std::collections::BTreeSet<String> = (0..20)
            .map(|_| a.pick(None).unwrap().addr.to_string())
            .collect();
        assert_eq!(
            picked.into_iter().collect::<Vec<_>>(),
            ["10.0.0.3:80", "10.0.0.4:80"]
        );
    }

    #[test]
    fn blackhole_original_dst_and_empty_clusters() {
        let c = config(serde_json::json!({
            "clusters": [
                {"name": "BlackHoleCluster", "type": "STATIC", "loadAssignment": {"clusterName": "BlackHoleCluster", "endpoints": []}},
                {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"},
                {"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED",
                 "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}}},
                eds("empty", "LEAST_REQUEST"),
            ],
        }));
        let clusters = manager().build(&c);
        let dst: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert!(matches!(
            clusters.get("BlackHoleCluster").unwrap().target(dst, None),
            Err(UpstreamError::NoHealthyUpstream(_))
        ));
        assert!(clusters.get("empty").unwrap().target(dst, None).is_err());
        assert_eq!(
            clusters.get("empty").unwrap().stats.cx_none_healthy.get(),
            1
        );
        let t = clusters
            .get("PassthroughCluster")
            .unwrap()
            .target(dst, None)
            .unwrap();
        assert_eq!(t.addr, dst);
        let inbound = clusters.get("InboundPassthroughClusterIpv4").unwrap();
        assert_eq!(
            inbound.source_for(dst.ip()),
            Some("127.0.0.6:0".parse().unwrap())
        );
        assert_eq!(
            inbound.source_for("fd00::1".parse().unwrap()),
            Some("[::6]:0".parse().unwrap())
        );
        assert_eq!(
            clusters
                .get("PassthroughCluster")
                .unwrap()
                .source_for(dst.ip()),
            None
        );
    }

    #[test]
    fn unchanged_clusters_keep_their_state_across_reloads() {
        let m = manager();
        let one = config(serde_json::json!({
            "clusters": [eds("a", "ROUND_ROBIN"), eds("b", "ROUND_ROBIN")],
            "endpoints": [
                endpoints("a", &[("10.0.0.1:80", "HEALTHY", 0), ("10.0.0.2:80", "HEALTHY", 0)]),
                endpoints("b", &[("10.0.1.1:80", "HEALTHY", 0), ("10.0.1.2:80", "HEALTHY", 0)]),
            ],
        }));
        let first = m.build(&one);
        m.commit(&first);
        let a = first.get("a").unwrap().clone();
        let b = first.get("b").unwrap().clone();
        let guard = a.pick(None).unwrap().start_request();
        let b_ep = b.endpoints[0].clone();
        b_ep.stats.cx_total.fetch_add(7, Ordering::Relaxed);

        // b gains an endpoint; a is unchanged.
        let two = config(serde_json::json!({
            "clusters": [eds("a", "ROUND_ROBIN"), eds("b", "ROUND_ROBIN")],
            "endpoints": [
                endpoints("a", &[("10.0.0.1:80", "HEALTHY", 0), ("10.0.0.2:80", "HEALTHY", 0)]),
                endpoints("b", &[("10.0.1.1:80", "HEALTHY", 0), ("10.0.1.2:80", "HEALTHY", 0), ("10.0.1.3:80", "HEALTHY", 0)]),
            ],
        }));
        let second = m.build(&two);
        assert!(
            Arc::ptr_eq(second.get("a").unwrap(), &a),
            "a is the same object"
        );
        let b2 = second.get("b").unwrap();
        assert!(!Arc::ptr_eq(b2, &b));
        assert_eq!(b2.endpoints.len(), 3);
        assert_eq!(
            b2.endpoints[0].stats.cx_total.load(Ordering::Relaxed),
            7,
            "an endpoint kept keeps its stats"
        );
        // Round robin carries on where it was.
        assert_eq!(b2.rr.load(Ordering::Relaxed), b.rr.load(Ordering::Relaxed));
        let active: u64 = second
            .get("a")
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.stats.rq_active.load(Ordering::Relaxed))
            .sum();
        assert_eq!(
            active, 1,
            "the request started before the reload is still active"
        );
        guard.finish(RequestOutcome::Success);
        let after: u64 = a
            .endpoints
            .iter()
            .map(|e| e.stats.rq_success.load(Ordering::Relaxed))
            .sum();
        assert_eq!(after, 1);
    }

    #[test]
    fn retries_avoid_previous_hosts_while_others_are_left() {
        let c = config(serde_json::json!({
            "clusters": [eds("a", "ROUND_ROBIN")],
            "endpoints": [endpoints("a", &[("10.0.0.1:80", "HEALTHY", 0), ("10.0.0.2:80", "HEALTHY", 0)])],
        }));
        let clusters = manager().build(&c);
        let a = clusters.get("a").unwrap();
        let tried: SocketAddr = "10.0.0.1:80".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(
                a.pick_excluding(None, &[tried]).unwrap().addr.to_string(),
                "10.0.0.2:80"
            );
        }
        let both = [
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        assert!(
            a.pick_excluding(None, &both).is_some(),
            "all tried: any will do"
        );
    }

    /// Where each of `keys` goes in cluster `name`.
    fn sticky_picks(clusters: &Clusters, name: &str, keys: u64) -> Vec<SocketAddr> {
        let c = clusters.get(name).unwrap();
        (0..keys)
            .map(|k| c.pick(Some(lb::mix(k))).unwrap().addr)
            .collect()
    }

    #[test]
    fn consistent_hash_keys_stay_on_their_endpoint_across_a_reload() {
        let addrs: Vec<String> = (1..=10).map(|i| format!("10.0.0.{i}:80")).collect();
        let listed = |n: usize| -> Vec<(&str, &str, u32)> {
            addrs[..n]
                .iter()
                .map(|a| (a.as_str(), "HEALTHY", 0))
                .collect()
        };
        let cfg = |n: usize| {
            // `small`: 81 points over 10 endpoints (9 each) and still 9 each over 9.
            let mut small = eds("small", "RING_HASH");
            small["ringHashLbConfig"] = serde_json::json!({"minimumRingSize": 81});
            config(serde_json::json!({
                "clusters": [eds("ring", "RING_HASH"), eds("maglev", "MAGLEV"), small],
                "endpoints": [endpoints("ring", &listed(n)), endpoints("maglev", &listed(n)),
                    endpoints("small", &listed(n))],
            }))
        };
        let m = manager();
        let before = m.build(&cfg(10));
        m.commit(&before);
        // The table is built with the cluster, at its size.
        let table_len = |c: &Clusters, name: &str| match &c.get(name).unwrap().table {
            Some(lb::HashTable::Ring(r)) => r.len(),
            Some(lb::HashTable::Maglev(t)) => t.len(),
            None => 0,
        };
        assert_eq!(table_len(&before, "ring"), 1030);
        assert_eq!(table_len(&before, "maglev"), 65537);
        assert_eq!(table_len(&before, "small"), 90);
        let after = m.build(&cfg(9));
        let removed: SocketAddr = addrs[9].parse().unwrap();
        for (name, most) in [("small", 2000), ("maglev", 1900), ("ring", 1600)] {
            let (b, a) = (
                sticky_picks(&before, name, 2000),
                sticky_picks(&after, name, 2000),
            );
            // A key always gets the same endpoint.
            assert_eq!(b, sticky_picks(&before, name, 2000), "{name}");
            let stayed = b.iter().zip(&a).filter(|(b, a)| b == a).count();
            let on_removed = b.iter().filter(|b| **b == removed).count();
            assert!(!a.contains(&removed), "{name}");
            assert!(
                stayed + on_removed >= most,
                "{name}: {stayed} stayed, {on_removed} were on the removed endpoint"
            );
        }
    }

    #[test]
    fn consistent_hash_walks_past_previous_hosts_and_ejected_endpoints() {
        let mut maglev = eds("a", "MAGLEV");
        maglev["outlierDetection"] =
            serde_json::json!({"consecutive5xx": 1, "maxEjectionPercent": 100});
        let c = config(serde_json::json!({
            "clusters": [maglev],
            "endpoints": [endpoints("a", &[("10.0.0.1:80", "HEALTHY", 0),
                ("10.0.0.2:80", "HEALTHY", 0), ("10.0.0.3:80", "UNHEALTHY", 0)])],
        }));
        let clusters = manager().build(&c);
        let a = clusters.get("a").unwrap();
        let hash = Some(7);
        let first = a.pick(hash).unwrap();
        assert_ne!(
            first.addr.to_string(),
            "10.0.0.3:80",
            "unhealthy: not in the table"
        );
        // A retry goes to the next endpoint along the table, the same one every time.
        let next = a.pick_excluding(hash, &[first.addr]).unwrap();
        assert_ne!(next.addr, first.addr);
        assert_eq!(
            a.pick_excluding(hash, &[first.addr]).unwrap().addr,
            next.addr
        );
        // Every endpoint tried: the key's own.
        let both = [first.addr, next.addr];
        assert_eq!(a.pick_excluding(hash, &both).unwrap().addr, first.addr);
        // Ejected: its keys walk on to the next endpoint too.
        a.report(&first, outlier::Outcome::Status(503));
        assert!(a.is_ejected(&first));
        assert_eq!(a.pick(hash).unwrap().addr, next.addr);
    }

    #[test]
    fn request_guard_counts_once() {
        let c = config(serde_json::json!({
            "clusters": [eds("a", "RANDOM")],
            "endpoints": [endpoints("a", &[("10.0.0.1:80", "HEALTHY", 0)])],
        }));
        let clusters = manager().build(&c);
        let e = clusters.get("a").unwrap().pick(None).unwrap();
        e.start_request().finish(RequestOutcome::Timeout);
        drop(e.start_request());
        let s = e.stats.snapshot();
        let get = |n: &str| s.iter().find(|(k, _, _)| *k == n).unwrap().1;
        assert_eq!(get("rq_total"), 2);
        assert_eq!(get("rq_active"), 0);
        assert_eq!(get("rq_timeout"), 1);
        assert_eq!(get("rq_error"), 2);
        assert_eq!(lb::Candidate::load(&e), 0);
    }

    #[tokio::test]
    async fn connect_counts_and_fails_cleanly() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let c = config(serde_json::json!({
            "clusters": [{"name": "s", "type": "STATIC", "connectTimeout": "5s",
                "loadAssignment": {"clusterName": "s", "endpoints": [{"lbEndpoints": [
                    {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": addr.port()}}}}]}]}}],
        }));
        let clusters = manager().build(&c);
        let s = clusters.get("s").unwrap();
        let up = s.connect(s.target(addr, None).unwrap()).await.unwrap();
        assert_eq!(s.stats.cx_active.get(), 1);
        assert_eq!(s.endpoints[0].stats.cx_active.load(Ordering::Relaxed), 1);
        drop(up);
        assert_eq!(s.stats.cx_active.get(), 0);
        drop(server);
        let err = s.connect(s.target(addr, None).unwrap()).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
        assert_eq!(s.stats.cx_connect_fail.get(), 1);
        assert_eq!(s.stats.cx_total.get(), 2);
    }
}
