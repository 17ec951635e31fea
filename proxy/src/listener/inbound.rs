//! `virtualInbound`: the listener the capture rules send every inbound connection to (default
//! `0.0.0.0:15006`, and `[::]:15006` when the host has IPv6).
//!
//! Its own filter chains, matched on the original destination (the app's port and the pod's
//! address) and the sniffed protocol, decide: `inbound|<port>||` (a STATIC cluster,
//! `127.0.0.1:<port>`: the app sees the connection come from 127.0.0.1), or
//! `InboundPassthroughClusterIpv4/6` (ORIGINAL_DST: the original destination itself, connected
//! from `upstreamBindConfig`'s 127.0.0.6 / ::6, which the capture rules let through; the app
//! sees 127.0.0.6).
//!
//! A connection whose original destination is this listener's own port on a local address
//! (a loop) is closed, and so is one coming from the passthrough source addresses (the
//! sidecar's own passthrough connection captured again would loop forever).

use std::net::IpAddr;

use rustmesh_xds::well_known::{INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6};

use super::decision::Decision;
use crate::metrics::Reporter;
use crate::snapshot::Snapshot;
use crate::socket::{ClientAddr, OrigDstAddr};
use crate::stats::Refusal;

/// Decides what `virtualInbound` (accepting on `own_port`) does with a connection from
/// `client` to `orig_dst`: a pure function of the configuration and the addresses. `is_local`
/// says whether an address belongs to this host; it is asked only when the port is the
/// listener's own.
pub fn decide(
    snapshot: &Snapshot,
    own_port: u16,
    orig_dst: OrigDstAddr,
    client: ClientAddr,
    is_local: impl FnOnce(IpAddr) -> bool,
) -> Decision {
    let Some(listener) = &snapshot.virtual_inbound else {
        return Decision::Refuse {
            listener: rustmesh_xds::names::VIRTUAL_INBOUND.to_string(),
            why: Refusal::NoListener,
        };
    };
    let recaptured =
        [INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6].contains(&client.0.ip());
    if recaptured || (orig_dst.0.port() == own_port && is_local(orig_dst.0.ip())) {
        return Decision::Refuse {
            listener: listener.name.clone(),
            why: Refusal::Loop,
        };
    }
    Decision::Serve {
        listener: listener.clone(),
        reporter: Reporter::Destination,
        accepted_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain;
    use crate::listener::testing::{first_line, shared};
    use crate::listener::{Direction, serve};
    use crate::socket::{ClientAddr, FixedAddrs, OrigDstAddr};
    use serde_json::json;
    use std::net::SocketAddr;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    fn tcp(cluster: &str) -> serde_json::Value {
        json!([{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {"statPrefix": cluster, "cluster": cluster}}])
    }

    /// An app on loopback that says who connected to it.
    async fn app() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, peer)) = l.accept().await {
                let _ = s
                    .write_all(format!("from {}\n", peer.ip()).as_bytes())
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn inbound_port_chain_and_passthrough() {
        let app = app().await;
        let doc = json!({
            "listeners": [{"name": "virtualInbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}},
                "useOriginalDst": true, "trafficDirection": "INBOUND",
                "filterChains": [
                    {"filterChainMatch": {"destinationPort": 15006}, "filters": tcp("BlackHoleCluster")},
                    {"filterChainMatch": {"destinationPort": 9080}, "filters": tcp("inbound|9080||")},
                    {"filterChainMatch": {"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
                     "filters": tcp("InboundPassthroughClusterIpv4")},
                ]}],
            "clusters": [
                {"name": "BlackHoleCluster", "type": "STATIC", "loadAssignment": {"clusterName": "BlackHoleCluster", "endpoints": []}},
                {"name": "inbound|9080||", "type": "STATIC", "loadAssignment": {"clusterName": "inbound|9080||", "endpoints": [
                    {"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": app.port()}}}}]}]}},
                {"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED",
                 "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}}},
            ],
        });
        let shared = shared(doc);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = |orig_dst: SocketAddr, client: Option<SocketAddr>| {
            let shared = shared.clone();
            let listener = &listener;
            async move {
                let c = TcpStream::connect(listener.local_addr().unwrap())
                    .await
                    .unwrap();
                let (accepted, peer) = listener.accept().await.unwrap();
                let fake = FixedAddrs {
                    orig_dst: OrigDstAddr(orig_dst),
                    client: ClientAddr(client.unwrap_or(peer)),
                };
                let (_signal, watch) = drain::channel();
                tokio::spawn(async move {
                    serve(Direction::Inbound, &shared, 15006, accepted, &fake, watch).await
                });
                c
            }
        };
        // Port 9080 → inbound|9080|| → 127.0.0.1:<app>, from 127.0.0.1.
        let mut c = connect("10.244.0.22:9080".parse().unwrap(), None).await;
        assert_eq!(first_line(&mut c).await.as_deref(), Some("from 127.0.0.1"));
        // Any other port → the original destination, from 127.0.0.6.
        let mut c = connect(app, None).await;
        assert_eq!(first_line(&mut c).await.as_deref(), Some("from 127.0.0.6"));
        // Our own passthrough connection captured again: refused.
        let mut c = connect(app, Some("127.0.0.6:40000".parse().unwrap())).await;
        assert_eq!(first_line(&mut c).await, None);
        // The listener's own port: refused.
        let mut c = connect("127.0.0.1:15006".parse().unwrap(), None).await;
        assert_eq!(first_line(&mut c).await, None);
        assert_eq!(
            shared
                .metrics
                .refused_count("virtualInbound", Refusal::Loop),
            2
        );
    }

    #[test]
    fn decisions_are_pure_functions_of_config_and_addresses() {
        let doc = json!({
            "listeners": [{"name": "virtualInbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}},
                "useOriginalDst": true, "trafficDirection": "INBOUND",
                "filterChains": [{"filters": tcp("InboundPassthroughClusterIpv4")}]}],
            "clusters": [{"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"}],
        });
        let shared = shared(doc);
        let snapshot = shared.store.load().unwrap();
        let pod_ip: IpAddr = "10.244.0.22".parse().unwrap();
        let local = |ip: IpAddr| ip == pod_ip;
        let to = |s: &str| OrigDstAddr(s.parse().unwrap());
        let from = |s: &str| ClientAddr(s.parse().unwrap());
        let decide = |dst: &str, client: &str| match decide(
            &snapshot,
            15006,
            to(dst),
            from(client),
            local,
        ) {
            Decision::Serve {
                listener,
                reporter,
                accepted_by,
            } => {
                assert_eq!(reporter, Reporter::Destination);
                assert!(accepted_by.is_none());
                Ok(listener.name.clone())
            }
            Decision::Refuse { listener, why } => Err((listener, why)),
        };
        let loop_refusal = Err(("virtualInbound".to_string(), Refusal::Loop));
        assert_eq!(
            decide("10.244.0.22:9080", "10.244.0.9:40000"),
            Ok("virtualInbound".into())
        );
        // The listener's own port on the pod's address: a loop; on another host's: served.
        assert_eq!(
            decide("10.244.0.22:15006", "10.244.0.9:40000"),
            loop_refusal
        );
        assert_eq!(
            decide("10.244.0.23:15006", "10.244.0.9:40000"),
            Ok("virtualInbound".into())
        );
        // The sidecar's own passthrough connections (from 127.0.0.6 or ::6) captured again.
        assert_eq!(decide("10.244.0.22:9080", "127.0.0.6:40000"), loop_refusal);
        assert_eq!(decide("[fd00::22]:9080", "[::6]:40000"), loop_refusal);

        let empty = shared_empty();
        match super::decide(
            &empty,
            15006,
            to("10.244.0.22:9080"),
            from("10.244.0.9:1"),
            local,
        ) {
            Decision::Refuse { listener, why } => {
                assert_eq!(
                    (listener.as_str(), why),
                    ("virtualInbound", Refusal::NoListener)
                )
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    fn shared_empty() -> std::sync::Arc<crate::snapshot::Snapshot> {
        shared(json!({"listeners": [], "clusters": []}))
            .store
            .load()
            .unwrap()
    }
}
