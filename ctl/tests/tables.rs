//! The tables `rustmeshctl proxy-config` prints, run as a program on configuration files:
//! - golden files, compared exactly, for bookinfo's productpage sidecar (`xds` fixture) and for
//!   the `test` and `nginx` pods of seed 004;
//! - seed 004's own istioctl output, compared byte for byte where the seed shows a whole table;
//! - the rows the issue names, compared with whitespace squashed;
//! - filters and `-o json|yaml`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p rustmesh-ctl --test tables` rewrites the golden files (review
//! the diff: they are the specification).

mod support;

use rustmesh_ctl::ProxyConfig;
use rustmesh_xds::listener::Listener;
use std::path::PathBuf;
use support::{ctl, fixture, fixture_text, squash, stdout};

const FIXTURES: [&str; 3] = ["productpage", "seed004-test", "seed004-nginx"];
const VIEWS: [&str; 5] = ["listeners", "routes", "clusters", "endpoints", "all"];

fn golden_path(fixture: &str, view: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(fixture)
        .join(format!("{view}.txt"))
}

/// Compares line by line, naming the first line that differs.
fn assert_same_text(actual: &str, expected: &str, what: &str) {
    let (a, e): (Vec<&str>, Vec<&str>) =
        (actual.split('\n').collect(), expected.split('\n').collect());
    for (n, (al, el)) in a.iter().zip(&e).enumerate() {
        assert_eq!(
            al,
            el,
            "{what}: line {} differs\n--- actual ---\n{actual}--- expected ---\n{expected}",
            n + 1
        );
    }
    assert_eq!(
        a.len(),
        e.len(),
        "{what}: {} lines, expected {}\n--- actual ---\n{actual}",
        a.len(),
        e.len()
    );
}

fn table(fixture_name: &str, args: &[&str]) -> String {
    let file = fixture(fixture_name);
    let mut all = vec!["proxy-config"];
    all.extend_from_slice(args);
    all.extend(["--file", file.to_str().unwrap()]);
    stdout(&ctl(&all))
}

#[test]
fn golden_tables() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for f in FIXTURES {
        for view in VIEWS {
            let actual = table(f, &[view]);
            let path = golden_path(f, view);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_same_text(&actual, &expected, &format!("{f} {view}"));
        }
    }
}

#[test]
fn all_is_the_four_tables_in_istioctl_order() {
    for f in FIXTURES {
        let parts: Vec<String> = ["clusters", "listeners", "routes", "endpoints"]
            .iter()
            .map(|v| table(f, &[v]))
            .collect();
        assert_eq!(table(f, &["all"]), parts.join("\n"), "{f}");
    }
}

/// Seed 004 shows these whole tables; ours must be the same bytes.
#[test]
fn seed_004_tables_byte_for_byte() {
    assert_eq!(
        table("seed004-test", &["listener", "--port", "15001"]),
        "\
ADDRESSES PORT  MATCH         DESTINATION
0.0.0.0   15001 ALL           PassthroughCluster
0.0.0.0   15001 Addr: *:15001 Non-HTTP/Non-TCP
"
    );
    assert_eq!(
        table(
            "seed004-test",
            &["listener", "--port", "80", "--address", "10.102.168.134"]
        ),
        "\
ADDRESSES      PORT MATCH                                DESTINATION
10.102.168.134 80   Trans: raw_buffer; App: http/1.1,h2c Route: nginx.test.svc.cluster.local:80
10.102.168.134 80   ALL                                  Cluster: outbound|80||nginx.test.svc.cluster.local
"
    );
    assert_eq!(
        table("seed004-nginx", &["listener", "--port", "15006"]),
        "\
ADDRESSES PORT  MATCH                                                                    DESTINATION
0.0.0.0   15006 Addr: *:15006                                                            Non-HTTP/Non-TCP
0.0.0.0   15006 Trans: tls; App: istio-http/1.0,istio-http/1.1,istio-h2; Addr: 0.0.0.0/0 InboundPassthroughClusterIpv4
0.0.0.0   15006 Trans: raw_buffer; App: http/1.1,h2c; Addr: 0.0.0.0/0                    InboundPassthroughClusterIpv4
0.0.0.0   15006 Trans: tls; App: TCP TLS; Addr: 0.0.0.0/0                                InboundPassthroughClusterIpv4
0.0.0.0   15006 Trans: raw_buffer; Addr: 0.0.0.0/0                                       InboundPassthroughClusterIpv4
0.0.0.0   15006 Trans: tls; Addr: 0.0.0.0/0                                              InboundPassthroughClusterIpv4
0.0.0.0   15006 Trans: tls; App: istio-http/1.0,istio-http/1.1,istio-h2; Addr: *:80      Cluster: inbound|80||
0.0.0.0   15006 Trans: raw_buffer; App: http/1.1,h2c; Addr: *:80                         Cluster: inbound|80||
0.0.0.0   15006 Trans: tls; App: TCP TLS; Addr: *:80                                     Cluster: inbound|80||
0.0.0.0   15006 Trans: raw_buffer; Addr: *:80                                            Cluster: inbound|80||
0.0.0.0   15006 Trans: tls; Addr: *:80                                                   Cluster: inbound|80||
"
    );
    assert_eq!(
        table(
            "seed004-nginx",
            &["listener", "--port", "80", "--address", "0.0.0.0"]
        ),
        "\
ADDRESSES PORT MATCH                                DESTINATION
0.0.0.0   80   Trans: raw_buffer; App: http/1.1,h2c Route: 80
0.0.0.0   80   ALL                                  PassthroughCluster
"
    );
}

/// Seed 004 shows the route rows through `grep nginx.test.svc.cluster.local`, so only their
/// cells (not the widths of the whole table) can be compared.
#[test]
fn seed_004_route_rows() {
    let out = table("seed004-test", &["routes"]);
    let rows: Vec<String> = out
        .lines()
        .filter(|l| l.contains("nginx.test.svc.cluster.local"))
        .map(squash)
        .collect();
    assert_eq!(
        rows,
        [
            "nginx.test.svc.cluster.local:80 nginx.test.svc.cluster.local:80 * /*",
            "80 nginx.test.svc.cluster.local:80 nginx, nginx.test + 1 more... /*",
        ]
    );
    // The endpoint the seed's `endpoint --cluster` shows, and its cluster.
    let out = table(
        "seed004-test",
        &[
            "endpoints",
            "--cluster",
            "outbound|80||nginx.test.svc.cluster.local",
        ],
    );
    assert_eq!(
        out.lines().map(squash).collect::<Vec<_>>(),
        [
            "ENDPOINT STATUS OUTLIER CHECK CLUSTER",
            "10.244.0.73:80 HEALTHY OK outbound|80||nginx.test.svc.cluster.local",
        ]
    );
    let out = table(
        "seed004-test",
        &[
            "clusters",
            "--fqdn",
            "outbound|80||nginx.test.svc.cluster.local",
        ],
    );
    assert_eq!(
        out.lines().map(squash).collect::<Vec<_>>(),
        [
            "SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE",
            "nginx.test.svc.cluster.local 80 - outbound EDS",
        ]
    );
}

fn squashed_rows(text: &str) -> Vec<String> {
    text.lines().map(squash).collect()
}

/// The rows the issue names, from the productpage sidecar.
#[test]
fn rows_the_issue_names() {
    let rows = squashed_rows(&table("productpage", &["listeners"]));
    for want in [
        "0.0.0.0 15001 ALL PassthroughCluster",
        // Where the port also has an HTTP chain, the TCP fallback names its transport, as in
        // seed 004 (`Trans: raw_buffer; Addr: *:80`).
        "0.0.0.0 15006 Trans: raw_buffer; Addr: *:9080 Cluster: inbound|9080||",
        "10.96.0.10 53 ALL Cluster: outbound|53||kube-dns.kube-system.svc.cluster.local",
        "0.0.0.0 9080 Trans: raw_buffer; App: http/1.1,h2c Route: 9080",
        "0.0.0.0 9080 ALL PassthroughCluster",
    ] {
        assert!(
            rows.contains(&want.to_string()),
            "no row {want:?} in\n{}",
            rows.join("\n")
        );
    }

    // Older Istio matched `http/1.0,http/1.1,h2c` without a transport protocol; istioctl names
    // that `App: HTTP` (seed 000).
    let mut config = ProxyConfig::from_json(&fixture_text("productpage")).unwrap();
    let l = config
        .listeners
        .iter_mut()
        .find(|l| l.name == "0.0.0.0_9080")
        .unwrap();
    let m = &mut l.filter_chains[0].filter_chain_match;
    m.transport_protocol = None;
    m.application_protocols = vec!["http/1.0".into(), "http/1.1".into(), "h2c".into()];
    // A TCP-only inbound port has a single chain matched on the port alone.
    let inbound = config
        .listeners
        .iter_mut()
        .find(|l| l.name == "virtualInbound")
        .unwrap();
    inbound.filter_chains.retain(|fc| {
        let m = &fc.filter_chain_match;
        m.destination_port != Some(9080)
            || m.transport_protocol.as_deref() == Some("raw_buffer")
                && m.application_protocols.is_empty()
    });
    for fc in &mut inbound.filter_chains {
        if fc.filter_chain_match.destination_port == Some(9080) {
            fc.filter_chain_match.transport_protocol = None;
        }
    }
    let inbound_rows = squashed_rows(
        &rustmesh_ctl::listeners::table(
            &config,
            &rustmesh_ctl::listeners::ListenerFilter {
                port: Some(15006),
                ..Default::default()
            },
            true,
        )
        .render(),
    );
    assert!(
        inbound_rows.contains(&"0.0.0.0 15006 Addr: *:9080 Cluster: inbound|9080||".to_string()),
        "{inbound_rows:?}"
    );
    let filter = rustmesh_ctl::listeners::ListenerFilter {
        port: Some(9080),
        ..Default::default()
    };
    let rows = squashed_rows(&rustmesh_ctl::listeners::table(&config, &filter, true).render());
    assert_eq!(
        rows,
        [
            "ADDRESSES PORT MATCH DESTINATION",
            "0.0.0.0 9080 App: HTTP Route: 9080",
            "0.0.0.0 9080 ALL PassthroughCluster",
        ]
    );
}

#[test]
fn listener_filters() {
    let inbound = table("productpage", &["listeners", "--type", "inbound"]);
    assert!(
        inbound.lines().skip(1).all(|l| l.contains(" 15006 ")),
        "{inbound}"
    );
    let tcp = squashed_rows(&table("productpage", &["listeners", "--type", "TCP"]));
    assert_eq!(
        tcp,
        [
            "ADDRESSES PORT MATCH DESTINATION",
            "10.96.0.10 53 ALL Cluster: outbound|53||kube-dns.kube-system.svc.cluster.local",
            "0.0.0.0 15001 ALL PassthroughCluster",
            "0.0.0.0 15001 Addr: *:15001 Non-HTTP/Non-TCP",
            "10.96.20.1 27017 ALL Cluster: outbound|27017||mongodb.default.svc.cluster.local",
        ]
    );
    assert_eq!(
        table("productpage", &["listeners", "--verbose=false"]),
        "\
ADDRESSES  PORT  TYPE
10.96.0.10 53    TCP
0.0.0.0    9080  HTTP+TCP
10.96.0.10 9153  HTTP+TCP
0.0.0.0    15001 TCP
0.0.0.0    15006 HTTP+TCP
10.96.20.1 27017 TCP
"
    );
    // Nothing selected: the header alone, as istioctl.
    assert_eq!(
        table("productpage", &["listeners", "--port", "1"]),
        "ADDRESSES PORT MATCH DESTINATION\n"
    );
}

#[test]
fn route_and_cluster_and_endpoint_filters() {
    let routes = squashed_rows(&table("productpage", &["routes", "--name", "9080"]));
    assert_eq!(routes.len(), 5, "{routes:?}");
    assert!(routes[1..].iter().all(|r| r.starts_with("9080 ")));
    assert_eq!(
        table("productpage", &["routes", "--verbose=false"]),
        "\
NAME                                            VIRTUAL HOSTS
9080                                            5
kube-dns.kube-system.svc.cluster.local:9153     1
inbound|9080||                                  1
"
    );
    let clusters = squashed_rows(&table(
        "productpage",
        &[
            "clusters",
            "--fqdn",
            "reviews.default.svc.cluster.local",
            "--subset",
            "v2",
        ],
    ));
    assert_eq!(
        clusters,
        [
            "SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE",
            "reviews.default.svc.cluster.local 9080 v2 outbound EDS reviews.default",
        ]
    );
    let inbound = squashed_rows(&table(
        "productpage",
        &["clusters", "--direction", "inbound"],
    ));
    assert_eq!(inbound[1], "9080 - inbound STATIC");
    let eps = squashed_rows(&table(
        "productpage",
        &[
            "endpoints",
            "--address",
            "10.244.0.32",
            "--port",
            "9080",
            "--status",
            "healthy",
        ],
    ));
    assert_eq!(
        eps,
        [
            "ENDPOINT STATUS OUTLIER CHECK CLUSTER",
            "10.244.0.32:9080 HEALTHY OK outbound|9080|v1|reviews.default.svc.cluster.local",
            "10.244.0.32:9080 HEALTHY OK outbound|9080||reviews.default.svc.cluster.local",
        ]
    );
    let none = table("productpage", &["endpoints", "--status", "unhealthy"]);
    assert_eq!(none.lines().count(), 1, "{none}");
}

#[test]
fn json_and_yaml_print_the_selected_configuration() {
    let config = ProxyConfig::from_json(&fixture_text("productpage")).unwrap();
    let out = table(
        "productpage",
        &["listeners", "--port", "15001", "-o", "json"],
    );
    assert!(
        out.starts_with("[\n    {\n        \"name\": \"virtualOutbound\""),
        "{out}"
    );
    let listeners: Vec<Listener> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listeners,
        vec![config.listener("virtualOutbound").unwrap().clone()]
    );

    let out = table(
        "productpage",
        &["listeners", "--port", "15001", "-o", "yaml"],
    );
    let listeners: Vec<Listener> = serde_norway::from_str(&out).unwrap();
    assert_eq!(
        listeners,
        vec![config.listener("virtualOutbound").unwrap().clone()]
    );

    let out = table("productpage", &["routes", "--name", "9080", "-o", "json"]);
    let routes: Vec<rustmesh_xds::route::RouteConfiguration> = serde_json::from_str(&out).unwrap();
    assert_eq!(routes, vec![config.route("9080").unwrap().clone()]);

    let out = table("productpage", &["clusters", "--subset", "v1", "-o", "json"]);
    let clusters: Vec<rustmesh_xds::cluster::Cluster> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        clusters,
        vec![
            config
                .cluster("outbound|9080|v1|reviews.default.svc.cluster.local")
                .unwrap()
                .clone()
        ]
    );

    let out = table(
        "productpage",
        &["endpoints", "--address", "127.0.0.1", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "inbound|9080||");
    assert_eq!(
        v[0]["hostStatuses"][0]["address"]["socketAddress"]["portValue"],
        9080
    );

    // The dump reads back as the same configuration, in both formats.
    for format in ["json", "yaml"] {
        let out = table("productpage", &["config-dump", "-o", format]);
        let back: ProxyConfig = if format == "json" {
            ProxyConfig::from_json(&out).unwrap()
        } else {
            serde_norway::from_str(&out).unwrap()
        };
        assert_eq!(back, config, "{format}");
    }
    let out = table("productpage", &["all", "-o", "json"]);
    assert_eq!(ProxyConfig::from_json(&out).unwrap(), config);
}
