//! The pure renderer: from the index and a scope to the full [`ProxyConfig`] of that scope's pods,
//! built the way Istio builds a sidecar's listeners, routes, clusters and endpoints.
//!
//! A *scope* is a namespace (its pods share one configuration), narrowed by the namespace-wide
//! Sidecar (or the root namespace's), or a Sidecar with a `workloadSelector` (its own scope),
//! or the gateway pods of one Gateway `selector` ([`gateway`]: bound listeners
//! `0.0.0.0_<port>`, route tables `http.<port>` from the VirtualServices bound to the Gateway).
//! Everything is sorted, so equal inputs give byte-equal output and the content hash only changes
//! when the configuration does.
//!
//! Decisions beyond Istio's documented behaviour:
//! - inbound listeners/clusters of the namespace scope are the union over the namespace's services
//!   whose pods use that scope (one configuration serves every pod); a port a pod does not serve
//!   is refused by the kernel exactly as with passthrough;
//! - headless services get ORIGINAL_DST clusters (Istio's `Passthrough` resolution), their HTTP
//!   ports a virtual host on the port's route table, their TCP/auto ports one listener per ready
//!   endpoint address; ExternalName services get STRICT_DNS clusters of their external name
//!   (as Istio's, see ServiceEntry DNS below), their HTTP ports a virtual host, their TCP ports
//!   no listener (the connection goes where the application resolved the name);
//! - a destination that does not resolve in this scope (host not in the registry, port missing,
//!   subset not defined by the DestinationRule this scope uses) is routed to `BlackHoleCluster`
//!   (Istio: a cluster that does not exist; both answer 503);
//! - with a mesh CA (`MeshConfig::ca_host`), Istio's mutual TLS in its PERMISSIVE shape (the
//!   proxy applies the PeerAuthentication mode): each inbound port gets the chains terminating
//!   it (`tls` + Istio's ALPN) before its plain ones, virtualInbound's passthrough a twin, and
//!   outbound clusters auto mTLS or a DestinationRule's `ISTIO_MUTUAL` (see [`clusters`]);
//!   without a CA none of it is rendered;
//! - a VirtualService's `tls` rules become SNI chains on the service's TLS or HTTPS listener
//!   (`Ctx::tls_chains`: `sniHosts` as `serverNames`, `destinationSubnets` as prefix ranges, a
//!   TCP proxy to the rule's destinations, the TLS bytes unopened); a connection whose SNI no
//!   rule names goes where the port's TCP traffic goes (the service, or its `tcp` rules), as
//!   the port does without a VirtualService (a decision: Istio documents no fallback);
//! - TCP and TLS route matches with `sourceLabels` become chains carrying them
//!   (`FilterChainMatch::source_labels`, [`tcp_rules_by_source`]): one document serves every
//!   pod of a scope, so each proxy keeps the chains its pod's labels satisfy, the first of
//!   equal ones applying, as Istio's per-proxy rendering picks the first applicable rule;
//! - not rendered (no field in the proxy model): `derivePort`, `http2Error` aborts;
//! - a root VirtualService's `http[].delegate` is replaced by the delegate's routes, merged as
//!   Istio merges them ([`crate::delegate`], in [`routes`]); a delegate renders nothing on
//!   its own;
//! - ServiceEntry hosts are registry services of their own (`crate::registry`), rendered as
//!   Istio renders them: HTTP ports a virtual host `HOST:PORT` on the port's route table
//!   (domains: the host, its addresses, each with and without `:PORT`), TCP/TLS and
//!   protocol-less ports a listener per address (`ADDRESS_PORT`), chains on `0.0.0.0_PORT`
//!   matching CIDR blocks (`prefixRanges`, before the listener's other chains), or
//!   `0.0.0.0_PORT` without addresses (TCP and protocol-less: every connection to that port,
//!   as Istio's; TLS and HTTPS: one chain per host matching the SNI, the rest to the
//!   catch-all), clusters
//!   `outbound|PORT||HOST` (resolution NONE: ORIGINAL_DST, to the address the application
//!   connected to; STATIC: the entry's endpoints; DNS: STRICT_DNS of the endpoints' names,
//!   else of the host; DNS_ROUND_ROBIN: LOGICAL_DNS of the one name; the sidecar resolves
//!   them, `respectDnsTtl` and Istio's default `dnsRefreshRate` of 60s), DNS answers for the
//!   hosts with addresses (given or allocated). A
//!   `0.0.0.0_PORT` that an HTTP port already holds keeps it, and of several entries' TCP
//!   ports on the same listener the first host in name order holds it. Entries add no
//!   inbound ports;

mod authz;
#[cfg(test)]
mod authz_tests;
mod clusters;
pub(crate) mod gateway;
#[cfg(test)]
mod gateway_tests;
mod peer_authn;
mod request_authn;
#[cfg(test)]
mod request_authn_tests;
mod routes;
mod telemetry;

use crate::index::kinds::{IstioKind, KindStore};
use crate::index::{Index, Labels, ObjKey};
use crate::protocol::{ListenerProtocol, Protocol};
use crate::registry::{Registry, Svc, SvcPort, exported};
use crate::validation::{Validation, age_key, resolve_host};
use rustmesh_api::sidecar::{
    DefaultEndpoint, EgressHost, IstioEgressListener, OutboundTrafficPolicyMode, host_matches,
};
use rustmesh_api::{DestinationRule, Gateway, Sidecar, VirtualService};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::access_log::AccessLog;
use rustmesh_xds::address::{Address, CidrRange};
use rustmesh_xds::cluster::{Cluster, ClusterLoadAssignment, ServiceRef};
use rustmesh_xds::config::DnsEntry;
use rustmesh_xds::duration::Duration;
use rustmesh_xds::listener::{
    FilterChain, FilterChainMatch, HTTP_PROTOCOLS, HttpConnectionManager, Listener, NetworkFilter,
    RAW_BUFFER, Rds, TLS, TcpProxy, TrafficDirection,
};
use rustmesh_xds::names::{
    self, BLACKHOLE_CLUSTER, ClusterName, INBOUND_PASSTHROUGH_CLUSTER_V4, PASSTHROUGH_CLUSTER,
    VIRTUAL_INBOUND, VIRTUAL_OUTBOUND,
};
use rustmesh_xds::route::{RouteConfiguration, WeightedClusters};
use rustmesh_xds::scope::{self as xscope, ScopeIndex, ScopeSelector};
use rustmesh_xds::tls::{
    ALPN_ISTIO_ALL, ALPN_ISTIO_HTTP, ALPN_ISTIO_TCP, DownstreamTransportSocket, istio_downstream,
};
use rustmesh_xds::well_known;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

/// The ALPN an inbound mutual TLS chain for HTTP negotiates (Istio's `ALPNHttp`): never
/// `istio`, which would hide the HTTP version.
const ALPN_HTTP_DOWNSTREAM: [&str; 2] = ["h2", "http/1.1"];

/// Which configuration: a namespace's default scope, one selector Sidecar's, or the gateway
/// pods of one Gateway selector ([`gateway`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub namespace: String,
    /// Name of the Sidecar with a workloadSelector; `None` for the namespace scope.
    pub sidecar: Option<String>,
    /// The Gateway `selector` of a gateway scope.
    pub gateway: Option<Labels>,
}

impl Scope {
    pub fn namespace(ns: &str) -> Self {
        Scope {
            namespace: ns.to_string(),
            sidecar: None,
            gateway: None,
        }
    }

    pub fn sidecar(ns: &str, name: &str) -> Self {
        Scope {
            namespace: ns.to_string(),
            sidecar: Some(name.to_string()),
            gateway: None,
        }
    }

    /// The scope of the pods of `ns` that a Gateway `selector` selects.
    pub fn gateway(ns: &str, selector: &Labels) -> Self {
        Scope {
            namespace: ns.to_string(),
            sidecar: None,
            gateway: Some(selector.clone()),
        }
    }

    /// The ConfigMap key of this scope's configuration.
    pub fn key(&self) -> String {
        match (&self.sidecar, &self.gateway) {
            (_, Some(selector)) => xscope::gateway_scope_key(selector),
            (None, None) => xscope::DEFAULT_SCOPE_KEY.to_string(),
            (Some(name), None) => xscope::sidecar_scope_key(name),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.key())
    }
}

/// The index prepared for rendering: services normalised, Istio objects validated and ordered.
/// Build it once per batch and render every affected scope from it.
pub struct MeshView<'a> {
    pub index: &'a Index,
    pub registry: Registry,
    pub validation: Validation,
    /// The key set sources the RequestAuthentications need (which are over the limit).
    pub key_sources: crate::jwks::Wanted,
    virtual_services: Vec<(&'a ObjKey, &'a VirtualService)>,
    destination_rules: Vec<(&'a ObjKey, &'a DestinationRule)>,
    sidecars: Vec<(&'a ObjKey, &'a Sidecar)>,
    /// The Gateways to render, oldest first.
    gateways: Vec<(&'a ObjKey, &'a Gateway)>,
    /// `spec.hosts` of each VirtualService, resolved (same order as `virtual_services`).
    vs_hosts: Vec<Vec<String>>,
    /// `spec.host` of each DestinationRule, resolved (same order as `destination_rules`).
    dr_hosts: Vec<String>,
    /// Which VirtualServices / DestinationRules can match a host: positions by exact host, plus
    /// those with a wildcard host, so that a lookup does not scan (and re-resolve) all of them
    /// for every service of the mesh.
    vs_by_host: HostIndex,
    dr_by_host: HostIndex,
    /// VirtualServices without hosts (delegates, only used through a root's `http[].delegate`),
    /// by key: positions in `virtual_services`.
    delegates: HashMap<&'a ObjKey, usize>,
}

/// Positions of objects by the hosts they name: exact hosts in a map, wildcards in a list.
#[derive(Default)]
struct HostIndex {
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
}

impl HostIndex {
    fn build<'h>(hosts: impl Iterator<Item = (usize, &'h String)>) -> Self {
        let mut index = HostIndex::default();
        for (i, h) in hosts {
            let list = if h.starts_with('*') {
                &mut index.wildcard
            } else {
                index.exact.entry(h.clone()).or_default()
            };
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
        index
    }

    /// Positions (ascending, i.e. oldest first) of the objects one of whose hosts may match
    /// `fqdn` (`host_matches`: a host without a leading `*` only matches itself).
    fn candidates(&self, fqdn: &str) -> Vec<usize> {
        let mut out = self.wildcard.clone();
        if let Some(exact) = self.exact.get(fqdn) {
            out.extend(exact);
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

/// The version of each object of kind `K` in namespace `ns` that its scopes render, oldest
/// first (creation time, then name): the current one when accepted; after an invalid update of
/// an object accepted before, that last accepted version; none for an object never accepted or
/// in conflict (what the per-pod policy kinds list: PeerAuthentication, AuthorizationPolicy,
/// RequestAuthentication, Telemetry).
fn rendered_in<'a, K: IstioKind>(view: &MeshView<'a>, ns: &str) -> Vec<(&'a ObjKey, &'a K)> {
    let store = K::store(view.index);
    let mut out: Vec<(&ObjKey, &K)> = store
        .objects
        .iter()
        .filter(|(k, _)| k.namespace == ns)
        .filter_map(|(key, current)| {
            let verdict = view.validation.verdicts.get(&(K::KIND, key.clone()))?;
            if verdict.accepted {
                Some((key, current))
            } else {
                verdict.serving_previous?;
                store.last_good.get(key).map(|previous| (key, previous))
            }
        })
        .collect();
    out.sort_by_key(|(_, o)| crate::validation::age_key(o.meta()));
    out
}

/// The version of each object of one kind to render: the current one when accepted, else the
/// last accepted one when the current is `Invalid` (noted in its verdict), else none.
fn pick_versions<'a, K: IstioKind>(
    store: &'a KindStore<K>,
    validation: &mut Validation,
) -> Vec<(&'a ObjKey, &'a K)> {
    let mut out = Vec::with_capacity(store.objects.len());
    for (key, obj) in &store.objects {
        let Some(verdict) = validation.verdicts.get_mut(&(K::KIND, key.clone())) else {
            continue;
        };
        if verdict.accepted {
            out.push((key, obj));
        } else if verdict.reason == "Invalid"
            && let Some(previous) = store.last_good.get(key)
        {
            verdict.serving_previous = Some(previous.meta().generation.unwrap_or(0));
            verdict.previous_spec = serde_json::to_value(previous)
                .ok()
                .and_then(|mut v| Some(v.get_mut("spec")?.take()));
            out.push((key, previous));
        }
    }
    out
}

impl<'a> MeshView<'a> {
    pub fn new(index: &'a Index) -> Self {
        let registry = Registry::build(index);
        let mut validation = Validation::compute(index, &registry);
        // An accepted object is rendered as it is; an invalid update of an object accepted
        // before renders that last accepted version instead (its status says so); a conflict
        // (a second namespace-wide Sidecar...) is left out whatever it was.
        let mut virtual_services = pick_versions(&index.virtual_services, &mut validation);
        virtual_services.sort_by_key(|(_, v)| age_key(&v.metadata));
        let mut destination_rules = pick_versions(&index.destination_rules, &mut validation);
        destination_rules.sort_by_key(|(_, d)| age_key(&d.metadata));
        let mut sidecars = pick_versions(&index.sidecars, &mut validation);
        sidecars.sort_by_key(|(_, s)| age_key(&s.metadata));
        let mut gateways = pick_versions(&index.gateways, &mut validation);
        gateways.sort_by_key(|(_, g)| age_key(&g.metadata));
        let suffix = &index.mesh.domain_suffix;
        let vs_hosts: Vec<Vec<String>> = virtual_services
            .iter()
            .map(|(key, vs)| {
                vs.spec
                    .hosts
                    .iter()
                    .map(|h| resolve_host(h, &key.namespace, suffix))
                    .collect()
            })
            .collect();
        let dr_hosts: Vec<String> = destination_rules
            .iter()
            .map(|(key, dr)| resolve_host(&dr.spec.host, &key.namespace, suffix))
            .collect();
        let vs_by_host = HostIndex::build(
            vs_hosts
                .iter()
                .enumerate()
                .flat_map(|(i, hosts)| hosts.iter().map(move |h| (i, h))),
        );
        let dr_by_host = HostIndex::build(dr_hosts.iter().enumerate());
        let delegates = virtual_services
            .iter()
            .enumerate()
            .filter(|(_, (_, vs))| vs.spec.hosts.is_empty())
            .map(|(i, (key, _))| (*key, i))
            .collect();
        MeshView {
            index,
            registry,
            validation,
            key_sources: index.key_sources(),
            virtual_services,
            destination_rules,
            sidecars,
            gateways,
            vs_hosts,
            dr_hosts,
            vs_by_host,
            dr_by_host,
            delegates,
        }
    }

    /// The delegate VirtualService a root route in `root_namespace` hands over to, as rendered:
    /// one without hosts, exported to the root's namespace (Istio's rules); `None` otherwise
    /// (that root route renders nothing; validation warns on the root).
    fn delegate_for(
        &self,
        root_namespace: &str,
        d: &rustmesh_api::virtual_service::Delegate,
    ) -> Option<(&'a ObjKey, &'a VirtualService)> {
        let key = crate::index::delegate_key(root_namespace, d);
        let (k, vs) = self.virtual_services[*self.delegates.get(&key)?];
        exported(&vs.spec.export_to, &k.namespace, root_namespace).then_some((k, vs))
    }

    fn domain_suffix(&self) -> &str {
        &self.index.mesh.domain_suffix
    }

    /// The namespace-wide Sidecar of `ns`, else the root namespace's.
    fn default_sidecar(&self, ns: &str) -> Option<&'a Sidecar> {
        let without_selector = |n: &str| {
            self.sidecars
                .iter()
                .find(|(k, s)| k.namespace == n && s.spec.workload_selector.is_none())
        };
        without_selector(ns)
            .or_else(|| without_selector(&self.index.mesh.root_namespace))
            .map(|(_, s)| *s)
    }

    /// Sidecars of `ns` with a workloadSelector, in precedence order (oldest first).
    fn selector_sidecars(&self, ns: &str) -> Vec<&'a Sidecar> {
        self.sidecars
            .iter()
            .filter(|(k, s)| {
                k.namespace == ns
                    && s.spec
                        .workload_selector
                        .as_ref()
                        .is_some_and(|w| !w.labels.is_empty())
            })
            .map(|(_, s)| *s)
            .collect()
    }

    /// The ConfigMap's table of contents for `ns`: the gateway scopes first (see
    /// [`gateway::scope_selectors`]), then one per selector Sidecar; written as index
    /// version 3 only when it holds a gateway scope.
    pub fn scope_index(&self, ns: &str) -> ScopeIndex {
        let mut selectors: Vec<ScopeSelector> = gateway::scope_selectors(self, ns)
            .into_iter()
            .map(|(labels, names)| ScopeSelector::gateway(names, labels))
            .collect();
        selectors.extend(self.selector_sidecars(ns).into_iter().map(|s| {
            let name = s.metadata.name.clone().unwrap_or_default();
            let labels = s
                .spec
                .workload_selector
                .as_ref()
                .map(|w| w.labels.clone())
                .unwrap_or_default();
            ScopeSelector::sidecar(&name, labels)
        }));
        let mut index = ScopeIndex {
            selectors,
            ..ScopeIndex::default()
        };
        index.version = index.written_version();
        index
    }

    /// Every scope of a namespace: the namespace scope first, then one per selector (gateway
    /// scopes, then Sidecars).
    pub fn scopes(&self, ns: &str) -> Vec<Scope> {
        let mut out = vec![Scope::namespace(ns)];
        out.extend(self.scope_index(ns).selectors.into_iter().map(|s| {
            if s.is_gateway() {
                Scope::gateway(ns, &s.labels)
            } else {
                Scope::sidecar(ns, &s.sidecar)
            }
        }));
        out
    }

    fn sidecar_of(&self, scope: &Scope) -> Option<&'a Sidecar> {
        if scope.gateway.is_some() {
            return None; // a gateway pod's view is its Gateways'
        }
        match &scope.sidecar {
            None => self.default_sidecar(&scope.namespace),
            Some(name) => self
                .sidecars
                .iter()
                .find(|(k, _)| k.namespace == scope.namespace && &k.name == name)
                .map(|(_, s)| *s),
        }
    }
}

/// One service port visible from the scope, with the protocol its listener uses.
#[derive(Clone, Copy)]
struct Visible<'v> {
    svc: &'v Svc,
    port: &'v SvcPort,
    protocol: Protocol,
}

/// Everything one render needs, plus the clusters it has referenced so far.
struct Ctx<'v, 'a> {
    view: &'v MeshView<'a>,
    scope: &'v Scope,
    sidecar: Option<&'a Sidecar>,
    selector: Option<&'v Labels>,
    mode: OutboundTrafficPolicyMode,
    /// Clusters routes point at, by name, with what they stand for.
    wanted: BTreeMap<String, Wanted<'v>>,
    /// While rendering a gateway scope's routes: the Gateway (`<namespace>/<name>`) whose
    /// server they are for (a route match's `gateways` must name it); `None` for sidecars
    /// (`mesh`).
    gateway: Option<String>,
}

#[derive(Clone, Copy)]
struct Wanted<'v> {
    svc: &'v Svc,
    port: &'v SvcPort,
    subset: Option<&'v str>,
}

/// How to recompute the endpoints of one EDS cluster when only its service's endpoints change
/// (see the `renderer` module): the cluster, the service port and the subset's labels.
/// Kept for every EDS cluster of every namespace, so it is compact: the subset's labels as an
/// exactly-sized list rather than a map (a `BTreeMap` node is ~0.5 KiB even for one label).
#[derive(Clone, Debug, PartialEq)]
pub struct EdsRecipe {
    pub cluster: String,
    pub port: u16,
    /// The subset's labels (`None`: every endpoint).
    pub selector: Option<Box<[(String, String)]>>,
    /// Whether endpoints of pods with a sidecar carry the `tlsMode: istio` metadata (the mesh
    /// has a CA).
    pub mtls: bool,
}

impl EdsRecipe {
    pub fn new(cluster: &str, port: u16, selector: Option<&Labels>, mtls: bool) -> Self {
        EdsRecipe {
            cluster: cluster.to_string(),
            port,
            selector: selector.map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            mtls,
        }
    }

    /// The cluster's endpoints from its service as it is now (`None`: the service is gone).
    pub fn assignment(&self, svc: Option<&Svc>) -> ClusterLoadAssignment {
        let endpoints = svc
            .and_then(|s| s.port(self.port))
            .map(|p| p.endpoints.as_slice())
            .unwrap_or_default();
        clusters::load_assignment(&self.cluster, endpoints, self.mtls, |labels| {
            self.selector
                .iter()
                .flat_map(|s| s.iter())
                .all(|(k, v)| labels.get(k) == Some(v))
        })
    }
}

/// EDS recipes of a scope's clusters, by service FQDN.
pub type EdsRecipes = BTreeMap<String, Vec<EdsRecipe>>;

/// Renders one scope without `versionInfo` (`configmap::render_view` sets it to the content
/// hash, the encoder from the parts' hashes), with
/// the recipes of its EDS clusters.
pub fn render_parts(view: &MeshView<'_>, scope: &Scope) -> (ProxyConfig, EdsRecipes) {
    if let Some(selector) = &scope.gateway {
        return gateway::render(view, scope, selector);
    }
    let sidecar = view.sidecar_of(scope);
    let selector = sidecar
        .and_then(|s| s.spec.workload_selector.as_ref())
        .map(|w| &w.labels)
        .filter(|_| scope.sidecar.is_some());
    let mode = sidecar
        .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
        .map(|p| p.mode)
        .unwrap_or(view.index.mesh.outbound_policy);
    let mut ctx = Ctx {
        view,
        scope,
        sidecar,
        selector,
        mode,
        wanted: BTreeMap::new(),
        gateway: None,
    };
    let visible = ctx.visible_ports();

    // Outbound listeners and route tables.
    let mut listeners: BTreeMap<(IpAddr, u16), Listener> = BTreeMap::new();
    let mut routes: BTreeMap<String, RouteConfiguration> = BTreeMap::new();
    let mut http_ports: BTreeMap<u16, Vec<Visible>> = BTreeMap::new();
    for v in &visible {
        match v.protocol.listener() {
            ListenerProtocol::Http => http_ports.entry(v.port.port).or_default().push(*v),
            ListenerProtocol::Auto => {
                // Auto ports also answer on the port's shared route table, as in Istio.
                http_ports.entry(v.port.port).or_default();
            }
            _ => {}
        }
    }
    for v in &visible {
        if v.protocol.listener() == ListenerProtocol::Auto
            && let Some(list) = http_ports.get_mut(&v.port.port)
            && !list.is_empty()
        {
            list.push(*v);
        }
    }
    for (port, members) in &http_ports {
        if members.is_empty() {
            continue; // only auto services on this port: they have their own listeners
        }
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        listeners.insert((any, *port), ctx.http_port_listener(*port));
        routes.insert(port.to_string(), ctx.port_route_table(*port, members));
    }
    // TLS ports of ServiceEntry hosts without addresses: one `0.0.0.0_<port>` whose chains
    // tell the hosts apart by SNI, as Istio's; other connections to the port go where unknown
    // destinations go.
    let mut sni_ports: BTreeMap<u16, Vec<Visible>> = BTreeMap::new();
    // TCP, TLS and protocol-less ports of ServiceEntry hosts with CIDR blocks: chains on
    // `0.0.0.0_<port>` matching the blocks (Istio's `destinationCIDR`).
    let mut cidr_ports: BTreeMap<u16, Vec<Visible>> = BTreeMap::new();
    for v in &visible {
        let lp = v.protocol.listener();
        if !matches!(lp, ListenerProtocol::Tcp | ListenerProtocol::Auto) {
            continue;
        }
        let addressless = v
            .svc
            .entry
            .as_ref()
            .is_some_and(|e| e.addresses.is_empty() && e.cidrs.is_empty());
        if matches!(v.protocol, Protocol::Tls | Protocol::Https) && addressless {
            sni_ports.entry(v.port.port).or_default().push(*v);
            continue;
        }
        if v.svc.entry.as_ref().is_some_and(|e| !e.cidrs.is_empty()) {
            cidr_ports.entry(v.port.port).or_default().push(*v);
        }
        let ips: Vec<IpAddr> = match (&v.svc.entry, v.svc.cluster_ip) {
            (Some(_), _) if addressless => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            (Some(e), _) => e.addresses.clone(),
            (None, Some(ip)) => vec![ip],
            (None, None) => v.port.endpoints.iter().map(|e| e.ip).collect(),
        };
        for ip in ips {
            let key = (ip, v.port.port);
            if listeners.contains_key(&key) {
                continue;
            }
            let mut tcp_chains = ctx.tcp_chains(v);
            let listener = if lp == ListenerProtocol::Tcp {
                // A TLS port's VirtualService `tls` rules pick a destination by SNI; what no
                // rule names goes where the port's TCP traffic goes.
                let mut chains = if matches!(v.protocol, Protocol::Tls | Protocol::Https) {
                    ctx.tls_chains(v)
                } else {
                    Vec::new()
                };
                let sniffs = !chains.is_empty();
                if !chains.iter().any(|c| c.filter_chain_match.is_empty()) {
                    chains.append(&mut tcp_chains);
                }
                outbound_listener(ip, v.port.port, chains, None, sniffs)
            } else {
                let route_name = names::outbound_route_name(v.port.port, Some(&v.svc.fqdn));
                routes
                    .entry(route_name.clone())
                    .or_insert_with(|| ctx.service_route_table(v, &route_name));
                let http_chain = FilterChain {
                    transport_socket: None,
                    name: None,
                    filter_chain_match: FilterChainMatch {
                        transport_protocol: Some(RAW_BUFFER.to_string()),
                        application_protocols: http_protocols(),
                        ..FilterChainMatch::default()
                    },
                    filters: vec![hcm(
                        names::outbound_stat_prefix(ip, v.port.port),
                        route_name,
                    )],
                };
                // The port's other traffic: chains for `tcp` rules with `sourceLabels`, then
                // the one for every pod as the default. A labelled chain names its transport,
                // once plain and once TLS: Envoy's matching leaves out chains naming none once
                // the HTTP chain's `raw_buffer` matches, so plain TCP that is not HTTP would
                // never reach a chain without one.
                let every_pod = tcp_chains.pop();
                let mut chains = vec![http_chain];
                for chain in tcp_chains {
                    for transport in [RAW_BUFFER, TLS] {
                        let mut c = chain.clone();
                        c.filter_chain_match.transport_protocol = Some(transport.to_string());
                        chains.push(c);
                    }
                }
                outbound_listener(ip, v.port.port, chains, every_pod, true)
            };
            listeners.insert(key, listener);
        }
    }

    for (port, members) in &sni_ports {
        let key = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port);
        // An HTTP port, or a TCP entry without addresses, holding the port keeps it.
        if let std::collections::btree_map::Entry::Vacant(slot) = listeners.entry(key) {
            slot.insert(ctx.sni_listener(*port, members));
        }
    }
    for (port, members) in &cidr_ports {
        let chains = ctx.cidr_chains(members);
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        match listeners.entry((any, *port)) {
            // Beside an HTTP port's, an SNI port's or an addressless entry's chains: a
            // destination in a block matches its chain before theirs (Envoy's order).
            std::collections::btree_map::Entry::Occupied(l) => {
                let l = l.into_mut();
                let mut chains: Vec<FilterChain> = chains
                    .into_iter()
                    .filter(|c| {
                        !l.filter_chains
                            .iter()
                            .any(|x| x.filter_chain_match == c.filter_chain_match)
                    })
                    .collect();
                if chains.iter().any(|c| needs_sniffing(&c.filter_chain_match)) {
                    l.listener_filters_timeout.get_or_insert_with(sniff_timeout);
                }
                chains.append(&mut l.filter_chains);
                l.filter_chains = chains;
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                let sniffs = chains.iter().any(|c| needs_sniffing(&c.filter_chain_match));
                slot.insert(outbound_listener(
                    any,
                    *port,
                    chains,
                    Some(ctx.catch_all_chain()),
                    sniffs,
                ));
            }
        }
    }

    // Clusters for every visible port (and every subset its DestinationRule defines).
    for v in &visible {
        ctx.want_service_port(v.svc, v.port);
    }
    let (inbound_chains, inbound_clusters) = ctx.inbound();
    let (mut clusters, endpoints, recipes) = ctx.build_clusters();
    clusters.extend(inbound_clusters);
    clusters.extend(static_clusters());

    let mut all_listeners = vec![
        ctx.virtual_outbound(),
        virtual_inbound(inbound_chains, view.index.mesh.ca_host.is_some()),
    ];
    all_listeners.extend(listeners.into_values());
    with_mesh_telemetry(
        &mut all_listeners,
        view.index.mesh.access_log.as_ref(),
        view.index.mesh.tracing.as_ref(),
    );

    let config = ProxyConfig {
        peer_authentication: peer_authn::peer_authentication(view, scope),
        authorization: authz::authorization(view, scope),
        request_authentication: request_authn::request_authentication(view, scope),
        telemetry: telemetry::telemetry(view, scope),
        version_info: String::new(),
        listeners: all_listeners,
        routes: routes.into_values().collect(),
        clusters,
        endpoints,
        dns: with_ca_name(
            dns_entries(&visible, &scope.namespace),
            view,
            &scope.namespace,
        ),
    };
    (config, recipes)
}

/// The mesh's access log (meshConfig `accessLogFile`...) on every HTTP connection manager and
/// TCP proxy, and its tracing on every HTTP connection manager, as Istio puts them on every
/// listener of the sidecar.
fn with_mesh_telemetry(
    listeners: &mut [Listener],
    log: Option<&AccessLog>,
    tracing: Option<&rustmesh_xds::trace::Tracing>,
) {
    for l in listeners {
        for fc in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut())
        {
            for f in &mut fc.filters {
                match f {
                    NetworkFilter::TcpProxy(t) => t.access_log = log.cloned().into_iter().collect(),
                    NetworkFilter::HttpConnectionManager(h) => {
                        h.access_log = log.cloned().into_iter().collect();
                        h.tracing = tracing.cloned();
                    }
                }
            }
        }
    }
}

fn http_protocols() -> Vec<String> {
    HTTP_PROTOCOLS.iter().map(|s| s.to_string()).collect()
}

fn hcm(stat_prefix: String, route: String) -> NetworkFilter {
    NetworkFilter::HttpConnectionManager(Box::new(HttpConnectionManager {
        stat_prefix,
        rds: Some(Rds {
            route_config_name: route,
        }),
        ..HttpConnectionManager::default()
    }))
}

/// Where a VirtualService's `tcp` or `tls` rule sends a connection: one cluster, or weighted
/// clusters.
type TcpDestination = (Option<String>, Option<WeightedClusters>);

/// A chain for `chain_match` proxying connections to `to`: its stats under the cluster's name,
/// or `stat_prefix` for weighted clusters; idle connections closed after `idle_timeout`.
fn tcp_route_chain(
    chain_match: FilterChainMatch,
    (cluster, weighted_clusters): TcpDestination,
    stat_prefix: &str,
    idle_timeout: Option<Duration>,
) -> FilterChain {
    FilterChain {
        transport_socket: None,
        name: None,
        filter_chain_match: chain_match,
        filters: vec![NetworkFilter::TcpProxy(TcpProxy {
            stat_prefix: cluster.clone().unwrap_or_else(|| stat_prefix.to_string()),
            cluster,
            weighted_clusters,
            idle_timeout,
            ..TcpProxy::default()
        })],
    }
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> NetworkFilter {
    NetworkFilter::TcpProxy(TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster: Some(cluster.to_string()),
        ..TcpProxy::default()
    })
}

/// Whether a chain matches on what only the connection's first bytes tell (SNI, TLS or not,
/// ALPN or HTTP).
fn needs_sniffing(m: &FilterChainMatch) -> bool {
    !m.server_names.is_empty()
        || m.transport_protocol.is_some()
        || !m.application_protocols.is_empty()
}

/// How long an outbound listener sniffs for HTTP before treating the connection as TCP.
fn sniff_timeout() -> Duration {
    Duration::from_millis(100)
}

fn outbound_listener(
    ip: IpAddr,
    port: u16,
    chains: Vec<FilterChain>,
    default: Option<FilterChain>,
    sniffs: bool,
) -> Listener {
    Listener {
        name: names::listener_name(ip, port),
        address: Address::new(ip, port),
        traffic_direction: TrafficDirection::Outbound,
        use_original_dst: false,
        bind_to_port: false,
        filter_chains: chains,
        default_filter_chain: default,
        listener_filters_timeout: sniffs.then(sniff_timeout),
    }
}

impl<'v, 'a> Ctx<'v, 'a> {
    fn ns(&self) -> &str {
        &self.scope.namespace
    }

    fn catch_all_cluster(&self) -> &'static str {
        match self.mode {
            OutboundTrafficPolicyMode::AllowAny => PASSTHROUGH_CLUSTER,
            OutboundTrafficPolicyMode::RegistryOnly => BLACKHOLE_CLUSTER,
        }
    }

    /// The egress listener of the Sidecar that governs `port`: the one bound to that port, else
    /// the one without a port. `None` inside `Some` means the port is not exposed at all.
    fn egress_for(&self, port: u16) -> Option<Option<&'a IstioEgressListener>> {
        let sc = self.sidecar?;
        if sc.spec.egress.is_empty() {
            return None; // ingress-only Sidecar: egress unrestricted
        }
        let by_port = sc
            .spec
            .egress
            .iter()
            .find(|e| e.port.as_ref().is_some_and(|p| p.number == u32::from(port)));
        Some(by_port.or_else(|| sc.spec.egress.iter().find(|e| e.port.is_none())))
    }

    fn visible_ports(&self) -> Vec<Visible<'v>> {
        let mut out = Vec::new();
        for svc in &self.view.registry.services {
            // A ServiceEntry's `exportTo` holds in its own namespace too (`~`: nowhere).
            let own = svc.namespace == self.ns() && svc.entry.is_none();
            if !svc.exported_to(self.ns()) && !own {
                continue;
            }
            for port in &svc.ports {
                let mut protocol = port.protocol;
                match self.egress_for(port.port) {
                    None => {}
                    Some(None) => continue,
                    Some(Some(listener)) => {
                        let exposed = listener.hosts.iter().any(|h| {
                            EgressHost::parse(h)
                                .is_some_and(|eh| eh.exposes(self.ns(), &svc.namespace, &svc.fqdn))
                        });
                        if !exposed {
                            continue;
                        }
                        if let Some(p) = listener.port.as_ref().and_then(|p| p.protocol.as_deref())
                        {
                            protocol = Protocol::parse(p);
                        }
                    }
                }
                if protocol.listener() == ListenerProtocol::None {
                    continue;
                }
                if port.port == well_known::OUTBOUND_CAPTURE_PORT
                    || port.port == well_known::INBOUND_CAPTURE_PORT
                {
                    continue;
                }
                out.push(Visible {
                    svc,
                    port,
                    protocol,
                });
            }
        }
        out
    }

    /// Whether the scope's Sidecar egress selects a VirtualService (namespace part against the
    /// VirtualService's namespace, host part against its hosts), as Istio's egress listeners do.
    fn egress_selects(&self, vs_ns: &str, vs_hosts: &[String]) -> bool {
        let Some(sc) = self.sidecar else { return true };
        if sc.spec.egress.is_empty() {
            return true;
        }
        sc.spec
            .egress
            .iter()
            .flat_map(|e| &e.hosts)
            .filter_map(|h| EgressHost::parse(h))
            .any(|eh| {
                let ns_ok = match eh.namespace {
                    "*" => true,
                    "~" => false,
                    "." => vs_ns == self.ns(),
                    other => other == vs_ns,
                };
                ns_ok
                    && vs_hosts
                        .iter()
                        .any(|h| host_matches(eh.host, h) || host_matches(h, eh.host))
            })
    }

    /// The VirtualService that routes `fqdn` for this scope: visible (exportTo), for the mesh
    /// (`gateways` empty or `mesh`), selected by the Sidecar; an exact host beats a wildcard,
    /// a longer wildcard a shorter one, then the oldest wins.
    fn virtual_service_for(&self, fqdn: &str) -> Option<(&'a ObjKey, &'a VirtualService)> {
        let mut best: Option<(VsRank, VsRef<'a>)> = None;
        for i in self.view.vs_by_host.candidates(fqdn) {
            let (key, vs) = self.view.virtual_services[i];
            if !exported(&vs.spec.export_to, &key.namespace, self.ns()) {
                continue;
            }
            if !(vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")) {
                continue;
            }
            let hosts = &self.view.vs_hosts[i];
            let rank = hosts
                .iter()
                .filter(|h| host_matches(h, fqdn))
                .map(|h| {
                    if h == fqdn {
                        (0u8, 0usize)
                    } else {
                        (1, usize::MAX - h.len())
                    }
                })
                .min();
            let Some(rank) = rank else { continue };
            if !self.egress_selects(&key.namespace, hosts) {
                continue;
            }
            // `virtual_services` is oldest first, so a strict comparison keeps the oldest.
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, (key, vs)));
            }
        }
        best.map(|(_, v)| v)
    }

    /// The DestinationRule for `svc` in this scope: the scope's namespace first, then the
    /// service's, then the root namespace's; an exact host beats a wildcard, then the oldest.
    fn destination_rule_for(&self, svc: &Svc) -> Option<(&'a ObjKey, &'a DestinationRule)> {
        let root = &self.view.index.mesh.root_namespace;
        let mut best: Option<(DrRank, DrRef<'a>)> = None;
        for i in self.view.dr_by_host.candidates(&svc.fqdn) {
            let (key, dr) = self.view.destination_rules[i];
            let ns_rank = if key.namespace == self.ns() {
                0
            } else if key.namespace == svc.namespace {
                1
            } else if &key.namespace == root {
                2
            } else {
                continue;
            };
            if key.namespace != self.ns()
                && !exported(&dr.spec.export_to, &key.namespace, self.ns())
            {
                continue;
            }
            if let Some(sel) = &dr.spec.workload_selector
                && !sel.match_labels.is_empty()
            {
                let applies = self
                    .selector
                    .is_some_and(|l| sel.match_labels.iter().all(|(k, v)| l.get(k) == Some(v)));
                if !applies || key.namespace != self.ns() {
                    continue;
                }
            }
            let host = &self.view.dr_hosts[i];
            if !host_matches(host, &svc.fqdn) {
                continue;
            }
            let host_rank = if *host == svc.fqdn {
                (0u8, 0usize)
            } else {
                (1, usize::MAX - host.len())
            };
            let rank = (ns_rank, host_rank.0, host_rank.1);
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, (key, dr)));
            }
        }
        best.map(|(_, v)| v)
    }

    /// Registers the default cluster of a port and one per subset of its DestinationRule.
    fn want_service_port(&mut self, svc: &'v Svc, port: &'v SvcPort) {
        let name = ClusterName::outbound(port.port, "", &svc.fqdn).to_string();
        self.wanted.insert(
            name,
            Wanted {
                svc,
                port,
                subset: None,
            },
        );
        if let Some((_, dr)) = self.destination_rule_for(svc) {
            for s in &dr.spec.subsets {
                let name = ClusterName::outbound(port.port, &s.name, &svc.fqdn).to_string();
                self.wanted.insert(
                    name,
                    Wanted {
                        svc,
                        port,
                        subset: Some(s.name.as_str()),
                    },
                );
            }
        }
    }

    /// The `0.0.0.0_<port>` listener of an HTTP port.
    fn http_port_listener(&self, port: u16) -> Listener {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let chain = FilterChain {
            transport_socket: None,
            name: None,
            filter_chain_match: FilterChainMatch {
                transport_protocol: Some(RAW_BUFFER.to_string()),
                application_protocols: http_protocols(),
                ..FilterChainMatch::default()
            },
            filters: vec![hcm(
                names::outbound_stat_prefix(any, port),
                names::outbound_route_name(port, None),
            )],
        };
        outbound_listener(any, port, vec![chain], Some(self.catch_all_chain()), true)
    }

    /// The default chain of a port's wildcard listener: where unknown destinations go.
    fn catch_all_chain(&self) -> FilterChain {
        let catch_all = self.catch_all_cluster();
        FilterChain {
            transport_socket: None,
            name: Some(match self.mode {
                OutboundTrafficPolicyMode::AllowAny => "PassthroughFilterChain".to_string(),
                OutboundTrafficPolicyMode::RegistryOnly => "BlackHoleFilterChain".to_string(),
            }),
            filter_chain_match: FilterChainMatch::default(),
            filters: vec![tcp_proxy(catch_all, catch_all)],
        }
    }

    /// The `0.0.0.0_<port>` listener of ServiceEntry hosts' TLS ports without addresses: a
    /// chain per host matching its name as the SNI (a wildcard host as a wildcard), in name
    /// order, each to the host's cluster; anything else (another name, no SNI, plain text) to
    /// the catch-all, as Istio renders it.
    fn sni_listener(&mut self, port: u16, members: &[Visible<'v>]) -> Listener {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mut seen = BTreeSet::new();
        let mut chains = Vec::new();
        for v in members {
            // The host's VirtualService `tls` rules first: their SNI names take the
            // connection to the rules' destinations (the first chain for a name wins).
            for chain in self.tls_chains(v) {
                let m = &chain.filter_chain_match;
                let mut key = m.server_names.join(",");
                if !m.source_labels.is_empty() {
                    key.push_str(&format!(" {:?}", m.source_labels));
                }
                if m.prefix_ranges.is_empty() && !seen.insert(key) {
                    continue;
                }
                chains.push(chain);
            }
            let name = v.svc.fqdn.trim_end_matches('.').to_string();
            if !seen.insert(name.to_ascii_lowercase()) {
                continue;
            }
            for mut chain in self.tcp_chains(v) {
                chain.filter_chain_match.server_names = vec![name.clone()];
                chains.push(chain);
            }
        }
        outbound_listener(any, port, chains, Some(self.catch_all_chain()), true)
    }

    /// The chains on `0.0.0.0_<port>` of ServiceEntry hosts with CIDR blocks (`members`, in
    /// name order): per host, a TLS or HTTPS port's `tls` rules (by SNI) and then, unless a
    /// rule matches everything, its TCP chains, each matching an original destination in the
    /// host's blocks (a rule's own `destinationSubnets` stay). A protocol-less port is
    /// proxied as TCP there (no HTTP routing by host for a block). Of equal matches (two
    /// entries with one block), the first host's holds.
    fn cidr_chains(&mut self, members: &[Visible<'v>]) -> Vec<FilterChain> {
        let mut out: Vec<FilterChain> = Vec::new();
        for v in members {
            let cidrs = v
                .svc
                .entry
                .as_ref()
                .map(|e| e.cidrs.clone())
                .unwrap_or_default();
            let mut chains = if matches!(v.protocol, Protocol::Tls | Protocol::Https) {
                self.tls_chains(v)
            } else {
                Vec::new()
            };
            if !chains.iter().any(|c| c.filter_chain_match.is_empty()) {
                chains.extend(self.tcp_chains(v));
            }
            for mut chain in chains {
                if chain.filter_chain_match.prefix_ranges.is_empty() {
                    chain.filter_chain_match.prefix_ranges = cidrs.clone();
                }
                if !out
                    .iter()
                    .any(|c| c.filter_chain_match == chain.filter_chain_match)
                {
                    out.push(chain);
                }
            }
        }
        out
    }

    /// The TCP chains of a TCP or auto port: to the service's cluster, or where the
    /// VirtualService's first applicable `tcp` rule sends it. Rules applying only to pods with
    /// `sourceLabels` come first, a chain each carrying the labels; the last chain applies to
    /// every pod.
    fn tcp_chains(&mut self, v: &Visible<'v>) -> Vec<FilterChain> {
        let default = ClusterName::outbound(v.port.port, "", &v.svc.fqdn).to_string();
        let idle_timeout = self.tcp_idle_timeout(v);
        let mut routes = self.tcp_routes(v);
        if routes.last().is_none_or(|(labels, _)| !labels.is_empty()) {
            routes.push((Labels::new(), None));
        }
        routes
            .into_iter()
            .map(|(source_labels, to)| {
                tcp_route_chain(
                    FilterChainMatch {
                        source_labels,
                        ..FilterChainMatch::default()
                    },
                    to.unwrap_or_else(|| (Some(default.clone()), None)),
                    &default,
                    idle_timeout,
                )
            })
            .collect()
    }

    /// The SNI chains of a TLS or HTTPS port from the `tls` rules of the service's
    /// VirtualService (Istio's sidecar TLS routes): for each match applying to the port (no
    /// `port` or the service's; no `gateways` or one naming `mesh`; no `sourceNamespace` or
    /// this scope's), a chain for its `sniHosts` ([`server_names`]) and `destinationSubnets`
    /// (prefix ranges) proxying the bytes unopened to the rule's destinations. A later match
    /// with the same names and ranges is left out: the first applies, as in Istio's order.
    fn tls_chains(&mut self, v: &Visible<'v>) -> Vec<FilterChain> {
        let Some((key, vs)) = self.virtual_service_for(&v.svc.fqdn) else {
            return Vec::new();
        };
        let idle_timeout = self.tcp_idle_timeout(v);
        let mut out: Vec<FilterChain> = Vec::new();
        for rule in &vs.spec.tls {
            for m in &rule.match_ {
                let applies = m.port.is_none_or(|p| p == u32::from(v.port.port))
                    && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                    && m.source_namespace.as_deref().is_none_or(|n| n == self.ns());
                if !applies {
                    continue;
                }
                let chain_match = FilterChainMatch {
                    server_names: server_names(&m.sni_hosts),
                    prefix_ranges: m
                        .destination_subnets
                        .iter()
                        .filter_map(|s| CidrRange::parse(s))
                        .collect(),
                    source_labels: m.source_labels.clone(),
                    ..FilterChainMatch::default()
                };
                if out.iter().any(|c| c.filter_chain_match == chain_match) {
                    continue;
                }
                let Some(to) = self.tcp_destinations(&rule.route, &key.namespace, v.port.port)
                else {
                    continue;
                };
                out.push(tcp_route_chain(
                    chain_match,
                    to,
                    &ClusterName::outbound(v.port.port, "", &v.svc.fqdn).to_string(),
                    idle_timeout,
                ));
            }
        }
        out
    }

    fn tcp_idle_timeout(&self, v: &Visible<'v>) -> Option<Duration> {
        let (_, dr) = self.destination_rule_for(v.svc)?;
        let policy = clusters::merged_policy(&dr.spec, v.port.port, None);
        policy.pool?.tcp.as_ref()?.idle_timeout
    }

    /// Where the VirtualService's `tcp` rules applying to this port send a connection, per
    /// [`tcp_rules_by_source`] (`None`: a rule without destinations, the service's cluster).
    fn tcp_routes(&mut self, v: &Visible<'v>) -> Vec<(Labels, Option<TcpDestination>)> {
        let Some((key, vs)) = self.virtual_service_for(&v.svc.fqdn) else {
            return Vec::new();
        };
        let ns = self.ns().to_string();
        let rules = tcp_rules_by_source(&vs.spec.tcp, |m| {
            m.port.is_none_or(|p| p == u32::from(v.port.port))
                && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                && m.source_namespace.as_deref().is_none_or(|n| n == ns)
                && (m.destination_subnets.is_empty()
                    || m.destination_subnets.iter().any(|s| {
                        v.svc
                            .vips()
                            .into_iter()
                            .any(|ip| CidrRange::parse(s).is_some_and(|c| c.contains(ip)))
                    }))
        });
        rules
            .into_iter()
            .map(|(labels, rule)| {
                let to = self.tcp_destinations(&rule.route, &key.namespace, v.port.port);
                (labels, to)
            })
            .collect()
    }

    /// Where a VirtualService's `tcp` or `tls` rule (its `route`) sends a connection to `port`
    /// (short hosts resolved in `vs_ns`): one cluster, or weighted clusters; `None` without
    /// destinations.
    fn tcp_destinations(
        &mut self,
        route: &[rustmesh_api::virtual_service::RouteDestination],
        vs_ns: &str,
        port: u16,
    ) -> Option<TcpDestination> {
        let dests: Vec<(String, u32)> = route
            .iter()
            .filter(|d| route.len() == 1 || d.weight.unwrap_or(0) > 0)
            .map(|d| {
                let c = self.cluster_for(&d.destination, vs_ns, port);
                (
                    c,
                    d.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(100),
                )
            })
            .collect();
        match dests.as_slice() {
            [] => None,
            [(c, _)] => Some((Some(c.clone()), None)),
            many => Some((
                None,
                Some(WeightedClusters {
                    clusters: many
                        .iter()
                        .map(|(name, weight)| rustmesh_xds::route::ClusterWeight {
                            name: name.clone(),
                            weight: *weight,
                            ..Default::default()
                        })
                        .collect(),
                }),
            )),
        }
    }

    /// The cluster a destination resolves to in this scope, registered for rendering;
    /// `BlackHoleCluster` when it does not resolve.
    fn cluster_for(
        &mut self,
        d: &rustmesh_api::common::Destination,
        vs_namespace: &str,
        current_port: u16,
    ) -> String {
        let host = resolve_host(&d.host, vs_namespace, self.view.domain_suffix());
        let Some(svc) = self.view.registry.get(&host) else {
            return BLACKHOLE_CLUSTER.to_string();
        };
        let port = match d.port {
            Some(p) => u16::try_from(p.number).ok().and_then(|n| svc.port(n)),
            None if svc.ports.len() == 1 => svc.ports.first(),
            None => svc.port(current_port),
        };
        let Some(port) = port else {
            return BLACKHOLE_CLUSTER.to_string();
        };
        let subset = match d.subset.as_deref() {
            None => None,
            Some(name) => {
                let dr = self.destination_rule_for(svc);
                match dr.and_then(|(_, dr)| dr.spec.subsets.iter().find(|s| s.name == name)) {
                    Some(s) => Some(s.name.as_str()),
                    None => return BLACKHOLE_CLUSTER.to_string(),
                }
            }
        };
        let name = ClusterName::outbound(port.port, subset.unwrap_or(""), &svc.fqdn).to_string();
        // Register the destination service's port (default cluster and subsets) for rendering.
        let svc: &'v Svc = self.view_svc(&svc.fqdn);
        let port: &'v SvcPort = svc.port(port.port).expect("port exists");
        self.want_service_port(svc, port);
        name
    }

    fn view_svc(&self, fqdn: &str) -> &'v Svc {
        self.view.registry.get(fqdn).expect("service exists")
    }

    fn virtual_outbound(&self) -> Listener {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let catch_all = self.catch_all_cluster();
        Listener {
            name: VIRTUAL_OUTBOUND.to_string(),
            address: Address::new(any, well_known::OUTBOUND_CAPTURE_PORT),
            traffic_direction: TrafficDirection::Outbound,
            use_original_dst: true,
            bind_to_port: true,
            filter_chains: vec![
                FilterChain {
                    transport_socket: None,
                    name: Some("virtualOutbound-blackhole".to_string()),
                    filter_chain_match: FilterChainMatch {
                        destination_port: Some(well_known::OUTBOUND_CAPTURE_PORT),
                        ..FilterChainMatch::default()
                    },
                    filters: vec![tcp_proxy(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
                },
                FilterChain {
                    transport_socket: None,
                    name: Some("virtualOutbound-catchall-tcp".to_string()),
                    filter_chain_match: FilterChainMatch::default(),
                    filters: vec![tcp_proxy(catch_all, catch_all)],
                },
            ],
            default_filter_chain: None,
            listener_filters_timeout: None,
        }
    }

    /// Inbound ports of this scope: from the Sidecar's `ingress` when it has one, else from the
    /// namespace's services whose pods use this scope. Returns the virtualInbound chains for the
    /// ports and their `inbound|<port>||` clusters.
    fn inbound(&self) -> (Vec<FilterChain>, Vec<Cluster>) {
        // port -> (listener protocols, services, endpoint)
        let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ingress = self
            .sidecar
            .map(|s| s.spec.ingress.as_slice())
            .unwrap_or(&[]);
        if !ingress.is_empty() {
            for ing in ingress {
                let Ok(number) = u16::try_from(ing.port.number) else {
                    continue;
                };
                let protocol = ing
                    .port
                    .protocol
                    .as_deref()
                    .map(Protocol::parse)
                    .unwrap_or_else(|| {
                        Protocol::of_service_port(number, ing.port.name.as_deref(), None, None)
                    });
                // Validation refuses the endpoints rustmesh cannot deliver (Unix sockets, the
                // pod's address on another port).
                let endpoint = match ing
                    .default_endpoint
                    .as_deref()
                    .and_then(DefaultEndpoint::parse)
                {
                    Some(DefaultEndpoint::Loopback(ip, port)) => {
                        InboundEndpoint::Loopback(ip, port)
                    }
                    Some(DefaultEndpoint::Instance(_)) => InboundEndpoint::OriginalDst,
                    Some(DefaultEndpoint::Unix(_)) => continue,
                    // No endpoint: the pod's own address, as Istio (1.10+) forwards; a
                    // targetPort other than the port keeps the loopback form it names.
                    None => match ing.port.target_port.and_then(|t| u16::try_from(t).ok()) {
                        Some(target) if target != number => {
                            InboundEndpoint::Loopback(loopback, target)
                        }
                        _ => InboundEndpoint::OriginalDst,
                    },
                };
                let entry = ports.entry(number).or_insert_with(|| InboundPort {
                    protocols: BTreeSet::new(),
                    services: BTreeSet::new(),
                    endpoint,
                    operations: BTreeSet::new(),
                });
                entry.protocols.insert(protocol.listener());
            }
        } else {
            let index = self.view.scope_index(self.ns());
            let my_key = self.scope.key();
            for svc in self
                .view
                .registry
                .services
                .iter()
                .filter(|s| s.namespace == self.ns() && s.entry.is_none())
            {
                if !serves_scope(svc, &index, &my_key) {
                    continue;
                }
                for p in &svc.ports {
                    let lp = p.protocol.listener();
                    let Some(target) = p.target_port else {
                        continue;
                    };
                    if lp == ListenerProtocol::None || is_proxy_port(target) {
                        continue;
                    }
                    // Istio 1.10+: to the pod's own address (the connection's original
                    // destination), from 127.0.0.6, so an app bound to its pod IP is reachable
                    // and one bound to 127.0.0.1 stays private.
                    let entry = ports.entry(target).or_insert_with(|| InboundPort {
                        protocols: BTreeSet::new(),
                        services: BTreeSet::new(),
                        endpoint: InboundEndpoint::OriginalDst,
                        operations: BTreeSet::new(),
                    });
                    entry
                        .operations
                        .insert(format!("{}:{}/*", svc.fqdn, p.port));
                    entry.protocols.insert(lp);
                    entry.services.insert(ServiceRef {
                        host: svc.fqdn.clone(),
                        name: svc.name.clone(),
                        namespace: svc.namespace.clone(),
                        selector: self.view.index.service_selector(&svc.namespace, &svc.name),
                    });
                }
            }
        }
        let mtls = self.view.index.mesh.ca_host.is_some();
        let mut chains = Vec::new();
        let mut clusters = Vec::new();
        for (port, ip) in &ports {
            let cluster = ClusterName::inbound(*port).to_string();
            let chain_name = names::listener_name(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port);
            let http = ip.protocols.contains(&ListenerProtocol::Http)
                || ip.protocols.contains(&ListenerProtocol::Auto);
            let hcm = || {
                NetworkFilter::HttpConnectionManager(Box::new(HttpConnectionManager {
                    stat_prefix: format!("inbound_0.0.0.0_{port}"),
                    rds: None,
                    route_config: Some(routes::inbound_route_table(
                        &cluster,
                        *port,
                        match ip.operations.len() {
                            1 => ip.operations.first().cloned(),
                            _ => None,
                        },
                    )),
                    ..HttpConnectionManager::default()
                }))
            };
            let chain =
                |transport: Option<&str>, alpn: &[&str], filter: NetworkFilter| FilterChain {
                    transport_socket: None,
                    name: Some(chain_name.clone()),
                    filter_chain_match: FilterChainMatch {
                        destination_port: Some(*port),
                        transport_protocol: transport.map(str::to_string),
                        application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
                        ..FilterChainMatch::default()
                    },
                    filters: vec![filter],
                };
            // With a mesh CA, Istio's PERMISSIVE mutual TLS chains come first: a sidecar's
            // connection (`tls` with Istio's ALPN) is terminated, HTTP to the connection manager,
            // TCP (`istio-peer-exchange`/`istio`) to the TCP proxy. Whether plain text is still
            // served (STRICT, DISABLE) is the proxy's decision (its PeerAuthentication).
            if mtls && http {
                chains.push(with_mtls(
                    chain(Some(TLS), &ALPN_ISTIO_HTTP, hcm()),
                    &ALPN_HTTP_DOWNSTREAM,
                ));
                chains.push(with_mtls(
                    chain(Some(TLS), &ALPN_ISTIO_TCP, tcp_proxy(&cluster, &cluster)),
                    &ALPN_ISTIO_TCP,
                ));
            } else if mtls {
                chains.push(with_mtls(
                    chain(Some(TLS), &ALPN_ISTIO_ALL, tcp_proxy(&cluster, &cluster)),
                    &ALPN_ISTIO_TCP,
                ));
            }
            if http {
                chains.push(chain(Some(RAW_BUFFER), &HTTP_PROTOCOLS, hcm()));
            }
            // With an HTTP chain naming `raw_buffer`, Envoy's matching (and the proxy's) no longer
            // considers chains without a transport protocol for plain-text connections: the TCP
            // fallback names `raw_buffer` too, and TLS gets its own chain (Istio's inbound shape:
            // `Trans: raw_buffer; Addr: *:80` and `Trans: tls; Addr: *:80`). The same holds for
            // the `tls` of a mutual TLS chain: an app's own TLS (other ALPN) keeps a `tls` chain.
            let transports: &[Option<&str>] = if http || mtls {
                &[Some(RAW_BUFFER), Some(TLS)]
            } else {
                &[None]
            };
            for transport in transports {
                chains.push(chain(*transport, &[], tcp_proxy(&cluster, &cluster)));
            }
            clusters.push(clusters::inbound_cluster(
                &cluster,
                ip.endpoint,
                &ip.services,
            ));
        }
        (chains, clusters)
    }
}

/// Precedence of a VirtualService for a host (lower wins).
type VsRank = (u8, usize);
type VsRef<'a> = (&'a ObjKey, &'a VirtualService);
/// Precedence of a DestinationRule for a service (lower wins).
type DrRank = (u8, u8, usize);
type DrRef<'a> = (&'a ObjKey, &'a DestinationRule);

struct InboundPort {
    protocols: BTreeSet<ListenerProtocol>,
    /// (fqdn, name, namespace)
    services: BTreeSet<ServiceRef>,
    /// Where the app is reached.
    endpoint: InboundEndpoint,
    /// Its spans' names, one per service on the port (`<host>:<service port>/*`, Istio's
    /// inbound decorator). Rendered when there is one; with several (a namespace's config is
    /// shared by pods of different services), the sidecar names its spans after the service
    /// that selects its pod.
    operations: BTreeSet<String>,
}

/// Where an inbound cluster delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundEndpoint {
    /// The connection's original destination (the pod's own address and the port), from
    /// 127.0.0.6: `ORIGINAL_DST`, Istio's inbound cluster since 1.10.
    OriginalDst,
    /// A loopback address and port (a Sidecar ingress `defaultEndpoint: 127.0.0.1:PORT`).
    Loopback(IpAddr, u16),
}

/// Whether a service of the namespace counts as served by the pods of scope `key` (so its
/// ports are that scope's inbound ports): some pod behind it selects that scope, or, with no
/// pods known, the namespace scope.
pub fn serves_scope(svc: &Svc, index: &ScopeIndex, key: &str) -> bool {
    let mut pods = svc
        .ports
        .iter()
        .flat_map(|p| &p.endpoints)
        .filter(|e| e.pod.is_some())
        .peekable();
    if pods.peek().is_none() {
        return key == index.default;
    }
    pods.any(|e| xscope::select_scope(index, &e.labels, xscope::ProxyRole::Sidecar) == key)
}

fn is_proxy_port(port: u16) -> bool {
    [
        well_known::OUTBOUND_CAPTURE_PORT,
        well_known::INBOUND_CAPTURE_PORT,
        well_known::ADMIN_PORT,
        well_known::AGENT_STATUS_PORT,
        well_known::HEALTH_PORT,
        well_known::DNS_PORT,
        well_known::PROMETHEUS_PORT,
        well_known::TUNNEL_PORT,
    ]
    .contains(&port)
}

/// The `serverNames` of a chain for SNI hosts (a VirtualService's `sniHosts`, a gateway
/// server's hosts without their `namespace/` part): sorted, once each; none (any name) when
/// one of them is `*`.
pub(crate) fn server_names<S: AsRef<str>>(hosts: &[S]) -> Vec<String> {
    let mut out: Vec<String> = hosts.iter().map(|h| h.as_ref().to_string()).collect();
    if out.iter().any(|h| h == "*") {
        return Vec::new();
    }
    out.sort();
    out.dedup();
    out
}

/// The chain terminating Istio's mutual TLS, accepting ALPN `alpn` (the chain matches
/// `transportProtocol: tls` and the client's Istio ALPN).
fn with_mtls(chain: FilterChain, alpn: &[&str]) -> FilterChain {
    FilterChain {
        transport_socket: Some(DownstreamTransportSocket::Tls(istio_downstream(alpn))),
        ..chain
    }
}

/// virtualInbound: the BlackHole chain of 15006 itself, the inbound ports' chains, and the
/// passthrough to the original destination for any other port. With a mesh CA (`mtls`), the
/// passthrough has Istio's mutual TLS twin (`tls` with Istio's ALPN, terminated) and, as on the
/// ports, `raw_buffer` and `tls` (an app's own TLS) forms.
fn virtual_inbound(port_chains: Vec<FilterChain>, mtls: bool) -> Listener {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut chains = vec![FilterChain {
        transport_socket: None,
        name: Some("virtualInbound-blackhole".to_string()),
        filter_chain_match: FilterChainMatch {
            destination_port: Some(well_known::INBOUND_CAPTURE_PORT),
            ..FilterChainMatch::default()
        },
        filters: vec![tcp_proxy(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
    }];
    chains.extend(port_chains);
    let passthrough = |transport: Option<&str>, alpn: &[&str]| FilterChain {
        transport_socket: None,
        name: Some(VIRTUAL_INBOUND.to_string()),
        filter_chain_match: FilterChainMatch {
            prefix_ranges: vec![CidrRange {
                address_prefix: any,
                prefix_len: 0,
            }],
            transport_protocol: transport.map(str::to_string),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..FilterChainMatch::default()
        },
        filters: vec![tcp_proxy(
            INBOUND_PASSTHROUGH_CLUSTER_V4,
            INBOUND_PASSTHROUGH_CLUSTER_V4,
        )],
    };
    if mtls {
        chains.push(with_mtls(
            passthrough(Some(TLS), &ALPN_ISTIO_ALL),
            &ALPN_ISTIO_TCP,
        ));
        chains.push(passthrough(Some(RAW_BUFFER), &[]));
        chains.push(passthrough(Some(TLS), &[]));
    } else {
        chains.push(passthrough(None, &[]));
    }
    Listener {
        name: VIRTUAL_INBOUND.to_string(),
        address: Address::new(any, well_known::INBOUND_CAPTURE_PORT),
        traffic_direction: TrafficDirection::Inbound,
        use_original_dst: true,
        bind_to_port: true,
        filter_chains: chains,
        default_filter_chain: None,
        listener_filters_timeout: None,
    }
}

/// PassthroughCluster, BlackHoleCluster, InboundPassthroughClusterIpv4.
fn static_clusters() -> Vec<Cluster> {
    clusters::static_clusters()
}

/// The DNS table: every visible service, by FQDN with the short forms a client may use.
/// The name table plus the mesh CA's Service ([`crate::MeshConfig::ca_host`]), whether or not
/// the scope's Sidecar makes it visible: the sidecar itself must find its CA.
fn with_ca_name(mut dns: Vec<DnsEntry>, view: &MeshView<'_>, client_ns: &str) -> Vec<DnsEntry> {
    let Some(host) = &view.index.mesh.ca_host else {
        return dns;
    };
    if dns.iter().any(|d| &d.name == host) {
        return dns;
    }
    if let Some(entry) = view.registry.get(host).map(|svc| dns_entry(svc, client_ns))
        && !entry.addresses.is_empty()
    {
        let at = dns.partition_point(|d| d.name < entry.name);
        dns.insert(at, entry);
    }
    dns
}

fn dns_entry(svc: &crate::registry::Svc, client_ns: &str) -> DnsEntry {
    if let Some(entry) = &svc.entry {
        // A ServiceEntry host: its addresses (given or allocated), no short forms; none for a
        // wildcard or an IP host, which the DNS proxy cannot or need not answer.
        let named = !svc.fqdn.contains('*') && svc.fqdn.parse::<IpAddr>().is_err();
        let mut addresses = if named {
            entry.addresses.clone()
        } else {
            Vec::new()
        };
        addresses.sort();
        addresses.dedup();
        return DnsEntry {
            name: svc.fqdn.trim_end_matches('.').to_string(),
            aliases: Vec::new(),
            addresses,
        };
    }
    let mut aliases = vec![
        format!("{}.{}", svc.name, svc.namespace),
        format!("{}.{}.svc", svc.name, svc.namespace),
    ];
    if svc.namespace == client_ns {
        aliases.push(svc.name.clone());
    }
    aliases.sort();
    let mut addresses: Vec<IpAddr> = match svc.cluster_ip {
        Some(ip) => vec![ip],
        None => svc
            .ports
            .iter()
            .flat_map(|p| p.endpoints.iter().map(|e| e.ip))
            .collect(),
    };
    addresses.sort();
    addresses.dedup();
    DnsEntry {
        name: svc.fqdn.clone(),
        aliases,
        addresses,
    }
}

fn dns_entries(visible: &[Visible<'_>], client_ns: &str) -> Vec<DnsEntry> {
    let mut by_fqdn: BTreeMap<&str, DnsEntry> = BTreeMap::new();
    for v in visible {
        by_fqdn
            .entry(&v.svc.fqdn)
            .or_insert_with(|| dns_entry(v.svc, client_ns));
    }
    by_fqdn
        .into_values()
        .filter(|d| !d.addresses.is_empty())
        .collect()
}

/// The content of a scope's configuration minus `versionInfo`, for callers that need to compare.
pub fn without_version(mut config: ProxyConfig) -> ProxyConfig {
    config.version_info.clear();
    config
}

/// Cluster and endpoint lists and the EDS recipes, for [`clusters`] to fill.
type ClusterParts = (Vec<Cluster>, Vec<ClusterLoadAssignment>, EdsRecipes);

/// The `tcp` rules of a VirtualService that can apply to a proxy, in order, each with the
/// `sourceLabels` its pod must carry (empty: every pod), up to the first rule that applies to
/// every pod. Istio picks, per proxy, the first rule with a match that `applies` accepts and
/// whose `sourceLabels` the proxy's pod carries (a rule without matches applies to all). One
/// rustmesh document serves every pod of a scope, so it lists the candidates, each chain
/// carrying its labels, and the proxy keeps the first its pod's labels allow
/// (`FilterChainMatch::source_labels`).
pub(crate) fn tcp_rules_by_source(
    rules: &[rustmesh_api::virtual_service::TcpRoute],
    applies: impl Fn(&rustmesh_api::virtual_service::L4MatchAttributes) -> bool,
) -> Vec<(Labels, &rustmesh_api::virtual_service::TcpRoute)> {
    let mut out = Vec::new();
    for rule in rules {
        let mut label_sets: Vec<&Labels> = Vec::new();
        for m in rule.match_.iter().filter(|m| applies(m)) {
            if !label_sets.contains(&&m.source_labels) {
                label_sets.push(&m.source_labels);
            }
        }
        if rule.match_.is_empty() || label_sets.iter().any(|l| l.is_empty()) {
            out.push((Labels::new(), rule));
            break;
        }
        out.extend(label_sets.into_iter().map(|l| (l.clone(), rule)));
    }
    out
}

#[cfg(test)]
mod delegate_tests;
#[cfg(test)]
mod mtls_tests;
#[cfg(test)]
mod service_entry_tests;
#[cfg(test)]
mod tests;
