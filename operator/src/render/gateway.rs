//! Gateway scopes: the configuration of the pods a Gateway's `selector` selects (an ingress
//! gateway's `proxy run --type router`), as Istio builds a gateway's listeners and routes.
//!
//! Which pods: a Gateway in any namespace selects pods in any namespace whose labels carry its
//! `selector` (Istio's default, `PILOT_SCOPE_GATEWAY_TO_NAMESPACE` off). Each namespace holding
//! such pods gets, in its ConfigMap, one scope per distinct selector ([`scope_selectors`]:
//! more labels first), read only by the gateways' proxies (routers), never by a sidecar whose
//! labels a selector happens to match (`rustmesh_xds::scope::select_scope`).
//! A scope for selector `S` merges every Gateway whose selector is a subset of `S` (they select
//! every pod `S` selects). A pod matching two unrelated selectors (neither a subset of the
//! other) gets only the first scope: the Gateways of the other are not merged into it (a
//! documented limit; Istio merges every Gateway selecting the pod).
//!
//! What a scope holds ([`render`]), as Istio names things:
//! - per distinct server port, one listener `0.0.0.0_<port>` bound to that port
//!   (`bindToPort`, no `useOriginalDst`, `trafficDirection: OUTBOUND`) with one HTTP connection
//!   manager chain whose route table is `http.<port>`; `<port>` is the `targetPort` of the
//!   Service (of the pod's namespace) selecting the gateway pods whose `port` is the server's
//!   (Service port 80, targetPort 8080: `0.0.0.0_8080`, `http.8080`), else the server's number;
//! - in `http.<port>`, one virtual host per host that both a server on that port and a bound
//!   VirtualService name (Istio's host intersection: the more specific of two matching hosts;
//!   a server host `ns/host` only for VirtualServices of `ns`, `./host` of the Gateway's own
//!   namespace), named `<host>:<server port>` with Istio's gateway domains (`*`; `host` and
//!   `host:*`; `*.example.com` and `*.example.com:<server port>`), holding the routes of every
//!   bound VirtualService naming that host (oldest first, catch-all routes moved last as Istio
//!   sorts them); without any, one `blackhole:<server port>` virtual host for `*` with no route
//!   (404);
//! - a VirtualService is bound when its `gateways` names the Gateway (`name` in its own
//!   namespace, `ns/name`), it is exported to the gateway pod's namespace, and its routes are
//!   rendered by the sidecars' own translation (`Ctx::virtual_service_routes`) with route
//!   matches whose `gateways` name another gateway (or only `mesh`) left out;
//! - `tls.httpsRedirect` on a server: its hosts' virtual hosts answer every request with a 301
//!   to `https` (Envoy's `require_tls: ALL` on a plain-text server);
//! - the clusters and endpoints those routes name (the sidecars' cluster rendering, with the
//!   DestinationRules visible from the pod's namespace), the static clusters, the mesh's access
//!   log and tracing, and the namespace's AuthorizationPolicies, RequestAuthentications and
//!   Telemetry (Istio applies those selecting the gateway pod at the gateway); no
//!   PeerAuthentication (a gateway has no inbound mutual TLS listener), no capture listeners.
//!
//! - a TCP server (TCP, MONGO, REDIS, MYSQL) gets instead one TCP proxy chain on its listener:
//!   to where the first applicable `tcp` rule of the oldest bound VirtualService sharing a host
//!   with the server sends connections (a rule without matches, or with a match whose `port`
//!   is the server's number and whose `gateways`, if any, name the Gateway); without one, no
//!   listener (as Istio).
//!
//! - an HTTPS server (`tls.mode` `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL` with a
//!   `credentialName` or files, or `ISTIO_MUTUAL`) gets its own
//!   chain on the port's listener: matched by SNI (`serverNames`: its hosts without their
//!   `namespace/` part, none for `*`; chains with names first) and `transportProtocol: tls`,
//!   terminating TLS with Secret `kubernetes://<credentialName>` (`MUTUAL`: a client
//!   certificate required and verified against `kubernetes://<credentialName>-cacert`;
//!   `OPTIONAL_MUTUAL`: the same validation context, `requireClientCertificate: false`;
//!   `rustmesh_xds::tls::gateway_termination`),
//!   or with the files `serverCertificate`/`privateKey` (`file-cert:<cert>~<key>`, `MUTUAL`
//!   and `OPTIONAL_MUTUAL`: `file-root:<caCertificates>`, and `caCrl` as the context's
//!   `crl`) the gateway pod mounts, or with two of either (`credentialNames`,
//!   `tlsCertificates`: `rustmesh_xds::tls::gateway_termination_with`, the first's CA), or
//!   (`ISTIO_MUTUAL`) with the gateway's workload certificate `default`, a client certificate
//!   required and verified against the mesh root `ROOTCA`, as a sidecar's inbound mutual TLS
//!   (`rustmesh_xds::tls::gateway_istio_mutual`; without the mesh CA the router has no
//!   workload certificate and refuses these connections, and validation warns),
//!   then an HTTP connection manager with Istio's route table
//!   `https.<number>.<port name>.<gateway>.<namespace>` holding that server's virtual hosts as
//!   above. The mesh CA serves the Secret to the gateway's proxy.
//! - a TLS server terminating the same way gets the same chain match and credential, then the
//!   TCP proxy of its `tcp` route (as a TCP server's);
//! - a `PASSTHROUGH` server (HTTPS or TLS; the default mode) gets a chain per applicable match
//!   of the bound VirtualServices' `tls` rules (no `port` or the server's; no `gateways` or
//!   this Gateway; no `sourceNamespace` or the pod's): its `sniHosts` within the server's
//!   hosts as `serverNames`, `transportProtocol: tls`, its `destinationSubnets` as prefix
//!   ranges, and a TCP proxy to the rule's destinations: the client's TLS passes unopened (to
//!   an in-mesh destination inside the mesh's mutual TLS, as Istio's).
//!
//! As Istio merges the Gateways of a pod ([`clashes`]), a listener port has one class of
//! server (HTTP; TCP; HTTPS and TLS), at most one TCP server and one HTTPS or TLS server per
//! set of SNI names; validation warns about the servers left out. Two chains with the same
//! match (a later VirtualService naming the same SNI) keep the first, as Envoy refuses both.
//! `AUTO_PASSTHROUGH` is refused by validation by name (`rustmesh_api::gateway`), so an
//! accepted Gateway holds none.

use super::{
    Ctx, EdsRecipes, MeshView, Scope, authz, hcm, request_authn, server_names, static_clusters,
    tcp_route_chain, tcp_rules_by_source, telemetry, with_ca_name, with_mesh_telemetry,
};
use crate::index::{Labels, ObjKey};
use crate::registry::exported;
use rustmesh_api::gateway::{ServerHost, ServerProtocol, resolve_gateway_name};
use rustmesh_api::sidecar::host_matches;
use rustmesh_api::{Gateway, VirtualService};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::address::Address;
use rustmesh_xds::listener::{FilterChain, FilterChainMatch, Listener, TLS, TrafficDirection};
use rustmesh_xds::names;
use rustmesh_xds::route::{RedirectAction, Route, RouteConfiguration, RouteMatch, VirtualHost};
use rustmesh_xds::scope::{ProxyRole, select_scope, selects};
use rustmesh_xds::tls::{
    ClientCerts, DownstreamTlsContext, DownstreamTransportSocket, GatewayCert,
    gateway_istio_mutual, gateway_termination_with,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Istio's gateway route table name for a plain HTTP port: `http.<port>`.
pub fn route_name(port: u16) -> String {
    format!("http.{port}")
}

/// Istio's route table name of an HTTPS server (`gatewayRDSRouteName`):
/// `https.<server port>.<port name>.<gateway name>.<gateway namespace>`.
pub fn https_route_name(number: u16, port_name: &str, gateway: &ObjKey) -> String {
    format!(
        "https.{number}.{port_name}.{}.{}",
        gateway.name, gateway.namespace
    )
}

/// The SNI names a TLS-based server's chain matches (Istio's `getSNIHostsForServer`): its
/// hosts without their `namespace/` part, sorted, once each; none (any name) when one is `*`.
pub fn sni_hosts(server: &rustmesh_api::gateway::Server) -> Vec<String> {
    let hosts: Vec<&str> = server
        .hosts
        .iter()
        .map(|h| ServerHost::parse(h).host)
        .collect();
    server_names(&hosts)
}

/// How servers share a listener port, as Istio merges gateways: plain HTTP ones, TCP ones, and
/// the TLS-based ones (HTTPS and TLS servers, terminating or passing TLS through, told apart by
/// SNI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortClass {
    Http,
    Tcp,
    Tls,
}

impl PortClass {
    /// The class of a server's protocol; `None` for a protocol Istio does not know.
    pub fn of(server: &rustmesh_api::gateway::Server) -> Option<PortClass> {
        match server.protocol() {
            ServerProtocol::Http => Some(PortClass::Http),
            ServerProtocol::Tcp => Some(PortClass::Tcp),
            ServerProtocol::Https | ServerProtocol::Tls => Some(PortClass::Tls),
            ServerProtocol::Unknown => None,
        }
    }

    /// How warnings name it.
    pub fn name(self) -> &'static str {
        match self {
            PortClass::Http => "HTTP",
            PortClass::Tcp => "TCP",
            PortClass::Tls => "HTTPS/TLS",
        }
    }
}

/// Whether server `later` is left out of a listener port that server `earlier` holds (both
/// selected by one gateway pod): one class per port, at most one TCP server, and one
/// TLS-based server per set of SNI names. Rendering and validation's warnings share it.
pub fn clashes(
    earlier: &rustmesh_api::gateway::Server,
    later: &rustmesh_api::gateway::Server,
) -> bool {
    match (PortClass::of(earlier), PortClass::of(later)) {
        (Some(a), Some(b)) if a != b => true,
        (Some(PortClass::Tcp), _) => true,
        (Some(PortClass::Tls), _) => sni_hosts(earlier) == sni_hosts(later),
        _ => false,
    }
}

/// Whether the server is rendered: HTTP and TCP ones; HTTPS and TLS ones that terminate TLS
/// (with a credential, files or, `ISTIO_MUTUAL`, the workload certificate) or pass it through
/// (validation refuses the rest, so an accepted Gateway holds none of them).
fn rendered(server: &rustmesh_api::gateway::Server) -> bool {
    match PortClass::of(server) {
        Some(PortClass::Http | PortClass::Tcp) => true,
        Some(PortClass::Tls) => termination(server).is_some() || passthrough(server),
        None => false,
    }
}

/// Whether a TLS-based server forwards TLS unopened (`tls.mode` `PASSTHROUGH`, the default).
fn passthrough(server: &rustmesh_api::gateway::Server) -> bool {
    PortClass::of(server) == Some(PortClass::Tls) && server.tls_mode() == Some("PASSTHROUGH")
}

/// The distinct non-empty selectors of the rendered Gateways that select a pod of `ns`, each
/// with the Gateways (`<namespace>/<name>`, oldest first) its scope merges (those whose
/// selector is a subset of it); more labels first, then by labels.
pub(super) fn scope_selectors(view: &MeshView<'_>, ns: &str) -> Vec<(Labels, Vec<String>)> {
    if view.gateways.is_empty() {
        return Vec::new();
    }
    // Only gateways' pods: a Gateway selecting a sidecar's labels gives that sidecar nothing.
    let pods: Vec<&Labels> = view
        .index
        .pods_in(ns)
        .filter(|p| p.is_router())
        .map(|p| &p.labels)
        .collect();
    let mut selectors: Vec<&Labels> = view
        .gateways
        .iter()
        .map(|(_, g)| &g.spec.selector)
        .filter(|s| !s.is_empty() && pods.iter().any(|l| selects(s, l)))
        .collect();
    selectors.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    selectors.dedup();
    selectors
        .into_iter()
        .map(|s| {
            let names = scope_gateways(view, s)
                .map(|(k, _)| k.to_string())
                .collect();
            (s.clone(), names)
        })
        .collect()
}

/// The rendered Gateways a scope of selector `selector` merges, oldest first.
fn scope_gateways<'v, 'a>(
    view: &'v MeshView<'a>,
    selector: &'v Labels,
) -> impl Iterator<Item = (&'a ObjKey, &'a Gateway)> + 'v {
    view.gateways
        .iter()
        // `selects`: a Gateway whose (non-empty) selector is a subset of this one's selects
        // every pod this one selects.
        .filter(move |(_, g)| selects(&g.spec.selector, selector))
        .copied()
}

/// Service port → target port, from the Services of the scope's namespace that select one of
/// its gateway pods (Istio maps a Gateway's server port to that `targetPort`).
fn target_ports(view: &MeshView<'_>, scope: &Scope) -> BTreeMap<u16, u16> {
    let ns = scope.namespace.as_str();
    let index = view.scope_index(ns);
    let key = scope.key();
    let pods: Vec<&Labels> = view
        .index
        .pods_in(ns)
        .filter(|p| p.is_router())
        .map(|p| &p.labels)
        .filter(|l| select_scope(&index, l, ProxyRole::Router) == key)
        .collect();
    let mut out = BTreeMap::new();
    for svc in view
        .registry
        .services
        .iter()
        .filter(|s| s.namespace == ns && s.entry.is_none())
    {
        let selector = view.index.service_selector(ns, &svc.name);
        if !pods.iter().any(|l| selects(&selector, l)) {
            continue;
        }
        for p in &svc.ports {
            if let Some(target) = p.target_port {
                out.entry(p.port).or_insert(target);
            }
        }
    }
    out
}

/// One server of a merged listener port.
struct PortServer<'a> {
    gateway: &'a ObjKey,
    server: &'a rustmesh_api::gateway::Server,
    /// The server's own port number (virtual host names, route matches' `port`).
    number: u16,
}

impl PortServer<'_> {
    /// The server's `hosts`, parsed.
    fn hosts(&self) -> Vec<ServerHost<'_>> {
        self.server
            .hosts
            .iter()
            .map(|h| ServerHost::parse(h))
            .collect()
    }
}

/// A virtual host being assembled.
struct VhostAcc {
    name: String,
    domains: Vec<String>,
    routes: Vec<Route>,
    redirect: bool,
}

impl VhostAcc {
    fn new(host: &str, port: u16) -> Self {
        VhostAcc {
            name: format!("{host}:{port}"),
            domains: domains(host, port),
            routes: Vec::new(),
            redirect: false,
        }
    }
}

/// Istio's gateway virtual host domains (`buildGatewayVirtualHostDomains`): `*` alone; a
/// wildcard host with the server's port (one wildcard per domain); any other host also with
/// any port (`host:*`).
pub fn domains(host: &str, port: u16) -> Vec<String> {
    if host == "*" {
        vec![host.to_string()]
    } else if host.starts_with('*') {
        vec![host.to_string(), format!("{host}:{port}")]
    } else {
        vec![host.to_string(), format!("{host}:*")]
    }
}

/// Istio's host intersection (`host.Names.Intersection`): for each pair of a server host and
/// a VirtualService host where one matches the other, the more specific one, once.
pub fn intersect(server: &[&str], vs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in server {
        for v in vs {
            let pick = if host_matches(v, s) {
                Some(s.to_string())
            } else if host_matches(s, v) {
                Some(v.clone())
            } else {
                None
            };
            if let Some(h) = pick
                && !out.contains(&h)
            {
                out.push(h);
            }
        }
    }
    out
}

/// Whether a route matches every request (Istio's `isCatchAllRoute`): prefix `/` (or a regex
/// `.*`) and no header or query parameter condition.
fn catch_all(r: &Route) -> bool {
    let m: &RouteMatch = &r.match_;
    let everything = m.prefix.as_deref() == Some("/")
        || m.safe_regex.as_ref().is_some_and(|re| re.regex == ".*");
    everything && m.headers.is_empty() && m.query_parameters.is_empty()
}

/// The VirtualServices bound to Gateway `gateway` (`<namespace>/<name>`) and exported to the
/// gateway pods' namespace `pod_ns`, oldest first, with their resolved hosts.
fn bound_virtual_services<'v, 'a>(
    view: &'v MeshView<'a>,
    gateway: &'v str,
    pod_ns: &'v str,
) -> impl Iterator<Item = (&'a ObjKey, &'a VirtualService, &'v [String])> + 'v {
    view.virtual_services
        .iter()
        .zip(&view.vs_hosts)
        .filter(move |((key, vs), _)| {
            !vs.spec.hosts.is_empty()
                && vs
                    .spec
                    .gateways
                    .iter()
                    .any(|g| resolve_gateway_name(g, &key.namespace) == gateway)
                && exported(&vs.spec.export_to, &key.namespace, pod_ns)
        })
        .map(|((key, vs), hosts)| (*key, *vs, hosts.as_slice()))
}

/// A VirtualService bound to a server's Gateway that shares a host with the server.
struct Binding<'a, 's> {
    key: &'a ObjKey,
    vs: &'a VirtualService,
    /// The server's hosts that admit the VirtualService (by their `namespace/` part).
    admitted: Vec<&'s str>,
    /// Istio's intersection of those and the VirtualService's hosts (never empty).
    common: Vec<String>,
}

/// The VirtualServices bound to the Gateway of server `ps` and exported to the gateway pods'
/// namespace `pod_ns` that share a host with the server, oldest first.
fn bindings<'a, 's>(
    view: &MeshView<'a>,
    ps: &'s PortServer<'_>,
    pod_ns: &str,
) -> Vec<Binding<'a, 's>> {
    let gateway = ps.gateway.to_string();
    let hosts = ps.hosts();
    bound_virtual_services(view, &gateway, pod_ns)
        .filter_map(|(key, vs, vs_hosts)| {
            let admitted: Vec<&'s str> = hosts
                .iter()
                .filter(|h| h.admits(&key.namespace, &ps.gateway.namespace))
                .map(|h| h.host)
                .collect();
            let common = intersect(&admitted, vs_hosts);
            (!common.is_empty()).then_some(Binding {
                key,
                vs,
                admitted,
                common,
            })
        })
        .collect()
}

/// Renders the gateway scope of `selector` in `scope.namespace` (see the module doc).
pub(super) fn render(
    view: &MeshView<'_>,
    scope: &Scope,
    selector: &Labels,
) -> (ProxyConfig, EdsRecipes) {
    let mut ctx = Ctx {
        view,
        scope,
        sidecar: None,
        selector: Some(selector),
        mode: view.index.mesh.outbound_policy,
        wanted: BTreeMap::new(),
        gateway: None,
    };
    let ns = scope.namespace.as_str();
    let targets = target_ports(view, scope);
    let mut by_port: BTreeMap<u16, (PortClass, Vec<PortServer>)> = BTreeMap::new();
    for (key, gw) in scope_gateways(view, selector) {
        for server in &gw.spec.servers {
            let Some(number) = server
                .port
                .as_ref()
                .and_then(|p| u16::try_from(p.number).ok())
            else {
                continue;
            };
            let Some(class) = PortClass::of(server).filter(|_| rendered(server)) else {
                continue; // refused by validation: an accepted Gateway holds none
            };
            let port = targets.get(&number).copied().unwrap_or(number);
            let (_, servers) = by_port.entry(port).or_insert_with(|| (class, Vec::new()));
            // As Istio merges gateways; validation warns about the servers left out.
            if servers.iter().any(|s| clashes(s.server, server)) {
                continue;
            }
            servers.push(PortServer {
                gateway: key,
                server,
                number,
            });
        }
    }

    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut listeners = Vec::new();
    let mut tables = Vec::new();
    for (port, (class, servers)) in &by_port {
        let chains = match class {
            PortClass::Tcp => tcp_chains(&mut ctx, *port, &servers[0]),
            PortClass::Tls => tls_port_chains(&mut ctx, *port, servers, &mut tables),
            PortClass::Http => {
                let table = route_name(*port);
                let chain = FilterChain {
                    transport_socket: None,
                    name: None,
                    filter_chain_match: FilterChainMatch::default(),
                    filters: vec![hcm(names::outbound_stat_prefix(any, *port), table.clone())],
                };
                tables.push(route_table(&mut ctx, table, servers));
                vec![chain]
            }
        };
        // Nothing bound to a TCP or passthrough server: no listener, as Istio.
        if chains.is_empty() {
            continue;
        }
        listeners.push(Listener {
            name: names::listener_name(any, *port),
            address: Address::new(any, *port),
            traffic_direction: TrafficDirection::Outbound,
            use_original_dst: false,
            bind_to_port: true,
            filter_chains: chains,
            default_filter_chain: None,
            listener_filters_timeout: None,
        });
    }

    let (mut clusters, endpoints, recipes) = ctx.build_clusters();
    clusters.extend(static_clusters());
    with_mesh_telemetry(
        &mut listeners,
        view.index.mesh.access_log.as_ref(),
        view.index.mesh.tracing.as_ref(),
    );
    let config = ProxyConfig {
        version_info: String::new(),
        listeners,
        routes: tables,
        clusters,
        endpoints,
        dns: with_ca_name(Vec::new(), view, ns),
        peer_authentication: None,
        authorization: authz::authorization(view, scope),
        request_authentication: request_authn::request_authentication(view, scope),
        telemetry: telemetry::telemetry(view, scope),
    };
    (config, recipes)
}

/// The route table `http.<port>` of the servers merged on one listener port.
fn route_table(
    ctx: &mut Ctx<'_, '_>,
    name: String,
    servers: &[PortServer<'_>],
) -> RouteConfiguration {
    let view = ctx.view;
    let ns = ctx.scope.namespace.clone();
    let mut vhosts: BTreeMap<String, VhostAcc> = BTreeMap::new();
    for ps in servers {
        ctx.gateway = Some(ps.gateway.to_string());
        for b in bindings(view, ps, &ns) {
            let routes = ctx.virtual_service_routes(b.key, b.vs, ps.number);
            for host in b.common {
                vhosts
                    .entry(host.clone())
                    .or_insert_with(|| VhostAcc::new(&host, ps.number))
                    .routes
                    .extend(routes.iter().cloned());
            }
        }
        ctx.gateway = None;
        if ps.server.https_redirect() {
            for h in &ps.hosts() {
                vhosts
                    .entry(h.host.to_string())
                    .or_insert_with(|| VhostAcc::new(h.host, ps.number))
                    .redirect = true;
            }
        }
    }
    let mut virtual_hosts: Vec<VirtualHost> = vhosts
        .into_values()
        .map(|v| {
            let routes = if v.redirect {
                vec![https_redirect()]
            } else {
                // Istio's SortVHostRoutes: catch-all routes last, the others in order.
                let (rest, last): (Vec<Route>, Vec<Route>) =
                    v.routes.into_iter().partition(|r| !catch_all(r));
                rest.into_iter().chain(last).collect()
            };
            VirtualHost {
                name: v.name,
                domains: v.domains,
                routes,
                include_request_attempt_count: true,
            }
        })
        .collect();
    if virtual_hosts.is_empty() {
        let number = servers.first().map(|s| s.number).unwrap_or_default();
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{number}"),
            domains: vec!["*".to_string()],
            routes: Vec::new(),
            include_request_attempt_count: false,
        });
    }
    RouteConfiguration {
        name,
        virtual_hosts,
    }
}

/// The chains of the TLS-based servers merged on listener port `port`, told apart by SNI
/// (chains naming hosts first, as Envoy prefers exact names):
/// - an HTTPS server terminating TLS (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`, `ISTIO_MUTUAL`):
///   its hosts as `serverNames`, `transportProtocol: tls`, its [`termination`], then an HTTP
///   connection manager with its own route table (pushed on `tables`);
/// - a TLS server terminating TLS: the same match and credential, then the TCP proxy of
///   [`tcp_chain`] (no chain without a `tcp` rule for it);
/// - a `PASSTHROUGH` server: [`passthrough_chains`].
///
/// Envoy refuses two chains with the same match: a later one (a later server or
/// VirtualService naming the same SNI) is left out.
fn tls_port_chains(
    ctx: &mut Ctx<'_, '_>,
    port: u16,
    servers: &[PortServer<'_>],
    tables: &mut Vec<RouteConfiguration>,
) -> Vec<FilterChain> {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut chains: Vec<FilterChain> = Vec::new();
    for ps in servers {
        let Some(context) = termination(ps.server) else {
            chains.extend(passthrough_chains(ctx, port, ps));
            continue;
        };
        let terminate = Some(DownstreamTransportSocket::Tls(context));
        let filter_chain_match = FilterChainMatch {
            server_names: sni_hosts(ps.server),
            transport_protocol: Some(TLS.to_string()),
            ..FilterChainMatch::default()
        };
        if ps.server.protocol() == ServerProtocol::Tls {
            for chain in tcp_chains(ctx, port, ps) {
                chains.push(FilterChain {
                    transport_socket: terminate.clone(),
                    filter_chain_match: FilterChainMatch {
                        source_labels: chain.filter_chain_match.source_labels.clone(),
                        ..filter_chain_match.clone()
                    },
                    ..chain
                });
            }
            continue;
        }
        let port_name = ps
            .server
            .port
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .unwrap_or_default();
        let table = https_route_name(ps.number, port_name, ps.gateway);
        tables.push(route_table(ctx, table.clone(), std::slice::from_ref(ps)));
        chains.push(FilterChain {
            transport_socket: terminate,
            name: None,
            filter_chain_match,
            filters: vec![hcm(names::outbound_stat_prefix(any, port), table)],
        });
    }
    let mut kept: Vec<FilterChain> = Vec::new();
    for chain in chains {
        if !kept
            .iter()
            .any(|k| k.filter_chain_match == chain.filter_chain_match)
        {
            kept.push(chain);
        }
    }
    kept.sort_by_key(|c| c.filter_chain_match.server_names.is_empty());
    kept
}

/// The chains of a `PASSTHROUGH` server (Istio's gateway TLS routes): for each `tls` rule of
/// the bound VirtualServices sharing a host with the server (oldest first), each of its
/// matches applying to the server (no `port` or the server's number; no `gateways` or one
/// naming this Gateway; no `sourceNamespace` or the gateway pod's), one chain for the
/// match's `sniHosts` within the server's hosts (Istio's host intersection; `*`: any name) and
/// its `destinationSubnets`, matching `transportProtocol: tls` and proxying the bytes
/// unopened to the rule's destinations.
fn passthrough_chains(ctx: &mut Ctx<'_, '_>, port: u16, ps: &PortServer<'_>) -> Vec<FilterChain> {
    let ns = ctx.scope.namespace.clone();
    let gateway = ps.gateway.to_string();
    let mut out = Vec::new();
    for Binding {
        key, vs, admitted, ..
    } in bindings(ctx.view, ps, &ns)
    {
        for rule in &vs.spec.tls {
            for m in &rule.match_ {
                let applies = m.port.is_none_or(|p| p == u32::from(ps.number))
                    && (m.gateways.is_empty()
                        || m.gateways
                            .iter()
                            .any(|g| resolve_gateway_name(g, &key.namespace) == gateway))
                    && m.source_namespace.as_deref().is_none_or(|n| n == ns);
                let sni = intersect(&admitted, &m.sni_hosts);
                if !applies || sni.is_empty() {
                    continue;
                }
                let Some(to) = ctx.tcp_destinations(&rule.route, &key.namespace, ps.number) else {
                    continue;
                };
                let chain_match = FilterChainMatch {
                    server_names: server_names(&sni),
                    prefix_ranges: m
                        .destination_subnets
                        .iter()
                        .filter_map(|s| rustmesh_xds::address::CidrRange::parse(s))
                        .collect(),
                    transport_protocol: Some(TLS.to_string()),
                    source_labels: m.source_labels.clone(),
                    ..FilterChainMatch::default()
                };
                out.push(tcp_route_chain(chain_match, to, &stat_prefix(port), None));
            }
        }
    }
    out
}

/// The chains of a TCP server on listener port `port`: a TCP proxy to where the first `tcp`
/// rule applying to it sends connections, of the oldest bound VirtualService sharing a host
/// with the server (Istio's gateway TCP routes: a rule applies without matches, or with a
/// match whose `port` is the server's and whose `gateways` name this Gateway, if any). Rules
/// whose matches carry `sourceLabels` (the gateway pod's labels, as Istio reads them) come
/// first, a chain each with the labels ([`tcp_rules_by_source`]), up to one for every pod;
/// none without a rule (a rule without destinations ends the list).
fn tcp_chains(ctx: &mut Ctx<'_, '_>, port: u16, ps: &PortServer<'_>) -> Vec<FilterChain> {
    let ns = ctx.scope.namespace.clone();
    let gateway = ps.gateway.to_string();
    let mut out = Vec::new();
    for Binding { key, vs, .. } in bindings(ctx.view, ps, &ns) {
        let rules = tcp_rules_by_source(&vs.spec.tcp, |m| {
            m.port.is_none_or(|p| p == u32::from(ps.number))
                && (m.gateways.is_empty()
                    || m.gateways
                        .iter()
                        .any(|g| resolve_gateway_name(g, &key.namespace) == gateway))
        });
        for (source_labels, rule) in rules {
            let every_pod = source_labels.is_empty();
            let Some(to) = ctx.tcp_destinations(&rule.route, &key.namespace, ps.number) else {
                return out;
            };
            let chain_match = FilterChainMatch {
                source_labels,
                ..FilterChainMatch::default()
            };
            out.push(tcp_route_chain(chain_match, to, &stat_prefix(port), None));
            if every_pod {
                return out;
            }
        }
    }
    out
}

/// The stats prefix of a gateway TCP proxy to weighted clusters on listener port `port`.
fn stat_prefix(port: u16) -> String {
    names::outbound_stat_prefix(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// How a TLS-based server terminates TLS, as Istio's gateway `DownstreamTlsContext`:
/// - `SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`: its certificate (a `credentialName` Secret, or its
///   `serverCertificate`/`privateKey` files with `caCertificates`); `MUTUAL` requires a client
///   certificate verified against their CA, `OPTIONAL_MUTUAL` verifies one when presented
///   (`requireClientCertificate: false` with the validation context);
/// - `ISTIO_MUTUAL`: the gateway's workload certificate `default`, clients required and
///   verified against the mesh root `ROOTCA` (`rustmesh_xds::tls::gateway_istio_mutual`);
/// - any of them: `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites` as the
///   context's `tlsParams`, as Istio sets them; where clients are verified, `subjectAltNames`,
///   `verifyCertificateSpki` and `verifyCertificateHash` as its validation context's
///   (Istio applies only `subjectAltNames` to `ISTIO_MUTUAL`; rustmesh applies all three
///   wherever a client certificate is verified, rather than ignore them).
///
/// `None` for `PASSTHROUGH` and what validation refuses (another mode, neither a credential
/// nor both files, both at once).
fn termination(server: &rustmesh_api::gateway::Server) -> Option<DownstreamTlsContext> {
    let tls = server.tls.as_ref()?;
    let mut context = match tls.mode.as_deref()? {
        "ISTIO_MUTUAL" => gateway_istio_mutual(),
        _ => credential_termination(tls)?,
    };
    // `minProtocolVersion`, `maxProtocolVersion`, `cipherSuites` (validation refused values
    // they cannot be).
    context.common_tls_context.tls_params = tls.tls_parameters("spec").ok().flatten();
    if let Some(v) = context
        .common_tls_context
        .combined_validation_context
        .as_mut()
    {
        // The pins join what the termination set (a CA file's revocation list).
        v.default_validation_context = rustmesh_xds::tls::CertificateValidationContext {
            crl: v.default_validation_context.crl.take(),
            ..tls.client_pins()
        };
    }
    Some(context)
}

/// [`termination`] for `SIMPLE`, `MUTUAL` and `OPTIONAL_MUTUAL`: a credential or files.
fn credential_termination(
    tls: &rustmesh_api::gateway::ServerTlsSettings,
) -> Option<DownstreamTlsContext> {
    let clients = match tls.mode.as_deref()? {
        "SIMPLE" => ClientCerts::Ignored,
        "MUTUAL" => ClientCerts::Required,
        "OPTIONAL_MUTUAL" => ClientCerts::Optional,
        _ => return None,
    };
    use rustmesh_api::gateway::non_empty as set;
    // The CA of several certificates from files: the server's, else the first's (validation
    // refuses another one).
    let ca = set(&tls.ca_certificates).or_else(|| {
        tls.tls_certificates
            .first()
            .and_then(|c| set(&c.ca_certificates))
    });
    let files = |cert, key| GatewayCert::Files {
        cert,
        key,
        ca,
        crl: set(&tls.ca_crl),
    };
    let certs: Vec<GatewayCert<'_>> = match (
        set(&tls.credential_name),
        set(&tls.server_certificate),
        set(&tls.private_key),
    ) {
        (Some(name), None, None) => vec![GatewayCert::Credential(name)],
        (None, Some(cert), Some(key)) => vec![files(cert, key)],
        (None, None, None) if !tls.credential_names.is_empty() => tls
            .credential_names
            .iter()
            .map(|n| GatewayCert::Credential(n))
            .collect(),
        (None, None, None) => tls
            .tls_certificates
            .iter()
            .map(|c| Some(files(set(&c.server_certificate)?, set(&c.private_key)?)))
            .collect::<Option<_>>()?,
        _ => return None,
    };
    if certs.is_empty() {
        return None;
    }
    Some(gateway_termination_with(&certs, clients))
}

/// The route of a virtual host whose server sets `tls.httpsRedirect`: every request answered
/// with a 301 to the same URL with the `https` scheme.
fn https_redirect() -> Route {
    Route {
        name: Some("https-redirect".to_string()),
        match_: RouteMatch {
            prefix: Some("/".to_string()),
            ..RouteMatch::default()
        },
        redirect: Some(RedirectAction {
            scheme_redirect: Some("https".to_string()),
            host_redirect: None,
            port_redirect: None,
            path_redirect: None,
            response_code: 301,
        }),
        ..Route::default()
    }
}
