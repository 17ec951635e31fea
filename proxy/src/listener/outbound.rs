//! `virtualOutbound`: the listener the capture rules send every outbound connection of the app
//! to (default `0.0.0.0:15001`, and `[::]:15001` when the host has IPv6).
//!
//! For each connection, given its original destination (`SO_ORIGINAL_DST`), [`decide`]:
//!
//! 1. closes it if the destination is this very listener (the port, on a local address): a
//!    loop, which Istio's config also blackholes with a `destinationPort: 15001` chain;
//! 2. hands it to the virtual listener for the destination: `<ip>_<port>` if there is one,
//!    else `0.0.0.0_<port>` (or `[::]_<port>`);
//! 3. else keeps it on `virtualOutbound`'s own chains: `PassthroughCluster` under `ALLOW_ANY`,
//!    `BlackHoleCluster` under `REGISTRY_ONLY`, as the control plane rendered it.

use std::net::IpAddr;
use std::sync::Arc;

use super::decision::Decision;
use crate::metrics::Reporter;
use crate::snapshot::Snapshot;
use crate::socket::{ClientAddr, OrigDstAddr};
use crate::stats::Refusal;

/// Decides what `virtualOutbound` (accepting on `own_port`) does with a connection to
/// `orig_dst`: a pure function of the configuration and the addresses. `is_local` says whether
/// an address belongs to this host; it is asked only when the port is the listener's own.
pub fn decide(
    snapshot: &Snapshot,
    own_port: u16,
    orig_dst: OrigDstAddr,
    _client: ClientAddr,
    is_local: impl FnOnce(IpAddr) -> bool,
) -> Decision {
    let Some(virtual_outbound) = &snapshot.virtual_outbound else {
        return Decision::Refuse {
            listener: rustmesh_xds::names::VIRTUAL_OUTBOUND.to_string(),
            why: Refusal::NoListener,
        };
    };
    if orig_dst.0.port() == own_port && is_local(orig_dst.0.ip()) {
        return Decision::Refuse {
            listener: virtual_outbound.name.clone(),
            why: Refusal::Loop,
        };
    }
    match snapshot.listener_for(orig_dst.0) {
        Some(listener) if !Arc::ptr_eq(listener, virtual_outbound) => Decision::Serve {
            listener: listener.clone(),
            reporter: Reporter::Source,
            // Counted on the capture listener too, as Envoy counts the accept.
            accepted_by: Some(virtual_outbound.clone()),
        },
        _ => Decision::Serve {
            listener: virtual_outbound.clone(),
            reporter: Reporter::Source,
            accepted_by: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain;
    use crate::listener::testing::{first_line, named_server, shared};
    use crate::listener::{Direction, Shared, serve};
    use crate::socket::{ClientAddr, FixedAddrs, OrigDstAddr};
    use serde_json::json;
    use std::net::SocketAddr;
    use tokio::net::TcpStream;

    fn tcp(cluster: &str) -> serde_json::Value {
        json!([{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {"statPrefix": cluster, "cluster": cluster}}])
    }

    fn static_cluster(name: &str, addr: Option<SocketAddr>) -> serde_json::Value {
        let endpoints: Vec<_> = addr
            .into_iter()
            .map(|a| json!({"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": a.ip(), "portValue": a.port()}}}}]}))
            .collect();
        json!({"name": name, "type": "STATIC", "connectTimeout": "5s",
               "loadAssignment": {"clusterName": name, "endpoints": endpoints}})
    }

    /// The outbound side of a pod: `10.96.0.5_7000` → exact, `0.0.0.0_7000` → wildcard,
    /// everything else → `catch_all` (PassthroughCluster or BlackHoleCluster).
    async fn pod(catch_all: &str) -> (Arc<Shared>, tokio::net::TcpListener, SocketAddr) {
        let exact = named_server("exact").await;
        let wildcard = named_server("wildcard").await;
        let passthrough_target = named_server("passthrough").await;
        let doc = json!({
            "versionInfo": "test",
            "listeners": [
                {"name": "virtualOutbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                 "useOriginalDst": true, "trafficDirection": "OUTBOUND",
                 "filterChains": [
                    {"filterChainMatch": {"destinationPort": 15001}, "filters": tcp("BlackHoleCluster")},
                    {"filters": tcp(catch_all)}]},
                {"name": "10.96.0.5_7000", "address": {"socketAddress": {"address": "10.96.0.5", "portValue": 7000}},
                 "bindToPort": false, "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("exact")}]},
                {"name": "0.0.0.0_7000", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 7000}},
                 "bindToPort": false, "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("wildcard")}]},
            ],
            "clusters": [
                static_cluster("exact", Some(exact)),
                static_cluster("wildcard", Some(wildcard)),
                static_cluster("BlackHoleCluster", None),
                {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"},
            ],
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (shared(doc), listener, passthrough_target)
    }

    /// Connects to the test listener and serves the accepted side as if its original
    /// destination were `orig_dst`; returns the client side.
    async fn connect_as(
        shared: &Arc<Shared>,
        listener: &tokio::net::TcpListener,
        orig_dst: SocketAddr,
    ) -> TcpStream {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let fake = FixedAddrs {
            orig_dst: OrigDstAddr(orig_dst),
            client: ClientAddr(peer),
        };
        let shared = shared.clone();
        let (_signal, watch) = drain::channel();
        tokio::spawn(async move {
            serve(Direction::Outbound, &shared, 15001, accepted, &fake, watch).await
        });
        client
    }

    #[tokio::test]
    async fn dispatch_by_original_destination() {
        let (shared, listener, passthrough) = pod("PassthroughCluster").await;
        for (to, expected) in [
            ("10.96.0.5:7000".parse().unwrap(), Some("exact")),
            ("10.96.0.6:7000".parse().unwrap(), Some("wildcard")),
            ("[fd00::5]:7000".parse().unwrap(), Some("wildcard")),
            (passthrough, Some("passthrough")),
            ("10.96.0.5:15001".parse().unwrap(), None),
        ] {
            let mut c = connect_as(&shared, &listener, to).await;
            assert_eq!(first_line(&mut c).await.as_deref(), expected, "to {to}");
        }
        let snapshot = shared.store.load().unwrap();
        let vo = snapshot.virtual_outbound.as_ref().unwrap();
        // 10.96.0.5:15001 is not local: the blackhole chain closed it, not the loop guard.
        assert_eq!(
            shared
                .metrics
                .refused_count("virtualOutbound", Refusal::Loop),
            0
        );
        assert_eq!(
            shared
                .metrics
                .refused_count("virtualOutbound", Refusal::NoHealthyUpstream),
            1
        );
        assert_eq!(vo.stats.cx_total.get(), 5);
    }

    #[tokio::test]
    async fn loop_to_itself_is_closed() {
        let (shared, listener, _) = pod("PassthroughCluster").await;
        let mut c = connect_as(&shared, &listener, "127.0.0.1:15001".parse().unwrap()).await;
        assert_eq!(first_line(&mut c).await, None);
        assert_eq!(
            shared
                .metrics
                .refused_count("virtualOutbound", Refusal::Loop),
            1
        );
    }

    #[tokio::test]
    async fn registry_only_refuses_unknown_destinations() {
        let (shared, listener, passthrough) = pod("BlackHoleCluster").await;
        let mut c = connect_as(&shared, &listener, passthrough).await;
        assert_eq!(first_line(&mut c).await, None);
        let mut c = connect_as(&shared, &listener, "10.96.0.5:7000".parse().unwrap()).await;
        assert_eq!(first_line(&mut c).await.as_deref(), Some("exact"));
    }

    #[tokio::test]
    async fn http_chains_go_to_the_http_connection_manager() {
        let backend = named_server("never").await;
        let doc = json!({
            "listeners": [
                {"name": "virtualOutbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                 "useOriginalDst": true, "trafficDirection": "OUTBOUND", "filterChains": [{"filters": tcp("PassthroughCluster")}]},
                {"name": "0.0.0.0_9080", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 9080}},
                 "bindToPort": false, "listenerFiltersTimeout": "5s",
                 "filterChains": [{"filterChainMatch": {"applicationProtocols": ["http/1.1"]},
                    "filters": [{"name": "envoy.filters.network.http_connection_manager",
                        "typedConfig": {"statPrefix": "x", "routeConfig": {"name": "r", "virtualHosts": []}}}]}],
                 "defaultFilterChain": {"filters": tcp("b")}},
            ],
            "clusters": [
                {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"},
                static_cluster("b", Some(backend)),
            ],
        });
        let shared = shared(doc);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = connect_as(&shared, &listener, "10.0.0.1:9080".parse().unwrap()).await;
        use tokio::io::AsyncWriteExt;
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        // The route table has no virtual host: the HTTP connection manager answers 404 (NR).
        assert_eq!(
            first_line(&mut c).await.as_deref(),
            Some("HTTP/1.1 404 Not Found")
        );
        assert_eq!(
            shared
                .metrics
                .refused_count("0.0.0.0_9080", Refusal::NoFilterChain),
            0
        );
        // A non-HTTP client on the same port goes to the default chain.
        let mut c = connect_as(&shared, &listener, "10.0.0.1:9080".parse().unwrap()).await;
        c.write_all(b"\x00binary\n").await.unwrap();
        assert_eq!(first_line(&mut c).await.as_deref(), Some("never"));
    }

    /// The decision alone, without sockets: which listener, which reporter, what is counted.
    #[tokio::test]
    async fn decisions_are_pure_functions_of_config_and_addresses() {
        let (shared, _listener, _) = pod("PassthroughCluster").await;
        let snapshot = shared.store.load().unwrap();
        let client = ClientAddr("10.244.0.9:40000".parse().unwrap());
        let to = |s: &str| OrigDstAddr(s.parse().unwrap());
        let served = |d: Decision| match d {
            Decision::Serve {
                listener,
                reporter,
                accepted_by,
            } => {
                assert_eq!(reporter, Reporter::Source);
                (listener.name.clone(), accepted_by.map(|l| l.name.clone()))
            }
            Decision::Refuse { listener, why } => panic!("refused by {listener}: {why:?}"),
        };
        let never_local = |_| false;
        let capture = Some("virtualOutbound".to_string());
        for (dst, listener, accepted_by) in [
            ("10.96.0.5:7000", "10.96.0.5_7000", capture.clone()),
            ("10.96.0.6:7000", "0.0.0.0_7000", capture.clone()),
            ("[fd00::5]:7000", "0.0.0.0_7000", capture.clone()),
            // A destination without a listener stays on the capture listener's own chains.
            ("10.1.2.3:8080", "virtualOutbound", None),
            // 15001 on a remote address is not a loop: the capture listener's chains decide.
            ("10.96.0.5:15001", "virtualOutbound", None),
        ] {
            assert_eq!(
                served(decide(&snapshot, 15001, to(dst), client, never_local)),
                (listener.to_string(), accepted_by),
                "to {dst}"
            );
        }
        // The listener's own port on a local address is a loop; the locality question is only
        // asked for the own port.
        match decide(&snapshot, 15001, to("10.244.0.9:15001"), client, |ip| {
            ip == "10.244.0.9".parse::<IpAddr>().unwrap()
        }) {
            Decision::Refuse { listener, why } => {
                assert_eq!((listener.as_str(), why), ("virtualOutbound", Refusal::Loop))
            }
            other => panic!("not refused: {other:?}"),
        }
        let d = decide(&snapshot, 15001, to("10.96.0.5:7000"), client, |_| {
            panic!("is_local asked for another port")
        });
        assert!(matches!(d, Decision::Serve { .. }));
    }

    #[test]
    fn without_virtual_outbound_everything_is_refused() {
        let shared = shared(json!({"listeners": [], "clusters": []}));
        let snapshot = shared.store.load().unwrap();
        match decide(
            &snapshot,
            15001,
            OrigDstAddr("10.96.0.5:7000".parse().unwrap()),
            ClientAddr("10.244.0.9:40000".parse().unwrap()),
            |_| false,
        ) {
            Decision::Refuse { listener, why } => {
                assert_eq!(
                    (listener.as_str(), why),
                    ("virtualOutbound", Refusal::NoListener)
                )
            }
            other => panic!("not refused: {other:?}"),
        }
    }
}
