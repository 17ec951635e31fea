//! `rustmeshctl proxy-config <pod>` all the way through a port-forward, without a cluster: a
//! fake API server answers `GET pods/<pod>` and upgrades `pods/<pod>/portforward` to a WebSocket
//! speaking `v4.channel.k8s.io` (what the API server relays from the kubelet): per port a data
//! channel (0) and an error channel (1), each opened by a frame carrying the port number
//! (little-endian), then `[channel, bytes...]` frames. Behind it, the kubelet either connects
//! to a stub admin API (the contract's) or reports `connection refused`, as a real kubelet does
//! while the proxy is starting.

mod support;

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use support::{ctl, failure, golden, kubeconfig, productpage_proxy, squash, stdout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const ADMIN_PORT: u16 = 15000;

/// What the kubelet finds behind port 15000 of the pod.
#[derive(Clone, Copy)]
enum Kubelet {
    /// The proxy's admin API, here.
    Admin(SocketAddr),
    /// Nothing listening yet.
    Refused,
}

const REFUSED: &str = "error forwarding port 15000 to pod 4f1c, uid : failed to execute \
    portforward in network namespace \"/var/run/netns/cni-4f1c\": failed to connect to \
    localhost:15000 inside namespace \"4f1c\", IPv4: dial tcp4 127.0.0.1:15000: connect: \
    connection refused IPv6 dial tcp6: address localhost: no suitable address";

async fn kubelet(mut ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, behind: Kubelet) {
    let [lo, hi] = ADMIN_PORT.to_le_bytes();
    for channel in [0u8, 1] {
        ws.send(Message::binary(vec![channel, lo, hi]))
            .await
            .unwrap();
    }
    let addr = match behind {
        Kubelet::Refused => {
            let mut frame = vec![1u8];
            frame.extend_from_slice(REFUSED.as_bytes());
            ws.send(Message::binary(frame)).await.unwrap();
            // Like a kubelet, keep the stream open: the client has to act on the error channel.
            while ws.next().await.is_some_and(|m| m.is_ok()) {}
            return;
        }
        Kubelet::Admin(addr) => addr,
    };
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                    tcp.write_all(&b[1..]).await.unwrap();
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            n = tcp.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut frame = vec![0u8];
                    frame.extend_from_slice(&buf[..n]);
                    if ws.send(Message::binary(frame)).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

fn response(status: u16, body: String) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The API server of a cluster with an injected, running `productpage` pod in `default`.
fn api_server(behind: Kubelet) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |mut req: hyper::Request<Incoming>| async move {
                        let path = req.uri().path().to_string();
                        Ok::<_, hyper::Error>(match path.as_str() {
                            "/api/v1/pods" => response(
                                200,
                                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                    "items": [{"metadata": {"name": "productpage", "namespace": "default"},
                                        "spec": {"containers": [{"name": "productpage"}, {"name": "istio-proxy"}]},
                                        "status": {"phase": "Running"}}]})
                                .to_string(),
                            ),
                            // What the operator wrote: the default scope at version `v-written`.
                            "/api/v1/namespaces/default/configmaps/rustmesh-proxy-config" => response(
                                200,
                                json!({"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": "rustmesh-proxy-config", "namespace": "default"},
                                    "data": {"scopes.json": json!({"version": 2, "default": "default.json.gz",
                                        "parts": {"default.json.gz": {"versionInfo": "v-written"}}}).to_string()}})
                                .to_string(),
                            ),
                            "/api/v1/namespaces/default/pods/productpage" => response(
                                200,
                                json!({"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": "productpage", "namespace": "default"},
                                    "spec": {"containers": [{"name": "productpage"}, {"name": "istio-proxy"}]},
                                    "status": {"phase": "Running"}})
                                .to_string(),
                            ),
                            "/api/v1/namespaces/default/pods/productpage/portforward" => {
                                let query = req.uri().query().unwrap_or_default().to_string();
                                assert!(query.split('&').any(|p| p == "ports=15000"), "{query}");
                                let protocols = req.headers()["sec-websocket-protocol"]
                                    .to_str()
                                    .unwrap()
                                    .to_string();
                                assert!(protocols.contains("v4.channel.k8s.io"), "{protocols}");
                                let accept =
                                    derive_accept_key(req.headers()["sec-websocket-key"].as_bytes());
                                let upgrade = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    let io = TokioIo::new(upgrade.await.unwrap());
                                    let ws =
                                        WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                                    kubelet(ws, behind).await;
                                });
                                hyper::Response::builder()
                                    .status(101)
                                    .header("upgrade", "websocket")
                                    .header("connection", "Upgrade")
                                    .header("sec-websocket-accept", accept)
                                    .header("sec-websocket-protocol", "v4.channel.k8s.io")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap()
                            }
                            _ => response(
                                404,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404, "message": "not found"})
                                .to_string(),
                            ),
                        })
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
    });
    url
}

fn pc(api: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&dir, api);
    let mut all = vec!["proxy-config"];
    all.extend_from_slice(args);
    all.extend(["--kubeconfig", &kc, "--timeout", "20s"]);
    ctl(&all)
}

#[test]
fn tables_through_a_port_forward() {
    let proxy = productpage_proxy();
    let api = api_server(Kubelet::Admin(proxy.addr));
    for view in ["listeners", "routes", "clusters"] {
        assert_eq!(
            stdout(&pc(&api, &[view, "productpage"])),
            golden("productpage", view),
            "{view}"
        );
    }
    // `all` asks for both documents over the one forwarded connection.
    let out = stdout(&pc(&api, &["all", "productpage.default"]));
    assert!(
        out.lines().map(squash).any(|l| l
            == "10.244.0.33:9080 HEALTHY FAILED outbound|9080|v2|reviews.default.svc.cluster.local"),
        "{out}"
    );
    let asked = proxy.requests();
    assert_eq!(asked.len(), 5, "{asked:?}");
    assert_eq!(
        asked[3..],
        ["GET /config_dump?include_eds", "GET /clusters?format=json"]
    );
}

#[test]
fn nothing_listening_in_the_pod_is_not_ready() {
    let api = api_server(Kubelet::Refused);
    assert_eq!(
        failure(&pc(&api, &["listeners", "productpage"])),
        "Error: the proxy in pod default/productpage is not ready yet (nothing listens on its \
         admin port 15000 yet); try again in a few seconds"
    );
}

/// A stub admin API serving `/server_info` with `config_version`, and `/logging`.
fn status_proxy(config_version: &'static str) -> support::Server {
    support::serve(move |_, target| {
        if target == "/server_info" {
            support::Reply::json(
                200,
                json!({"version": "0.1.0", "state": "LIVE", "configVersion": config_version})
                    .to_string(),
            )
        } else if target.starts_with("/logging") {
            support::Reply::text(200, "active loggers:\n  http: debug\n")
        } else {
            support::Reply::text(404, "no such admin endpoint\n")
        }
    })
}

fn ps(api: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&dir, api);
    let mut all = vec!["proxy-status"];
    all.extend_from_slice(args);
    all.extend(["--kubeconfig", &kc, "--timeout", "20s"]);
    ctl(&all)
}

#[test]
fn proxy_status_compares_the_served_version_with_the_written_one() {
    let synced = status_proxy("v-written");
    let api = api_server(Kubelet::Admin(synced.addr));
    let lines: Vec<String> = stdout(&ps(&api, &[])).lines().map(squash).collect();
    assert_eq!(
        lines,
        [
            "NAME CLUSTER CDS LDS EDS RDS SERVING WRITTEN VERSION",
            "productpage.default Kubernetes SYNCED SYNCED SYNCED SYNCED v-written v-written 0.1.0",
        ]
    );
    assert_eq!(synced.requests(), ["GET /server_info"]);

    let stale = status_proxy("v-old");
    let api = api_server(Kubelet::Admin(stale.addr));
    let lines: Vec<String> = stdout(&ps(&api, &["productpage.default"]))
        .lines()
        .map(squash)
        .collect();
    assert_eq!(
        lines[1],
        "productpage.default Kubernetes STALE STALE STALE STALE v-old v-written 0.1.0"
    );
}

#[test]
fn log_levels_through_a_port_forward() {
    let proxy = status_proxy("v");
    let api = api_server(Kubelet::Admin(proxy.addr));
    let out = stdout(&pc(
        &api,
        &["log", "productpage.default", "--level", "http:debug"],
    ));
    assert_eq!(
        out,
        "productpage.default:\nactive loggers:\n  http: debug\n"
    );
    assert_eq!(proxy.requests(), ["POST /logging?http=debug"]);
}
