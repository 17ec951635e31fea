//! Proof, with a real sidecar in a network-namespace "pod" behind the real capture rules, that a
//! ServiceEntry as the operator renders it (issue #20) opens a REGISTRY_ONLY mesh to its hosts
//! and to nothing else: the sidecar's DNS proxy answers the hosts (the given address; for
//! STATIC without addresses the class E address allocated to the host), resolution NONE goes
//! to the original destination, STATIC to the entry's endpoint, a CIDR block lets addresses in
//! it through on the entry's port (and no other), and an unregistered destination is refused
//! (`BlackHoleCluster`).
//!
//! The configuration is the operator's own render (`rustmesh_operator::render`) of a namespace
//! holding only the entries and a REGISTRY_ONLY Sidecar. Skips (printing why) without root,
//! `ip`, iptables or `setpriv`; fails instead with `RUSTMESH_REQUIRE_NETNS=1`.

mod support;

use std::net::{IpAddr, SocketAddr};

use rustmesh_operator::fixtures::{istio, namespace};
use rustmesh_operator::{Index, Scope, render};
use support::sidecar::{Scratch, eventually};
use support::{ISTIO_INIT_ARGS, Net};

#[test]
fn registry_only_lets_service_entry_hosts_through_and_blocks_the_rest() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (client, external, other) = (net.pod(), net.pod(), net.pod());
    let direct = external.serve("0.0.0.0:7000", "direct");
    let in_block = external.serve("0.0.0.0:7200", "block");
    let beside_block = other.serve("0.0.0.0:7200", "beside");
    let endpoint = external.serve("0.0.0.0:7001", "endpoint");
    let outside = external.serve("0.0.0.0:8000", "outside");

    let mut index = Index::default();
    namespace(&mut index, "default", true);
    istio(
        &mut index,
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: direct, namespace: default}}
spec:
  hosts: [direct.external.test]
  addresses: ["{ip}"]
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pool, namespace: default}}
spec:
  hosts: [pool.external.test]
  ports: [{{number: 7100, name: tcp, protocol: TCP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - {{address: "{ip}", ports: {{tcp: 7001}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: subnet, namespace: default}}
spec:
  hosts: [subnet.external.test]
  addresses: ["{ip}/32"]
  ports: [{{number: 7200, name: tcp, protocol: TCP}}]
  location: MESH_EXTERNAL
  resolution: NONE
"#,
            ip = external.ip
        ),
    );
    let config = render(&index, &Scope::namespace("default"));
    config.validate().expect("the operator's render validates");
    let pool: IpAddr = config
        .dns
        .iter()
        .find(|d| d.name == "pool.external.test")
        .and_then(|d| d.addresses.first().copied())
        .expect("a DNS answer for the STATIC host");
    assert!(
        config.listener(&format!("{pool}_7100")).is_some(),
        "{}",
        config.to_json()
    );

    let scratch = Scratch::new();
    let path = scratch.write("client.json", &config.to_json());
    // The capture sends DNS for the pod's nameserver (nobody has that address) to the DNS proxy.
    client.resolv_conf("nameserver 10.96.0.10\n");
    client.capture(ISTIO_INIT_ARGS);
    let sidecar = client.start_sidecar_with_env(&scratch, &path, &[], &[]);
    eventually(&client, &sidecar, "/ready", "ready", |status, _| {
        status == 200
    });

    // The hosts resolve through the sidecar's DNS proxy, as an application would resolve them.
    assert_eq!(
        client.resolve_a("10.96.0.10", "direct.external.test."),
        [external.ip.to_string()]
    );
    assert_eq!(
        client.resolve_a("10.96.0.10", "pool.external.test."),
        [pool.to_string()]
    );

    // NONE with the server's address: to where the app connected.
    assert_eq!(
        client.talk(external.at(7000), "registered").unwrap(),
        "direct registered"
    );
    assert!(direct.saw("registered").is_some());
    // STATIC: the host's class E address, captured, to the entry's endpoint.
    assert_eq!(
        client.talk(SocketAddr::new(pool, 7100), "static").unwrap(),
        "endpoint static"
    );
    assert!(endpoint.saw("static").is_some());
    // A CIDR block: an address in it passes on the entry's port, one beside it does not.
    assert_eq!(client.talk(external.at(7200), "in").unwrap(), "block in");
    assert!(in_block.saw("in").is_some());
    let beside = client.talk(other.at(7200), "beside");
    assert!(beside.is_err(), "outside the block: {beside:?}");
    assert!(beside_block.saw("beside").is_none());
    // Not in the registry: refused, nothing reaches the server.
    let refused = client.talk(external.at(8000), "blocked");
    assert!(
        refused.is_err(),
        "REGISTRY_ONLY let it through: {refused:?}"
    );
    assert!(outside.saw("blocked").is_none());
    let (_, stats) = client.admin_get("/stats").unwrap();
    assert!(
        stats.contains("cluster.outbound|7000||direct.external.test.upstream_cx_total: 1"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.outbound|7100||pool.external.test.upstream_cx_total: 1"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.outbound|7200||subnet.external.test.upstream_cx_total: 1"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.BlackHoleCluster.upstream_cx_none_healthy: 2"),
        "{stats}"
    );
}
