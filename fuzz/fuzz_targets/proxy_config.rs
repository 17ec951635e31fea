//! A proxy configuration (what a ConfigMap carries) from arbitrary text: parsed, validated and,
//! when valid, compiled as the sidecar would (clusters, chains, route tables, regexes). An
//! invalid document is an error naming a field, never a panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::http::handler::ConnectionManager;
use rustmesh_proxy::metrics::{Metrics as IstioMetrics, WorkloadInfo};
use rustmesh_proxy::snapshot::Snapshot;
use rustmesh_proxy::stats::Metrics;
use rustmesh_xds::ProxyConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ProxyConfig::from_json(text) else {
        return;
    };
    let metrics = Metrics::default();
    let http = ConnectionManager::new(
        Arc::new(IstioMetrics::new()),
        Arc::new(WorkloadInfo::default()),
    );
    let _ = Snapshot::compile(
        config,
        &ClusterManager::new(metrics.clone()),
        &metrics,
        &http,
    );
});
