//! Field-by-field tests of the renderer against the seeds' cases and the productpage fixture.

use super::*;
use crate::configmap::{render, render_view};
use crate::fixtures::{bookinfo, istio, namespace, workload};
use crate::index::{Kind, Object};
use rustmesh_xds::cluster::{DiscoveryType, LbPolicy};
use rustmesh_xds::listener::NetworkFilter;
use rustmesh_xds::route::{Route, VirtualHost};

const FIXTURE: &str = include_str!("../../../xds/tests/fixtures/productpage.json");

/// The productpage fixture (bookinfo's productpage sidecar, in Istio's shapes), with its inbound
/// cluster in the form of Istio 1.10 and later: the seed it comes from was dumped from an older
/// Istio, whose inbound clusters were STATIC to 127.0.0.1. Since 1.10 (upgrade notes, "Inbound
/// Forwarding Configuration") they forward to the original destination, the pod's own address,
/// from 127.0.0.6.
fn fixture() -> ProxyConfig {
    let mut doc: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    for c in doc["clusters"].as_array_mut().expect("clusters") {
        if c["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("inbound|"))
        {
            let obj = c.as_object_mut().unwrap();
            obj.remove("loadAssignment");
            obj.insert("type".into(), "ORIGINAL_DST".into());
            obj.insert("lbPolicy".into(), "CLUSTER_PROVIDED".into());
            obj.insert(
                "upstreamBindConfig".into(),
                serde_json::json!({"sourceAddress": {"address": "127.0.0.6", "portValue": 0}}),
            );
            // rustmesh's: each service of an inbound port with its selector, so a sidecar of a
            // scope shared by several services reports its own as `destination_service`.
            for svc in c["metadata"]["services"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                svc["selector"] = serde_json::json!({"app": svc["name"].clone()});
            }
        }
    }
    ProxyConfig::from_json(&doc.to_string()).expect("fixture is valid")
}

fn rendered(index: &Index, scope: &Scope) -> ProxyConfig {
    let c = render(index, scope);
    if let Err(e) = c.validate() {
        panic!("render of {scope} does not validate: {e}\n{}", c.to_json());
    }
    c
}

fn vhost<'c>(c: &'c ProxyConfig, table: &str, name: &str) -> &'c VirtualHost {
    c.route(table)
        .unwrap_or_else(|| panic!("route table {table} missing"))
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("vhost {name} missing in {table}"))
}

/// The DESTINATION column of `proxy-config listeners`: cluster(s) or route table.
fn dest(f: &NetworkFilter) -> String {
    match f {
        NetworkFilter::TcpProxy(t) => match (&t.cluster, &t.weighted_clusters) {
            (Some(c), _) => c.clone(),
            (None, Some(w)) => w
                .clusters
                .iter()
                .map(|c| format!("{}:{}", c.name, c.weight))
                .collect::<Vec<_>>()
                .join(","),
            (None, None) => String::new(),
        },
        NetworkFilter::HttpConnectionManager(h) => match (&h.rds, &h.route_config) {
            (Some(r), _) => format!("Route: {}", r.route_config_name),
            (None, Some(rc)) => format!("Inline Route: {}", rc.name),
            (None, None) => String::new(),
        },
    }
}

fn endpoint_ips(c: &ProxyConfig, cluster: &str) -> Vec<String> {
    let cl = c
        .cluster(cluster)
        .unwrap_or_else(|| panic!("cluster {cluster} missing"));
    c.load_assignment(cl)
        .map(|la| {
            la.lb_endpoints()
                .map(|e| e.endpoint.address.socket_addr().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn reviews_vs() -> &'static str {
    r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - name: shift
    route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
"#
}

#[test]
fn productpage_matches_the_fixture() {
    let index = bookinfo();
    let got = rendered(&index, &Scope::namespace("default"));
    let want = fixture();

    // Outbound listeners and virtualOutbound: exactly as in the fixture.
    for l in &want.listeners {
        if l.name == "virtualInbound" {
            continue;
        }
        assert_eq!(got.listener(&l.name), Some(l), "listener {}", l.name);
    }
    assert_eq!(got.listeners.len(), want.listeners.len());
    // Route tables: exactly.
    for r in &want.routes {
        assert_eq!(got.route(&r.name), Some(r), "route table {}", r.name);
    }
    assert_eq!(got.routes.len(), want.routes.len());
    // Clusters: exactly, except the inbound cluster's metadata, which for a namespace scope lists
    // every service whose pods use the scope (the fixture is one pod's view).
    for c in &want.clusters {
        let g = got
            .cluster(&c.name)
            .unwrap_or_else(|| panic!("cluster {}", c.name));
        if c.name == "inbound|9080||" {
            let mut g = g.clone();
            g.metadata = c.metadata.clone();
            assert_eq!(&g, c);
        } else {
            assert_eq!(g, c, "cluster {}", c.name);
        }
    }
    // Endpoints and DNS, by name.
    for e in &want.endpoints {
        let g = got
            .endpoints
            .iter()
            .find(|x| x.cluster_name == e.cluster_name);
        assert_eq!(g, Some(e), "endpoints {}", e.cluster_name);
    }
    assert_eq!(got.endpoints.len(), want.endpoints.len());
    let mut want_dns = want.dns.clone();
    want_dns.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got.dns, want_dns);
    // virtualInbound: the 9080 chains as in the fixture, plus the namespace's other ports;
    // in a namespace's shared config, four services share 9080, so its inbound route names no
    // span (each sidecar names its spans after the service selecting its pod).
    let vi = got.listener("virtualInbound").unwrap();
    let mut wi = want.listener("virtualInbound").unwrap().clone();
    for chain in &mut wi.filter_chains {
        for f in &mut chain.filters {
            if let NetworkFilter::HttpConnectionManager(h) = f
                && let Some(rc) = &mut h.route_config
            {
                for vh in &mut rc.virtual_hosts {
                    for r in &mut vh.routes {
                        r.decorator = None;
                    }
                }
            }
        }
    }
    for chain in &wi.filter_chains {
        assert!(
            vi.filter_chains.contains(chain),
            "inbound chain {:?}",
            chain.name
        );
    }
    assert_eq!(vi.filter_chains.first(), wi.filter_chains.first());
    assert_eq!(vi.filter_chains.last(), wi.filter_chains.last());
}

#[test]
fn productpage_selector_scope_is_the_fixture_exactly() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: productpage
  namespace: default
spec:
  workloadSelector:
    labels: {app: productpage}
  egress:
  - hosts: ["*/*"]
"#,
    );
    let got = rendered(&index, &Scope::sidecar("default", "productpage"));
    let mut want = fixture();
    let sort = |c: &mut ProxyConfig| {
        c.version_info.clear();
        c.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        c.routes.sort_by(|a, b| a.name.cmp(&b.name));
        c.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        c.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        c.dns.sort_by(|a, b| a.name.cmp(&b.name));
    };
    let mut got = got;
    sort(&mut got);
    sort(&mut want);
    assert_eq!(got, want);
    // The namespace scope no longer serves productpage's port for that pod's services.
    let ns_scope = rendered(&index, &Scope::namespace("default"));
    let inbound = ns_scope.cluster("inbound|9080||").unwrap();
    let services: Vec<_> = inbound
        .metadata
        .as_ref()
        .unwrap()
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(services, ["details", "ratings", "reviews"]);
}

#[test]
fn reviews_weighted_with_header_match_and_subset_endpoints() {
    let mut index = bookinfo();
    istio(&mut index, reviews_vs());
    let c = rendered(&index, &Scope::namespace("default"));
    let vh = vhost(&c, "9080", "reviews.default.svc.cluster.local:9080");
    assert_eq!(vh.routes.len(), 2);
    let jason = &vh.routes[0];
    assert_eq!(jason.name.as_deref(), Some("jason"));
    assert_eq!(jason.match_.prefix.as_deref(), Some("/"));
    assert_eq!(jason.match_.headers.len(), 1);
    assert_eq!(jason.match_.headers[0].name, "end-user");
    assert_eq!(
        jason.match_.headers[0].string_match,
        Some(rustmesh_xds::route::StringMatcher::exact("jason"))
    );
    let action = jason.route.as_ref().unwrap();
    assert_eq!(
        action.cluster.as_deref(),
        Some("outbound|9080|v2|reviews.default.svc.cluster.local")
    );
    assert_eq!(action.timeout, Some(Duration::ZERO));
    assert_eq!(action.retry_policy, Some(routes::default_retry_policy()));
    assert_eq!(jason.virtual_service.as_deref(), Some("reviews.default"));

    let shift = vh.routes[1].route.as_ref().unwrap();
    let w = shift.weighted_clusters.as_ref().unwrap();
    let pairs: Vec<_> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight))
        .collect();
    assert_eq!(
        pairs,
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local", 90),
            ("outbound|9080|v2|reviews.default.svc.cluster.local", 10)
        ]
    );
    assert_eq!(
        endpoint_ips(&c, "outbound|9080|v2|reviews.default.svc.cluster.local"),
        ["10.244.0.33:9080"]
    );
    assert_eq!(
        endpoint_ips(&c, "outbound|9080||reviews.default.svc.cluster.local").len(),
        3
    );
    let v3 = c
        .cluster("outbound|9080|v3|reviews.default.svc.cluster.local")
        .unwrap();
    let md = v3.metadata.as_ref().unwrap();
    assert_eq!(md.subset.as_deref(), Some("v3"));
    assert_eq!(md.destination_rule.as_deref(), Some("reviews.default"));
    // Other services keep their default route.
    let ratings = vhost(&c, "9080", "ratings.default.svc.cluster.local:9080");
    assert_eq!(ratings.routes[0].name.as_deref(), Some("default"));
}

#[test]
fn tcp_service_gets_a_cluster_ip_listener_and_tcp_routes() {
    let mut index = bookinfo();
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.20.1_27017").unwrap();
    assert!(!l.bind_to_port);
    assert_eq!(l.filter_chains.len(), 1);
    assert!(l.default_filter_chain.is_none());
    assert_eq!(
        dest(&l.filter_chains[0].filters[0]),
        "outbound|27017||mongodb.default.svc.cluster.local"
    );
    assert!(c.listener("0.0.0.0_27017").is_none());

    workload(
        &mut index,
        "default",
        "mongodb-replica",
        Some("10.96.20.2"),
        &[("mongo", 27017, 27017)],
        &[("mongodb-r-1", "10.244.0.41", &[("app", "mongodb-replica")])],
    );
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mongo, namespace: default}
spec:
  hosts: [mongodb]
  tcp:
  - match:
    - port: 27017
    route:
    - destination: {host: mongodb}
      weight: 80
    - destination: {host: mongodb-replica}
      weight: 20
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.20.1_27017").unwrap();
    let NetworkFilter::TcpProxy(t) = &l.filter_chains[0].filters[0] else {
        panic!("tcp proxy expected")
    };
    let w = t.weighted_clusters.as_ref().unwrap();
    assert_eq!(
        w.clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight))
            .collect::<Vec<_>>(),
        [
            ("outbound|27017||mongodb.default.svc.cluster.local", 80),
            (
                "outbound|27017||mongodb-replica.default.svc.cluster.local",
                20
            )
        ]
    );
}

/// Two HTTPS services, `nginx` (10.96.40.1) and `nginx-v2` (10.96.40.2), port 443 → 8443.
fn nginx_services(index: &mut Index) {
    for (name, ip, pod_ip) in [
        ("nginx", "10.96.40.1", "10.244.0.70"),
        ("nginx-v2", "10.96.40.2", "10.244.0.71"),
    ] {
        workload(
            index,
            "default",
            name,
            Some(ip),
            &[("https", 443, 8443)],
            &[(&format!("{name}-1"), pod_ip, &[("app", name)])],
        );
    }
}

/// `sourceLabels` on TCP and TLS matches (Istio evaluates them against each proxy's labels):
/// the scope's one document lists a chain per rule that applies only to some pods, carrying
/// the labels, in rule order, then the chain every pod keeps. A rule without sourceLabels
/// ends the list.
#[test]
fn tcp_and_tls_source_labels_travel_on_the_chains_in_rule_order() {
    let mut index = bookinfo();
    workload(
        &mut index,
        "default",
        "mongodb-replica",
        Some("10.96.20.2"),
        &[("mongo", 27017, 27017)],
        &[("mongodb-r-1", "10.244.0.41", &[("app", "mongodb-replica")])],
    );
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mongo, namespace: default}
spec:
  hosts: [mongodb]
  tcp:
  - match:
    - sourceLabels: {app: reviews, version: v1}
    - sourceLabels: {app: ratings}
      port: 27017
    - sourceLabels: {app: details}
      port: 1
    route:
    - destination: {host: mongodb-replica}
  - match:
    - port: 27017
    route:
    - destination: {host: mongodb}
  - route:
    - destination: {host: mongodb-replica}
"#,
    );
    let v = &crate::fixtures::verdict(&index, Kind::VirtualService, "default", "mongo");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.20.1_27017").unwrap();
    let chains: Vec<(Vec<(String, String)>, String)> = l
        .filter_chains
        .iter()
        .map(|fc| {
            (
                fc.filter_chain_match
                    .source_labels
                    .clone()
                    .into_iter()
                    .collect(),
                dest(&fc.filters[0]),
            )
        })
        .collect();
    let (replica, primary) = (
        "outbound|27017||mongodb-replica.default.svc.cluster.local".to_string(),
        "outbound|27017||mongodb.default.svc.cluster.local".to_string(),
    );
    let label = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        chains,
        [
            (
                vec![label("app", "reviews"), label("version", "v1")],
                replica.clone()
            ),
            (vec![label("app", "ratings")], replica.clone()),
            (vec![], primary.clone()),
        ]
    );

    // Only labelled rules: the service itself for every other pod.
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mongo, namespace: default}
spec:
  hosts: [mongodb]
  tcp:
  - match:
    - sourceLabels: {app: ratings}
    route:
    - destination: {host: mongodb-replica}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.20.1_27017").unwrap();
    let dests: Vec<(usize, String)> = l
        .filter_chains
        .iter()
        .map(|fc| {
            (
                fc.filter_chain_match.source_labels.len(),
                dest(&fc.filters[0]),
            )
        })
        .collect();
    assert_eq!(dests, [(1, replica.clone()), (0, primary.clone())]);

    // TLS: an SNI chain per match, carrying its labels, before the port's own chain.
    nginx_services(&mut index);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.default.svc.cluster.local]
  tls:
  - match:
    - sniHosts: [nginx.default.svc.cluster.local]
      sourceLabels: {app: ratings}
    route:
    - destination: {host: nginx-v2, port: {number: 443}}
  - match:
    - sniHosts: [nginx.default.svc.cluster.local]
    route:
    - destination: {host: nginx}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.40.1_443").unwrap();
    let chains: Vec<(Vec<String>, usize, String)> = l
        .filter_chains
        .iter()
        .map(|fc| {
            let m = &fc.filter_chain_match;
            (
                m.server_names.clone(),
                m.source_labels.len(),
                dest(&fc.filters[0]),
            )
        })
        .collect();
    let sni = vec!["nginx.default.svc.cluster.local".to_string()];
    let nginx = "outbound|443||nginx.default.svc.cluster.local".to_string();
    assert_eq!(
        chains,
        [
            (
                sni.clone(),
                1,
                "outbound|443||nginx-v2.default.svc.cluster.local".to_string()
            ),
            (sni, 0, nginx.clone()),
            (vec![], 0, nginx),
        ]
    );
}

/// A VirtualService's `tls` rules on a sidecar (Istio's TLS routes): on the service's HTTPS
/// port, one chain per SNI of the rules' matches to their destination, the rest (another
/// name, no SNI) to the service itself; a match for another port or for gateways only is
/// left out, and a `*` SNI takes the service's own place.
#[test]
fn tls_routes_pick_the_destination_by_sni_on_the_services_tls_port() {
    let mut index = bookinfo();
    nginx_services(&mut index);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.default.svc.cluster.local, "*.nginx.example.com"]
  tls:
  - match:
    - port: 443
      sniHosts: [v2.nginx.example.com]
    - sniHosts: [nginx.default.svc.cluster.local]
      destinationSubnets: [10.96.40.1/32]
    route:
    - destination: {host: nginx-v2, port: {number: 443}}
  - match:
    - port: 8443
      sniHosts: [other.nginx.example.com]
    - gateways: [some-gateway]
      sniHosts: [gw.nginx.example.com]
    route:
    - destination: {host: nginx-v2}
"#,
    );
    let v = &crate::fixtures::verdict(&index, Kind::VirtualService, "default", "nginx");
    // Accepted; only the wildcard host, which names no service of the registry, is warned.
    let warned: Vec<&str> = v.findings.iter().map(|f| f.field.as_str()).collect();
    assert!(
        v.accepted && warned == ["spec.hosts[1]"],
        "{:?}",
        v.findings
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.40.1_443").expect("nginx's listener");
    let chains: Vec<(Vec<String>, Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|fc| {
            assert!(fc.transport_socket.is_none(), "TLS passes through unopened");
            (
                fc.filter_chain_match.server_names.clone(),
                fc.filter_chain_match
                    .prefix_ranges
                    .iter()
                    .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len))
                    .collect(),
                dest(&fc.filters[0]),
            )
        })
        .collect();
    let v2 = "outbound|443||nginx-v2.default.svc.cluster.local".to_string();
    assert_eq!(
        chains,
        [
            (vec!["v2.nginx.example.com".to_string()], vec![], v2.clone()),
            (
                vec!["nginx.default.svc.cluster.local".to_string()],
                vec!["10.96.40.1/32".to_string()],
                v2.clone()
            ),
            (
                vec![],
                vec![],
                "outbound|443||nginx.default.svc.cluster.local".to_string()
            ),
        ]
    );
    // SNI needs the ClientHello: the listener sniffs.
    assert!(l.listener_filters_timeout.is_some());
    assert!(c.cluster(&v2).is_some());
    // nginx-v2's own port has no rule: one chain, no sniffing.
    let other = c.listener("10.96.40.2_443").expect("nginx-v2's listener");
    assert_eq!(other.filter_chains.len(), 1);
    assert!(other.listener_filters_timeout.is_none());

    // A `*` SNI (valid only in a VirtualService for host `*`) matches every name: it replaces
    // the service's own chain.
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: ["*"]
  tls:
  - match:
    - sniHosts: ["*"]
    route:
    - destination: {host: nginx-v2, port: {number: 443}}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.40.1_443").expect("nginx's listener");
    assert_eq!(l.filter_chains.len(), 1);
    assert!(l.filter_chains[0].filter_chain_match.is_empty());
    assert_eq!(dest(&l.filter_chains[0].filters[0]), v2);
}

/// Istio's validation of TLS routes: each SNI host must be one of the VirtualService's hosts
/// (or within one of its wildcards), as written.
#[test]
fn tls_route_sni_hosts_must_be_the_virtual_services_hosts() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: default}
spec:
  hosts: ["*.example.com"]
  tls:
  - match:
    - sniHosts: [a.example.com, example.org]
    route:
    - destination: {host: productpage}
"#,
    );
    let v = &crate::fixtures::verdict(&index, Kind::VirtualService, "default", "bad");
    assert!(!v.accepted);
    let fields: Vec<&str> = v.findings.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.tls[0].match[0].sniHosts[1]"],
        "{:?}",
        v.findings
    );
    assert!(v.findings[0].message.contains("not a compatible host"));
}

#[test]
fn auto_protocol_port_gets_both_chains_like_seed_004() {
    let mut index = Index::default();
    namespace(&mut index, "test", true);
    workload(
        &mut index,
        "test",
        "nginx",
        Some("10.102.168.134"),
        &[("", 80, 80)],
        &[("nginx-1", "10.244.0.73", &[("app", "nginx")])],
    );
    let c = rendered(&index, &Scope::namespace("test"));
    let l = c.listener("10.102.168.134_80").unwrap();
    assert_eq!(l.filter_chains.len(), 1);
    let http = &l.filter_chains[0];
    assert_eq!(
        http.filter_chain_match.transport_protocol.as_deref(),
        Some("raw_buffer")
    );
    assert_eq!(
        http.filter_chain_match.application_protocols,
        rustmesh_xds::listener::HTTP_PROTOCOLS
    );
    assert_eq!(
        dest(&http.filters[0]),
        "Route: nginx.test.svc.cluster.local:80"
    );
    let tcp = l.default_filter_chain.as_ref().unwrap();
    assert_eq!(
        dest(&tcp.filters[0]),
        "outbound|80||nginx.test.svc.cluster.local"
    );
    assert_eq!(l.listener_filters_timeout, Some(Duration::from_millis(100)));
    let rt = c.route("nginx.test.svc.cluster.local:80").unwrap();
    assert_eq!(rt.virtual_hosts.len(), 1);
    assert_eq!(rt.virtual_hosts[0].domains, ["*"]);
    let r = rt.virtual_hosts[0].routes[0].route.as_ref().unwrap();
    assert_eq!(
        r.cluster.as_deref(),
        Some("outbound|80||nginx.test.svc.cluster.local")
    );
    // No HTTP service on 80: no 0.0.0.0_80 listener, no `80` table.
    assert!(c.listener("0.0.0.0_80").is_none() && c.route("80").is_none());
    // Inbound: an auto port accepts HTTP and TCP.
    let vi = c.listener("virtualInbound").unwrap();
    let on_80: Vec<_> = vi
        .filter_chains
        .iter()
        .filter(|f| f.filter_chain_match.destination_port == Some(80))
        .map(|f| {
            (
                f.filter_chain_match.transport_protocol.as_deref(),
                f.filter_chain_match.application_protocols.is_empty(),
                dest(&f.filters[0]),
            )
        })
        .collect();
    assert_eq!(
        on_80,
        [
            (
                Some("raw_buffer"),
                false,
                "Inline Route: inbound|80||".to_string()
            ),
            (Some("raw_buffer"), true, "inbound|80||".to_string()),
            (Some("tls"), true, "inbound|80||".to_string()),
        ]
    );
    // A TCP-only port keeps one chain that takes everything.
    workload(
        &mut index,
        "test",
        "pg",
        Some("10.102.168.135"),
        &[("tcp-pg", 5432, 5432)],
        &[("pg-1", "10.244.0.74", &[("app", "pg")])],
    );
    let c = rendered(&index, &Scope::namespace("test"));
    let vi = c.listener("virtualInbound").unwrap();
    let on_5432: Vec<_> = vi
        .filter_chains
        .iter()
        .filter(|f| f.filter_chain_match.destination_port == Some(5432))
        .collect();
    assert_eq!(on_5432.len(), 1);
    assert!(on_5432[0].filter_chain_match.transport_protocol.is_none());
}

#[test]
fn sidecar_limits_egress_to_own_namespace() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: ["./*"]
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    assert!(c.listener("10.96.0.10_53").is_none());
    assert!(
        c.route("kube-dns.kube-system.svc.cluster.local:9153")
            .is_none()
    );
    assert!(c.clusters.iter().all(|cl| !cl.name.contains("kube-system")));
    assert!(c.dns.iter().all(|d| !d.name.contains("kube-system")));
    assert!(
        c.cluster("outbound|9080||reviews.default.svc.cluster.local")
            .is_some()
    );
    // Still ALLOW_ANY: the catch-alls pass through.
    assert_eq!(
        vhost(&c, "9080", "allow_any").routes[0]
            .route
            .as_ref()
            .unwrap()
            .cluster
            .as_deref(),
        Some("PassthroughCluster")
    );
}

/// Inbound clusters deliver as Istio 1.10+ does: a service port to the connection's original
/// destination (the pod's own address) from 127.0.0.6; a Sidecar ingress to the loopback
/// endpoint it names, or to the pod's address for `0.0.0.0:PORT` and when it names none.
#[test]
fn inbound_clusters_forward_to_the_pod_address_unless_a_sidecar_names_loopback() {
    let index = bookinfo();
    let c = rendered(&index, &Scope::namespace("default"));
    let inbound = c.cluster("inbound|9080||").unwrap();
    assert_eq!(inbound.type_, DiscoveryType::OriginalDst);
    assert_eq!(inbound.lb_policy, LbPolicy::ClusterProvided);
    assert!(inbound.load_assignment.is_none());
    assert_eq!(
        inbound
            .upstream_bind_config
            .as_ref()
            .map(|b| b.source_address.address.to_string()),
        Some("127.0.0.6".to_string())
    );

    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: "127.0.0.1:8080"
  - port: {number: 9081, protocol: HTTP, name: http-v6}
    defaultEndpoint: "[::1]:9081"
  - port: {number: 9082, protocol: TCP, name: tcp}
    defaultEndpoint: "0.0.0.0:9082"
  - port: {number: 9083, protocol: TCP, name: tcp-none}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let endpoint = |name: &str| {
        let cl = c.cluster(name).unwrap_or_else(|| panic!("{name}"));
        match cl.type_ {
            DiscoveryType::Static => {
                let a = &cl.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0]
                    .endpoint
                    .address;
                a.socket_addr().unwrap().to_string()
            }
            DiscoveryType::OriginalDst => {
                assert!(cl.upstream_bind_config.is_some(), "{name} binds 127.0.0.6");
                "original destination".to_string()
            }
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(endpoint("inbound|9080||"), "127.0.0.1:8080");
    assert_eq!(endpoint("inbound|9081||"), "[::1]:9081");
    assert_eq!(endpoint("inbound|9082||"), "original destination");
    assert_eq!(endpoint("inbound|9083||"), "original destination");
}

#[test]
fn the_mesh_ca_is_always_in_the_name_table_whatever_the_sidecar_egress() {
    let mut index = bookinfo();
    workload(
        &mut index,
        "istio-system",
        "istiod",
        Some("10.96.0.50"),
        &[("grpc-ca", 15012, 15012)],
        &[],
    );
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: ["./*"]
"#,
    );
    // Without a CA the Sidecar hides istio-system entirely.
    let c = rendered(&index, &Scope::namespace("default"));
    assert!(c.dns.iter().all(|d| !d.name.contains("istio-system")));
    // With the CA, only its name is added (no listener or cluster for it).
    index.mesh.ca_host = Some("istiod.istio-system.svc.cluster.local".into());
    let c = rendered(&index, &Scope::namespace("default"));
    let entry = c
        .dns
        .iter()
        .find(|d| d.name == "istiod.istio-system.svc.cluster.local")
        .expect("the CA's name");
    assert!(
        entry
            .aliases
            .contains(&"istiod.istio-system.svc".to_string())
    );
    assert_eq!(
        entry.addresses,
        vec!["10.96.0.50".parse::<IpAddr>().unwrap()]
    );
    assert!(
        c.clusters
            .iter()
            .all(|cl| !cl.name.contains("istio-system"))
    );
    let names: Vec<&str> = c.dns.iter().map(|d| d.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "the table stays sorted");
}

#[test]
fn egress_port_narrows_ports_and_root_sidecar_is_the_default() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: ["./reviews.default.svc.cluster.local"]
  - hosts: ["kube-system/*"]
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let table = c.route("9080").unwrap();
    let names: Vec<_> = table
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["allow_any", "reviews.default.svc.cluster.local:9080"]
    );
    assert!(c.listener("10.96.0.10_53").is_some());
    assert!(c.listener("10.96.20.1_27017").is_none());
}

#[test]
fn registry_only_blackholes_the_catch_alls() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let vo = c.listener("virtualOutbound").unwrap();
    assert_eq!(dest(&vo.filter_chains[1].filters[0]), "BlackHoleCluster");
    let l = c.listener("0.0.0.0_9080").unwrap();
    let d = l.default_filter_chain.as_ref().unwrap();
    assert_eq!(dest(&d.filters[0]), "BlackHoleCluster");
    let table = c.route("9080").unwrap();
    assert_eq!(table.virtual_hosts[0].name, "block_all");
    let r = &table.virtual_hosts[0].routes[0];
    assert_eq!(r.direct_response.as_ref().unwrap().status, 502);
    assert!(r.route.is_none());

    // The mesh-wide default applies when no Sidecar says otherwise.
    let mut index = bookinfo();
    index.mesh.outbound_policy = OutboundTrafficPolicyMode::RegistryOnly;
    let c = rendered(&index, &Scope::namespace("default"));
    assert_eq!(c.route("9080").unwrap().virtual_hosts[0].name, "block_all");
}

#[test]
fn fault_timeout_retries_and_other_http_actions() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - name: slow
    match:
    - headers:
        end-user: {exact: jason}
      uri: {prefix: /ratings}
      method: {exact: GET}
      queryParams:
        debug: {exact: "1"}
      withoutHeaders:
        x-canary: {prefix: "yes"}
      ignoreUriCase: true
      sourceLabels: {app: productpage}
    fault:
      delay:
        percentage: {value: 100.0}
        fixedDelay: 7s
      abort:
        httpStatus: 500
        percentage: {value: 10}
    timeout: 0.5s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,503
    rewrite:
      uri: /v2/ratings
      authority: ratings.internal
    headers:
      request:
        set: {x-a: "1"}
        add: {x-b: "2"}
        remove: [x-c]
    mirror: {host: details}
    mirrorPercentage: {value: 5}
    route:
    - destination: {host: ratings}
  - name: no-retry
    match:
    - uri: {regex: "/r/[0-9]+"}
    retries: {attempts: 0}
    route:
    - destination: {host: ratings}
      headers:
        response:
          remove: [server]
  - name: moved
    match:
    - uri: {exact: /old}
    redirect: {uri: /new, redirectCode: 302}
  - name: ok
    match:
    - uri: {exact: /health}
    directResponse: {status: 200, body: {string: ok}}
"#,
    );
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings-policy, namespace: default}
spec:
  host: ratings
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let vh = vhost(&c, "9080", "ratings.default.svc.cluster.local:9080");
    assert_eq!(vh.routes.len(), 4);
    let slow = &vh.routes[0];
    let m = &slow.match_;
    assert_eq!(m.prefix.as_deref(), Some("/ratings"));
    assert_eq!(m.case_sensitive, Some(false));
    let hn: Vec<_> = m
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.invert_match))
        .collect();
    assert_eq!(
        hn,
        [(":method", false), ("end-user", false), ("x-canary", true)]
    );
    assert_eq!(m.query_parameters[0].name, "debug");
    assert_eq!(m.source_labels["app"], "productpage");
    let f = slow.fault.as_ref().unwrap();
    assert_eq!(
        f.delay.as_ref().unwrap().fixed_delay,
        Duration::from_secs(7)
    );
    assert_eq!(f.delay.as_ref().unwrap().percentage.value, 100.0);
    assert_eq!(f.abort.as_ref().unwrap().http_status, Some(500));
    assert_eq!(f.abort.as_ref().unwrap().percentage.value, 10.0);
    let a = slow.route.as_ref().unwrap();
    assert_eq!(a.timeout, Some(Duration::from_millis(500)));
    let rp = a.retry_policy.as_ref().unwrap();
    assert_eq!(
        (
            rp.num_retries,
            rp.retry_on.as_str(),
            rp.retriable_status_codes.as_slice()
        ),
        (3, "gateway-error,retriable-status-codes", &[503u16][..])
    );
    assert_eq!(rp.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(a.prefix_rewrite.as_deref(), Some("/v2/ratings"));
    assert_eq!(a.host_rewrite_literal.as_deref(), Some("ratings.internal"));
    assert_eq!(a.request_mirror_policies.len(), 1);
    assert_eq!(
        a.request_mirror_policies[0].cluster,
        "outbound|9080||details.default.svc.cluster.local"
    );
    assert_eq!(a.request_mirror_policies[0].percentage.unwrap().value, 5.0);
    assert_eq!(slow.request_headers_to_add.len(), 2);
    assert_eq!(slow.request_headers_to_remove, ["x-c"]);

    let no_retry = &vh.routes[1];
    assert!(no_retry.route.as_ref().unwrap().retry_policy.is_none());
    assert_eq!(
        no_retry.match_.safe_regex.as_ref().unwrap().regex,
        "/r/[0-9]+"
    );
    assert_eq!(no_retry.response_headers_to_remove, ["server"]);
    let moved: &Route = &vh.routes[2];
    let rd = moved.redirect.as_ref().unwrap();
    assert_eq!(
        (rd.path_redirect.as_deref(), rd.response_code),
        (Some("/new"), 302)
    );
    assert_eq!(moved.match_.path.as_deref(), Some("/old"));
    let ok = vh.routes[3].direct_response.as_ref().unwrap();
    assert_eq!((ok.status, ok.body.as_deref()), (200, Some("ok")));
}

#[test]
fn cors_policy_is_rendered_as_istio_renders_it() {
    use rustmesh_xds::route::{CorsPolicy, StringMatcher};
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - name: api
    match:
    - uri: {prefix: /api}
    corsPolicy:
      allowOrigins:
      - exact: https://a.example.com
      - prefix: https://b.
      - regex: "https://.*\\.example\\.org"
      allowMethods: [GET, POST]
      allowHeaders: [content-type, x-token]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    route:
    - destination: {host: ratings}
  - name: legacy
    corsPolicy:
      allowOrigin: [https://old.example.com]
    route:
    - destination: {host: ratings}
  - name: plain
    route:
    - destination: {host: ratings}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let vh = vhost(&c, "9080", "ratings.default.svc.cluster.local:9080");
    let api = vh.routes[0].cors.as_ref().expect("cors rendered");
    assert_eq!(
        api,
        &CorsPolicy {
            allow_origin_string_match: vec![
                StringMatcher::exact("https://a.example.com"),
                StringMatcher::prefix("https://b."),
                StringMatcher::regex(r"https://.*\.example\.org"),
            ],
            allow_methods: "GET,POST".into(),
            allow_headers: "content-type,x-token".into(),
            expose_headers: "x-trace".into(),
            max_age: "86400".into(),
            allow_credentials: true,
            forward_not_matching_preflights: false,
        }
    );
    let legacy = vh.routes[1].cors.as_ref().expect("cors rendered");
    assert_eq!(
        legacy,
        &CorsPolicy {
            allow_origin_string_match: vec![StringMatcher::exact("https://old.example.com")],
            ..CorsPolicy::default()
        }
    );
    assert!(legacy.forward_not_matching_preflights, "FORWARD by default");
    assert_eq!(vh.routes[2].cors, None);
    // The proxy's own validation accepts what was rendered.
    ProxyConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
}

#[test]
fn export_to_hides_a_virtual_service_from_other_namespaces() {
    let mut index = bookinfo();
    namespace(&mut index, "other", true);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - route:
    - destination: {host: reviews, subset: v3}
"#,
    );
    let own = rendered(&index, &Scope::namespace("default"));
    let r = &vhost(&own, "9080", "reviews.default.svc.cluster.local:9080").routes[0];
    assert_eq!(
        r.route.as_ref().unwrap().cluster.as_deref(),
        Some("outbound|9080|v3|reviews.default.svc.cluster.local")
    );
    let other = rendered(&index, &Scope::namespace("other"));
    let vh = vhost(&other, "9080", "reviews.default.svc.cluster.local:9080");
    assert_eq!(vh.routes[0].name.as_deref(), Some("default"));
    assert!(vh.routes[0].virtual_service.is_none());
    // From another namespace the short name is not a domain.
    assert!(!vh.domains.contains(&"reviews".to_string()));
    assert!(vh.domains.contains(&"reviews.default".to_string()));
}

#[test]
fn an_invalid_update_keeps_the_last_accepted_version_serving() {
    let weights = |c: &ProxyConfig| -> Vec<(String, u32)> {
        let vh = vhost(c, "9080", "reviews.default.svc.cluster.local:9080");
        let w = vh.routes[1]
            .route
            .as_ref()
            .unwrap()
            .weighted_clusters
            .as_ref()
            .unwrap();
        w.clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight))
            .collect()
    };
    let mut index = bookinfo();
    istio(&mut index, reviews_vs());
    let good = weights(&rendered(&index, &Scope::namespace("default")));
    assert_eq!(good[0].1, 90);
    // The operator remembers what it accepted (after each flush).
    let v = MeshView::new(&index).validation.clone();
    index.remember_accepted(v.accepted_keys());
    // An update with weights summing to 110.
    istio(
        &mut index,
        &reviews_vs().replace("weight: 10", "weight: 20"),
    );
    let view = MeshView::new(&index);
    let key = ObjKey::new("default", "reviews");
    let verdict = &view.validation.verdicts[&(Kind::VirtualService, key.clone())];
    assert!(!verdict.accepted);
    assert_eq!(verdict.reason, "Invalid");
    assert!(verdict.serving_previous.is_some());
    let status = crate::validation::status_for(verdict, Some(2), None, "now");
    let reconciled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciled")
        .unwrap();
    assert!(
        reconciled
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("last accepted version"),
        "{reconciled:?}"
    );
    drop(view);
    assert_eq!(
        weights(&rendered(&index, &Scope::namespace("default"))),
        good,
        "the previous routes keep serving"
    );
    // Deleting the object forgets its last good version: nothing of it is rendered.
    index.delete(Kind::VirtualService, &key);
    let c = rendered(&index, &Scope::namespace("default"));
    let vh = vhost(&c, "9080", "reviews.default.svc.cluster.local:9080");
    assert_eq!(vh.routes[0].name.as_deref(), Some("default"));
    assert!(index.virtual_services.last_good.is_empty());
}

/// The reviews VirtualService at `generation`, with weights 90/`w` (110 is invalid) and `status`.
fn reviews_at(
    generation: i64,
    w: u32,
    status: Option<rustmesh_api::status::IstioStatus>,
) -> Object {
    let yaml = reviews_vs().replace("weight: 10", &format!("weight: {w}"));
    let mut objects = crate::fixtures::reparse_unvalidated(&yaml);
    let Some(rustmesh_api::IstioObject::VirtualService(mut vs)) = objects.pop() else {
        panic!("one VirtualService");
    };
    vs.metadata.generation = Some(generation);
    vs.status = status;
    Object::VirtualService(vs)
}

#[test]
fn a_restarted_operator_serves_the_last_accepted_version_from_the_status() {
    let weights = |index: &Index| -> Vec<u32> {
        let c = rendered(index, &Scope::namespace("default"));
        let vh = vhost(&c, "9080", "reviews.default.svc.cluster.local:9080");
        vh.routes
            .iter()
            .filter_map(|r| r.route.as_ref()?.weighted_clusters.as_ref())
            .flat_map(|w| w.clusters.iter().map(|c| c.weight))
            .collect()
    };
    let key = ObjKey::new("default", "reviews");
    // The first operator: generation 1 accepted, generation 2 refused; its status says what
    // keeps serving.
    let mut index = bookinfo();
    index.apply(reviews_at(1, 10, None));
    let v = MeshView::new(&index).validation.clone();
    index.remember_accepted(v.accepted_keys());
    index.apply(reviews_at(2, 20, None));
    let view = MeshView::new(&index);
    let verdict = &view.validation.verdicts[&(Kind::VirtualService, key.clone())];
    let status = crate::validation::status_for(verdict, Some(2), None, "now");
    let last = status.last_accepted.clone().expect("status.lastAccepted");
    assert_eq!(last.generation, 1);
    assert_eq!(
        last.spec["http"][1]["route"][1]["weight"], 10,
        "{}",
        last.spec
    );
    drop(view);
    assert_eq!(weights(&index), vec![90, 10]);

    // A restart: the index starts empty and sees generation 2 with that status.
    let mut restarted = bookinfo();
    restarted.apply(reviews_at(2, 20, Some(status.clone())));
    assert_eq!(
        weights(&restarted),
        vec![90, 10],
        "the same routes as before the restart"
    );
    let view = MeshView::new(&restarted);
    let verdict = &view.validation.verdicts[&(Kind::VirtualService, key.clone())];
    assert_eq!(verdict.serving_previous, Some(1));
    let again = crate::validation::status_for(verdict, Some(2), Some(&status), "later");
    assert_eq!(
        again, status,
        "the restarted operator writes the same status"
    );
    drop(view);

    // A valid generation 3: served, and the status no longer carries a previous version.
    restarted.apply(reviews_at(3, 10, Some(status.clone())));
    let view = MeshView::new(&restarted);
    let verdict = &view.validation.verdicts[&(Kind::VirtualService, key.clone())];
    assert!(verdict.accepted);
    assert_eq!(
        crate::validation::status_for(verdict, Some(3), None, "t").last_accepted,
        None
    );

    // Never trusted unchecked: a lastAccepted that does not validate, or is not older than
    // the current version, is not restored.
    let mut forged = status.clone();
    forged.last_accepted.as_mut().unwrap().spec["http"][1]["route"][1]["weight"] = 20.into();
    let mut index = bookinfo();
    index.apply(reviews_at(2, 20, Some(forged)));
    assert!(index.virtual_services.last_good.is_empty());
    let mut same = status.clone();
    same.last_accepted.as_mut().unwrap().generation = 2;
    let mut index = bookinfo();
    index.apply(reviews_at(2, 20, Some(same)));
    assert!(index.virtual_services.last_good.is_empty());
    assert_eq!(
        weights(&index),
        Vec::<u32>::new(),
        "the refused object is left out"
    );
}

#[test]
fn an_invalid_virtual_service_is_left_out_and_the_rest_renders() {
    let mut index = bookinfo();
    istio(&mut index, reviews_vs());
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings, subset: v9}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let ratings = vhost(&c, "9080", "ratings.default.svc.cluster.local:9080");
    assert_eq!(ratings.routes[0].name.as_deref(), Some("default"));
    let reviews = vhost(&c, "9080", "reviews.default.svc.cluster.local:9080");
    assert_eq!(reviews.routes[0].name.as_deref(), Some("jason"));
}

#[test]
fn destination_rule_policies_reach_clusters_and_routes() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: user, path: /, ttl: 0s}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 0.03s}
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        maxRetries: 3
        idleTimeout: 60s
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 300s
      baseEjectionTime: 900s
      maxEjectionPercent: 100
    portLevelSettings:
    - port: {number: 9999}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: rr
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
  - name: maglev
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: x-user
          maglev: {tableSize: 65537}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let base = c
        .cluster("outbound|9080||ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!(base.lb_policy, LbPolicy::RingHash);
    assert_eq!(base.connect_timeout, Duration::from_millis(30));
    let t = &base.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(
        (
            t.max_connections,
            t.max_pending_requests,
            t.max_requests,
            t.max_retries
        ),
        (Some(100), Some(10), Some(1000), Some(3))
    );
    let o = base.outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx, Some(7));
    assert_eq!(o.base_ejection_time, Some(Duration::from_secs(900)));
    let http = base.common_http_protocol_options.as_ref().unwrap();
    assert_eq!(http.max_requests_per_connection, Some(10));
    assert_eq!(http.idle_timeout, Some(Duration::from_secs(60)));
    // Subset overrides the load balancer, keeps the rest.
    let rr = c
        .cluster("outbound|9080|rr|ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!(rr.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(rr.outlier_detection, base.outlier_detection);
    let mg = c
        .cluster("outbound|9080|maglev|ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!(mg.lb_policy, LbPolicy::Maglev);
    assert_eq!(mg.maglev_lb_config.and_then(|m| m.table_size), Some(65537));
    // The default route carries the cookie hash policy.
    let route = &vhost(&c, "9080", "ratings.default.svc.cluster.local:9080").routes[0];
    let hp = &route.route.as_ref().unwrap().hash_policy;
    assert_eq!(hp.len(), 1);
    assert_eq!(hp[0].cookie.as_ref().unwrap().name, "user");
}

#[test]
fn consistent_hash_table_sizes_reach_clusters() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
  subsets:
  - name: ring
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: x-user
          ringHash: {minimumRingSize: 2048}
  - name: deprecated
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user, minimumRingSize: 4096}
  - name: maglev
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: x-user
          maglev: {tableSize: 5003}
  - name: maglev-default
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user, maglev: {}}
  - name: rr
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let cluster = |subset: &str| {
        c.cluster(&format!(
            "outbound|9080|{subset}|ratings.default.svc.cluster.local"
        ))
        .unwrap()
        .clone()
    };
    let ring_size = |subset: &str| {
        let c = cluster(subset);
        (
            c.lb_policy,
            c.ring_hash_lb_config.and_then(|r| r.minimum_ring_size),
            c.maglev_lb_config.and_then(|m| m.table_size),
        )
    };
    // Absent sizes leave Envoy's defaults to the proxy.
    assert_eq!(ring_size(""), (LbPolicy::RingHash, None, None));
    assert_eq!(ring_size("ring"), (LbPolicy::RingHash, Some(2048), None));
    assert_eq!(
        ring_size("deprecated"),
        (LbPolicy::RingHash, Some(4096), None)
    );
    assert_eq!(ring_size("maglev"), (LbPolicy::Maglev, None, Some(5003)));
    assert_eq!(ring_size("maglev-default"), (LbPolicy::Maglev, None, None));
    assert_eq!(ring_size("rr"), (LbPolicy::RoundRobin, None, None));
    // The rendered JSON names them as Envoy does, camelCase, and omits them when absent.
    let json = serde_json::to_value(cluster("maglev")).unwrap();
    assert_eq!(json["maglevLbConfig"]["tableSize"], 5003);
    let json = serde_json::to_value(cluster("ring")).unwrap();
    assert_eq!(json["ringHashLbConfig"]["minimumRingSize"], 2048);
    assert!(json.get("maglevLbConfig").is_none());
}

#[test]
fn headless_services_use_original_dst_and_per_endpoint_listeners() {
    let mut index = Index::default();
    namespace(&mut index, "db", true);
    workload(
        &mut index,
        "db",
        "cassandra",
        None,
        &[("tcp-cql", 9042, 9042), ("http-admin", 8080, 8080)],
        &[
            ("cassandra-0", "10.244.1.10", &[("app", "cassandra")]),
            ("cassandra-1", "10.244.1.11", &[("app", "cassandra")]),
        ],
    );
    let c = rendered(&index, &Scope::namespace("db"));
    let cl = c
        .cluster("outbound|9042||cassandra.db.svc.cluster.local")
        .unwrap();
    assert_eq!(cl.type_, rustmesh_xds::cluster::DiscoveryType::OriginalDst);
    assert!(c.listener("10.244.1.10_9042").is_some());
    assert!(c.listener("10.244.1.11_9042").is_some());
    let vh = vhost(&c, "8080", "cassandra.db.svc.cluster.local:8080");
    assert!(!vh.domains.iter().any(|d| d.starts_with("10.")));
    let dns = c
        .dns
        .iter()
        .find(|d| d.name.starts_with("cassandra"))
        .unwrap();
    assert_eq!(dns.addresses.len(), 2);
}

#[test]
fn rendering_is_deterministic_and_order_independent() {
    let mut a = bookinfo();
    istio(&mut a, reviews_vs());
    // The same objects added in reverse order.
    let mut b = Index::default();
    let objects: Vec<Object> = {
        let mut v: Vec<Object> = Vec::new();
        v.extend(a.namespaces.iter().map(|(n, l)| Object::Namespace {
            name: n.clone(),
            labels: l.clone(),
        }));
        v.extend(
            a.services
                .values()
                .map(|s| Object::Service(Box::new(s.clone()))),
        );
        v.extend(
            a.endpoints
                .values()
                .map(|s| Object::Endpoints(Box::new(s.clone()))),
        );
        v.extend(a.pods.iter().map(|(k, p)| Object::Pod {
            key: k.clone(),
            pod: p.clone(),
        }));
        v.extend(
            a.virtual_services
                .objects
                .values()
                .map(|s| Object::VirtualService(Box::new(s.clone()))),
        );
        v.extend(
            a.destination_rules
                .objects
                .values()
                .map(|s| Object::DestinationRule(Box::new(s.clone()))),
        );
        v
    };
    for o in objects.into_iter().rev() {
        b.apply(o);
    }
    let ca = rendered(&a, &Scope::namespace("default"));
    let cb = rendered(&b, &Scope::namespace("default"));
    assert_eq!(ca.to_json(), cb.to_json());
    assert_eq!(ca.version_info, cb.version_info);
    assert_eq!(ca.version_info.len(), 16);
    // Content changes change the hash.
    istio(
        &mut b,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - timeout: 1s
    route:
    - destination: {host: ratings}
"#,
    );
    assert_ne!(
        rendered(&b, &Scope::namespace("default")).version_info,
        ca.version_info
    );
}

#[test]
fn unresolvable_destinations_go_to_the_blackhole() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http:
  - route:
    - destination: {host: nowhere.example.com}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let r = &vhost(&c, "9080", "details.default.svc.cluster.local:9080").routes[0];
    assert_eq!(
        r.route.as_ref().unwrap().cluster.as_deref(),
        Some("BlackHoleCluster")
    );
}

#[test]
fn weighted_virtual_service_on_an_auto_port_like_seed_002() {
    let mut index = Index::default();
    namespace(&mut index, "istio-demo", true);
    workload(
        &mut index,
        "istio-demo",
        "publictest",
        Some("10.1.122.241"),
        &[("", 9000, 9000)],
        &[
            (
                "publictest-v1",
                "10.244.0.53",
                &[("app", "publictest"), ("version", "v1")],
            ),
            (
                "publictest-v2",
                "10.244.0.54",
                &[("app", "publictest"), ("version", "v2")],
            ),
        ],
    );
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: publictest, namespace: istio-demo}
spec:
  host: publictest
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: publictest, namespace: istio-demo}
spec:
  hosts: [publictest]
  http:
  - name: publictest-route
    route:
    - destination: {host: publictest, subset: v1}
      weight: 90
    - destination: {host: publictest, subset: v2}
      weight: 10
"#,
    );
    let c = rendered(&index, &Scope::namespace("istio-demo"));
    let l = c.listener("10.1.122.241_9000").unwrap();
    assert_eq!(
        dest(&l.filter_chains[0].filters[0]),
        "Route: publictest.istio-demo.svc.cluster.local:9000"
    );
    let rt = c
        .route("publictest.istio-demo.svc.cluster.local:9000")
        .unwrap();
    let r = &rt.virtual_hosts[0].routes[0];
    assert_eq!(r.name.as_deref(), Some("publictest-route"));
    assert_eq!(r.virtual_service.as_deref(), Some("publictest.istio-demo"));
    let w = r
        .route
        .as_ref()
        .unwrap()
        .weighted_clusters
        .as_ref()
        .unwrap();
    assert_eq!(
        w.clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight))
            .collect::<Vec<_>>(),
        [
            (
                "outbound|9000|v1|publictest.istio-demo.svc.cluster.local",
                90
            ),
            (
                "outbound|9000|v2|publictest.istio-demo.svc.cluster.local",
                10
            )
        ]
    );
    assert_eq!(
        endpoint_ips(
            &c,
            "outbound|9000|v1|publictest.istio-demo.svc.cluster.local"
        ),
        ["10.244.0.53:9000"]
    );
}

#[test]
fn selector_scopes_split_the_namespace_and_get_their_own_policy() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ratings, namespace: default}
spec:
  workloadSelector: {labels: {app: ratings}}
  egress:
  - hosts: ["./reviews.default.svc.cluster.local"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    let view = MeshView::new(&index);
    assert_eq!(
        view.scopes("default"),
        [
            Scope::namespace("default"),
            Scope::sidecar("default", "ratings")
        ]
    );
    let narrow = render_view(&view, &Scope::sidecar("default", "ratings"));
    narrow.validate().unwrap();
    let names: Vec<_> = narrow
        .route("9080")
        .unwrap()
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["block_all", "reviews.default.svc.cluster.local:9080"]
    );
    // Inbound of the selector scope: only the ratings service.
    let inbound = narrow.cluster("inbound|9080||").unwrap();
    let svcs: Vec<_> = inbound
        .metadata
        .as_ref()
        .unwrap()
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(svcs, ["ratings"]);
    // The namespace scope is unaffected by the selector Sidecar's policy.
    let wide = render_view(&view, &Scope::namespace("default"));
    assert_eq!(
        wide.route("9080").unwrap().virtual_hosts[0].name,
        "allow_any"
    );
}

/// Wildcard hosts: a VirtualService / DestinationRule for `*.default.svc.cluster.local` applies
/// to every service it matches that has no exact one; an exact host beats it even when the
/// wildcard object is older (VirtualServices and DestinationRules are looked up by host).
#[test]
fn wildcard_hosts_apply_where_no_exact_host_does() {
    let mut index = bookinfo();
    istio(&mut index, reviews_vs());
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-wild, namespace: default}
spec:
  hosts: ["*.default.svc.cluster.local"]
  http:
  - name: wild
    route:
    - destination: {host: details}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a-wild, namespace: default}
spec:
  host: "*.default.svc.cluster.local"
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let details = vhost(&c, "9080", "details.default.svc.cluster.local:9080");
    assert_eq!(details.routes[0].name.as_deref(), Some("wild"));
    let ratings = vhost(&c, "9080", "ratings.default.svc.cluster.local:9080");
    assert_eq!(ratings.routes[0].name.as_deref(), Some("wild"));
    let reviews = vhost(&c, "9080", "reviews.default.svc.cluster.local:9080");
    assert_eq!(reviews.routes[0].name.as_deref(), Some("jason"));
    let lb = |name: &str| c.cluster(name).unwrap().lb_policy;
    assert_eq!(
        lb("outbound|9080||details.default.svc.cluster.local"),
        LbPolicy::Random
    );
    // reviews has its own (exact) DestinationRule, without a load-balancer setting.
    assert_eq!(
        lb("outbound|9080||reviews.default.svc.cluster.local"),
        LbPolicy::LeastRequest
    );
    assert!(
        c.cluster("outbound|9080|v1|reviews.default.svc.cluster.local")
            .is_some()
    );
}

/// Every network filter of a configuration, with where it is (`listener chain`).
fn every_filter(c: &ProxyConfig) -> Vec<(String, &NetworkFilter)> {
    c.listeners
        .iter()
        .flat_map(|l| {
            l.filter_chains
                .iter()
                .chain(l.default_filter_chain.as_ref())
                .flat_map(move |fc| {
                    fc.filters
                        .iter()
                        .map(move |f| (format!("{} {:?}", l.name, fc.name), f))
                })
        })
        .collect()
}

/// The mesh's default tracing provider is on every HTTP connection manager, inbound and
/// outbound; routes carry Istio's span names (`<host>:<port>/*`, a weighted route the
/// VirtualService's name), and a pod-scoped config names its inbound spans after its service.
#[test]
fn tracing_is_on_every_http_connection_manager_and_routes_name_their_spans() {
    let mut index = bookinfo();
    let providers = crate::providers::Providers::parse(
        r#"[{"name": "zipkin", "zipkin": {"service": "zipkin.istio-system", "port": 9411}}]"#,
    )
    .unwrap();
    let tracing = providers.default_tracing(true, "zipkin", 1.0).unwrap();
    index.mesh.tracing = tracing.clone();
    istio(&mut index, reviews_vs());
    let c = rendered(&index, &Scope::namespace("default"));
    let mut hcms = 0;
    for (at, f) in every_filter(&c) {
        if let NetworkFilter::HttpConnectionManager(h) = f {
            assert_eq!(h.tracing, tracing, "{at}");
            hcms += 1;
        }
    }
    assert!(hcms >= 3, "{hcms} connection managers");
    let ops: Vec<(String, String)> = c
        .route("9080")
        .unwrap()
        .virtual_hosts
        .iter()
        .flat_map(|vh| {
            vh.routes.iter().map(|r| {
                (
                    vh.name.clone(),
                    r.decorator
                        .as_ref()
                        .map(|d| d.operation.clone())
                        .unwrap_or_default(),
                )
            })
        })
        .collect();
    assert!(
        ops.contains(&(
            "details.default.svc.cluster.local:9080".into(),
            "details.default.svc.cluster.local:9080/*".into()
        )),
        "{ops:?}"
    );
    // reviews: jason's route goes to one subset (its host names the span); the 90/10 split
    // has several clusters, so the VirtualService's name does.
    for want in ["reviews.default.svc.cluster.local:9080/*", "reviews:9080/*"] {
        assert!(
            ops.contains(&("reviews.default.svc.cluster.local:9080".into(), want.into())),
            "{want}: {ops:?}"
        );
    }
    // The catch-all (no service) has none: Envoy's `egress <authority>`.
    assert!(
        ops.contains(&("allow_any".into(), String::new())),
        "{ops:?}"
    );
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage, namespace: default}
spec:
  workloadSelector:
    labels: {app: productpage}
  egress:
  - hosts: ["*/*"]
"#,
    );
    let pod = rendered(&index, &Scope::sidecar("default", "productpage"));
    let inbound = serde_json::to_string(pod.listener("virtualInbound").unwrap()).unwrap();
    assert!(
        inbound.contains(r#""operation":"productpage.default.svc.cluster.local:9080/*""#),
        "{inbound}"
    );
    // Off by default.
    assert!(
        !rendered(&bookinfo(), &Scope::namespace("default"))
            .to_json()
            .contains("\"tracing\"")
    );
}

/// meshConfig `accessLogFile`: the mesh's access log is on every HTTP connection manager and
/// TCP proxy of the sidecar, inbound and outbound, the passthrough and blackhole chains too.
#[test]
fn the_meshs_access_log_is_on_every_listener_filter() {
    let mut index = bookinfo();
    let log = rustmesh_xds::access_log::AccessLog {
        filter: None,
        path: "/dev/stdout".into(),
        encoding: rustmesh_xds::access_log::Encoding::Text,
        format: None,
    };
    index.mesh.access_log = Some(log.clone());
    let c = rendered(&index, &Scope::namespace("default"));
    let mut filters = 0;
    for (at, f) in every_filter(&c) {
        let logs = match f {
            NetworkFilter::TcpProxy(t) => &t.access_log,
            NetworkFilter::HttpConnectionManager(h) => &h.access_log,
        };
        assert_eq!(logs, &vec![log.clone()], "{at}");
        filters += 1;
    }
    assert!(filters > 10, "{filters} filters");
    // Off (Istio's default install): none.
    let c = rendered(&bookinfo(), &Scope::namespace("default"));
    assert!(!c.to_json().contains("accessLog"));
}

/// A DestinationRule's `connectionPool.tcp.idleTimeout` is the idle timeout of the TCP proxy
/// that carries connections to its host, as Istio sets it (unset: the proxy's 1 h default).
#[test]
fn a_destination_rules_tcp_idle_timeout_reaches_the_tcp_proxy() {
    let mut index = bookinfo();
    let idle = |index: &Index| {
        let c = rendered(index, &Scope::namespace("default"));
        let l = c.listener("10.96.20.1_27017").unwrap();
        let NetworkFilter::TcpProxy(t) = &l.filter_chains[0].filters[0] else {
            panic!("tcp proxy expected")
        };
        t.idle_timeout
    };
    assert_eq!(idle(&index), None);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mongo, namespace: default}
spec:
  host: mongodb
  trafficPolicy:
    connectionPool:
      tcp: {idleTimeout: 30m}
"#,
    );
    let v = &crate::fixtures::verdict(&index, Kind::DestinationRule, "default", "mongo");
    assert!(v.accepted && v.findings.is_empty(), "{:?}", v.findings);
    assert_eq!(idle(&index), Some(Duration::from_secs(1800)));
}

/// On a port whose protocol is detected (HTTP sniffed, the rest TCP), a `tcp` rule with
/// `sourceLabels` gets a chain per transport next to the HTTP chain, so that a labelled pod's
/// plain TCP and TLS reach it; the service's own chain stays the default.
#[test]
fn source_labels_on_a_detected_port_name_the_transports_next_to_the_http_chain() {
    let mut index = bookinfo();
    for (name, ip, pod_ip) in [
        ("legacy", "10.96.50.1", "10.244.0.80"),
        ("legacy-v2", "10.96.50.2", "10.244.0.81"),
    ] {
        workload(
            &mut index,
            "default",
            name,
            Some(ip),
            &[("", 7000, 7000)],
            &[(&format!("{name}-1"), pod_ip, &[("app", name)])],
        );
    }
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy]
  tcp:
  - match:
    - sourceLabels: {app: ratings}
    route:
    - destination: {host: legacy-v2}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    let l = c.listener("10.96.50.1_7000").unwrap();
    let chains: Vec<(Option<String>, usize, String)> = l
        .filter_chains
        .iter()
        .skip(1)
        .map(|fc| {
            let m = &fc.filter_chain_match;
            (
                m.transport_protocol.clone(),
                m.source_labels.len(),
                dest(&fc.filters[0]),
            )
        })
        .collect();
    let v2 = "outbound|7000||legacy-v2.default.svc.cluster.local".to_string();
    assert_eq!(
        chains,
        [
            (Some("raw_buffer".to_string()), 1, v2.clone()),
            (Some("tls".to_string()), 1, v2),
        ]
    );
    assert!(
        l.filter_chains[0]
            .filter_chain_match
            .application_protocols
            .contains(&"http/1.1".to_string())
    );
    let default = l.default_filter_chain.as_ref().unwrap();
    assert!(default.filter_chain_match.source_labels.is_empty());
    assert_eq!(
        dest(&default.filters[0]),
        "outbound|7000||legacy.default.svc.cluster.local"
    );
}
