//! The sidecar's HTTP server (hyper under the connection manager: routing, header limits,
//! local replies) on arbitrary bytes from a client, as HTTP/1.1 or, when the first byte is
//! odd, after the HTTP/2 preface (arbitrary frames). The connection must end once the client
//! is done: a panic or a stuck connection is the failure.
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::http::upstreams::ClusterUpstreams;
use rustmesh_proxy::http::{HttpContext, HttpSettings, Rng, RouteTable, serve_connection};
use rustmesh_proxy::metrics::{Destinations, Metrics, Reporter, WorkloadInfo};
use rustmesh_proxy::pool::PassthroughPools;
use rustmesh_xds::route::RouteConfiguration;
use tokio::io::AsyncWriteExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn table() -> RouteTable {
    let rc: RouteConfiguration = serde_json::from_value(serde_json::json!({
        "name": "9080", "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/redirect"}, "redirect": {"pathRedirect": "/x"}},
            {"match": {"safeRegex": {"regex": "/re/[a-z]+"}}, "directResponse": {"status": 200}},
            {"match": {"prefix": "/"}, "route": {"cluster": "nowhere"}}]}]}))
    .unwrap();
    RouteTable::compile(&rc, &BTreeMap::new()).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ctx = HttpContext {
            routes: Arc::new(arc_swap::ArcSwap::from_pointee(table())),
            upstreams: ClusterUpstreams::new(
                ClusterManager::new(rustmesh_proxy::stats::Metrics::default())
                    .build(&rustmesh_xds::ProxyConfig::from_json("{}").unwrap()),
                Arc::new(PassthroughPools::default()),
            ),
            metrics: Arc::new(Metrics::new()),
            workload: Arc::new(WorkloadInfo::default()),
            own_metadata: Arc::new(rustmesh_proxy::peer::OwnMetadata::of(
                &WorkloadInfo::default(),
                None,
            )),
            destinations: Arc::new(Destinations::default()),
            reporter: Reporter::Source,
            peer: addr,
            local: addr,
            settings: Arc::new(HttpSettings {
                header_read_timeout: Duration::from_millis(100),
                ..Default::default()
            }),
            rng: Arc::new(Rng::seeded(1)),
            access_log: rustmesh_proxy::access_log::Sink::new(|_| {}),
            access_logs: Default::default(),
            peer_identity: None,
            own_identity: None,
            client_cert_details: None,
            authz: None,
            trace: None,
            requested_server_name: None,
            metric_settings: Default::default(),
        };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move { serve_connection(server, ctx).await });
        let h2 = data.first().is_some_and(|b| b % 2 == 1);
        let data = data.get(1..).unwrap_or_default().to_vec();
        let reader = tokio::spawn(async move {
            if h2 {
                let _ = client.write_all(PREFACE).await;
            }
            let _ = client.write_all(&data).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        });
        let ended = tokio::time::timeout(Duration::from_secs(10), serving).await;
        assert!(ended.is_ok(), "the connection never ended");
        assert!(ended.unwrap().is_ok(), "the connection task panicked");
        reader.abort();
    });
});
