//! AuthorizationPolicy between real sidecars (`proxy run` as uid 1337 behind the real capture
//! rules, in network-namespace pods) whose identities come from the real mesh CA
//! (`rustmesh_operator::ca`) in a pod of its own, as `mtls_netns.rs` sets them up. The one
//! stand-in is the CA's token check (a fixed table instead of TokenReview).
//!
//! Proved here, for HTTP and for TCP: an ALLOW policy on the server lets in the client whose
//! principal it names and the client whose namespace it names; a client of another namespace
//! gets `403 RBAC: access denied` over HTTP and a closed connection over TCP, and so does a pod
//! without a sidecar (plain text: no principal); the app never sees what was denied.
//!
//! Skips (printing why) without root, `ip`, iptables or `setpriv`; fails instead with
//! `RUSTMESH_REQUIRE_NETNS=1`. Run under `flock /tmp/rustmesh-netns.lock`.

mod ca_common;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ca_common::{Tokens, id};
use rustmesh_operator::ca::authority::Authority;
use rustmesh_xds::tls::{
    ALPN_ISTIO_ALL, ALPN_ISTIO_HTTP, ALPN_ISTIO_TCP, auto_mtls_matches, istio_downstream, istio_sni,
};
use serde_json::{Value, json};
use support::docs::{address, builtin_clusters, tcp_proxy, virtual_outbound};
use support::sidecar::{Scratch, Sidecar, eventually};
use support::{ISTIO_INIT_ARGS, Net, Pod};

const TCP_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;
const CA_NAME: &str = "istiod.istio-system.svc";
const CA_PORT: u16 = 15012;
const HOST: &str = "ratings.default.svc.cluster.local";

/// The clients: (namespace, service account); the CA vouches for `<ns>-<sa>` tokens.
const CLIENTS: [(&str, &str); 3] = [
    ("default", "reviews"),
    ("trusted", "sleep"),
    ("other", "sleep"),
];

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
                let mut tokens = vec![(
                    "default-ratings-token".to_string(),
                    id("default", "ratings"),
                )];
                for (ns, sa) in CLIENTS {
                    tokens.push((format!("{ns}-{sa}-token"), id(ns, sa)));
                }
                let tokens = Tokens(tokens.into_iter().collect());
                let (_, stop) =
                    ca_common::start_ca(authority, tokens, &format!("0.0.0.0:{CA_PORT}")).await;
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                started_tx.send(done_tx).unwrap();
                let _ = done_rx.await;
                let _ = stop.send(());
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

/// A minimal HTTP/1.1 app in `pod` on `port`: answers `200 ratings <path>` and closes; counts
/// the requests it saw. Stopped on drop.
struct HttpApp {
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpApp {
    fn start(pod: &Pod, port: u16) -> HttpApp {
        let addr: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
        let socket = pod.ns.enter(move || TcpListener::bind(addr)).unwrap();
        socket.set_nonblocking(true).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (hits, stop) = (hits.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    let stream = match socket.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(e) => panic!("accept: {e}"),
                    };
                    let hits = hits.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut reader = BufReader::new(stream.try_clone().unwrap());
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split(' ').nth(1).unwrap_or("").to_string();
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                                break;
                            }
                        }
                        hits.fetch_add(1, Ordering::SeqCst);
                        let body = format!("ratings {path}");
                        let mut w = stream;
                        let _ = write!(
                            w,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    });
                }
            }
        });
        HttpApp {
            hits,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dns(ca: &Pod) -> Value {
    json!([{"name": CA_NAME, "addresses": [ca.ip.to_string()]}])
}

fn hcm(prefix: &str, cluster: &str) -> Value {
    json!([{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "statPrefix": prefix,
        "routeConfig": {"name": cluster, "virtualHosts": [{"name": cluster, "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]}}}])
}

fn tls(alpn: &[&str]) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typedConfig": istio_downstream(alpn)})
}

/// The server's configuration: Istio's PERMISSIVE inbound chains for a TCP and an HTTP port,
/// and the AuthorizationPolicy.
fn server_doc(ca: &Pod) -> Value {
    let (t, h) = (TCP_PORT, HTTP_PORT);
    let (ti, hi) = (format!("inbound|{t}||"), format!("inbound|{h}||"));
    let mut clusters = builtin_clusters();
    for (name, port) in [(&ti, t), (&hi, h)] {
        clusters.push(json!({"name": name, "type": "STATIC", "connectTimeout": "10s", "lbPolicy": "ROUND_ROBIN",
            "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": address("127.0.0.1", port)}}]}]}}));
    }
    json!({
        "versionInfo": "server-v1",
        "listeners": [
            virtual_outbound("PassthroughCluster"),
            {"name": "virtualInbound", "address": address("0.0.0.0", 15006), "trafficDirection": "INBOUND",
             "useOriginalDst": true, "filterChains": [
                {"name": "virtualInbound-blackhole", "filterChainMatch": {"destinationPort": 15006}, "filters": tcp_proxy("BlackHoleCluster")},
                {"name": format!("0.0.0.0_{t}"), "filterChainMatch": {"destinationPort": t, "transportProtocol": "tls",
                    "applicationProtocols": ALPN_ISTIO_ALL}, "transportSocket": tls(&ALPN_ISTIO_TCP), "filters": tcp_proxy(&ti)},
                {"name": format!("0.0.0.0_{t}"), "filterChainMatch": {"destinationPort": t}, "filters": tcp_proxy(&ti)},
                {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "tls",
                    "applicationProtocols": ALPN_ISTIO_HTTP}, "transportSocket": tls(&["h2", "http/1.1"]),
                 "filters": hcm(&format!("inbound_0.0.0.0_{h}"), &hi)},
                {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "raw_buffer",
                    "applicationProtocols": ["http/1.1", "h2c"]}, "filters": hcm(&format!("inbound_0.0.0.0_{h}"), &hi)},
                {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h}, "filters": tcp_proxy(&hi)},
                {"name": "virtualInbound", "filterChainMatch": {"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
                 "filters": tcp_proxy("InboundPassthroughClusterIpv4")},
            ]},
        ],
        "clusters": clusters,
        "dns": dns(ca),
        // One ALLOW policy: the `reviews` service account by principal, anything of the
        // `trusted` namespace by namespace.
        "authorization": {"policies": [{"name": "default/ratings", "action": "ALLOW", "rules": [
            {"from": [{"principals": [id("default", "reviews").to_string().trim_start_matches("spiffe://")]}]},
            {"from": [{"namespaces": ["trusted"]}]},
        ]}]},
    })
}

/// A client's configuration: `<server>_7000` (TCP) and `<server>_8080` (HTTP) to the server's
/// endpoints, sidecar pods (`tlsMode: istio`), auto mTLS expecting the server's identity.
fn client_doc(ca: &Pod, server: &Pod) -> Value {
    let sans = [id("default", "ratings").to_string()];
    let cluster = |port: u16| format!("outbound|{port}||{HOST}");
    let mut clusters = builtin_clusters();
    let mut endpoints = Vec::new();
    for port in [TCP_PORT, HTTP_PORT] {
        clusters.push(json!({"name": cluster(port), "type": "EDS", "connectTimeout": "5s", "lbPolicy": "ROUND_ROBIN",
            "edsClusterConfig": {"serviceName": cluster(port)},
            "transportSocketMatches": auto_mtls_matches(&istio_sni(port, "", HOST), &ALPN_ISTIO_TCP, &sans)}));
        endpoints.push(json!({"clusterName": cluster(port), "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": address(&server.ip.to_string(), port)},
             "metadata": {"filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}}]}]}));
    }
    let ip = server.ip.to_string();
    json!({
        "versionInfo": "client-v1",
        "listeners": [
            virtual_outbound("PassthroughCluster"),
            {"name": format!("{ip}_{TCP_PORT}"), "address": address(&ip, TCP_PORT),
             "trafficDirection": "OUTBOUND", "bindToPort": false, "filterChains": [{"filters": tcp_proxy(&cluster(TCP_PORT))}]},
            {"name": format!("{ip}_{HTTP_PORT}"), "address": address(&ip, HTTP_PORT),
             "trafficDirection": "OUTBOUND", "bindToPort": false, "filterChains": [{"filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
                    "statPrefix": format!("outbound_{HTTP_PORT}"), "rds": {"routeConfigName": HTTP_PORT.to_string()}}}]}]},
        ],
        "routes": [{"name": HTTP_PORT.to_string(), "virtualHosts": [{"name": "ratings", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster(HTTP_PORT)}}]}]}],
        "clusters": clusters,
        "endpoints": endpoints,
        "dns": dns(ca),
    })
}

/// Captures `pod`'s traffic and starts its sidecar as `ns/account` with certificates from the
/// CA; waits until it holds one.
fn sidecar(
    pod: &Pod,
    scratch: &Scratch,
    doc: &Value,
    ns: &str,
    account: &str,
    root: &str,
) -> Sidecar {
    let name = format!("{ns}-{account}");
    let config = scratch.write(&format!("{name}.json"), &doc.to_string());
    let token = scratch.write(&format!("{name}-token"), &format!("{name}-token"));
    let root = scratch.write("root-cert.pem", root);
    pod.capture(ISTIO_INIT_ARGS);
    let (token, root) = (token.display().to_string(), root.display().to_string());
    let s = pod.start_sidecar_with_env(
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
        ],
        &[("POD_NAMESPACE", ns)],
    );
    let who = id(ns, account).to_string();
    eventually(
        pod,
        &s,
        "/certs",
        "holds its workload certificate",
        |status, body| status == 200 && body.contains(&who),
    );
    eventually(pod, &s, "/ready", "is ready", |status, _| status == 200);
    s
}

#[test]
fn allow_by_principal_and_namespace_between_real_sidecars() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (ca, server) = (net.pod(), net.pod());
    let clients: Vec<Pod> = CLIENTS.iter().map(|_| net.pod()).collect();
    let plain = net.pod();
    let authority = ca_common::authority();
    let _ca = CaPod::start(&ca, authority.clone());
    let tcp_app = server.serve(&format!("0.0.0.0:{TCP_PORT}"), "ratings");
    let http_app = HttpApp::start(&server, HTTP_PORT);
    let scratch = Scratch::new();
    let root = authority.root_bundle().to_string();
    let server_proxy = sidecar(
        &server,
        &scratch,
        &server_doc(&ca),
        "default",
        "ratings",
        &root,
    );
    let mut proxies = Vec::new();
    for (pod, (ns, sa)) in clients.iter().zip(CLIENTS) {
        proxies.push(sidecar(
            pod,
            &scratch,
            &client_doc(&ca, &server),
            ns,
            sa,
            &root,
        ));
    }
    let tcp_at = SocketAddr::from((server.ip, TCP_PORT));
    let http_at = SocketAddr::from((server.ip, HTTP_PORT));
    let logs = |proxies: &[Sidecar]| {
        let clients: Vec<String> = proxies.iter().map(Sidecar::log).collect();
        format!(
            "server:\n{}\nclients:\n{}",
            server_proxy.log(),
            clients.join("\n---\n")
        )
    };
    let mut seen = Vec::new();
    for (i, (pod, (ns, sa))) in clients.iter().zip(CLIENTS).enumerate() {
        let allowed = ns != "other";
        let line = format!("hello from {ns}/{sa}");
        let tcp = pod.talk(tcp_at, &line);
        let http = pod.http_get(http_at, &format!("/ratings/{i}"));
        if allowed {
            assert_eq!(
                tcp.as_deref().ok(),
                Some(format!("ratings {line}").as_str()),
                "{}",
                logs(&proxies)
            );
            let (status, body) = http.unwrap();
            assert_eq!(
                (status, body),
                (200, format!("ratings /ratings/{i}")),
                "{}",
                logs(&proxies)
            );
            seen.push(line);
        } else {
            assert!(
                tcp.is_err(),
                "{ns}/{sa}'s TCP must be closed: {tcp:?}\n{}",
                logs(&proxies)
            );
            let (status, body) = http.unwrap();
            assert_eq!(
                (status, body.as_str()),
                (403, "RBAC: access denied"),
                "{}",
                logs(&proxies)
            );
        }
    }
    // A pod without a sidecar: plain text, no principal, no namespace.
    assert!(plain.talk(tcp_at, "plain hello").is_err());
    let (status, body) = plain.http_get(http_at, "/ratings/plain").unwrap();
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // The app saw exactly what was allowed.
    let mut lines: Vec<String> = tcp_app.seen().into_iter().map(|s| s.first_line).collect();
    lines.sort();
    seen.sort();
    assert_eq!(lines, seen);
    assert_eq!(http_app.hits.load(Ordering::SeqCst), 2);
    let (_, stats) = server.admin_get("/stats/prometheus").unwrap();
    let other = id("other", "sleep").to_string();
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"403\"")
            && l.contains(&format!("source_principal=\"{other}\""))
            && l.contains("response_flags=\"-\"")),
        "{stats}"
    );
    assert!(
        stats.lines().any(|l| l == "envoy_tcp_rbac_denied_total 2"),
        "the other namespace's and the plain pod's connections:\n{stats}"
    );
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("envoy_http_rbac_denied_total{")
                && l.contains("inbound_0.0.0.0_8080")
                && l.ends_with(" 2")),
        "{stats}"
    );
}
