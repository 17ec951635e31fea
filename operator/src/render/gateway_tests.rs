//! Gateway rendering (issue #20), from Istio's documented examples: the bookinfo ingress
//! (bookinfo-gateway and the bookinfo VirtualService), host intersection with `namespace/`
//! server hosts, VirtualServices bound to gateways only (not on sidecars) or to `mesh` and a
//! gateway (both), per-match `gateways`, the Service targetPort mapping of the listener port,
//! `tls.httpsRedirect`, TCP servers (Istio's TCP ingress task), HTTPS servers (the secure
//! ingress task), `ISTIO_MUTUAL` and `OPTIONAL_MUTUAL` servers, TLS passthrough by SNI (the
//! ingress SNI passthrough task) and TLS servers terminating for TCP routes, the port
//! conflicts of merged Gateways, and refused fields.

use super::*;
use crate::configmap::{render, render_namespace};
use crate::fixtures::{as_router, bookinfo, istio, pod, router_pod, verdict, workload};
use crate::index::{Kind, ObjKey};
use rustmesh_xds::listener::NetworkFilter;
use rustmesh_xds::route::VirtualHost;
use rustmesh_xds::tls::DownstreamTransportSocket;

const GATEWAY_LABELS: &[(&str, &str)] =
    &[("app", "istio-ingressgateway"), ("istio", "ingressgateway")];

/// bookinfo plus an ingress gateway pod in istio-system behind the Service
/// `istio-ingressgateway` (port 80 → targetPort 8080, as Istio's chart installs it).
fn mesh_with_ingress() -> Index {
    let mut index = bookinfo();
    workload(
        &mut index,
        "istio-system",
        "istio-ingressgateway",
        Some("10.96.30.1"),
        &[
            ("http2", 80, 8080),
            ("https", 443, 8443),
            ("tcp", 31400, 31400),
        ],
        &[("istio-ingressgateway-1", "10.244.0.50", GATEWAY_LABELS)],
    );
    as_router(&mut index, "istio-system", "istio-ingressgateway-1");
    // The mesh CA is on (the chart's default): it serves gateway credentials.
    index.mesh.ca_host = Some("istiod.istio-system.svc.cluster.local".into());
    index
}

/// Istio's bookinfo-gateway (samples/bookinfo/networking/bookinfo-gateway.yaml, the version
/// exposing port 80) and the bookinfo VirtualService bound to it.
const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    - uri: {exact: /login}
    - uri: {exact: /logout}
    - uri: {prefix: /api/v1/products}
    route:
    - destination:
        host: productpage
        port: {number: 9080}
"#;

/// The gateway scope of the `istio=ingressgateway` pods of istio-system.
fn gateway_scope() -> Scope {
    Scope::gateway(
        "istio-system",
        &[("istio".to_string(), "ingressgateway".to_string())].into(),
    )
}

fn rendered(index: &Index, scope: &Scope) -> ProxyConfig {
    let c = render(index, scope);
    if let Err(e) = c.validate() {
        panic!("render of {scope} does not validate: {e}\n{}", c.to_json());
    }
    c
}

fn rds(l: &Listener) -> String {
    match &l.filter_chains[0].filters[0] {
        NetworkFilter::HttpConnectionManager(h) => h
            .rds
            .as_ref()
            .map(|r| r.route_config_name.clone())
            .unwrap_or_default(),
        NetworkFilter::TcpProxy(_) => "tcp".to_string(),
    }
}

fn vhost<'c>(c: &'c ProxyConfig, table: &str, name: &str) -> &'c VirtualHost {
    c.route(table)
        .unwrap_or_else(|| panic!("route table {table}"))
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("virtual host {name} in {table}"))
}

fn clusters_of(v: &VirtualHost) -> Vec<String> {
    v.routes
        .iter()
        .filter_map(|r| r.route.as_ref()?.cluster.clone())
        .collect()
}

const PRODUCTPAGE: &str = "outbound|9080||productpage.default.svc.cluster.local";

#[test]
fn bookinfo_ingress_renders_istios_gateway_listener_route_and_cluster() {
    let mut index = mesh_with_ingress();
    // istio-system is not injected: it gets a ConfigMap once a Gateway selects a pod in it.
    assert!(!index.is_mesh_namespace("istio-system"));
    istio(&mut index, BOOKINFO_GATEWAY);
    assert!(index.is_mesh_namespace("istio-system"));

    let view = MeshView::new(&index);
    let rendered_ns = render_namespace(&view, "istio-system").expect("renders");
    let selector = &rendered_ns.index.selectors[0];
    assert!(selector.is_gateway());
    assert_eq!(selector.gateways, ["default/bookinfo-gateway"]);
    assert_eq!(selector.key, gateway_scope().key());
    assert_eq!(rendered_ns.index.version, xscope::SCOPE_INDEX_VERSION);
    // The gateway pod selects that scope.
    let pod_labels: Labels = GATEWAY_LABELS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        xscope::select_scope(&rendered_ns.index, &pod_labels, xscope::ProxyRole::Router),
        selector.key
    );

    let c = rendered(&index, &gateway_scope());
    // One listener, on the Service's targetPort, bound to it, no capture listeners.
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["0.0.0.0_8080"]);
    let l = &c.listeners[0];
    assert!(l.bind_to_port && !l.use_original_dst);
    assert_eq!(l.traffic_direction, TrafficDirection::Outbound);
    assert_eq!(l.address.socket_address.port_value, 8080);
    assert_eq!(rds(l), "http.8080");
    // The virtual host as istioctl shows it (`*:80`, domain `*`), the routes to productpage.
    let vh = vhost(&c, "http.8080", "*:80");
    assert_eq!(vh.domains, ["*"]);
    assert_eq!(clusters_of(vh), vec![PRODUCTPAGE.to_string(); 5]);
    assert_eq!(vh.routes[0].match_.path.as_deref(), Some("/productpage"));
    assert_eq!(vh.routes[1].match_.prefix.as_deref(), Some("/static"));
    assert_eq!(
        vh.routes[0].virtual_service.as_deref(),
        Some("bookinfo.default")
    );
    // The cluster and its endpoints, as a sidecar's.
    assert!(c.cluster(PRODUCTPAGE).is_some());
    let ep = c
        .endpoints
        .iter()
        .find(|e| e.cluster_name == PRODUCTPAGE)
        .expect("productpage endpoints");
    assert_eq!(ep.lb_endpoints().count(), 1);
    // Nothing the VirtualService does not route to.
    assert!(
        c.cluster("outbound|9080||reviews.default.svc.cluster.local")
            .is_none()
    );
}

#[test]
fn a_virtual_service_naming_only_gateways_is_not_applied_to_sidecars() {
    let mut index = mesh_with_ingress();
    istio(&mut index, BOOKINFO_GATEWAY);
    let c = rendered(&index, &Scope::namespace("default"));
    let vh = vhost(&c, "9080", "productpage.default.svc.cluster.local:9080");
    // The sidecar's default route, not the gateway's VirtualService.
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(vh.routes[0].name.as_deref(), Some("default"));
    assert!(
        c.routes
            .iter()
            .flat_map(|r| &r.virtual_hosts)
            .flat_map(|v| &v.routes)
            .all(|r| r.virtual_service.as_deref() != Some("bookinfo.default"))
    );
    // And a host only the gateway serves is no warning: it need not be a service.
    let v = &verdict(&index, Kind::VirtualService, "default", "bookinfo");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
}

#[test]
fn a_virtual_service_naming_a_missing_gateway_is_warned_naming_the_entry() {
    let mut index = mesh_with_ingress();
    istio(&mut index, BOOKINFO_GATEWAY);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [mesh, bookinfo-gateway, istio-system/nope]
  http:
  - route:
    - destination: {host: productpage}
"#,
    );
    let v = &verdict(&index, Kind::VirtualService, "default", "bookinfo");
    assert!(v.accepted);
    let fields: Vec<&str> = v.findings.iter().map(|f| f.field.as_str()).collect();
    assert!(fields.contains(&"spec.gateways[2]"), "{:?}", v.findings);
    assert!(!fields.contains(&"spec.gateways[1]"), "{:?}", v.findings);
}

#[test]
fn a_gateway_change_reaches_the_namespace_of_the_pods_it_selects() {
    let mut index = mesh_with_ingress();
    let gw = match rustmesh_api::load(BOOKINFO_GATEWAY.split("---").next().unwrap())
        .expect("bookinfo-gateway reads")
        .remove(0)
    {
        rustmesh_api::IstioObject::Gateway(g) => g,
        other => panic!("not a Gateway: {}", other.kind()),
    };
    let affects = index.apply(crate::index::Object::Gateway(gw));
    assert!(affects.namespaces.contains("istio-system"), "{affects:?}");
    assert!(affects.statuses);
    // Deleting it: the namespace it reached is rendered once more (it keeps its last
    // ConfigMap, as any namespace leaving the mesh).
    let affects = index.delete(Kind::Gateway, &ObjKey::new("default", "bookinfo-gateway"));
    assert!(affects.namespaces.contains("istio-system"), "{affects:?}");
    assert!(!index.is_mesh_namespace("istio-system"));
}

/// A Gateway selecting ordinary pods' labels (here productpage's sidecars) gives them nothing:
/// no gateway scope is written for them, so their sidecars keep their capture listeners, and
/// a namespace with only such pods does not join the mesh for it.
#[test]
fn a_gateway_selecting_sidecar_pods_renders_no_gateway_scope() {
    let mut index = mesh_with_ingress();
    pod(&mut index, "plain", "web-1", &[("app", "productpage")]);
    crate::fixtures::namespace(&mut index, "plain", false);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: wrong-selector, namespace: default}
spec:
  selector: {app: productpage}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#,
    );
    let view = MeshView::new(&index);
    let ns = render_namespace(&view, "default").expect("renders");
    assert!(
        ns.index.selectors.iter().all(|s| !s.is_gateway()),
        "{:?}",
        ns.index.selectors
    );
    assert!(!index.is_mesh_namespace("plain"));
    let c = rendered(&index, &Scope::namespace("default"));
    assert!(c.listener("virtualOutbound").is_some());
    assert!(c.route("http.80").is_none());
}

#[test]
fn mesh_and_a_gateway_render_on_both_and_match_gateways_pick_one() {
    let mut index = mesh_with_ingress();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["default/reviews.default.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  gateways: [mesh, istio-system/public]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
      gateways: [mesh]
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - uri: {prefix: /ext}
      gateways: [istio-system/public]
    route:
    - destination: {host: reviews, subset: v3}
  - route:
    - destination: {host: reviews, subset: v1}
"#,
    );
    let v2 = "outbound|9080|v2|reviews.default.svc.cluster.local";
    let v3 = "outbound|9080|v3|reviews.default.svc.cluster.local";
    let v1 = "outbound|9080|v1|reviews.default.svc.cluster.local";
    let sidecar = rendered(&index, &Scope::namespace("default"));
    let vh = vhost(&sidecar, "9080", "reviews.default.svc.cluster.local:9080");
    assert_eq!(clusters_of(vh), [v2, v1]);
    let gw = rendered(&index, &gateway_scope());
    let vh = vhost(&gw, "http.8080", "reviews.default.svc.cluster.local:80");
    assert_eq!(
        vh.domains,
        [
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local:*"
        ]
    );
    assert_eq!(clusters_of(vh), [v3, v1]);
    // The subsets resolve through the DestinationRule visible from istio-system.
    assert!(gw.cluster(v3).is_some() && gw.cluster(v1).is_some());
}

#[test]
fn hosts_are_the_intersection_and_namespace_prefixes_admit_virtual_services() {
    let mut index = mesh_with_ingress();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.example.com", "other/*", "./admin.example.org"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [bookinfo.example.com, example.org, admin.example.org]
  gateways: [istio-system/web]
  http:
  - route:
    - destination: {host: productpage}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: admin, namespace: istio-system}
spec:
  hosts: ["*.example.org"]
  gateways: [web]
  http:
  - route:
    - destination: {host: details.default.svc.cluster.local}
"#,
    );
    let c = rendered(&index, &gateway_scope());
    let table = c.route("http.8080").expect("http.8080");
    let names: Vec<&str> = table
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    // bookinfo.example.com: under *.example.com; example.org: no server host matches it;
    // admin.example.org: `./` admits only the Gateway's namespace (istio-system), where the
    // `admin` VirtualService's *.example.org intersects it as the more specific host.
    assert_eq!(names, ["admin.example.org:80", "bookinfo.example.com:80"]);
    assert_eq!(
        clusters_of(vhost(&c, "http.8080", "admin.example.org:80")),
        ["outbound|9080||details.default.svc.cluster.local"]
    );
    assert_eq!(
        clusters_of(vhost(&c, "http.8080", "bookinfo.example.com:80")),
        [PRODUCTPAGE]
    );
}

#[test]
fn without_a_service_the_server_port_is_the_listener_port() {
    let mut index = bookinfo();
    router_pod(&mut index, "istio-system", "gw-1", GATEWAY_LABELS);
    istio(&mut index, BOOKINFO_GATEWAY);
    let c = rendered(&index, &gateway_scope());
    assert_eq!(c.listeners[0].name, "0.0.0.0_80");
    assert_eq!(rds(&c.listeners[0]), "http.80");
    assert_eq!(
        clusters_of(vhost(&c, "http.80", "*:80")),
        vec![PRODUCTPAGE.to_string(); 5]
    );
}

#[test]
fn https_redirect_answers_every_request_with_a_301_and_no_binding_is_a_404() {
    let mut index = mesh_with_ingress();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: coolstore, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [webapp.istioinaction.io]
    tls: {httpsRedirect: true}
"#,
    );
    let c = rendered(&index, &gateway_scope());
    let vh = vhost(&c, "http.8080", "webapp.istioinaction.io:80");
    assert_eq!(vh.routes.len(), 1);
    let redirect = vh.routes[0].redirect.as_ref().expect("a redirect");
    assert_eq!(redirect.scheme_redirect.as_deref(), Some("https"));
    assert_eq!(redirect.response_code, 301);

    // A server no VirtualService binds to: one catch-all virtual host without routes.
    let mut index = mesh_with_ingress();
    istio(&mut index, BOOKINFO_GATEWAY.split("---").next().unwrap());
    let c = rendered(&index, &gateway_scope());
    let vh = vhost(&c, "http.8080", "blackhole:80");
    assert_eq!(vh.domains, ["*"]);
    assert!(vh.routes.is_empty());
}

#[test]
fn refused_fields_are_named_and_render_no_gateway_scope() {
    let mut index = mesh_with_ingress();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: secure, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    bind: 10.0.0.1
    tls: {mode: SIMPLE, credentialNames: [a, b]}
    hosts: [httpbin.example.com]
  - port: {number: 8443, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: [httpbin.example.com]
"#,
    );
    let v = &verdict(&index, Kind::Gateway, "istio-system", "secure");
    assert!(!v.accepted);
    let fields: Vec<&str> = v.findings.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.servers[0].bind", "spec.servers[1].tls.mode"],
        "{:?}",
        v.findings
    );
    assert!(
        v.findings.iter().all(|f| f
            .message
            .contains(rustmesh_api::support::GATEWAY_NOT_RENDERED)),
        "{:?}",
        v.findings
    );
    let view = MeshView::new(&index);
    assert!(
        view.scope_index("istio-system")
            .selectors
            .iter()
            .all(|s| !s.is_gateway())
    );
}

#[test]
fn a_more_specific_selector_merges_the_broader_gateways_first_in_the_index() {
    let mut index = mesh_with_ingress();
    istio(&mut index, BOOKINFO_GATEWAY);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: narrow, namespace: istio-system}
spec:
  selector: {istio: ingressgateway, app: istio-ingressgateway}
  servers:
  - port: {number: 9000, name: http-alt, protocol: HTTP}
    hosts: ["*"]
"#,
    );
    let view = MeshView::new(&index);
    let idx = view.scope_index("istio-system");
    assert_eq!(idx.selectors.len(), 2);
    assert_eq!(idx.selectors[0].labels.len(), 2);
    assert_eq!(
        idx.selectors[0].gateways,
        ["default/bookinfo-gateway", "istio-system/narrow"]
    );
    let scope = Scope::gateway("istio-system", &idx.selectors[0].labels);
    let c = rendered(&index, &scope);
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["0.0.0.0_8080", "0.0.0.0_9000"]);
}

/// Istio's TCP traffic shifting through the ingress gateway (tcp-echo, 80 % v1, 20 % v2).
#[test]
fn a_tcp_server_proxies_to_the_bound_virtual_services_tcp_route() {
    let mut index = mesh_with_ingress();
    workload(
        &mut index,
        "default",
        "tcp-echo",
        Some("10.96.10.9"),
        &[("tcp", 9000, 9000)],
        &[
            (
                "tcp-echo-v1-1",
                "10.244.0.60",
                &[("app", "tcp-echo"), ("version", "v1")],
            ),
            (
                "tcp-echo-v2-1",
                "10.244.0.61",
                &[("app", "tcp-echo"), ("version", "v2")],
            ),
        ],
    );
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-echo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo-destination, namespace: default}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [tcp-echo-gateway]
  tcp:
  - match:
    - port: 31400
    route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v1}
      weight: 80
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}
      weight: 20
"#,
    );
    let c = rendered(&index, &gateway_scope());
    let l = c.listener("0.0.0.0_31400").expect("0.0.0.0_31400");
    assert!(l.bind_to_port && !l.use_original_dst);
    let NetworkFilter::TcpProxy(t) = &l.filter_chains[0].filters[0] else {
        panic!("not a TCP proxy");
    };
    let weighted: Vec<(&str, u32)> = t
        .weighted_clusters
        .as_ref()
        .expect("weighted clusters")
        .clusters
        .iter()
        .map(|w| (w.name.as_str(), w.weight))
        .collect();
    assert_eq!(
        weighted,
        [
            ("outbound|9000|v1|tcp-echo.default.svc.cluster.local", 80),
            ("outbound|9000|v2|tcp-echo.default.svc.cluster.local", 20)
        ]
    );
    assert!(
        c.cluster("outbound|9000|v2|tcp-echo.default.svc.cluster.local")
            .is_some()
    );
    // No route table for a TCP port; the tcp route stays off the sidecars (gateways only).
    assert!(c.route("http.31400").is_none());
    let sidecar = rendered(&index, &Scope::namespace("default"));
    let l = sidecar
        .listener("10.96.10.9_9000")
        .expect("tcp-echo's listener");
    let NetworkFilter::TcpProxy(t) = &l.filter_chains[0].filters[0] else {
        panic!("not a TCP proxy");
    };
    assert_eq!(
        t.cluster.as_deref(),
        Some("outbound|9000||tcp-echo.default.svc.cluster.local")
    );

    // A rule for gateway pods with some labels first: a chain carrying them, then the one
    // every gateway pod keeps.
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [tcp-echo-gateway]
  tcp:
  - match:
    - port: 31400
      sourceLabels: {istio: ingressgateway, canary: "true"}
    route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}
  - route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v1}
"#,
    );
    let c = rendered(&index, &gateway_scope());
    let l = c.listener("0.0.0.0_31400").expect("0.0.0.0_31400");
    let chains: Vec<(usize, String)> = l
        .filter_chains
        .iter()
        .map(|fc| {
            let NetworkFilter::TcpProxy(t) = &fc.filters[0] else {
                panic!("not a TCP proxy");
            };
            (
                fc.filter_chain_match.source_labels.len(),
                t.cluster.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            (
                2,
                "outbound|9000|v2|tcp-echo.default.svc.cluster.local".to_string()
            ),
            (
                0,
                "outbound|9000|v1|tcp-echo.default.svc.cluster.local".to_string()
            ),
        ]
    );
}

#[test]
fn a_port_keeps_its_oldest_servers_protocol_and_the_others_are_warned() {
    let mut index = mesh_with_ingress();
    istio(&mut index, BOOKINFO_GATEWAY);
    // Neither has a creation time: by namespace and name, bookinfo-gateway is the older.
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: raw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: tcp, protocol: TCP}
    hosts: ["*"]
"#,
    );
    let v = &verdict(&index, Kind::Gateway, "istio-system", "raw");
    assert!(v.accepted);
    let warned: Vec<&str> = v.findings.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(warned, ["spec.servers[0].port"], "{:?}", v.findings);
    assert!(v.findings[0].message.contains("default/bookinfo-gateway"));
    // The listener stays bookinfo's HTTP one.
    let c = rendered(&index, &gateway_scope());
    assert_eq!(
        rds(c.listener("0.0.0.0_8080").expect("listener")),
        "http.8080"
    );
}

/// Istio's secure ingress task (SIMPLE, then MUTUAL, then two hosts on one port): httpbin
/// behind `mygateway` in istio-system, its certificate in Secret `httpbin-credential`.
const SECURE_INGRESS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: istio-system}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
  - port: {number: 443, name: https-helloworld, protocol: HTTPS}
    tls: {mode: MUTUAL, credentialName: helloworld-credential}
    hosts: [helloworld.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com, helloworld.example.com]
  gateways: [istio-system/mygateway]
  http:
  - match:
    - uri: {prefix: /status}
    route:
    - destination:
        host: productpage
        port: {number: 9080}
"#;

#[test]
fn https_servers_terminate_with_their_credential_picked_by_sni() {
    let mut index = mesh_with_ingress();
    istio(&mut index, SECURE_INGRESS);
    let v = &verdict(&index, Kind::Gateway, "istio-system", "mygateway");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);

    let c = rendered(&index, &gateway_scope());
    // 443 is the Service's port whose targetPort is 8443.
    let l = c.listener("0.0.0.0_8443").expect("listener 0.0.0.0_8443");
    assert!(l.bind_to_port && !l.use_original_dst);
    let by_sni: Vec<(Vec<String>, String, String, bool)> = l
        .filter_chains
        .iter()
        .map(|fc| {
            let Some(DownstreamTransportSocket::Tls(t)) = &fc.transport_socket else {
                panic!("chain without TLS: {fc:?}")
            };
            assert_eq!(
                fc.filter_chain_match.transport_protocol.as_deref(),
                Some("tls")
            );
            (
                fc.filter_chain_match.server_names.clone(),
                t.common_tls_context.tls_certificate_sds_secret_configs[0]
                    .name
                    .clone(),
                rds(&{
                    let mut one = l.clone();
                    one.filter_chains = vec![fc.clone()];
                    one
                }),
                t.require_client_certificate,
            )
        })
        .collect();
    assert_eq!(
        by_sni,
        [
            (
                vec!["httpbin.example.com".to_string()],
                "kubernetes://httpbin-credential".to_string(),
                "https.443.https.mygateway.istio-system".to_string(),
                false,
            ),
            (
                vec!["helloworld.example.com".to_string()],
                "kubernetes://helloworld-credential".to_string(),
                "https.443.https-helloworld.mygateway.istio-system".to_string(),
                true,
            ),
        ]
    );
    // MUTUAL verifies clients against the Secret's CA.
    let Some(DownstreamTransportSocket::Tls(mutual)) = &l.filter_chains[1].transport_socket else {
        unreachable!()
    };
    assert_eq!(
        mutual
            .common_tls_context
            .combined_validation_context
            .as_ref()
            .expect("a validation context")
            .validation_context_sds_secret_config
            .name,
        "kubernetes://helloworld-credential-cacert"
    );
    // Each server's table holds only its own host.
    let t = c
        .route("https.443.https.mygateway.istio-system")
        .expect("table");
    let names: Vec<&str> = t.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["httpbin.example.com:443"]);
    assert_eq!(
        clusters_of(vhost(
            &c,
            "https.443.https.mygateway.istio-system",
            "httpbin.example.com:443"
        )),
        [PRODUCTPAGE]
    );
}

#[test]
fn a_second_https_server_for_the_same_names_is_warned_and_a_catch_all_chain_goes_last() {
    let mut index = mesh_with_ingress();
    istio(&mut index, SECURE_INGRESS);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: zz-again, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: other}
    hosts: [httpbin.example.com]
  - port: {number: 443, name: https-any, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: wildcard}
    hosts: ["*"]
"#,
    );
    let v = &verdict(&index, Kind::Gateway, "istio-system", "zz-again");
    assert!(v.accepted);
    let warned: Vec<&str> = v.findings.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(warned, ["spec.servers[0].port"], "{:?}", v.findings);
    assert!(
        v.findings[0].message.contains("HTTPS"),
        "{}",
        v.findings[0].message
    );
    let c = rendered(&index, &gateway_scope());
    let l = c.listener("0.0.0.0_8443").expect("listener");
    let names: Vec<Vec<String>> = l
        .filter_chains
        .iter()
        .map(|fc| fc.filter_chain_match.server_names.clone())
        .collect();
    assert_eq!(
        names,
        [
            vec!["httpbin.example.com".to_string()],
            vec!["helloworld.example.com".to_string()],
            vec![],
        ]
    );
}

/// Istio's ingress SNI passthrough task (`mygateway` with an HTTPS server whose `tls.mode` is
/// PASSTHROUGH for nginx.example.com, the `nginx` VirtualService's `tls` route to `my-nginx`)
/// next to the secure ingress task's terminating servers on the same port, and a TLS server
/// terminating for a `tcp` route.
#[test]
fn passthrough_servers_route_tls_unopened_by_sni_next_to_terminating_ones() {
    let mut index = mesh_with_ingress();
    workload(
        &mut index,
        "default",
        "my-nginx",
        Some("10.96.40.9"),
        &[("https", 443, 443)],
        &[("my-nginx-1", "10.244.0.80", &[("run", "my-nginx")])],
    );
    istio(&mut index, SECURE_INGRESS);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: passthrough, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-nginx, protocol: HTTPS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com, other.example.com]
  - port: {number: 31400, name: tls-db, protocol: TLS}
    tls: {mode: SIMPLE, credentialName: db-credential}
    hosts: [db.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.example.com, db.example.com]
  gateways: [istio-system/passthrough]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    - port: 8443
      sniHosts: [nginx.example.com]
    route:
    - destination: {host: my-nginx, port: {number: 443}}
  tcp:
  - match:
    - port: 31400
    route:
    - destination: {host: productpage, port: {number: 9080}}
"#,
    );
    for name in ["mygateway", "passthrough"] {
        let v = &verdict(&index, Kind::Gateway, "istio-system", name);
        assert!(
            v.accepted && v.findings.is_empty(),
            "{name}: {:?}",
            v.findings
        );
    }
    let v = &verdict(&index, Kind::VirtualService, "default", "nginx");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);

    let c = rendered(&index, &gateway_scope());
    let l = c.listener("0.0.0.0_8443").expect("listener 0.0.0.0_8443");
    // (SNI, terminates?, where to)
    let chains: Vec<(Vec<String>, bool, String)> = l
        .filter_chains
        .iter()
        .map(|fc| {
            assert_eq!(
                fc.filter_chain_match.transport_protocol.as_deref(),
                Some("tls")
            );
            let to = match &fc.filters[0] {
                NetworkFilter::TcpProxy(t) => t.cluster.clone().unwrap_or_default(),
                NetworkFilter::HttpConnectionManager(h) => {
                    h.rds.as_ref().unwrap().route_config_name.clone()
                }
            };
            (
                fc.filter_chain_match.server_names.clone(),
                fc.transport_socket.is_some(),
                to,
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            (
                vec!["httpbin.example.com".to_string()],
                true,
                "https.443.https.mygateway.istio-system".to_string()
            ),
            (
                vec!["helloworld.example.com".to_string()],
                true,
                "https.443.https-helloworld.mygateway.istio-system".to_string()
            ),
            // Only the match for the server's port, only the host both name.
            (
                vec!["nginx.example.com".to_string()],
                false,
                "outbound|443||my-nginx.default.svc.cluster.local".to_string()
            ),
        ]
    );
    assert!(
        c.cluster("outbound|443||my-nginx.default.svc.cluster.local")
            .is_some()
    );
    // The TLS server terminates with its credential, then proxies by the tcp route.
    let l = c.listener("0.0.0.0_31400").expect("listener 0.0.0.0_31400");
    assert_eq!(l.filter_chains.len(), 1);
    let fc = &l.filter_chains[0];
    assert_eq!(fc.filter_chain_match.server_names, ["db.example.com"]);
    let Some(DownstreamTransportSocket::Tls(t)) = &fc.transport_socket else {
        panic!("the TLS server terminates: {fc:?}")
    };
    assert_eq!(
        t.common_tls_context.tls_certificate_sds_secret_configs[0].name,
        "kubernetes://db-credential"
    );
    assert_eq!(rds(l), "tcp");
    // Nothing bound to a passthrough server: no listener, as Istio.
    let mut bare = mesh_with_ingress();
    istio(
        &mut bare,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: passthrough, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-nginx, protocol: HTTPS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com]
"#,
    );
    assert!(
        rendered(&bare, &gateway_scope())
            .listener("0.0.0.0_8443")
            .is_none()
    );
}

/// Istio's file-mounted gateway certificates (the older secure ingress task, the Secret
/// mounted in the gateway pod): `serverCertificate`/`privateKey` become
/// `file-cert:<cert>~<key>`, `MUTUAL`'s `caCertificates` `file-root:<ca>`, its `caCrl` the
/// validation context's `crl` (beside the client pins).
#[test]
fn certificate_files_are_presented_as_istios_file_secrets() {
    let mut index = mesh_with_ingress();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: files, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls:
      mode: MUTUAL
      serverCertificate: /etc/istio/ingressgateway-certs/tls.crt
      privateKey: /etc/istio/ingressgateway-certs/tls.key
      caCertificates: /etc/istio/ingressgateway-ca-certs/ca.crt
      caCrl: /etc/istio/ingressgateway-ca-certs/ca.crl
      subjectAltNames: [client.example.com]
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com]
  gateways: [istio-system/files]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
"#,
    );
    let v = &verdict(&index, Kind::Gateway, "istio-system", "files");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
    let c = rendered(&index, &gateway_scope());
    let l = c.listener("0.0.0.0_8443").expect("listener");
    let Some(DownstreamTransportSocket::Tls(t)) = &l.filter_chains[0].transport_socket else {
        panic!("a terminating chain")
    };
    assert_eq!(
        t.common_tls_context.tls_certificate_sds_secret_configs[0].name,
        "file-cert:/etc/istio/ingressgateway-certs/tls.crt~/etc/istio/ingressgateway-certs/tls.key"
    );
    let validation = t
        .common_tls_context
        .combined_validation_context
        .as_ref()
        .expect("MUTUAL verifies clients");
    assert_eq!(
        validation.validation_context_sds_secret_config.name,
        "file-root:/etc/istio/ingressgateway-ca-certs/ca.crt"
    );
    assert_eq!(
        serde_json::to_value(&validation.default_validation_context).unwrap(),
        serde_json::json!({"matchSubjectAltNames": [{"exact": "client.example.com"}],
            "crl": {"filename": "/etc/istio/ingressgateway-ca-certs/ca.crl"}})
    );
    assert!(t.require_client_certificate);
}

/// Two certificates per server (Istio's `credentialNames` and `tlsCertificates`, an RSA and
/// an ECDSA one): a chain presenting both, clients verified against the first's CA.
#[test]
fn two_credentials_or_two_certificate_files_are_one_chain_presenting_both() {
    let mut index = mesh_with_ingress();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: dual, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-secrets, protocol: HTTPS}
    tls: {mode: MUTUAL, credentialNames: [httpbin-rsa, httpbin-ecdsa]}
    hosts: [httpbin.example.com]
  - port: {number: 443, name: https-files, protocol: HTTPS}
    tls:
      mode: OPTIONAL_MUTUAL
      tlsCertificates:
      - {serverCertificate: /etc/certs/rsa.crt, privateKey: /etc/certs/rsa.key, caCertificates: /etc/certs/ca.crt}
      - {serverCertificate: /etc/certs/ec.crt, privateKey: /etc/certs/ec.key}
    hosts: [files.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: dual, namespace: default}
spec:
  hosts: [httpbin.example.com, files.example.com]
  gateways: [istio-system/dual]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
"#,
    );
    let v = &verdict(&index, Kind::Gateway, "istio-system", "dual");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
    let c = rendered(&index, &gateway_scope());
    let l = c.listener("0.0.0.0_8443").expect("listener 0.0.0.0_8443");
    let shape = |t: &rustmesh_xds::tls::DownstreamTlsContext| {
        let c = &t.common_tls_context;
        (
            c.tls_certificate_sds_secret_configs
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            c.combined_validation_context
                .as_ref()
                .map(|v| v.validation_context_sds_secret_config.name.clone()),
            t.require_client_certificate,
        )
    };
    assert_eq!(
        shape(tls_for(l, "httpbin.example.com")),
        (
            vec![
                "kubernetes://httpbin-rsa".to_string(),
                "kubernetes://httpbin-ecdsa".to_string()
            ],
            Some("kubernetes://httpbin-rsa-cacert".to_string()),
            true
        )
    );
    assert_eq!(
        shape(tls_for(l, "files.example.com")),
        (
            vec![
                "file-cert:/etc/certs/rsa.crt~/etc/certs/rsa.key".to_string(),
                "file-cert:/etc/certs/ec.crt~/etc/certs/ec.key".to_string()
            ],
            Some("file-root:/etc/certs/ca.crt".to_string()),
            false
        )
    );
}

/// A gateway server's `ISTIO_MUTUAL` (Istio: the gateway's workload certificate, clients from
/// the mesh) and `OPTIONAL_MUTUAL` (a client certificate verified when presented), on one port
/// by SNI, and a TLS server with `ISTIO_MUTUAL` terminating for its `tcp` route.
const MUTUAL_MODES: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mutual, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-mesh, protocol: HTTPS}
    tls: {mode: ISTIO_MUTUAL}
    hosts: [mesh.example.com]
  - port: {number: 443, name: https-optional, protocol: HTTPS}
    tls: {mode: OPTIONAL_MUTUAL, credentialName: optional-credential}
    hosts: [optional.example.com]
  - port: {number: 31400, name: tls-mesh, protocol: TLS}
    tls: {mode: ISTIO_MUTUAL}
    hosts: [db.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [mesh.example.com, optional.example.com]
  gateways: [istio-system/mutual]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  gateways: [istio-system/mutual]
  tcp:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
"#;

/// The TLS context of the chain of `l` for SNI `name`.
fn tls_for<'l>(l: &'l Listener, name: &str) -> &'l rustmesh_xds::tls::DownstreamTlsContext {
    let fc = l
        .filter_chains
        .iter()
        .find(|fc| fc.filter_chain_match.server_names == [name])
        .unwrap_or_else(|| panic!("a chain for {name}"));
    assert_eq!(
        fc.filter_chain_match.transport_protocol.as_deref(),
        Some("tls")
    );
    let Some(DownstreamTransportSocket::Tls(t)) = &fc.transport_socket else {
        panic!("{name}: a chain terminating TLS")
    };
    t
}

#[test]
fn istio_mutual_presents_the_workload_certificate_and_optional_mutual_does_not_require_one() {
    let mut index = mesh_with_ingress();
    istio(&mut index, MUTUAL_MODES);
    let v = &verdict(&index, Kind::Gateway, "istio-system", "mutual");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
    let c = rendered(&index, &gateway_scope());

    let l = c.listener("0.0.0.0_8443").expect("listener 0.0.0.0_8443");
    // ISTIO_MUTUAL: Envoy's DownstreamTlsContext as Istio renders it, the workload
    // certificate and the mesh root, a client certificate required, the gateway's ALPN.
    let mesh = tls_for(l, "mesh.example.com");
    assert_eq!(
        serde_json::to_value(mesh).unwrap(),
        serde_json::json!({"commonTlsContext": {"alpnProtocols": ["h2", "http/1.1"],
            "tlsCertificateSdsSecretConfigs": [{"name": "default"}],
            "combinedValidationContext": {"defaultValidationContext": {},
                "validationContextSdsSecretConfig": {"name": "ROOTCA"}}},
            "requireClientCertificate": true})
    );
    // OPTIONAL_MUTUAL: the credential, its CA as the validation context, no client
    // certificate required.
    let optional = tls_for(l, "optional.example.com");
    assert_eq!(
        optional
            .common_tls_context
            .tls_certificate_sds_secret_configs[0]
            .name,
        "kubernetes://optional-credential"
    );
    assert_eq!(
        optional
            .common_tls_context
            .combined_validation_context
            .as_ref()
            .expect("OPTIONAL_MUTUAL verifies clients that present a certificate")
            .validation_context_sds_secret_config
            .name,
        "kubernetes://optional-credential-cacert"
    );
    assert!(!optional.require_client_certificate);
    // Each HTTPS server routes by its own table.
    assert_eq!(
        clusters_of(vhost(
            &c,
            "https.443.https-mesh.mutual.istio-system",
            "mesh.example.com:443"
        )),
        [PRODUCTPAGE]
    );

    // A TLS server with ISTIO_MUTUAL: the same context, then its tcp route.
    let l = c.listener("0.0.0.0_31400").expect("listener 0.0.0.0_31400");
    let db = tls_for(l, "db.example.com");
    assert_eq!(db, mesh);
    assert_eq!(rds(l), "tcp");
}

/// Istio's gateway TLS hardening: a server's `minProtocolVersion`, `maxProtocolVersion` and
/// `cipherSuites` become its chain's `tlsParams` (any terminating mode); a server without them
/// keeps Envoy's defaults.
#[test]
fn a_servers_tls_versions_and_suites_are_its_chains_tls_params() {
    let mut index = mesh_with_ingress();
    let yaml = MUTUAL_MODES
        .replace(
            "tls: {mode: OPTIONAL_MUTUAL, credentialName: optional-credential}",
            "tls: {mode: OPTIONAL_MUTUAL, credentialName: optional-credential, \
             minProtocolVersion: TLSV1_3}",
        )
        .replace(
            "  - port: {number: 31400, name: tls-mesh, protocol: TLS}\n    tls: {mode: ISTIO_MUTUAL}",
            "  - port: {number: 31400, name: tls-mesh, protocol: TLS}\n    tls: {mode: ISTIO_MUTUAL, \
             maxProtocolVersion: TLSV1_2, cipherSuites: [ECDHE-RSA-AES256-GCM-SHA384]}",
        );
    assert_ne!(yaml, MUTUAL_MODES);
    istio(&mut index, &yaml);
    let v = &verdict(&index, Kind::Gateway, "istio-system", "mutual");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
    let c = rendered(&index, &gateway_scope());
    let l = c.listener("0.0.0.0_8443").expect("listener 0.0.0.0_8443");
    let params = |t: &rustmesh_xds::tls::DownstreamTlsContext| {
        serde_json::to_value(&t.common_tls_context.tls_params).unwrap()
    };
    assert_eq!(
        params(tls_for(l, "optional.example.com")),
        serde_json::json!({"tlsMinimumProtocolVersion": "TLSv1_3"})
    );
    assert_eq!(
        params(tls_for(l, "mesh.example.com")),
        serde_json::Value::Null
    );
    let l = c.listener("0.0.0.0_31400").expect("listener 0.0.0.0_31400");
    assert_eq!(
        params(tls_for(l, "db.example.com")),
        serde_json::json!({"tlsMaximumProtocolVersion": "TLSv1_2",
            "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384"]})
    );
}

/// A server's `subjectAltNames`, `verifyCertificateSpki` and `verifyCertificateHash` become
/// its chain's validation context, next to the roots, where clients are verified
/// (`OPTIONAL_MUTUAL` and `ISTIO_MUTUAL` here); a `SIMPLE` server with one is refused.
#[test]
fn a_servers_client_pins_are_its_chains_validation_context() {
    let mut index = mesh_with_ingress();
    let spki = "NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=";
    let yaml = MUTUAL_MODES
        .replace(
            "tls: {mode: OPTIONAL_MUTUAL, credentialName: optional-credential}",
            &format!(
                "tls: {{mode: OPTIONAL_MUTUAL, credentialName: optional-credential, \
                 subjectAltNames: [client.example.com], verifyCertificateSpki: ['{spki}']}}"
            ),
        )
        .replace(
            "  - port: {number: 31400, name: tls-mesh, protocol: TLS}\n    tls: {mode: ISTIO_MUTUAL}",
            "  - port: {number: 31400, name: tls-mesh, protocol: TLS}\n    tls: {mode: ISTIO_MUTUAL, \
             subjectAltNames: [spiffe://cluster.local/ns/default/sa/sleep]}",
        );
    assert_ne!(yaml, MUTUAL_MODES);
    istio(&mut index, &yaml);
    let v = &verdict(&index, Kind::Gateway, "istio-system", "mutual");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
    let c = rendered(&index, &gateway_scope());
    let validation = |t: &rustmesh_xds::tls::DownstreamTlsContext| {
        let v = t
            .common_tls_context
            .combined_validation_context
            .as_ref()
            .unwrap();
        (
            v.validation_context_sds_secret_config.name.clone(),
            serde_json::to_value(&v.default_validation_context).unwrap(),
        )
    };
    let l = c.listener("0.0.0.0_8443").expect("listener 0.0.0.0_8443");
    assert_eq!(
        validation(tls_for(l, "optional.example.com")),
        (
            "kubernetes://optional-credential-cacert".to_string(),
            serde_json::json!({"matchSubjectAltNames": [{"exact": "client.example.com"}],
                "verifyCertificateSpki": [spki]})
        )
    );
    assert_eq!(
        validation(tls_for(l, "mesh.example.com")),
        ("ROOTCA".to_string(), serde_json::json!({}))
    );
    let l = c.listener("0.0.0.0_31400").expect("listener 0.0.0.0_31400");
    assert_eq!(
        validation(tls_for(l, "db.example.com")),
        (
            "ROOTCA".to_string(),
            serde_json::json!({"matchSubjectAltNames":
                [{"exact": "spiffe://cluster.local/ns/default/sa/sleep"}]})
        )
    );
    // On a SIMPLE server nothing asks for a client certificate: refused, naming the field.
    let mut index = mesh_with_ingress();
    istio(
        &mut index,
        &MUTUAL_MODES.replace(
            "tls: {mode: OPTIONAL_MUTUAL, credentialName: optional-credential}",
            "tls: {mode: SIMPLE, credentialName: optional-credential, \
             subjectAltNames: [client.example.com]}",
        ),
    );
    let v = &verdict(&index, Kind::Gateway, "istio-system", "mutual");
    assert!(!v.accepted, "{:?}", v.findings);
    assert_eq!(v.findings[0].field, "spec.servers[1].tls.subjectAltNames");
}

/// Without the mesh CA, the Gateway's status says what admission says: a `credentialName` is
/// refused (nothing would serve the Secret to the gateway) and an `ISTIO_MUTUAL` server is
/// accepted with a warning on its mode naming the chart value.
#[test]
fn without_the_mesh_ca_the_status_refuses_credentials_and_warns_about_istio_mutual() {
    let mut index = mesh_with_ingress();
    index.mesh.ca_host = None;
    istio(&mut index, MUTUAL_MODES);
    let v = &verdict(&index, Kind::Gateway, "istio-system", "mutual");
    assert!(!v.accepted, "{:?}", v.findings);
    let named: Vec<(&str, bool)> = v
        .findings
        .iter()
        .map(|f| (f.field.as_str(), f.level == crate::validation::Level::Error))
        .collect();
    assert_eq!(
        named,
        [
            ("spec.servers[1].tls.credentialName", true),
            ("spec.servers[0].tls.mode", false),
            ("spec.servers[2].tls.mode", false),
        ]
    );
    assert!(
        v.findings[1].message.contains("ca.enabled"),
        "{:?}",
        v.findings
    );
}
