//! Clusters at run time: their endpoints with health and stats, load balancing, and upstream
//! connections.
//!
//! [`ClusterManager`] turns the `clusters` (and `endpoints`) of a configuration into a
//! [`Clusters`] table. A cluster whose definition (the cluster and its endpoints) did not change
//! keeps its runtime object, and with it its round-robin position and active request counts;
//! a changed cluster keeps the stats of the endpoints it still has. Discovery types:
//!
//! * `EDS`: the endpoints listed under its `edsClusterConfig.serviceName`;
//! * `STATIC`: `loadAssignment`;
//! * `STRICT_DNS` and `LOGICAL_DNS`: `loadAssignment`'s DNS names, resolved by a refresh task
//!   per cluster ([`resolver`]) off the data path: the cluster's endpoints are the answers'
//!   addresses (swapped live when an answer changes; none before the first answer, so
//!   connections fail at once as having no healthy upstream);
//! * `ORIGINAL_DST`: the connection's original destination (`PassthroughCluster`,
//!   `InboundPassthroughClusterIpv4/6`), from `upstreamBindConfig`'s source address if set;
//! * `BlackHoleCluster` (or any cluster without usable endpoints): no upstream, the connection
//!   is closed.
//!
//! Endpoints that are `UNHEALTHY` or `DRAINING` are skipped; of the others, the lowest
//! `priority` that has any is used. A RING_HASH or MAGLEV cluster builds its consistent-hash
//! table ([`lb::HashTable`]) over those endpoints once, with the cluster; a request with a hash
//! key is picked from it.
//!
//! The stages, each a module:
//!
//! * [`manager`]: [`ClusterManager`] builds a configuration's [`Clusters`], carrying state over;
//! * [`endpoint`]: an [`Endpoint`], its counters, outlier state, pools and request guards;
//! * [`lb`] (with [`ring_hash`] and [`maglev`]): which endpoint a request or connection gets;
//! * [`outlier`]: outlier detection;
//! * [`resolver`]: DNS clusters' lookups, refresh schedule and resolved endpoints;
//! * this module: [`UpstreamCluster`] (pick, target, outlier feedback, connect) and [`Clusters`].
//!
//! Below the cluster: the endpoints' HTTP connection pools and the circuit breaker
//! ([`crate::pool`]), and the dialer that opens connections and counts them ([`crate::dial`]).

pub mod endpoint;
pub mod lb;
pub mod maglev;
pub mod manager;
pub mod outlier;
pub mod resolver;
pub mod ring_hash;
pub mod splitmix;

pub use endpoint::{Endpoint, LoadGuard, RequestGuard, RequestOutcome};
pub use manager::ClusterManager;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::dial::{ActiveGuard, ClusterDialer, ConnectError};
use crate::pool::limits::CircuitBreaker;
use crate::stats::ClusterStats;
use crate::transport::{Io, Purpose};
use rustmesh_xds::cluster::{Cluster as ClusterDef, ClusterLoadAssignment};

/// How a cluster finds where to connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Load-balanced over listed endpoints (EDS, STATIC, STRICT_DNS, LOGICAL_DNS).
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
    /// Every listed endpoint (usable or not), for `/clusters`.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The usable endpoints of the best priority: what load balancing picks from.
    usable: Vec<Arc<Endpoint>>,
    /// RING_HASH / MAGLEV: the table over `usable` (indices into it).
    table: Option<lb::HashTable>,
    rr: AtomicUsize,
    /// Prometheus counters.
    pub stats: ClusterStats,
    /// Opens its connections (TCP proxy and HTTP pools).
    dialer: ClusterDialer,
    /// Connection-pool limits (a DestinationRule's `connectionPool`).
    pub breaker: Arc<CircuitBreaker>,
    /// Outlier detection, when the cluster has it.
    pub outlier: Option<outlier::Policy>,
    /// Until when (see [`outlier::now_ms`]) some endpoint may be ejected: before that, picks
    /// filter out ejected endpoints; after it, nothing is ejected and picks take the fast path.
    ejected_until: AtomicU64,
    /// A transport socket that does not compile (the configuration is refused, naming it).
    pub tls_error: Option<(String, String)>,
    /// STRICT_DNS / LOGICAL_DNS: the cluster as last resolved, which load balancing, outlier
    /// detection and `/clusters` use instead of this one (whose endpoints stay empty).
    pub dns: Option<Arc<resolver::DnsState<UpstreamCluster>>>,
}

/// Where a connection goes: an address, and the endpoint it is (not for ORIGINAL_DST).
#[derive(Clone, Debug)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// The endpoint picked by load balancing.
    pub endpoint: Option<Arc<Endpoint>>,
}

/// No upstream to connect to: `BlackHoleCluster`, or no usable endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no healthy upstream in cluster {0:?}")]
pub struct NoHealthyUpstream(pub String);

/// An open upstream connection. Counts in the cluster's and endpoint's `cx_active` until dropped.
#[derive(Debug)]
pub struct Upstream {
    /// The connection (mutual TLS when the endpoint's transport says so).
    pub stream: Io,
    /// Where it goes.
    pub target: Target,
    guard: ActiveGuard,
}

impl Upstream {
    /// The stream, and a guard to keep while it is in use.
    pub fn into_parts(self) -> (Io, Target, ActiveGuard) {
        (self.stream, self.target, self.guard)
    }
}

impl UpstreamCluster {
    /// Picks a usable endpoint (load balancing). `hash` is the request's consistent-hash key
    /// for RING_HASH / MAGLEV clusters (`None`: no key). `None` when nothing is usable or the
    /// cluster is not load-balanced.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        if let Some(dns) = &self.dns {
            return dns.current.load().pick(hash);
        }
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
            .filter(|e| !e.outlier.is_ejected(now))
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
        self.outlier.is_some() && e.outlier.is_ejected(outlier::now_ms())
    }

    /// Tells outlier detection how a request to (or a connection attempt to) `e` went; ejects
    /// it when its errors reach the cluster's thresholds and the cluster may lose it.
    pub fn report(&self, e: &Endpoint, outcome: outlier::Outcome) {
        if let Some(dns) = &self.dns {
            return dns.current.load().report(e, outcome);
        }
        let Some(policy) = &self.outlier else {
            return;
        };
        if !e.outlier.record(policy, outcome) {
            return;
        }
        let now = outlier::now_ms();
        if e.outlier.is_ejected(now) {
            return;
        }
        let ejected = self
            .usable
            .iter()
            .filter(|o| o.outlier.is_ejected(now))
            .count();
        if !outlier::may_eject(policy, ejected, self.usable.len()) {
            tracing::debug!(cluster = %self.name, endpoint = %e.addr, ejected,
                "outlier: not ejected (maxEjectionPercent reached)");
            return;
        }
        let until = e.outlier.eject(policy, now);
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
        if let Some(dns) = &self.dns {
            return dns.current.load().pick_excluding(hash, exclude);
        }
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
    pub fn target(
        &self,
        orig_dst: SocketAddr,
        hash: Option<u64>,
    ) -> Result<Target, NoHealthyUpstream> {
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
            NoHealthyUpstream(self.name.clone())
        })
    }

    /// The usable endpoints load balancing picks from (of a DNS cluster: see
    /// [`UpstreamCluster::resolved`]).
    pub fn usable_endpoints(&self) -> &[Arc<Endpoint>] {
        &self.usable
    }

    /// The cluster whose endpoints are served now: a DNS cluster's as last resolved, any other
    /// cluster itself.
    pub fn resolved(self: &Arc<Self>) -> Arc<UpstreamCluster> {
        match &self.dns {
            Some(dns) => dns.current.load_full(),
            None => self.clone(),
        }
    }

    /// The source address for a connection to `dst` (see [`ClusterDialer::source_for`]).
    pub fn source_for(&self, dst: IpAddr) -> Option<SocketAddr> {
        self.dialer.source_for(dst)
    }

    /// What opening connections for this cluster needs, without the cluster itself.
    pub fn dialer(&self) -> &ClusterDialer {
        &self.dialer
    }

    /// Opens a connection to `target` for the TCP proxy ([`ClusterDialer::connect`], counting
    /// it in the endpoint's stats too, then mutual TLS if the endpoint has it); a failure to
    /// connect to an endpoint counts for outlier detection. With `original_source` (TPROXY
    /// inbound), an ORIGINAL_DST cluster's connection leaves from that client address
    /// ([`ClusterDialer::with_original_source`]); other clusters ignore it.
    pub async fn connect(
        &self,
        target: Target,
        original_source: Option<IpAddr>,
    ) -> Result<Upstream, ConnectError> {
        let stats = target.endpoint.as_ref().map(|e| e.stats.clone());
        let tls = target.endpoint.as_ref().and_then(|e| e.tls.clone());
        let transparent;
        let dialer = match (self.kind, original_source) {
            (Kind::OriginalDst, Some(client)) => {
                transparent = self.dialer.clone().with_original_source(Some(client));
                &transparent
            }
            _ => &self.dialer,
        };
        let connected = dialer
            .connect_with(target.addr, stats, tls.as_deref(), Purpose::Tcp)
            .await;
        match connected {
            Ok((stream, guard)) => Ok(Upstream {
                stream,
                target,
                guard,
            }),
            Err(e) => {
                if let Some(ep) = &target.endpoint {
                    self.report(ep, outlier::Outcome::LocalFailure);
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

/// Configurations and a manager for the unit tests of the cluster's stages.
#[cfg(test)]
pub(crate) mod testing {
    use super::ClusterManager;
    use crate::stats::Metrics;
    use rustmesh_xds::ProxyConfig;

    pub(crate) fn config(json: serde_json::Value) -> ProxyConfig {
        ProxyConfig::from_json(&json.to_string()).unwrap()
    }

    pub(crate) fn eds(name: &str, lb: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "type": "EDS", "lbPolicy": lb,
            "edsClusterConfig": {"serviceName": name}})
    }

    pub(crate) fn endpoints(name: &str, eps: &[(&str, &str, u32)]) -> serde_json::Value {
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

    pub(crate) fn manager() -> ClusterManager {
        ClusterManager::new(Metrics::default())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{config, eds, endpoints, manager};
    use super::*;

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
            Err(NoHealthyUpstream(_))
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
        let up = s
            .connect(s.target(addr, None).unwrap(), None)
            .await
            .unwrap();
        assert_eq!(s.stats.cx_active.get(), 1);
        assert_eq!(s.endpoints[0].stats.cx_active.load(Ordering::Relaxed), 1);
        drop(up);
        assert_eq!(s.stats.cx_active.get(), 0);
        drop(server);
        let err = s
            .connect(s.target(addr, None).unwrap(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Io { .. }), "{err}");
        assert_eq!(s.stats.cx_connect_fail.get(), 1);
        assert_eq!(s.stats.cx_total.get(), 2);
    }
}
