//! ServiceEntry rendering (issue #20), from Istio's documented egress cases: an external HTTPS
//! host with resolution NONE, HTTP hosts on the port's route table, STATIC endpoints, class E
//! addresses for the DNS proxy, REGISTRY_ONLY with and without the entry, `exportTo`, a
//! VirtualService and a DestinationRule for an entry's host, Sidecar egress hosts; resolution
//! DNS (STRICT_DNS clusters of the host or the endpoints' names) and DNS_ROUND_ROBIN
//! (LOGICAL_DNS), wildcard hosts with them refused; and Kubernetes ExternalName Services,
//! which Istio resolves the same way.

use super::*;
use crate::configmap::render;
use crate::fixtures::{bookinfo, external_name_service, istio, namespace, verdict};
use crate::index::{Kind, ObjKey, Object};
use crate::validation::Level;
use rustmesh_xds::cluster::{ClusterLoadAssignment, DiscoveryType};
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

/// Endpoint `weight`s become the endpoints' load-balancing weights (0 is Istio's 1, left
/// unset), and the identities mutual TLS to a MESH_INTERNAL entry accepts are its
/// `subjectAltNames` and its endpoints' service accounts in its namespace, for STATIC and DNS
/// resolutions alike.
#[test]
fn endpoint_weights_and_identities_reach_the_cluster() {
    let mut index = bookinfo();
    index.mesh.ca_host = Some("istiod.istio-system.svc:15012".to_string());
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm-api, namespace: default}
spec:
  hosts: [api.internal]
  addresses: [192.0.2.20]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  location: MESH_INTERNAL
  resolution: STATIC
  subjectAltNames: ["spiffe://cluster.local/ns/vm/sa/legacy"]
  endpoints:
  - {address: 10.10.0.1, weight: 3, serviceAccount: api, labels: {security.istio.io/tlsMode: istio}}
  - {address: 10.10.0.2, weight: 0, labels: {security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-api, namespace: default}
spec:
  hosts: [dns-api.internal]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  location: MESH_INTERNAL
  resolution: DNS
  endpoints:
  - {address: a.dns-api.internal, weight: 2, serviceAccount: dns-api}
  - {address: b.dns-api.internal}
"#,
    );
    for name in ["vm-api", "dns-api"] {
        let v = verdict(&index, Kind::ServiceEntry, "default", name);
        assert!(
            v.accepted && v.findings.is_empty(),
            "{name}: {:?}",
            v.findings
        );
    }
    let c = rendered(&index, "default");
    let weights = |la: &ClusterLoadAssignment| -> Vec<Option<u32>> {
        la.lb_endpoints().map(|e| e.load_balancing_weight).collect()
    };
    let sans = |cluster: &rustmesh_xds::cluster::Cluster| -> Vec<String> {
        let m = &cluster.transport_socket_matches;
        assert!(!m.is_empty(), "{}: auto mutual TLS", cluster.name);
        m[0].transport_socket
            .tls()
            .unwrap()
            .common_tls_context
            .expected_sans()
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    let vm = c.cluster("outbound|8080||api.internal").unwrap();
    assert_eq!(weights(c.load_assignment(vm).unwrap()), [Some(3), None]);
    assert_eq!(
        sans(vm),
        [
            "spiffe://cluster.local/ns/default/sa/api",
            "spiffe://cluster.local/ns/vm/sa/legacy"
        ]
    );
    let dns = c.cluster("outbound|8080||dns-api.internal").unwrap();
    assert_eq!(dns.type_, DiscoveryType::StrictDns);
    assert_eq!(
        weights(dns.load_assignment.as_ref().unwrap()),
        [Some(2), None]
    );
    assert_eq!(sans(dns), ["spiffe://cluster.local/ns/default/sa/dns-api"]);
}

/// CIDR `addresses` (Istio's `destinationCIDR`): a TCP port's chain on `0.0.0.0_PORT` matching
/// the block, to the entry's cluster; other destinations on the port go where unknown ones
/// go; the entry's IP address keeps its own listener and DNS answer (a block gets none);
/// beside an HTTP port's chains on the same port the block's comes first; a second entry
/// with the same block on the same port adds no second chain.
#[test]
fn cidr_addresses_are_chains_matching_the_block_on_the_ports_wildcard_listener() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vpc-db, namespace: default}
spec:
  hosts: [db.vpc.internal]
  addresses: [10.20.0.0/16, 192.0.2.30]
  ports:
  - {number: 5432, name: pg, protocol: TCP}
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vpc-db-again, namespace: default}
spec:
  hosts: [dc.vpc.internal]
  addresses: [10.20.0.0/16]
  ports:
  - {number: 5432, name: pg, protocol: TCP}
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vpc-web, namespace: default}
spec:
  hosts: [web.vpc.internal]
  addresses: [10.30.0.0/16]
  ports:
  - {number: 9080, name: tcp, protocol: TCP}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 10.30.0.7}]
"#,
    );
    for name in ["vpc-db", "vpc-db-again", "vpc-web"] {
        let v = verdict(&index, Kind::ServiceEntry, "default", name);
        assert!(v.accepted, "{name}: {:?}", v.findings);
    }
    let c = rendered(&index, "default");
    let block = |s: &str| rustmesh_xds::address::CidrRange::parse(s).unwrap();
    let l = c.listener("0.0.0.0_5432").expect("0.0.0.0_5432");
    assert_eq!(l.filter_chains.len(), 1, "one chain for the block");
    assert_eq!(
        l.filter_chains[0].filter_chain_match.prefix_ranges,
        [block("10.20.0.0/16")]
    );
    assert_eq!(
        dest(&l.filter_chains[0].filters[0]),
        "outbound|5432||db.vpc.internal"
    );
    let default = l.default_filter_chain.as_ref().expect("default chain");
    assert_eq!(dest(&default.filters[0]), PASSTHROUGH_CLUSTER);
    assert_eq!(
        c.cluster("outbound|5432||db.vpc.internal").unwrap().type_,
        DiscoveryType::OriginalDst
    );
    let own = c
        .listener("192.0.2.30_5432")
        .expect("the IP address's listener");
    assert_eq!(
        dest(&own.filter_chains[0].filters[0]),
        "outbound|5432||db.vpc.internal"
    );
    let dns = c.dns.iter().find(|d| d.name == "db.vpc.internal").unwrap();
    assert_eq!(dns.addresses, [ip("192.0.2.30")]);
    // A block-only STATIC host gets no class E address.
    assert!(
        c.dns
            .iter()
            .find(|d| d.name == "web.vpc.internal")
            .is_none_or(|d| d.addresses.is_empty())
    );
    // Port 9080 is bookinfo's HTTP port: the block's chain first, the HTTP chains after.
    let l = c.listener("0.0.0.0_9080").expect("0.0.0.0_9080");
    assert_eq!(
        l.filter_chains[0].filter_chain_match.prefix_ranges,
        [block("10.30.0.0/16")]
    );
    assert_eq!(
        dest(&l.filter_chains[0].filters[0]),
        "outbound|9080||web.vpc.internal"
    );
    assert!(
        l.filter_chains[1..]
            .iter()
            .any(|fc| dest(&fc.filters[0]) == "Route: 9080"),
        "the HTTP port's chain stays"
    );
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
    // An update to a wildcard host with DNS resolution: refused naming spec.hosts; the NONE
    // version serves.
    istio(
        &mut index,
        &HTTPS_NONE
            .replace(
                "hosts: [www.example.com]",
                "hosts: [www.example.com, '*.example.com']",
            )
            .replace(
                "resolution: NONE",
                "resolution: DNS\n  endpoints: [{address: egress.example.com}]",
            ),
    );
    let v = verdict(&index, Kind::ServiceEntry, "default", "example-https");
    assert!(!v.accepted);
    assert_eq!(v.findings[0].field, "spec.hosts");
    assert!(
        v.findings[0]
            .message
            .contains(rustmesh_api::support::SERVICE_ENTRY_NOT_RENDERED),
        "{v:?}"
    );
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
  endpoints: [{address: 10.50.0.1, locality: us-east1/a}]
"#,
    );
    let v = verdict(&fresh, Kind::ServiceEntry, "default", "selector");
    assert!(!v.accepted);
    assert_eq!(v.findings[0].field, "spec.endpoints[0].locality");
    assert!(
        rendered(&fresh, "default")
            .cluster("outbound|80||vm.internal")
            .is_none()
    );
}

/// The endpoints of a cluster as `(address, port)`, the address a DNS name or an IP address.
fn hosts_and_ports(la: &ClusterLoadAssignment) -> Vec<(String, u16)> {
    la.lb_endpoints()
        .map(|e| {
            let a = &e.endpoint.address;
            (a.socket_address.address.to_string(), a.port())
        })
        .collect()
}

/// Istio's egress example with resolution DNS: the host itself is resolved by the sidecar.
const HTTPS_DNS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example-dns, namespace: default}
spec:
  hosts: [www.example.com]
  ports:
  - {number: 443, name: https, protocol: TLS}
  - {number: 80, name: http, protocol: HTTP}
  location: MESH_EXTERNAL
  resolution: DNS
"#;

#[test]
fn resolution_dns_without_endpoints_resolves_the_host_in_a_strict_dns_cluster() {
    let mut index = bookinfo();
    istio(&mut index, HTTPS_DNS);
    let v = verdict(&index, Kind::ServiceEntry, "default", "example-dns");
    assert!(v.accepted && v.findings.is_empty(), "{v:?}");
    let c = rendered(&index, "default");
    for port in [443, 80] {
        let name = format!("outbound|{port}||www.example.com");
        let cluster = c.cluster(&name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(cluster.type_, DiscoveryType::StrictDns, "{name}");
        assert!(cluster.eds_cluster_config.is_none(), "{name}: not EDS");
        assert!(cluster.respect_dns_ttl, "{name}");
        assert_eq!(
            cluster.dns_refresh_rate,
            Some(Duration::from_secs(super::clusters::DNS_REFRESH_SECS))
        );
        // The host at the entry's port: the name the sidecar resolves.
        let la = cluster.load_assignment.as_ref().expect("loadAssignment");
        assert_eq!(la.cluster_name, name);
        assert_eq!(
            hosts_and_ports(la),
            [("www.example.com".to_string(), port)],
            "{name}"
        );
        // MESH_EXTERNAL: no auto mutual TLS.
        assert!(cluster.transport_socket.is_none() && cluster.transport_socket_matches.is_empty());
        assert!(
            !c.endpoints.iter().any(|e| e.cluster_name == name),
            "{name}: no EDS endpoints"
        );
    }
    // The TLS port: the host's SNI chain goes to the DNS cluster; the HTTP port: its virtual
    // host routes there.
    let l = c.listener("0.0.0.0_443").expect("0.0.0.0_443");
    assert_eq!(
        l.filter_chains[0].filter_chain_match.server_names,
        ["www.example.com"]
    );
    assert_eq!(
        dest(&l.filter_chains[0].filters[0]),
        "outbound|443||www.example.com"
    );
    let vh = c
        .route("80")
        .unwrap()
        .virtual_hosts
        .iter()
        .find(|v| v.name == "www.example.com:80")
        .expect("virtual host")
        .clone();
    assert_eq!(
        vh.routes[0].route.as_ref().unwrap().cluster.as_deref(),
        Some("outbound|80||www.example.com")
    );
}

#[test]
fn resolution_dns_with_endpoints_resolves_each_endpoint_name_at_its_port() {
    // Istio's example: several DNS-addressable endpoints, each on its own port, and an IP one.
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-dns, namespace: default}
spec:
  hosts: [foo.bar.com]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: DNS
  endpoints:
  - address: us.foo.bar.com
    ports: {http: 8080}
  - address: uk.foo.bar.com
    ports: {http: 9080}
  - address: 198.51.100.9
"#,
    );
    assert!(verdict(&index, Kind::ServiceEntry, "default", "external-svc-dns").accepted);
    let c = rendered(&index, "default");
    let cluster = c.cluster("outbound|80||foo.bar.com").expect("cluster");
    assert_eq!(cluster.type_, DiscoveryType::StrictDns);
    assert_eq!(
        hosts_and_ports(cluster.load_assignment.as_ref().unwrap()),
        [
            ("us.foo.bar.com".to_string(), 8080),
            ("uk.foo.bar.com".to_string(), 9080),
            ("198.51.100.9".to_string(), 80),
        ],
        "each endpoint by name (or IP address), at the port it maps, else the entry's"
    );
    // The host is not resolved itself when there are endpoints.
    assert!(
        !hosts_and_ports(cluster.load_assignment.as_ref().unwrap())
            .iter()
            .any(|(h, _)| h == "foo.bar.com")
    );
}

#[test]
fn dns_round_robin_is_a_logical_dns_cluster_of_one_endpoint() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rr, namespace: default}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 8443, name: tls, protocol: TLS, targetPort: 443}
  resolution: DNS_ROUND_ROBIN
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rr-endpoint, namespace: default}
spec:
  hosts: [lb.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: DNS_ROUND_ROBIN
  endpoints:
  - {address: edge.example.net, ports: {http: 8080}}
"#,
    );
    for name in ["rr", "rr-endpoint"] {
        let v = verdict(&index, Kind::ServiceEntry, "default", name);
        assert!(v.accepted && v.findings.is_empty(), "{name}: {v:?}");
    }
    let c = rendered(&index, "default");
    for (cluster, endpoint) in [
        ("outbound|8443||api.example.com", ("api.example.com", 443)),
        ("outbound|80||lb.example.com", ("edge.example.net", 8080)),
    ] {
        let cl = c.cluster(cluster).unwrap_or_else(|| panic!("{cluster}"));
        assert_eq!(cl.type_, DiscoveryType::LogicalDns, "{cluster}");
        assert_eq!(
            hosts_and_ports(cl.load_assignment.as_ref().unwrap()),
            [(endpoint.0.to_string(), endpoint.1)],
            "{cluster}: the host at targetPort, or the endpoint at the port it maps"
        );
    }
}

#[test]
fn a_subset_of_a_dns_entry_selects_endpoints_by_label() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: regions, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints:
  - {address: us.example.com, labels: {region: us}}
  - {address: eu.example.com, labels: {region: eu}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one, namespace: default}
spec:
  hosts: [one.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS_ROUND_ROBIN
  endpoints:
  - {address: edge.example.com, labels: {region: us}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: regions, namespace: default}
spec:
  host: api.example.com
  subsets:
  - {name: eu, labels: {region: eu}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: one, namespace: default}
spec:
  host: one.example.com
  subsets:
  - {name: us, labels: {region: us}}
  - {name: eu, labels: {region: eu}}
"#,
    );
    let c = rendered(&index, "default");
    let eu = c.cluster("outbound|80|eu|api.example.com").expect("subset");
    assert_eq!(eu.type_, DiscoveryType::StrictDns);
    assert_eq!(
        hosts_and_ports(eu.load_assignment.as_ref().unwrap()),
        [("eu.example.com".to_string(), 80)]
    );
    let all = c.cluster("outbound|80||api.example.com").unwrap();
    assert_eq!(
        hosts_and_ports(all.load_assignment.as_ref().unwrap()).len(),
        2
    );
    // DNS_ROUND_ROBIN: LOGICAL_DNS when the subset selects its endpoint; a subset selecting
    // none gets a STRICT_DNS cluster of none (a LOGICAL_DNS cluster needs exactly one), which
    // `rendered` proves valid.
    let us = c.cluster("outbound|80|us|one.example.com").unwrap();
    assert_eq!(us.type_, DiscoveryType::LogicalDns);
    let none = c.cluster("outbound|80|eu|one.example.com").unwrap();
    assert_eq!(none.type_, DiscoveryType::StrictDns);
    assert!(hosts_and_ports(none.load_assignment.as_ref().unwrap()).is_empty());
}

#[test]
fn a_wildcard_host_with_dns_resolution_is_refused_naming_hosts_and_resolution() {
    for (resolution, endpoints) in [
        ("DNS", ""),
        ("DNS", "\n  endpoints: [{address: egress.example.com}]"),
        (
            "DNS_ROUND_ROBIN",
            "\n  endpoints: [{address: egress.example.com}]",
        ),
    ] {
        let mut index = bookinfo();
        istio(
            &mut index,
            &format!(
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wild, namespace: default}}
spec:
  hosts: ["*.example.com"]
  ports: [{{number: 443, name: https, protocol: TLS}}]
  resolution: {resolution}{endpoints}
"#
            ),
        );
        let v = verdict(&index, Kind::ServiceEntry, "default", "wild");
        assert!(!v.accepted, "{resolution}{endpoints}");
        let first = &v.findings[0];
        assert_eq!(first.field, "spec.hosts", "{v:?}");
        assert!(
            first.message.contains("spec.hosts[0]")
                && first
                    .message
                    .contains(&format!("spec.resolution {resolution}")),
            "{}",
            first.message
        );
        assert!(
            rendered(&index, "default")
                .cluster("outbound|443||*.example.com")
                .is_none(),
            "never accepted: not rendered"
        );
    }
}

#[test]
fn an_external_name_service_is_a_strict_dns_cluster_of_its_external_name() {
    let mut index = bookinfo();
    index.apply(Object::Service(Box::new(external_name_service(
        "default",
        "db",
        "db.example.org",
        &[("http", 8080, 9090), ("tcp-pg", 5432, 5432)],
    ))));
    let c = rendered(&index, "default");
    for port in [8080, 5432] {
        let name = format!("outbound|{port}||db.default.svc.cluster.local");
        let cluster = c.cluster(&name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(cluster.type_, DiscoveryType::StrictDns, "{name}");
        // The external name at the service port (an ExternalName has no target port).
        assert_eq!(
            hosts_and_ports(cluster.load_assignment.as_ref().unwrap()),
            [("db.example.org".to_string(), port)],
            "{name}"
        );
        assert!(cluster.respect_dns_ttl);
        // Outside the mesh: no auto mutual TLS.
        assert!(cluster.transport_socket.is_none() && cluster.transport_socket_matches.is_empty());
    }
    // The HTTP port: a virtual host for the service's names on the port's route table.
    let vh = c
        .route("8080")
        .expect("route table 8080")
        .virtual_hosts
        .iter()
        .find(|v| v.name == "db.default.svc.cluster.local:8080")
        .expect("virtual host")
        .clone();
    assert!(vh.domains.iter().any(|d| d == "db"), "{:?}", vh.domains);
    assert_eq!(
        vh.routes[0].route.as_ref().unwrap().cluster.as_deref(),
        Some("outbound|8080||db.default.svc.cluster.local")
    );
    // An ExternalName without a usable name is not rendered.
    let mut bad = bookinfo();
    bad.apply(Object::Service(Box::new(external_name_service(
        "default",
        "bad",
        "not a name",
        &[("http", 80, 80)],
    ))));
    assert!(
        rendered(&bad, "default")
            .cluster("outbound|80||bad.default.svc.cluster.local")
            .is_none()
    );
}

/// A pod of `ns` with `labels`, serving at `ip` when given (else not ready).
fn pod_at(index: &mut Index, ns: &str, name: &str, ip: Option<&str>, labels: &[(&str, &str)]) {
    index.apply(Object::Pod {
        key: ObjKey::new(ns, name),
        pod: crate::index::PodInfo::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Some("vm-api"),
        )
        .with_workload(Some("api-v1".into()))
        .with_ready_ip(ip.map(|a| a.parse().unwrap())),
    });
}

/// The endpoints of a cluster: address, and the tlsMode its metadata gives auto mTLS.
fn endpoints_of(c: &ProxyConfig, cluster: &str) -> Vec<(SocketAddr, Option<String>)> {
    let cluster = c.cluster(cluster).unwrap_or_else(|| panic!("{cluster}"));
    c.load_assignment(cluster)
        .unwrap()
        .lb_endpoints()
        .map(|e| {
            (
                e.endpoint.address.socket_addr().unwrap(),
                e.transport_socket_match()
                    .and_then(|m| m.get("tlsMode"))
                    .cloned(),
            )
        })
        .collect()
}

/// Istio's ServiceEntry `workloadSelector` for a MESH_INTERNAL entry: the ready pods of the
/// entry's namespace holding the selector's labels are its endpoints on `targetPort`, with
/// their labels (auto mTLS by `security.istio.io/tlsMode`, DestinationRule subsets); pods of
/// another namespace, with other labels or not ready are not; a pod becoming ready is added.
#[test]
fn a_workload_selector_makes_the_ready_pods_it_selects_the_entrys_endpoints() {
    let mut index = bookinfo();
    // With the mesh CA: auto mutual TLS to the endpoints of pods with a sidecar.
    index.mesh.ca_host = Some("rustmesh-ca.istio-system.svc:15012".to_string());
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.vm.internal]
  addresses: [192.0.2.60]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.vm.internal
  subsets:
  - {name: v2, labels: {version: v2}}
"#,
    );
    let meshed = [
        ("app", "api"),
        ("version", "v1"),
        ("security.istio.io/tlsMode", "istio"),
    ];
    pod_at(&mut index, "default", "api-1", Some("10.40.0.1"), &meshed);
    pod_at(
        &mut index,
        "default",
        "api-2",
        Some("10.40.0.2"),
        &[("app", "api"), ("version", "v2")],
    );
    pod_at(
        &mut index,
        "default",
        "api-3",
        None,
        &[("app", "api"), ("version", "v1")],
    );
    pod_at(
        &mut index,
        "default",
        "web-1",
        Some("10.40.0.9"),
        &[("app", "web")],
    );
    pod_at(
        &mut index,
        "other",
        "api-9",
        Some("10.40.0.99"),
        &[("app", "api")],
    );
    assert!(verdict(&index, Kind::ServiceEntry, "default", "api").accepted);
    let c = rendered(&index, "default");
    assert_eq!(
        endpoints_of(&c, "outbound|80||api.vm.internal"),
        [
            ("10.40.0.1:8080".parse().unwrap(), Some("istio".to_string())),
            ("10.40.0.2:8080".parse().unwrap(), None)
        ]
    );
    assert_eq!(
        endpoints_of(&c, "outbound|80|v2|api.vm.internal"),
        [("10.40.0.2:8080".parse().unwrap(), None)]
    );
    // The pod that was not ready becomes ready: it is added.
    pod_at(
        &mut index,
        "default",
        "api-3",
        Some("10.40.0.3"),
        &[("app", "api"), ("version", "v1")],
    );
    let c = rendered(&index, "default");
    let addrs: Vec<SocketAddr> = endpoints_of(&c, "outbound|80||api.vm.internal")
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        addrs,
        ["10.40.0.1:8080", "10.40.0.2:8080", "10.40.0.3:8080"]
            .map(|a| a.parse::<SocketAddr>().unwrap())
    );
}

/// With another resolution than STATIC Istio warns about the selector and selects nothing;
/// so does rustmesh: the DNS entry keeps resolving its host.
#[test]
fn a_workload_selector_selects_nothing_with_a_dns_resolution() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.vm.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  workloadSelector: {labels: {app: api}}
"#,
    );
    pod_at(
        &mut index,
        "default",
        "api-1",
        Some("10.40.0.1"),
        &[("app", "api")],
    );
    let v = verdict(&index, Kind::ServiceEntry, "default", "api");
    assert!(v.accepted, "{v:?}");
    assert!(
        v.findings
            .iter()
            .any(|f| f.level == Level::Warning && f.field.contains("workloadSelector")),
        "{v:?}"
    );
    let c = rendered(&index, "default");
    let cluster = c.cluster("outbound|80||api.vm.internal").unwrap();
    assert_eq!(cluster.type_, DiscoveryType::StrictDns);
}
