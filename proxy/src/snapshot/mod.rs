//! A configuration compiled for serving, and the [`Store`] that swaps it atomically.
//!
//! A [`Snapshot`] is immutable: listeners indexed by address, filter chains compiled
//! ([`chain`], [`FilterChains`]), clusters resolved ([`Clusters`]), route tables compiled by
//! the HTTP connection manager ([`CompiledRoutes`]), the AuthorizationPolicies that apply to
//! this pod compiled for enforcement ([`Authz`]).
//! Each connection takes the current snapshot once, when it is accepted (a lock-free
//! `ArcSwap` load), and keeps it to its end: a reload changes what *new* connections do, never
//! an established one.

pub mod chain;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::listener::{Listener, TrafficDirection};
use tokio::sync::Notify;

use self::chain::FilterChains;
use crate::authz::Authz;
use crate::cluster::{ClusterManager, Clusters};
use crate::http::handler::{CompiledRoutes, ConnectionManager};
use crate::jwt::JwtVerifier;
use crate::metrics::Destinations;
use crate::sniff::DEFAULT_SNIFF_TIMEOUT;
use crate::stats::{ListenerStats, Metrics};
use crate::{Error, Result};

/// A listener, compiled.
#[derive(Debug)]
pub struct CompiledListener {
    /// `virtualOutbound`, `0.0.0.0_9080`, `10.96.0.10_53`.
    pub name: String,
    /// Its address (for virtual listeners: the original destinations it takes).
    pub address: SocketAddr,
    /// `INBOUND` / `OUTBOUND`.
    pub direction: TrafficDirection,
    /// Its chains.
    pub chains: FilterChains,
    /// How long to wait for the first bytes when a chain needs the protocol
    /// (`listenerFiltersTimeout`, default [`DEFAULT_SNIFF_TIMEOUT`]); `None` for `0s`: no limit.
    pub sniff_timeout: Option<Duration>,
    /// Counters.
    pub stats: ListenerStats,
}

/// One configuration, ready to serve.
pub struct Snapshot {
    /// The document, as loaded (what `/config_dump` shows).
    pub config: Arc<ProxyConfig>,
    /// The listener on the outbound capture port (`useOriginalDst`, `OUTBOUND`).
    pub virtual_outbound: Option<Arc<CompiledListener>>,
    /// The listener on the inbound capture port (`useOriginalDst`, `INBOUND`).
    pub virtual_inbound: Option<Arc<CompiledListener>>,
    /// Listeners reached through an original destination (`bindToPort: false`), by address.
    by_address: HashMap<SocketAddr, Arc<CompiledListener>>,
    /// Every compiled listener in configuration order (for `/listeners`).
    pub listeners: Vec<Arc<CompiledListener>>,
    /// The listeners a router binds (`bindToPort` true, `useOriginalDst` false: a gateway's
    /// `0.0.0.0_8080`), in configuration order; a sidecar binds none of them.
    pub bound: Vec<Arc<CompiledListener>>,
    /// The cluster manager's table for this configuration.
    pub clusters: Clusters,
    /// Cluster → service, for the `destination_service*` labels of Istio's metrics.
    pub destinations: Arc<Destinations>,
    /// The route tables compiled from this configuration ([`ConnectionManager::compile`]).
    pub http: CompiledRoutes,
    /// The AuthorizationPolicies that apply to this pod (by its labels), compiled; `None`
    /// when none does: inbound traffic is not checked.
    pub authz: Option<Arc<Authz>>,
    /// The RequestAuthentication JWT rules that apply to this pod (by its labels), compiled;
    /// `None` when none does: tokens are not looked at.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// When it was applied.
    pub loaded_at: SystemTime,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.config.version_info)
            .field("listeners", &self.listeners.len())
            .field("clusters", &self.clusters.len())
            .finish()
    }
}

fn compile_error((field, message): (String, String)) -> Error {
    Error::ConfigCompile { field, message }
}

impl Snapshot {
    /// Compiles a validated configuration. Clusters come from `clusters` (not committed: the
    /// caller commits once the snapshot is swapped in); `http` compiles the route tables.
    pub fn compile(
        config: ProxyConfig,
        clusters: &ClusterManager,
        metrics: &Metrics,
        http: &ConnectionManager,
    ) -> Result<Snapshot> {
        let table = clusters.build(&config);
        // A transport socket that does not compile refuses the configuration, naming it.
        for (i, def) in config.clusters.iter().enumerate() {
            if let Some((field, message)) = table.get(&def.name).and_then(|c| c.tls_error.clone()) {
                return Err(compile_error((format!("clusters[{i}].{field}"), message)));
            }
        }
        // The Telemetry policies that select this pod set each side's access logs, tracing
        // and disabled metrics on the listeners before they compile.
        let with_telemetry = config.telemetry.as_ref().map(|t| {
            let effective = t.effective(http.labels());
            tracing::debug!(policies = ?effective.policies, "telemetry policies applied");
            let mut ls = config.listeners.clone();
            effective.apply(&mut ls);
            ls
        });
        let mut by_address = HashMap::new();
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        let (mut outbound, mut inbound) = (None, None);
        for (i, l) in with_telemetry
            .as_deref()
            .unwrap_or(&config.listeners)
            .iter()
            .enumerate()
        {
            let path = format!("listeners[{i}]");
            let compiled = Arc::new(compile_listener(
                &path,
                l,
                &table,
                clusters.identity(),
                metrics,
                http.labels(),
            )?);
            listeners.push(compiled.clone());
            if l.use_original_dst {
                let slot = match l.traffic_direction {
                    TrafficDirection::Outbound => &mut outbound,
                    TrafficDirection::Inbound => &mut inbound,
                    TrafficDirection::Unspecified => {
                        return Err(compile_error((
                            format!("{path}.trafficDirection"),
                            "a useOriginalDst listener must say INBOUND or OUTBOUND".into(),
                        )));
                    }
                };
                if slot.is_some() {
                    return Err(compile_error((
                        format!("{path}.useOriginalDst"),
                        format!(
                            "a second useOriginalDst listener with trafficDirection {:?}",
                            l.traffic_direction
                        ),
                    )));
                }
                *slot = Some(compiled);
            } else if !l.bind_to_port {
                let addr = SocketAddr::from(l.address.socket_address);
                if let Some(other) = by_address.insert(addr, compiled) {
                    return Err(compile_error((
                        format!("{path}.address"),
                        format!("listener {:?} already has address {addr}", other.name),
                    )));
                }
            } else {
                tracing::debug!(
                    listener = %l.name,
                    "listener with bindToPort is not bound: the sidecar binds only the capture ports (a router, `proxy run --type router`, binds it)"
                );
                bound.push(compiled);
            }
        }
        let http_state = http.compile(&config)?;
        let authz = match &config.authorization {
            Some(a) => Authz::compile(a, http.labels()).map_err(compile_error)?,
            None => None,
        };
        if let Some(z) = &authz {
            let [(http_rules, http_unindexed), (tcp_rules, tcp_unindexed)] = z.sizes();
            tracing::debug!(
                http_rules,
                http_unindexed,
                tcp_rules,
                tcp_unindexed,
                "authorization policies compiled"
            );
        }
        let jwt = match &config.request_authentication {
            Some(ra) => {
                let rules: Vec<(&str, &rustmesh_xds::request_authn::JwtRule)> = ra
                    .rules_for(http.labels())
                    .map(|(p, r)| (p.name.as_str(), r))
                    .collect();
                if rules.is_empty() {
                    None
                } else {
                    let verifier = JwtVerifier::compile(&rules).map_err(|e| {
                        compile_error((
                            format!(
                                "requestAuthentication.policies[{}].jwtRules[{}].{}",
                                e.policy, e.rule, e.field
                            ),
                            e.reason,
                        ))
                    })?;
                    tracing::debug!(rules = rules.len(), "JWT rules compiled");
                    Some(Arc::new(verifier))
                }
            }
            None => None,
        };
        let destinations = Arc::new(Destinations::from_config(&config, http.labels()));
        Ok(Snapshot {
            config: Arc::new(config),
            virtual_outbound: outbound,
            virtual_inbound: inbound,
            by_address,
            listeners,
            bound,
            clusters: table,
            destinations,
            http: http_state,
            authz,
            jwt,
            loaded_at: SystemTime::now(),
        })
    }

    /// Whether this configuration serves `listener`'s chain `chain` with exactly `hcm` (its
    /// access logs, tracing and metrics settings included): an HTTP connection accepted on an
    /// earlier configuration keeps serving while this holds, and drains when it does not, as
    /// Envoy drains the connections of a changed listener.
    pub fn serves_http_chain(
        &self,
        listener: &str,
        chain: &str,
        hcm: &rustmesh_xds::listener::HttpConnectionManager,
    ) -> bool {
        self.listeners
            .iter()
            .filter(|l| l.name == listener)
            .flat_map(|l| l.chains.all())
            .any(|c| {
                c.name == chain
                    && matches!(&c.terminal, chain::Terminal::Http(h, ..) if **h == *hcm)
            })
    }

    /// The listener a router bound on `addr` (its configured address): the first of
    /// [`Snapshot::bound`] with it. `None` once the configuration no longer has one there.
    pub fn bound_listener(&self, addr: SocketAddr) -> Option<&Arc<CompiledListener>> {
        self.bound.iter().find(|l| l.address == addr)
    }

    /// The version of the configuration (`versionInfo`).
    pub fn version(&self) -> &str {
        &self.config.version_info
    }

    /// The listener that takes a connection whose original destination is `dst`: the one with
    /// exactly that address, else the wildcard of the same family on the port (`0.0.0.0` or
    /// `[::]`), else the other family's wildcard. `None`: the connection stays with
    /// `virtualOutbound`'s own chains.
    pub fn listener_for(&self, dst: SocketAddr) -> Option<&Arc<CompiledListener>> {
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), dst.port());
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), dst.port());
        let (same, other) = if dst.is_ipv4() { (v4, v6) } else { (v6, v4) };
        self.by_address
            .get(&dst)
            .or_else(|| self.by_address.get(&same))
            .or_else(|| self.by_address.get(&other))
    }
}

fn compile_listener(
    path: &str,
    l: &Listener,
    clusters: &Clusters,
    identity: &Arc<crate::identity::Store>,
    metrics: &Metrics,
    pod_labels: &std::collections::BTreeMap<String, String>,
) -> Result<CompiledListener> {
    let chains = FilterChains::compile(
        path,
        &l.name,
        &l.filter_chains,
        l.default_filter_chain.as_ref(),
        clusters,
        identity,
        pod_labels,
    )
    .map_err(compile_error)?;
    let sniff_timeout = match l.listener_filters_timeout {
        None => Some(DEFAULT_SNIFF_TIMEOUT),
        Some(d) if d.as_std().is_zero() => None,
        Some(d) => Some(d.as_std()),
    };
    Ok(CompiledListener {
        name: l.name.clone(),
        address: l.address.socket_addr(),
        direction: l.traffic_direction,
        chains,
        sniff_timeout,
        stats: metrics.listener(&l.name),
    })
}

/// The current snapshot, swapped atomically. Before the first configuration it is empty.
#[derive(Default)]
pub struct Store {
    current: ArcSwapOption<Snapshot>,
    loaded: Notify,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store::default()
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Whether a configuration has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Makes `snapshot` the current one; connections accepted from now on use it.
    pub fn swap(&self, snapshot: Arc<Snapshot>) {
        self.current.store(Some(snapshot));
        self.loaded.notify_waiters();
    }

    /// Resolves with the current snapshot once it is not `seen` (compared by pointer): at once
    /// if it already differs, else at the next swap. Followers of the configuration (the DNS
    /// table) loop on it.
    pub async fn changed(&self, seen: Option<&Arc<Snapshot>>) -> Arc<Snapshot> {
        loop {
            let notified = self.loaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(current) = self.load()
                && seen.is_none_or(|s| !Arc::ptr_eq(s, &current))
            {
                return current;
            }
            notified.await;
        }
    }

    /// Resolves once a configuration is loaded.
    pub async fn loaded(&self) {
        loop {
            let notified = self.loaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_loaded() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tcp(cluster: &str) -> serde_json::Value {
        json!([{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {"statPrefix": cluster, "cluster": cluster}}])
    }

    fn listener(name: &str, ip: &str, port: u16, cluster: &str) -> serde_json::Value {
        json!({"name": name, "address": {"socketAddress": {"address": ip, "portValue": port}},
               "bindToPort": false, "filterChains": [{"filters": tcp(cluster)}]})
    }

    pub(crate) fn compile(doc: serde_json::Value) -> Result<Snapshot> {
        let config = ProxyConfig::from_json(&doc.to_string()).unwrap();
        let metrics = Metrics::default();
        Snapshot::compile(
            config,
            &ClusterManager::new(metrics.clone()),
            &metrics,
            &ConnectionManager::default(),
        )
    }

    fn clusters(names: &[&str]) -> serde_json::Value {
        names
            .iter()
            .map(|n| json!({"name": n, "type": "STATIC", "loadAssignment": {"clusterName": n, "endpoints": []}}))
            .collect()
    }

    #[test]
    fn virtual_listener_lookup_order() {
        let s = compile(json!({
            "listeners": [
                {"name": "virtualOutbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                 "useOriginalDst": true, "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("pass")}]},
                listener("10.96.0.10_9080", "10.96.0.10", 9080, "exact"),
                listener("0.0.0.0_9080", "0.0.0.0", 9080, "wild4"),
                listener("[::]_9080", "::", 9080, "wild6"),
                listener("[::]_7000", "::", 7000, "only6"),
                listener("fd00::10_9080", "fd00::10", 9080, "exact6"),
            ],
            "clusters": clusters(&["pass", "exact", "wild4", "wild6", "only6", "exact6"]),
        }))
        .unwrap();
        let name = |to: &str| s.listener_for(to.parse().unwrap()).map(|l| l.name.clone());
        assert_eq!(name("10.96.0.10:9080").as_deref(), Some("10.96.0.10_9080"));
        assert_eq!(name("10.96.0.11:9080").as_deref(), Some("0.0.0.0_9080"));
        assert_eq!(name("[fd00::10]:9080").as_deref(), Some("fd00::10_9080"));
        assert_eq!(name("[fd00::11]:9080").as_deref(), Some("[::]_9080"));
        assert_eq!(
            name("10.0.0.1:7000").as_deref(),
            Some("[::]_7000"),
            "the other family's wildcard comes last"
        );
        assert_eq!(
            name("[::ffff:10.96.0.10]:9080").as_deref(),
            Some("10.96.0.10_9080")
        );
        assert_eq!(name("10.96.0.10:9999"), None);
        assert_eq!(s.virtual_outbound.as_ref().unwrap().name, "virtualOutbound");
        assert!(s.virtual_inbound.is_none());
    }

    #[test]
    fn compile_errors_name_the_field() {
        let err = compile(json!({
            "listeners": [
                listener("a", "10.0.0.1", 80, "c"),
                listener("b", "10.0.0.1", 80, "c"),
            ],
            "clusters": clusters(&["c"]),
        }))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("listeners[1].address:"),
            "{err}"
        );

        let err = compile(json!({
            "listeners": [
                {"name": "o1", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                 "useOriginalDst": true, "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("c")}]},
                {"name": "o2", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15002}},
                 "useOriginalDst": true, "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("c")}]},
            ],
            "clusters": clusters(&["c"]),
        }))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("listeners[1].useOriginalDst:"),
            "{err}"
        );

        // A TLS origination that names a server identity which is no SPIFFE id, or an SNI
        // that is no server name, refuses the configuration (never plain text instead).
        let tls = |sni: &str, san: &str| {
            json!({"name": "c", "type": "STATIC", "loadAssignment": {"clusterName": "c", "endpoints": []},
                "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
                    "sni": sni, "commonTlsContext": {"tlsCertificateSdsSecretConfigs": [{"name": "default"}],
                    "combinedValidationContext": {"defaultValidationContext": {"matchSubjectAltNames": [{"exact": san}]},
                        "validationContextSdsSecretConfig": {"name": "ROOTCA"}}}}}})
        };
        let good = "spiffe://cluster.local/ns/a/sa/b";
        assert!(compile(json!({"clusters": [tls("outbound_.80_._.a.svc", good)]})).is_ok());
        let err = compile(json!({"clusters": [tls("outbound_.80_._.a.svc", "b.a.svc")]}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("clusters[0].transportSocket.typedConfig.commonTlsContext.combinedValidationContext.defaultValidationContext.matchSubjectAltNames[0].exact:"),
            "{err}"
        );
        let err = compile(json!({"clusters": [tls("not a name!", good)]}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("clusters[0].transportSocket.typedConfig.sni:"),
            "{err}"
        );
    }

    #[test]
    fn the_productpage_fixture_compiles() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../xds/tests/fixtures/productpage.json"
        ))
        .unwrap();
        let config = ProxyConfig::from_json(&text).unwrap();
        let metrics = Metrics::default();
        let s = Snapshot::compile(
            config,
            &ClusterManager::new(metrics.clone()),
            &metrics,
            &ConnectionManager::default(),
        )
        .unwrap();
        assert_eq!(s.virtual_inbound.as_ref().unwrap().name, "virtualInbound");
        assert!(
            s.bound.is_empty(),
            "a sidecar's scope has nothing a router would bind: {:?}",
            s.bound.iter().map(|l| &l.name).collect::<Vec<_>>()
        );
        assert_eq!(
            s.listener_for("10.96.0.10:53".parse().unwrap())
                .unwrap()
                .name,
            "10.96.0.10_53"
        );
        assert_eq!(
            s.listener_for("10.96.10.4:9080".parse().unwrap())
                .unwrap()
                .name,
            "0.0.0.0_9080"
        );
    }

    #[test]
    fn a_router_binds_only_bind_to_port_listeners_without_use_original_dst() {
        let bound = |name: &str, ip: &str, port: u16| {
            json!({"name": name, "address": {"socketAddress": {"address": ip, "portValue": port}},
                   "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("c")}]})
        };
        let s = compile(json!({
            "listeners": [
                {"name": "virtualOutbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                 "useOriginalDst": true, "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("c")}]},
                bound("0.0.0.0_8443", "0.0.0.0", 8443),
                listener("0.0.0.0_9080", "0.0.0.0", 9080, "c"),
                bound("0.0.0.0_8080", "0.0.0.0", 8080),
            ],
            "clusters": clusters(&["c"]),
        }))
        .unwrap();
        let names: Vec<&str> = s.bound.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            ["0.0.0.0_8443", "0.0.0.0_8080"],
            "configuration order"
        );
        assert_eq!(
            s.bound_listener("0.0.0.0:8080".parse().unwrap())
                .unwrap()
                .name,
            "0.0.0.0_8080"
        );
        assert!(s.bound_listener("0.0.0.0:9080".parse().unwrap()).is_none());
        assert!(s.bound_listener("0.0.0.0:15001".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn store_swaps_and_wakes_waiters() {
        let store = Arc::new(Store::new());
        assert!(store.load().is_none());
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.loaded().await }
        });
        let one = Arc::new(compile(json!({"versionInfo": "1"})).unwrap());
        store.swap(one.clone());
        tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .unwrap()
            .unwrap();
        let held = store.load().unwrap();
        store.swap(Arc::new(compile(json!({"versionInfo": "2"})).unwrap()));
        assert_eq!(
            held.version(),
            "1",
            "a connection keeps the snapshot it took"
        );
        assert_eq!(store.load().unwrap().version(), "2");
    }
}
