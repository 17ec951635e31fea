//! Configuration documents as the operator renders them, shared by the sidecar tests.

use serde_json::{Value, json};

pub fn tcp_proxy(cluster: &str) -> Value {
    json!([{"name": "envoy.filters.network.tcp_proxy",
            "typedConfig": {"statPrefix": cluster, "cluster": cluster}}])
}

pub fn address(ip: &str, port: u16) -> Value {
    json!({"socketAddress": {"address": ip, "portValue": port}})
}

/// `virtualOutbound`: the loop blackhole, then `catch_all` (`PassthroughCluster` for
/// ALLOW_ANY, `BlackHoleCluster` for REGISTRY_ONLY).
pub fn virtual_outbound(catch_all: &str) -> Value {
    json!({"name": "virtualOutbound", "address": address("0.0.0.0", 15001),
    "trafficDirection": "OUTBOUND", "useOriginalDst": true,
    "filterChains": [
        {"name": "virtualOutbound-blackhole", "filterChainMatch": {"destinationPort": 15001},
         "filters": tcp_proxy("BlackHoleCluster")},
        {"name": "virtualOutbound-catchall-tcp", "filters": tcp_proxy(catch_all)},
    ]})
}

/// The clusters every sidecar has.
pub fn builtin_clusters() -> Vec<Value> {
    vec![
        json!({"name": "BlackHoleCluster", "type": "STATIC", "connectTimeout": "10s",
            "loadAssignment": {"clusterName": "BlackHoleCluster", "endpoints": []}}),
        json!({"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connectTimeout": "10s",
            "lbPolicy": "CLUSTER_PROVIDED"}),
        json!({"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST", "connectTimeout": "10s",
            "lbPolicy": "CLUSTER_PROVIDED", "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}}}),
        json!({"name": "InboundPassthroughClusterIpv6", "type": "ORIGINAL_DST", "connectTimeout": "10s",
            "lbPolicy": "CLUSTER_PROVIDED", "upstreamBindConfig": {"sourceAddress": {"address": "::6", "portValue": 0}}}),
    ]
}
