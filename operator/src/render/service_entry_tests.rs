//! ServiceEntry rendering (issue #20), from Istio's documented egress cases: an external HTTPS
//! host with resolution NONE, HTTP hosts on the port's route table, STATIC endpoints, class E
//! addresses for the DNS proxy, REGISTRY_ONLY with and without the entry, `exportTo`, a
//! VirtualService and a DestinationRule for an entry's host, Sidecar egress hosts.

use super::*;
use crate::configmap::render;
use crate::fixtures::{bookinfo, istio, namespace, verdict};
use crate::index::{Kind, ObjKey};
use crate::validation::Level;
use rustmesh_xds::cluster::DiscoveryType;
use rustmesh_xds::listener::NetworkFilter;
use std::net::SocketAddr;

fn rendered(index: &Index, ns: &str) -> ProxyConfig {
    let c = render(index, &Scope::namespace(ns));
    if let Err(e) = c.validate() {
        panic!("render of {ns} does not validate: {e}\n{}", c.to_json());
    }
    c
}

/// The cluster (or `Route: <table>`) a chain's filter sends to.
fn dest(f: &NetworkFilter) -> String {
    match f {
        NetworkFilter::TcpProxy(t) => t.cluster.clone().unwrap_or_default(),
        NetworkFilter::HttpConnectionManager(h) => format!(
            "Route: {}",
            h.rds
                .as_ref()
                .map(|r| r.route_config_name.as_str())
                .unwrap_or_default()
        ),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Istio's egress task: `www.example.com` on 443, TLS, MESH_EXTERNAL, resolution NONE.
const HTTPS_NONE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example-https, namespace: default}
spec:
  hosts: [www.example.com]
  ports:
  - {number: 443, name: https, protocol: TLS}
  location: MESH_EXTERNAL
  resolution: NONE
"#;

#[test]
fn an_external_https_host_with_resolution_none_forwards_to_the_original_destination() {
    let mut index = bookinfo();
    istio(&mut index, HTTPS_NONE);
    assert!(verdict(&index, Kind::ServiceEntry, "default", "example-https").accepted);
    let c = rendered(&index, "default");
    // No addresses: the port's wildcard listener, the host told apart by SNI, the rest of the
    // port where unknown destinations go (ALLOW_ANY here).
    let l = c.listener("0.0.0.0_443").expect("0.0.0.0_443");
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(
        l.filter_chains[0].filter_chain_match.server_names,
        ["www.example.com"]
    );
    assert_eq!(
        dest(&l.filter_chains[0].filters[0]),
        "outbound|443||www.example.com"
    );
    let default = l.default_filter_chain.as_ref().expect("default chain");
    assert_eq!(dest(&default.filters[0]), PASSTHROUGH_CLUSTER);
    let cluster = c.cluster("outbound|443||www.example.com").expect("cluster");
    assert_eq!(cluster.type_, DiscoveryType::OriginalDst);
    // MESH_EXTERNAL: no auto mutual TLS, the app's own TLS passes through.
    assert!(cluster.transport_socket.is_none());
    assert!(cluster.transport_socket_matches.is_empty());
    // No address to answer: the DNS proxy leaves the name to the upstream resolver.
    assert!(!c.dns.iter().any(|d| d.name == "www.example.com"));
    // Not an inbound port of the namespace.
    assert!(
        !c.clusters.iter().any(|c| c.name == "inbound|443||"),
        "an entry adds no inbound port"
    );
}

#[test]
fn an_http_host_is_a_virtual_host_on_the_port_route_table() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com]
  addresses: [198.51.100.7]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: NONE
"#,
    );
    let c = rendered(&index, "default");
    let l = c.listener("0.0.0.0_80").expect("0.0.0.0_80");
    assert_eq!(dest(&l.filter_chains[0].filters[0]), "Route: 80");
    let table = c.route("80").expect("route table 80");
    let vh = table
        .virtual_hosts
        .iter()
        .find(|v| v.name == "httpbin.example.com:80")
        .expect("virtual host");
    assert_eq!(
        vh.domains,
        [
            "httpbin.example.com",
            "httpbin.example.com:80",
            "198.51.100.7",
            "198.51.100.7:80"
        ]
    );
    let route = vh.routes[0].route.as_ref().unwrap();
    assert_eq!(
        route.cluster.as_deref(),
        Some("outbound|80||httpbin.example.com")
    );
    // The given address is what the DNS proxy answers.
    let dns = c
        .dns
        .iter()
        .find(|d| d.name == "httpbin.example.com")
        .expect("dns entry");
    assert_eq!(dns.addresses, [ip("198.51.100.7")]);
    assert!(dns.aliases.is_empty());
}

#[test]
fn static_endpoints_with_addresses_get_address_listeners_and_eds_endpoints() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.internal]
  addresses: [192.0.2.10, 192.0.2.11]
  ports:
  - {number: 5432, name: pg, protocol: TCP, targetPort: 6432}
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: 10.10.0.1}
  - {address: 10.10.0.2, ports: {pg: 7432}, labels: {version: v2}}
"#,
    );
    assert!(verdict(&index, Kind::ServiceEntry, "default", "db").accepted);
    let c = rendered(&index, "default");
    for addr in ["192.0.2.10", "192.0.2.11"] {
        let l = c
            .listener(&format!("{addr}_5432"))
            .unwrap_or_else(|| panic!("{addr}_5432"));
        assert_eq!(
            dest(&l.filter_chains[0].filters[0]),
            "outbound|5432||db.internal"
        );
    }
    assert!(c.listener("0.0.0.0_5432").is_none());
    let cluster = c.cluster("outbound|5432||db.internal").unwrap();
    assert_eq!(cluster.type_, DiscoveryType::Eds);
    let endpoints: Vec<SocketAddr> = c
        .load_assignment(cluster)
        .unwrap()
        .lb_endpoints()
        .map(|e| e.endpoint.address.socket_addr().unwrap())
        .collect();
    // targetPort for the endpoint that names no port, its own port for the other.
    assert_eq!(
        endpoints,
        [
            "10.10.0.1:6432".parse::<SocketAddr>().unwrap(),
            "10.10.0.2:7432".parse().unwrap()
        ]
    );
    let dns = c.dns.iter().find(|d| d.name == "db.internal").unwrap();
    assert_eq!(dns.addresses, [ip("192.0.2.10"), ip("192.0.2.11")]);
}

#[test]
fn static_hosts_without_addresses_get_a_class_e_address_for_the_dns_proxy() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [echo.internal, echo2.internal]
  ports:
  - {number: 9000, name: tls, protocol: TLS}
  resolution: STATIC
  endpoints:
  - {address: 10.20.0.5}
"#;
    let mut index = bookinfo();
    istio(&mut index, yaml);
    let c = rendered(&index, "default");
    let addr = |host: &str| -> IpAddr {
        let d = c.dns.iter().find(|d| d.name == host).unwrap();
        assert_eq!(d.addresses.len(), 1, "{host}");
        d.addresses[0]
    };
    let (a, b) = (addr("echo.internal"), addr("echo2.internal"));
    assert_ne!(a, b);
    for (host, allocated) in [("echo.internal", a), ("echo2.internal", b)] {
        let IpAddr::V4(v4) = allocated else {
            panic!("{allocated}")
        };
        assert_eq!(&v4.octets()[..2], &[240, 240], "{host}: {v4}");
        // Each host its own listener, so a TLS port without SNI routing still tells them apart.
        let l = c.listener(&format!("{allocated}_9000")).unwrap();
        assert_eq!(
            dest(&l.filter_chains[0].filters[0]),
            format!("outbound|9000||{host}")
        );
    }
    // Deterministic: the same entries give the same addresses in another render.
    let mut again = bookinfo();
    istio(&mut again, yaml);
    let c2 = rendered(&again, "default");
    assert_eq!(c.dns, c2.dns);
    // A collision takes the next free address.
    let taken: std::collections::BTreeSet<IpAddr> = [a].into();
    let next = crate::registry::allocate("echo.internal", &taken);
    assert_ne!(next, a);
    assert_eq!(
        crate::registry::allocate("echo.internal", &Default::default()),
        a
    );
}

#[test]
fn registry_only_lets_registered_hosts_through_and_blocks_the_rest() {
    let entry = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 5432, name: pg, protocol: TCP}
  resolution: NONE
"#;
    // Without the entry: port 80 only answers 502 (block_all), TCP goes to BlackHoleCluster.
    let mut index = bookinfo();
    index.mesh.outbound_policy = OutboundTrafficPolicyMode::RegistryOnly;
    let c = rendered(&index, "default");
    assert!(c.route("80").is_none());
    assert!(c.listener("0.0.0.0_5432").is_none());
    let vo = c.listener("virtualOutbound").unwrap();
    assert_eq!(
        dest(&vo.filter_chains[1].filters[0]),
        BLACKHOLE_CLUSTER,
        "unregistered destinations"
    );

    // With it: the host has a virtual host beside block_all, the TCP port a listener.
    istio(&mut index, entry);
    let c = rendered(&index, "default");
    let table = c.route("80").unwrap();
    assert_eq!(table.virtual_hosts[0].name, "block_all");
    assert_eq!(table.virtual_hosts[0].domains, ["*"]);
    assert!(
        table.virtual_hosts[0].routes[0].direct_response.is_some(),
        "other hosts on 80 still get 502"
    );
    assert_eq!(table.virtual_hosts[1].name, "httpbin.example.com:80");
    let l80 = c.listener("0.0.0.0_80").unwrap();
    assert_eq!(
        dest(&l80.default_filter_chain.as_ref().unwrap().filters[0]),
        BLACKHOLE_CLUSTER,
        "non-HTTP traffic on 80"
    );
    let tcp = c.listener("0.0.0.0_5432").unwrap();
    assert_eq!(
        dest(&tcp.filter_chains[0].filters[0]),
        "outbound|5432||httpbin.example.com"
    );
    let vo = c.listener("virtualOutbound").unwrap();
    assert_eq!(dest(&vo.filter_chains[1].filters[0]), BLACKHOLE_CLUSTER);

    // A TLS host without addresses: its SNI passes, any other name on 443 is blackholed.
    istio(&mut index, HTTPS_NONE);
    let c = rendered(&index, "default");
    let l = c.listener("0.0.0.0_443").unwrap();
    assert_eq!(
        l.filter_chains[0].filter_chain_match.server_names,
        ["www.example.com"]
    );
    assert_eq!(
        dest(&l.default_filter_chain.as_ref().unwrap().filters[0]),
        BLACKHOLE_CLUSTER
    );
}

#[test]
fn export_to_limits_the_namespaces_that_see_the_entry() {
    let mut index = bookinfo();
    namespace(&mut index, "other", true);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: default}
spec:
  hosts: [private.example.com]
  addresses: [203.0.113.1]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared, namespace: default}
spec:
  hosts: [shared.example.com]
  addresses: [203.0.113.2]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  exportTo: [other]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: default}
spec:
  hosts: [hidden.example.com]
  addresses: [203.0.113.3]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  exportTo: ["~"]
"#,
    );
    let own = rendered(&index, "default");
    let other = rendered(&index, "other");
    let has = |c: &ProxyConfig, host: &str| c.cluster(&format!("outbound|8443||{host}")).is_some();
    assert!(has(&own, "private.example.com"));
    assert!(!has(&other, "private.example.com"));
    assert!(!has(&own, "shared.example.com"));
    assert!(has(&other, "shared.example.com"));
    assert!(other.listener("203.0.113.2_8443").is_some());
    assert!(!has(&own, "hidden.example.com") && !has(&other, "hidden.example.com"));
}

#[test]
fn a_virtual_service_and_a_destination_rule_apply_to_an_entry_host() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  addresses: [192.0.2.50]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.30.0.1, labels: {version: v1}}
  - {address: 10.30.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.example.com
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  http:
  - timeout: 3s
    route:
    - destination: {host: api.example.com, subset: v1}
      weight: 90
    - destination: {host: api.example.com, subset: v2}
      weight: 10
"#,
    );
    let registry = Registry::build(&index);
    let verdicts = Validation::compute(&index, &registry).verdicts;
    for kind in [
        Kind::ServiceEntry,
        Kind::DestinationRule,
        Kind::VirtualService,
    ] {
        let v = &verdicts[&(kind, ObjKey::new("default", "api"))];
        assert!(v.accepted && v.findings.is_empty(), "{kind:?}: {v:?}");
    }
    let c = rendered(&index, "default");
    let table = c.route("80").unwrap();
    let vh = table
        .virtual_hosts
        .iter()
        .find(|v| v.name == "api.example.com:80")
        .unwrap();
    let action = vh.routes[0].route.as_ref().unwrap();
    let weighted: Vec<(String, u32)> = action
        .weighted_clusters
        .as_ref()
        .unwrap()
        .clusters
        .iter()
        .map(|w| (w.name.clone(), w.weight))
        .collect();
    assert_eq!(
        weighted,
        [
            ("outbound|80|v1|api.example.com".to_string(), 90),
            ("outbound|80|v2|api.example.com".to_string(), 10)
        ]
    );
    assert_eq!(action.timeout, Some(Duration::from_millis(3000)));
    for (subset, addr) in [("v1", "10.30.0.1:80"), ("v2", "10.30.0.2:80")] {
        let cluster = c
            .cluster(&format!("outbound|80|{subset}|api.example.com"))
            .unwrap();
        let eps: Vec<SocketAddr> = c
            .load_assignment(cluster)
            .unwrap()
            .lb_endpoints()
            .map(|e| e.endpoint.address.socket_addr().unwrap())
            .collect();
        assert_eq!(eps, [addr.parse::<SocketAddr>().unwrap()], "{subset}");
    }
}

#[test]
fn sidecar_egress_hosts_select_entries_by_namespace_and_host() {
    let mut index = bookinfo();
    namespace(&mut index, "egress", false);
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: egress}
spec:
  hosts: [a.example.com]
  addresses: [192.0.2.61]
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: egress}
spec:
  hosts: [b.example.com]
  addresses: [192.0.2.62]
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: ["./*", "egress/a.example.com"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    let c = rendered(&index, "default");
    assert!(c.cluster("outbound|443||a.example.com").is_some());
    assert!(c.listener("192.0.2.61_443").is_some());
    assert!(c.cluster("outbound|443||b.example.com").is_none());
    assert!(c.listener("192.0.2.62_443").is_none());
}

#[test]
fn a_host_is_held_once_and_the_later_entry_is_told() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: first, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [dup.example.com]
  addresses: [192.0.2.71]
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: second, namespace: default, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  hosts: [dup.example.com, Dup2.example.com, reviews.default.svc.cluster.local]
  addresses: [192.0.2.71]
  ports: [{number: 80, name: http, protocol: HTTP}]
"#,
    );
    let v = verdict(&index, Kind::ServiceEntry, "default", "second");
    assert!(v.accepted, "{v:?}");
    let warned: Vec<&str> = v
        .findings
        .iter()
        .filter(|f| f.level == Level::Warning)
        .map(|f| f.field.as_str())
        .collect();
    assert_eq!(warned, ["spec.hosts[0]", "spec.hosts[2]"]);
    assert!(
        verdict(&index, Kind::ServiceEntry, "default", "first")
            .findings
            .is_empty()
    );
    // Both entries share 192.0.2.71: one virtual host keeps the address (the proxy refuses a
    // domain listed twice), the configuration stays valid (`rendered` validates it).
    let c = rendered(&index, "default");
    let table = c.route("80").unwrap();
    let with_addr: Vec<&str> = table
        .virtual_hosts
        .iter()
        .filter(|v| v.domains.iter().any(|d| d == "192.0.2.71"))
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(with_addr, ["Dup2.example.com:80"]);
}

#[test]
fn refused_fields_are_named_and_an_invalid_update_keeps_the_accepted_version() {
    let mut index = bookinfo();
    istio(&mut index, HTTPS_NONE);
    let key = ObjKey::new("default", "example-https");
    // Accepted once: remembered as the last accepted version.
    let registry = Registry::build(&index);
    let validation = Validation::compute(&index, &registry);
    index.remember_accepted(validation.accepted_keys());
    // An update to DNS resolution: refused naming spec.resolution; the NONE version serves.
    istio(
        &mut index,
        &HTTPS_NONE.replace("resolution: NONE", "resolution: DNS"),
    );
    let v = verdict(&index, Kind::ServiceEntry, "default", "example-https");
    assert!(!v.accepted);
    assert_eq!(v.findings[0].field, "spec.resolution");
    assert!(v.findings[0].message.contains("issue #20"), "{v:?}");
    assert_eq!(v.serving_previous, Some(0));
    let c = rendered(&index, "default");
    assert!(c.cluster("outbound|443||www.example.com").is_some());
    // Deleted: gone from the mesh.
    index.delete(Kind::ServiceEntry, &key);
    let c = rendered(&index, "default");
    assert!(c.cluster("outbound|443||www.example.com").is_none());
    // Never accepted: not rendered at all.
    let mut fresh = bookinfo();
    istio(
        &mut fresh,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: selector, namespace: default}
spec:
  hosts: [vm.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
"#,
    );
    let v = verdict(&fresh, Kind::ServiceEntry, "default", "selector");
    assert!(!v.accepted);
    assert_eq!(v.findings[0].field, "spec.workloadSelector");
    assert!(
        rendered(&fresh, "default")
            .cluster("outbound|80||vm.internal")
            .is_none()
    );
}
