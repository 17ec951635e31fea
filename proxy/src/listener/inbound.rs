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

use rustmesh_xds::well_known::{INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6};
use tokio::net::TcpStream;

use super::{Shared, addresses, dispatch, is_local};
use crate::drain;
use crate::metrics::Reporter;
use crate::socket::OrigDst;
use crate::stats::Refusal;

/// Handles one connection accepted on the inbound capture port `own_port`.
pub async fn serve(
    shared: &Shared,
    own_port: u16,
    stream: TcpStream,
    addrs: &impl OrigDst,
    drain: drain::Watch,
) {
    let (orig_dst, client) = match addresses(addrs) {
        Ok(a) => a,
        Err(e) => {
            shared
                .metrics
                .refused("virtualInbound", Refusal::NoOriginalDst);
            tracing::warn!("virtualInbound: no original destination: {e}");
            return;
        }
    };
    let Some(snapshot) = shared.store.load() else {
        return;
    };
    let Some(listener) = snapshot.virtual_inbound.clone() else {
        shared
            .metrics
            .refused("virtualInbound", Refusal::NoListener);
        tracing::warn!(%orig_dst, %client, "the configuration has no virtualInbound listener: connection closed");
        return;
    };
    let looped = orig_dst.0.port() == own_port && is_local(orig_dst.0.ip(), &stream);
    let recaptured =
        [INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6].contains(&client.0.ip());
    if looped || recaptured {
        shared.metrics.refused(&listener.name, Refusal::Loop);
        tracing::debug!(%orig_dst, %client, "inbound loop: connection closed");
        return;
    }
    dispatch(
        shared,
        Reporter::Destination,
        snapshot,
        listener,
        stream,
        orig_dst,
        client,
        drain,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::testing::{first_line, shared};
    use crate::socket::{ClientAddr, FixedAddrs, OrigDstAddr};
    use serde_json::json;
    use std::net::SocketAddr;
    use tokio::io::AsyncWriteExt;

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
                tokio::spawn(async move { serve(&shared, 15006, accepted, &fake, watch).await });
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
}
