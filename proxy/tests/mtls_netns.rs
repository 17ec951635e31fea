//! Mutual TLS between real sidecars (`proxy run` as uid 1337 behind the real capture rules, in
//! network-namespace pods) whose certificates come from the real mesh CA
//! (`rustmesh_operator::ca`, gRPC and TLS) running in a pod of its own, found through the
//! configuration's name table as in a cluster. The one stand-in is the CA's token check (a
//! fixed table instead of TokenReview; `operator/tests/ca_cluster.rs` covers TokenReview).
//!
//! Proved here: a sidecar client reaches a STRICT server over mutual TLS and the server knows
//! its identity; a pod without a sidecar is refused; certificates renewed under steady traffic
//! and a CA that goes away and comes back lose no connection.
//!
//! Skips (printing why) without root, `ip`, iptables or `setpriv`; fails instead with
//! `RUSTMESH_REQUIRE_NETNS=1`.

mod ca_common;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_common::{Tokens, id};
use rustmesh_operator::ca::authority::Authority;
use rustmesh_xds::tls::{
    ALPN_ISTIO_ALL, ALPN_ISTIO_TCP, auto_mtls_matches, istio_downstream, istio_sni,
};
use serde_json::{Value, json};
use support::docs::{address, builtin_clusters, tcp_proxy, virtual_outbound};
use support::sidecar::{Scratch, Sidecar, eventually};
use support::{ISTIO_INIT_ARGS, Net, Pod};

const PORT: u16 = 7000;
const CA_NAME: &str = "istiod.istio-system.svc";
const CA_PORT: u16 = 15012;
const HOST: &str = "ratings.default.svc.cluster.local";

/// The mesh CA in its pod, on a runtime of its own; stopped on drop.
struct CaPod {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaPod {
    fn start(pod: &Pod, authority: Arc<Authority>) -> CaPod {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = pod.ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tokens = Tokens(
                    [
                        ("ratings-token".to_string(), id("default", "ratings")),
                        ("reviews-token".to_string(), id("default", "reviews")),
                    ]
                    .into(),
                );
                let (_, stop) =
                    ca_common::start_ca(authority, tokens, &format!("0.0.0.0:{CA_PORT}")).await;
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                started_tx.send(done_tx).unwrap();
                let _ = done_rx.await;
                let _ = stop.send(());
                // Let the server close its listener before the runtime goes.
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        });
        let stop = started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the CA starts");
        CaPod {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for CaPod {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dns(ca: &Pod) -> Value {
    json!([{"name": CA_NAME, "addresses": [ca.ip.to_string()]}])
}

/// The server's configuration: `virtualInbound` with Istio's mTLS chain and plain chain for
/// the app port, STRICT.
fn server_doc(ca: &Pod) -> Value {
    let inbound = format!("inbound|{PORT}||");
    let mut clusters = builtin_clusters();
    clusters.push(json!({"name": inbound, "type": "STATIC", "connectTimeout": "10s", "lbPolicy": "ROUND_ROBIN",
        "loadAssignment": {"clusterName": inbound, "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": address("127.0.0.1", PORT)}}]}]}}));
    json!({
        "versionInfo": "server-v1",
        "listeners": [
            virtual_outbound("PassthroughCluster"),
            {"name": "virtualInbound", "address": address("0.0.0.0", 15006), "trafficDirection": "INBOUND",
             "useOriginalDst": true, "filterChains": [
                {"name": "virtualInbound-blackhole", "filterChainMatch": {"destinationPort": 15006}, "filters": tcp_proxy("BlackHoleCluster")},
                {"name": format!("0.0.0.0_{PORT}"), "filterChainMatch": {"destinationPort": PORT, "transportProtocol": "tls",
                    "applicationProtocols": ALPN_ISTIO_ALL},
                 "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": istio_downstream(&ALPN_ISTIO_TCP)},
                 "filters": tcp_proxy(&inbound)},
                {"name": format!("0.0.0.0_{PORT}"), "filterChainMatch": {"destinationPort": PORT}, "filters": tcp_proxy(&inbound)},
                {"name": "virtualInbound", "filterChainMatch": {"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
                 "filters": tcp_proxy("InboundPassthroughClusterIpv4")},
            ]},
        ],
        "clusters": clusters,
        "dns": dns(ca),
        "peerAuthentication": {"namespace": {"name": "default/default", "mode": "STRICT"}},
    })
}

/// The client's configuration: `<server>_7000` to the server's endpoint, a sidecar pod
/// (`tlsMode: istio`), with auto mTLS expecting the server's identity.
fn client_doc(ca: &Pod, server: &Pod) -> Value {
    let cluster = format!("outbound|{PORT}||{HOST}");
    let mut clusters = builtin_clusters();
    clusters.push(
        json!({"name": cluster, "type": "EDS", "connectTimeout": "5s", "lbPolicy": "ROUND_ROBIN",
        "edsClusterConfig": {"serviceName": cluster},
        "transportSocketMatches": auto_mtls_matches(&istio_sni(PORT, "", HOST), &ALPN_ISTIO_TCP,
            &[id("default", "ratings").to_string()])}),
    );
    json!({
        "versionInfo": "client-v1",
        "listeners": [
            virtual_outbound("PassthroughCluster"),
            {"name": format!("{}_{PORT}", server.ip), "address": address(&server.ip.to_string(), PORT),
             "trafficDirection": "OUTBOUND", "bindToPort": false, "filterChains": [{"filters": tcp_proxy(&cluster)}]},
        ],
        "clusters": clusters,
        "endpoints": [{"clusterName": cluster, "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": address(&server.ip.to_string(), PORT)},
             "metadata": {"filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}}]}]}],
        "dns": dns(ca),
    })
}

/// Captures `pod`'s traffic and starts its sidecar as `account`, asking the CA for certificates
/// that live `ttl`; waits until it holds one.
fn sidecar(
    pod: &Pod,
    scratch: &Scratch,
    doc: &Value,
    account: &str,
    root: &str,
    ttl: &str,
) -> Sidecar {
    let config = scratch.write(&format!("{account}.json"), &doc.to_string());
    let token = scratch.write(&format!("{account}-token"), &format!("{account}-token"));
    let root = scratch.write("root-cert.pem", root);
    pod.capture(ISTIO_INIT_ARGS);
    let (token, root) = (token.display().to_string(), root.display().to_string());
    let s = pod.start_sidecar(
        scratch,
        &config,
        &[
            "--ca-addr",
            &format!("{CA_NAME}:{CA_PORT}"),
            "--ca-token",
            &token,
            "--ca-root-cert",
            &root,
            "--service-account",
            account,
            "--secret-ttl",
            ttl,
        ],
    );
    let who = id("default", account).to_string();
    eventually(
        pod,
        &s,
        "/certs",
        "holds its workload certificate",
        |status, body| status == 200 && body.contains(&who),
    );
    s
}

fn serial(pod: &Pod) -> String {
    let (_, body) = pod.admin_get("/certs").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["certificates"][0]["cert_chain"][0]["serial_number"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn at(pod: &Pod) -> SocketAddr {
    SocketAddr::from((pod.ip, PORT))
}

#[test]
fn strict_mtls_between_real_sidecars_with_renewal_and_a_ca_restart() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (ca, server, client, plain) = (net.pod(), net.pod(), net.pod(), net.pod());
    let authority = ca_common::authority();
    let mut ca_pod = Some(CaPod::start(&ca, authority.clone()));
    let _app = server.serve(&format!("0.0.0.0:{PORT}"), "ratings");
    let scratch = Scratch::new();
    let root = authority.root_bundle().to_string();
    // 8 s certificates: renewed every ~6.4 s (80 %) while the test runs.
    let server_proxy = sidecar(&server, &scratch, &server_doc(&ca), "ratings", &root, "8s");
    let client_proxy = sidecar(
        &client,
        &scratch,
        &client_doc(&ca, &server),
        "reviews",
        &root,
        "8s",
    );

    // The client app's connection goes out through its sidecar as mutual TLS.
    assert_eq!(client.talk(at(&server), "hello").unwrap(), "ratings hello");
    let (_, stats) = server.admin_get("/stats/prometheus").unwrap();
    let reviews = id("default", "reviews").to_string();
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains(&format!("source_principal=\"{reviews}\""))
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "the server knows who called:\n{stats}"
    );
    // A pod without a sidecar is refused under STRICT.
    assert!(
        plain.talk(at(&server), "let me in").is_err(),
        "a plain-text client must be refused; server log:\n{}",
        server_proxy.log()
    );

    // Steady traffic (a new connection, so a new handshake, each time) across renewals and a
    // CA outage: nothing fails.
    let first = (serial(&server), serial(&client));
    let start = Instant::now();
    let (mut sent, mut ca_stopped, mut ca_restarted) = (0, false, false);
    while start.elapsed() < Duration::from_secs(16) {
        let t = start.elapsed();
        if !ca_stopped && t > Duration::from_secs(1) {
            drop(ca_pod.take());
            ca_stopped = true;
        }
        if !ca_restarted && t > Duration::from_secs(4) {
            ca_pod = Some(CaPod::start(&ca, authority.clone()));
            ca_restarted = true;
        }
        let line = format!("request {sent}");
        match client.talk(at(&server), &line) {
            Ok(answer) => assert_eq!(answer, format!("ratings {line}")),
            Err(e) => panic!(
                "{line} failed after {t:?}: {e}\nclient log:\n{}\nserver log:\n{}",
                client_proxy.log(),
                server_proxy.log()
            ),
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sent > 50, "steady traffic: {sent} connections");
    let now = (serial(&server), serial(&client));
    assert_ne!(now.0, first.0, "the server's certificate was renewed");
    assert_ne!(now.1, first.1, "the client's certificate was renewed");
    drop(ca_pod);
}
