//! DNS clusters resolved for real: the cluster manager with the sidecar's resolver
//! (`UpstreamLookup`, reading a resolv.conf) asks a DNS server of the test's own on loopback
//! over UDP. A STRICT_DNS cluster gets every address answered, at the endpoint's port; a
//! changed answer replaces them at the next refresh (the answer's TTL); a server that fails
//! (SERVFAIL) leaves the last good addresses in place, counted as update failures; a
//! LOGICAL_DNS cluster uses the first address. The resolver's schedule and bookkeeping are
//! unit-tested with a fake lookup in `cluster/manager.rs` and `cluster/resolver.rs`.

mod dns_common;

use dns_common::TestDns;
use rustmesh_proxy::cluster::resolver::UpstreamLookup;
use rustmesh_proxy::cluster::{ClusterManager, Clusters};
use rustmesh_proxy::stats::Metrics;
use rustmesh_xds::ProxyConfig;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLUSTER: &str = "outbound|443||api.example.test";

/// One DNS cluster of `type_` listing `names` at port 8443, refreshed every second.
fn config(type_: &str, names: &[&str]) -> ProxyConfig {
    let endpoints: Vec<_> = names
        .iter()
        .map(|n| json!({"endpoint": {"address": {"socketAddress": {"address": n, "portValue": 8443}}}}))
        .collect();
    let doc = json!({"clusters": [{
        "name": CLUSTER, "type": type_, "lbPolicy": "ROUND_ROBIN", "connectTimeout": "1s",
        "dnsRefreshRate": "1s", "respectDnsTtl": true,
        "loadAssignment": {"clusterName": CLUSTER, "endpoints": [{"lbEndpoints": endpoints}]}}]});
    ProxyConfig::from_json(&doc.to_string()).unwrap()
}

/// The cluster's endpoints as served now, sorted.
fn addrs(c: &Clusters) -> Vec<String> {
    let mut v: Vec<String> = c
        .get(CLUSTER)
        .unwrap()
        .resolved()
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    v.sort();
    v
}

/// Waits (10s at most) until the cluster serves `want`.
async fn until(c: &Clusters, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while addrs(c) != want {
        assert!(
            Instant::now() < deadline,
            "never {want:?}; still {:?}",
            addrs(c)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A manager whose DNS clusters ask `dns` only.
fn manager(dns: &TestDns, dir: &std::path::Path) -> ClusterManager {
    ClusterManager::new(Metrics::default())
        .with_lookup(Arc::new(UpstreamLookup::new(dns.resolv_conf(dir))))
}

#[tokio::test]
async fn a_strict_dns_cluster_follows_a_real_dns_server_and_keeps_the_last_good_answer() {
    let dns = TestDns::start().await;
    dns.set("api.example.test", &["127.0.0.2", "127.0.0.3"]);
    dns.set("eu.example.test", &["127.0.0.9"]);
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dns, dir.path());
    let c = m.build(&config(
        "STRICT_DNS",
        &["api.example.test", "eu.example.test"],
    ));
    assert!(addrs(&c).is_empty(), "nothing before the first answer");
    m.commit(&c);

    // Every address of every name, at the endpoint's port.
    until(&c, &["127.0.0.2:8443", "127.0.0.3:8443", "127.0.0.9:8443"]).await;
    let cluster = c.get(CLUSTER).unwrap().clone();
    let first = cluster.resolved().endpoints[0].clone();
    assert!(
        first
            .hostname
            .as_deref()
            .is_some_and(|h| h.ends_with(".example.test")),
        "the endpoint keeps the name it came from: {:?}",
        first.hostname
    );

    // A changed answer replaces the addresses at the next refresh (TTL 1s).
    dns.set("api.example.test", &["127.0.0.4"]);
    until(&c, &["127.0.0.4:8443", "127.0.0.9:8443"]).await;

    // The server fails: the last good addresses stay, each failure counted.
    let failures = cluster.stats.update_failure.get();
    dns.fail(true);
    let asked = dns.asked();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.asked() < asked + 4 || cluster.stats.update_failure.get() < failures + 4 {
        assert!(Instant::now() < deadline, "the resolver stopped asking");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(addrs(&c), ["127.0.0.4:8443", "127.0.0.9:8443"]);

    // Answering again: followed again.
    dns.fail(false);
    dns.set("eu.example.test", &["127.0.0.10"]);
    until(&c, &["127.0.0.10:8443", "127.0.0.4:8443"]).await;
}

#[tokio::test]
async fn a_logical_dns_cluster_uses_the_first_address_answered() {
    let dns = TestDns::start().await;
    dns.set("api.example.test", &["127.0.0.7", "127.0.0.8"]);
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dns, dir.path());
    let c = m.build(&config("LOGICAL_DNS", &["api.example.test"]));
    m.commit(&c);
    until(&c, &["127.0.0.7:8443"]).await;
    dns.set("api.example.test", &["127.0.0.8", "127.0.0.7"]);
    until(&c, &["127.0.0.8:8443"]).await;
}
