//! Building a configuration's clusters ([`ClusterManager`]): one [`UpstreamCluster`] per
//! cluster definition, its endpoints from the definition or EDS, carrying runtime state over
//! from the clusters last committed. An unchanged cluster (definition and endpoints) is the same
//! object, with its round-robin position and active requests; a changed one keeps, for the
//! endpoints it still has, their counters, outlier state and (if how to connect did not change)
//! connection pools, and its circuit breaker if its limits did not change.
//!
//! A DNS cluster (STRICT_DNS, LOGICAL_DNS) is built with no endpoint of its own and a
//! [`resolver::DnsState`]: the cluster as resolved, built here from the answers so far (those
//! of the cluster it replaces, for the names it still lists). [`ClusterManager::commit`] starts
//! its refresh task ([`refresh`]), which resolves each name when due, off the data path, and
//! swaps in a cluster rebuilt from the new answers when they change its endpoints, carrying
//! state over as a reload does. The task ends once the cluster is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rustmesh_xds::ProxyConfig;
use rustmesh_xds::cluster::{Cluster as ClusterDef, ClusterLoadAssignment, DiscoveryType};
use rustmesh_xds::names::BLACKHOLE_CLUSTER;
use rustmesh_xds::tls::TransportSocketMatch;

use super::resolver::{self, DnsState, Lookup, UpstreamLookup};
use super::{Clusters, Endpoint, Kind, UpstreamCluster, lb, outlier};
use crate::dial::{ClusterDialer, EndpointStats};
use crate::identity::Store as CertStore;
use crate::pool::EndpointPools;
use crate::pool::limits::CircuitBreaker;
use crate::stats::Metrics;
use crate::sync::lock;
use crate::transport::Originate;

/// Builds [`Clusters`] for each configuration, carrying runtime state over from the previous
/// one (the manager keeps the clusters last committed).
pub struct ClusterManager {
    builder: Builder,
    current: Mutex<Clusters>,
    /// How DNS clusters resolve their names.
    lookup: Arc<dyn Lookup>,
}

/// What building one cluster needs: where it counts, and the workload certificate for
/// clusters that originate mutual TLS. Cheap to clone (DNS refresh tasks hold one).
#[derive(Clone)]
struct Builder {
    metrics: Metrics,
    identity: Arc<CertStore>,
}

/// The longest one lookup of a DNS cluster's name may take (each resolver has
/// [`crate::dns::UPSTREAM_TIMEOUT`]); past it, the lookup failed.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);
/// How often a waiting refresh task checks whether its cluster is still there.
const ALIVE_CHECK: Duration = Duration::from_secs(5);

impl ClusterManager {
    /// A manager whose clusters count into `metrics`, without a workload certificate (a
    /// cluster that needs TLS fails its connections).
    pub fn new(metrics: Metrics) -> Self {
        Self::with_identity(metrics, Arc::new(CertStore::default()))
    }

    /// A manager whose clusters originate mutual TLS with the certificate in `identity`.
    pub fn with_identity(metrics: Metrics, identity: Arc<CertStore>) -> Self {
        ClusterManager {
            builder: Builder { metrics, identity },
            current: Mutex::new(Clusters::default()),
            lookup: Arc::new(UpstreamLookup::default()),
        }
    }

    /// This manager, its DNS clusters resolving with `lookup` (default: the resolvers of
    /// `/etc/resolv.conf`, [`UpstreamLookup`]).
    pub fn with_lookup(mut self, lookup: Arc<dyn Lookup>) -> Self {
        self.lookup = lookup;
        self
    }

    /// The workload certificate store TLS uses (filter chains terminate with it too).
    pub fn identity(&self) -> &Arc<CertStore> {
        &self.builder.identity
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
                _ if def.type_.is_dns() => {
                    Arc::new(self.new_dns_cluster(def, assignment, old.map(|c| &**c)))
                }
                _ => Arc::new(self.builder.new_cluster(def, assignment, old.map(|c| &**c))),
            };
            by_name.insert(def.name.clone(), cluster);
        }
        Clusters {
            by_name: Arc::new(by_name),
        }
    }

    /// Makes `clusters` the base of the next [`ClusterManager::build`], and starts the refresh
    /// task of each DNS cluster that has none (on the current Tokio runtime; without one, as
    /// in synchronous tests, DNS clusters stay unresolved).
    pub fn commit(&self, clusters: &Clusters) {
        for c in clusters.by_name.values() {
            let Some(dns) = &c.dns else { continue };
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                continue;
            };
            if !dns.started.swap(true, Ordering::SeqCst) {
                runtime.spawn(refresh(
                    Arc::downgrade(dns),
                    c.def.clone(),
                    c.assignment.clone().unwrap_or_default(),
                    self.builder.clone(),
                    self.lookup.clone(),
                ));
            }
        }
        *lock(&self.current) = clusters.clone();
    }

    fn committed(&self) -> Clusters {
        lock(&self.current).clone()
    }

    /// A DNS cluster: no endpoint of its own, the cluster as resolved in its [`DnsState`],
    /// from the answers `old` had for the names still listed.
    fn new_dns_cluster(
        &self,
        def: &ClusterDef,
        assignment: Option<ClusterLoadAssignment>,
        old: Option<&UpstreamCluster>,
    ) -> UpstreamCluster {
        let la = assignment.clone().unwrap_or_default();
        let old_dns = old.and_then(|o| o.dns.as_ref());
        let mut answers = old_dns
            .map(|d| lock(&d.answers).clone())
            .unwrap_or_default();
        answers.retain(&resolver::names(&la));
        let old_resolved = old_dns.map(|d| d.current.load_full());
        let resolved = resolver::resolved_assignment(def.type_, &la, &answers);
        let mut outer = self.builder.new_cluster(def, None, old);
        outer.assignment = assignment;
        let mut inner = self
            .builder
            .new_cluster(def, Some(resolved), old_resolved.as_deref());
        inner.breaker = outer.breaker.clone();
        outer.dns = Some(DnsState::new(inner, answers));
        outer
    }
}

/// Resolves the names of a DNS cluster, each when due ([`resolver::Schedule`]), for as long as
/// the cluster (`state`) lives; a changed answer swaps in a cluster rebuilt from the answers,
/// carrying the state of the addresses kept. Each lookup counts in `update_success` or
/// `update_failure` (logged with the name; the last good addresses stay).
async fn refresh(
    state: Weak<DnsState<UpstreamCluster>>,
    def: ClusterDef,
    la: ClusterLoadAssignment,
    builder: Builder,
    lookup: Arc<dyn Lookup>,
) {
    let names = resolver::names(&la);
    if names.is_empty() {
        return;
    }
    let schedule = resolver::Schedule::of(&def);
    let stats = builder.metrics.cluster(&def.name);
    let mut due = vec![tokio::time::Instant::now(); names.len()];
    loop {
        let mut changed = false;
        for (i, name) in names.iter().enumerate() {
            if due[i] > tokio::time::Instant::now() {
                continue;
            }
            if state.strong_count() == 0 {
                return;
            }
            let outcome = match tokio::time::timeout(LOOKUP_DEADLINE, lookup.lookup(name)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer for {name} within {LOOKUP_DEADLINE:?}")),
            };
            match &outcome {
                Ok(a) => {
                    stats.update_success.inc();
                    tracing::debug!(cluster = %def.name, name = %name, addresses = ?a.addrs,
                        ttl = ?a.ttl, "dns cluster: resolved");
                }
                Err(e) => {
                    stats.update_failure.inc();
                    tracing::warn!(cluster = %def.name, name = %name, error = %e,
                        "dns cluster: resolution failed, keeping the last good addresses");
                }
            }
            due[i] = tokio::time::Instant::now() + schedule.next(outcome.as_ref().ok());
            let Some(s) = state.upgrade() else { return };
            changed |= lock(&s.answers).record(name, &outcome);
        }
        if changed {
            let Some(s) = state.upgrade() else { return };
            let answers = lock(&s.answers).clone();
            let resolved = resolver::resolved_assignment(def.type_, &la, &answers);
            let old = s.current.load_full();
            let mut next = builder.new_cluster(&def, Some(resolved), Some(&old));
            next.breaker = old.breaker.clone();
            tracing::info!(cluster = %def.name, endpoints = next.endpoints.len(),
                "dns cluster: endpoints changed");
            s.current.store(Arc::new(next));
        }
        let next = due
            .iter()
            .min()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        let check = tokio::time::Instant::now() + ALIVE_CHECK;
        tokio::time::sleep_until(next.min(check)).await;
    }
}

impl Builder {
    fn new_cluster(
        &self,
        def: &ClusterDef,
        assignment: Option<ClusterLoadAssignment>,
        old: Option<&UpstreamCluster>,
    ) -> UpstreamCluster {
        let kind = match def.type_ {
            _ if def.name == BLACKHOLE_CLUSTER => Kind::BlackHole,
            DiscoveryType::OriginalDst => Kind::OriginalDst,
            DiscoveryType::Eds
            | DiscoveryType::Static
            | DiscoveryType::StrictDns
            | DiscoveryType::LogicalDns => Kind::Balanced,
        };
        // Counters and outlier state survive as long as the endpoint stays in the cluster.
        type Kept = (Arc<EndpointStats>, Arc<outlier::HostState>);
        let old_state: HashMap<SocketAddr, Kept> = old
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| (e.addr, (e.stats.clone(), e.outlier.clone())))
                    .collect()
            })
            .unwrap_or_default();
        // Pools (open connections) survive an endpoint change, not a change of how to
        // connect (protocol, timeouts, source address, the endpoint's TLS).
        type Pools = (Arc<EndpointPools>, Option<Arc<Originate>>);
        let old_pools: HashMap<SocketAddr, Pools> = old
            .filter(|c| c.def == *def)
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| (e.addr, (e.pools.clone(), e.tls.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let (transport, tls_error) = match Transport::compile(def, &self.identity) {
            Ok(t) => (t, None),
            Err(e) => (Transport::default(), Some(e)),
        };
        let mut endpoints = Vec::new();
        if kind == Kind::Balanced
            && let Some(la) = &assignment
        {
            for locality in &la.endpoints {
                for e in &locality.lb_endpoints {
                    // DNS names are resolved by the cluster's refresh task (see
                    // `new_dns_cluster`); the resolved cluster lists addresses only.
                    let Some(addr) = e.endpoint.address.socket_addr() else {
                        continue;
                    };
                    let (stats, outlier) = old_state.get(&addr).cloned().unwrap_or_default();
                    let tls = transport.for_endpoint(e.transport_socket_match());
                    let pools = old_pools
                        .get(&addr)
                        .filter(|(_, old_tls)| old_tls.as_deref() == tls.as_deref())
                        .map(|(p, _)| p.clone())
                        .unwrap_or_default();
                    endpoints.push(Arc::new(Endpoint {
                        addr,
                        health: e.health_status,
                        weight: e.load_balancing_weight.unwrap_or(1).max(1),
                        priority: locality.priority,
                        locality: locality.locality.clone(),
                        hostname: e.endpoint.hostname.clone(),
                        stats,
                        outlier,
                        pools,
                        tls,
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
            _ => Arc::new(CircuitBreaker::new(
                def.circuit_breakers
                    .as_ref()
                    .and_then(|cb| cb.thresholds.first()),
            )),
        };
        let outlier = outlier::Policy::from_def(def.outlier_detection.as_ref());
        // Ejections carried over with the endpoints' state.
        let ejected_until = usable
            .iter()
            .map(|e| e.outlier.ejected_until())
            .max()
            .unwrap_or(0);
        let stats = self.metrics.cluster(&def.name);
        let dialer = ClusterDialer::new(
            def.name.clone(),
            def.connect_timeout.as_std(),
            def.upstream_bind_config
                .map(|b| SocketAddr::from(b.source_address)),
            stats.clone(),
        )
        .with_pool_options(crate::pool::client::PoolOptions::from_def(
            def.common_http_protocol_options.as_ref(),
        ));
        UpstreamCluster {
            name: def.name.clone(),
            def: def.clone(),
            assignment,
            kind,
            endpoints,
            usable,
            table,
            rr: AtomicUsize::new(old.map_or(0, |c| c.rr.load(Ordering::Relaxed))),
            stats,
            dialer,
            breaker,
            outlier,
            ejected_until: AtomicU64::new(ejected_until),
            tls_error,
            dns: None,
        }
    }
}

/// A cluster's compiled transport sockets: the one for every endpoint (`transportSocket`), or
/// the per-endpoint matches (`transportSocketMatches`); `None` is plain TCP.
#[derive(Default)]
struct Transport {
    all: Option<Option<Arc<Originate>>>,
    matches: Vec<(TransportSocketMatch, Option<Arc<Originate>>)>,
}

impl Transport {
    fn compile(def: &ClusterDef, identity: &Arc<CertStore>) -> Result<Self, (String, String)> {
        use rustmesh_xds::tls::UpstreamTransportSocket;
        let one = |socket: &UpstreamTransportSocket, at: String| match socket {
            UpstreamTransportSocket::RawBuffer(_) => Ok(None),
            UpstreamTransportSocket::Tls(ctx) => Originate::new(ctx, identity.clone())
                .map(|o| Some(Arc::new(o)))
                .map_err(|(field, message)| (format!("{at}.typedConfig.{field}"), message)),
        };
        let all = match &def.transport_socket {
            Some(s) => Some(one(s, "transportSocket".to_string())?),
            None => None,
        };
        let mut matches = Vec::new();
        for (i, m) in def.transport_socket_matches.iter().enumerate() {
            let at = format!("transportSocketMatches[{i}].transportSocket");
            matches.push((m.clone(), one(&m.transport_socket, at)?));
        }
        Ok(Transport { all, matches })
    }

    /// The TLS to originate to an endpoint with `metadata` (its transport socket match pairs).
    fn for_endpoint(
        &self,
        metadata: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Option<Arc<Originate>> {
        if let Some(all) = &self.all {
            return all.clone();
        }
        self.matches
            .iter()
            .find(|(m, _)| m.matches(metadata))
            .and_then(|(_, o)| o.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::RequestOutcome;
    use crate::cluster::splitmix;
    use crate::cluster::testing::{config, eds, endpoints, manager};

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

    /// Where each of `keys` goes in cluster `name`.
    fn sticky_picks(clusters: &Clusters, name: &str, keys: u64) -> Vec<SocketAddr> {
        let c = clusters.get(name).unwrap();
        (0..keys)
            .map(|k| c.pick(Some(splitmix::mix(k))).unwrap().addr)
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
}

#[cfg(test)]
mod dns_tests {
    use super::*;
    use crate::cluster::resolver::{Answer, LookupFuture};
    use crate::cluster::testing::config;

    /// Answers from a table the test changes; a name without an entry fails.
    #[derive(Default)]
    struct FakeLookup {
        table: Mutex<HashMap<String, Answer>>,
        asked: AtomicUsize,
    }

    impl FakeLookup {
        fn set(&self, name: &str, addrs: &[&str], ttl: u64) {
            lock(&self.table).insert(
                name.to_string(),
                Answer {
                    addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                    ttl: Duration::from_secs(ttl),
                },
            );
        }
    }

    impl Lookup for FakeLookup {
        fn lookup<'a>(&'a self, name: &'a str) -> LookupFuture<'a> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let got = lock(&self.table).get(name).cloned();
            Box::pin(async move { got.ok_or_else(|| format!("{name}: SERVFAIL")) })
        }
    }

    fn dns_config(type_: &str, refresh: &str) -> ProxyConfig {
        config(serde_json::json!({"clusters": [{
            "name": "outbound|443||api.example.com", "type": type_, "lbPolicy": "ROUND_ROBIN",
            "dnsRefreshRate": refresh, "respectDnsTtl": true,
            "loadAssignment": {"clusterName": "outbound|443||api.example.com", "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": {"socketAddress": {"address": "api.example.com", "portValue": 8443}}}}]}]}}]}))
    }

    fn addrs(c: &Clusters) -> Vec<String> {
        let mut v: Vec<String> = c
            .get("outbound|443||api.example.com")
            .unwrap()
            .resolved()
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        v.sort();
        v
    }

    /// Lets the refresh task run until the virtual clock reaches `secs` more.
    async fn advance(secs: u64) {
        for _ in 0..secs * 10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dns_cluster_follows_its_answers_and_keeps_the_last_good_on_failure() {
        let lookup = Arc::new(FakeLookup::default());
        let m = ClusterManager::new(Metrics::default()).with_lookup(lookup.clone());
        let c = m.build(&dns_config("STRICT_DNS", "60s"));
        let cluster = c.get("outbound|443||api.example.com").unwrap().clone();
        let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();
        assert!(
            cluster.target(dst, None).is_err(),
            "before the first answer: no healthy upstream, at once"
        );
        lookup.set("api.example.com", &["10.0.0.1", "10.0.0.2"], 5);
        m.commit(&c);
        advance(1).await;
        assert_eq!(addrs(&c), ["10.0.0.1:8443", "10.0.0.2:8443"]);
        let first = cluster.target(dst, None).unwrap();
        assert_eq!(first.addr.port(), 8443);
        assert_eq!(
            first.endpoint.unwrap().hostname.as_deref(),
            Some("api.example.com")
        );
        let kept = cluster.resolved().endpoints[0].clone();
        kept.stats.cx_total.fetch_add(3, Ordering::Relaxed);

        // The TTL (5s) decides, not the refresh rate (60s): a changed answer within 5s.
        lookup.set("api.example.com", &["10.0.0.1", "10.0.0.3"], 5);
        advance(6).await;
        assert_eq!(addrs(&c), ["10.0.0.1:8443", "10.0.0.3:8443"]);
        let again = cluster.resolved();
        let same = again
            .endpoints
            .iter()
            .find(|e| e.addr == kept.addr)
            .unwrap();
        assert_eq!(
            same.stats.cx_total.load(Ordering::Relaxed),
            3,
            "an address still answered keeps its state"
        );

        // A failure keeps the last good addresses, counted; then the rate (60s) applies.
        lock(&lookup.table).clear();
        let asked = lookup.asked.load(Ordering::SeqCst);
        advance(6).await;
        assert_eq!(lookup.asked.load(Ordering::SeqCst), asked + 1);
        assert_eq!(addrs(&c), ["10.0.0.1:8443", "10.0.0.3:8443"]);
        assert_eq!(cluster.stats.update_failure.get(), 1);
        assert!(cluster.stats.update_success.get() >= 2);
        advance(30).await;
        assert_eq!(
            lookup.asked.load(Ordering::SeqCst),
            asked + 1,
            "after a failure, the refresh rate"
        );

        // The cluster gone, its task ends.
        drop((c, cluster, again));
        m.commit(&Clusters::default());
        let asked = lookup.asked.load(Ordering::SeqCst);
        advance(120).await;
        assert_eq!(lookup.asked.load(Ordering::SeqCst), asked);
    }

    #[tokio::test(start_paused = true)]
    async fn logical_dns_uses_the_first_address_and_a_reload_keeps_the_answers() {
        let lookup = Arc::new(FakeLookup::default());
        lookup.set("api.example.com", &["10.0.0.7", "10.0.0.8"], 30);
        let m = ClusterManager::new(Metrics::default()).with_lookup(lookup.clone());
        let c = m.build(&dns_config("LOGICAL_DNS", "60s"));
        m.commit(&c);
        advance(1).await;
        assert_eq!(addrs(&c), ["10.0.0.7:8443"]);
        // Another definition (a new refresh rate): resolved at once from the answers kept.
        let c2 = m.build(&dns_config("LOGICAL_DNS", "30s"));
        assert_eq!(addrs(&c2), ["10.0.0.7:8443"]);
    }
}
