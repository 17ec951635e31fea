//! Building a configuration's clusters ([`ClusterManager`]): one [`UpstreamCluster`] per
//! cluster definition, its endpoints from the definition or EDS, carrying runtime state over
//! from the clusters last committed. An unchanged cluster (definition and endpoints) is the same
//! object, with its round-robin position and active requests; a changed one keeps, for the
//! endpoints it still has, their counters, outlier state and (if how to connect did not change)
//! connection pools, and its circuit breaker if its limits did not change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustmesh_xds::ProxyConfig;
use rustmesh_xds::cluster::{Cluster as ClusterDef, ClusterLoadAssignment, DiscoveryType};
use rustmesh_xds::names::BLACKHOLE_CLUSTER;
use rustmesh_xds::tls::TransportSocketMatch;

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
    metrics: Metrics,
    current: Mutex<Clusters>,
    /// The workload certificate, for clusters that originate mutual TLS.
    identity: Arc<CertStore>,
}

impl ClusterManager {
    /// A manager whose clusters count into `metrics`, without a workload certificate (a
    /// cluster that needs TLS fails its connections).
    pub fn new(metrics: Metrics) -> Self {
        Self::with_identity(metrics, Arc::new(CertStore::default()))
    }

    /// A manager whose clusters originate mutual TLS with the certificate in `identity`.
    pub fn with_identity(metrics: Metrics, identity: Arc<CertStore>) -> Self {
        ClusterManager {
            metrics,
            current: Mutex::new(Clusters::default()),
            identity,
        }
    }

    /// The workload certificate store TLS uses (filter chains terminate with it too).
    pub fn identity(&self) -> &Arc<CertStore> {
        &self.identity
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
        *lock(&self.current) = clusters.clone();
    }

    fn committed(&self) -> Clusters {
        lock(&self.current).clone()
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
                    let addr = e.endpoint.address.socket_addr();
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
