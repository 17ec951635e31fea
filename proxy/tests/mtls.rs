//! Mutual TLS between two sidecars, on loopback: a client sidecar (`reviews`) and a server
//! sidecar (`ratings`), each the real listeners, chains, clusters and pools with certificates
//! issued by the real mesh CA (`rustmesh_operator::ca`) through the sidecar's CA client. The
//! one stand-in is the original destination: each listener is told it (`run_with`), as the
//! capture rules would; `sidecar_netns`-style tests prove the capture itself.
//!
//! What is proved, from Istio's documented behaviour:
//! - auto mTLS: an endpoint with `tlsMode: istio` gets mutual TLS for HTTP/1.1, HTTP/2 and raw
//!   TCP; the server sees the client's SPIFFE id (metrics' `source_principal`,
//!   `connection_security_policy="mutual_tls"`);
//! - PeerAuthentication on the server: PERMISSIVE serves plain text and mTLS, STRICT refuses a
//!   plain-text client, DISABLE serves plain text and does not terminate mTLS, a port-level
//!   override wins;
//! - the client refuses a server with another identity or another root, and without a
//!   certificate of its own never falls back to plain text;
//! - a renewed certificate takes over without a failed request.

mod ca_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ca_common::{authority, id, issue};
use http_body_util::{BodyExt, Empty};
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::drain;
use rustmesh_proxy::http::handler::ConnectionManager;
use rustmesh_proxy::identity::{Store as Certs, WorkloadCert};
use rustmesh_proxy::listener::{Direction, Shared, VirtualListener};
use rustmesh_proxy::metrics::{Metrics as IstioMetrics, WorkloadInfo};
use rustmesh_proxy::snapshot::{Snapshot, Store};
use rustmesh_proxy::socket::{ClientAddr, FixedAddrs, OrigDstAddr};
use rustmesh_proxy::stats::{Metrics, Refusal};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::tls::{
    ALPN_ISTIO_ALL, ALPN_ISTIO_HTTP, ALPN_ISTIO_TCP, auto_mtls_matches, istio_downstream, istio_sni,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HTTP_PORT: u16 = 9080;
const TCP_PORT: u16 = 9000;
const POD_IP: &str = "10.244.0.22";
const HTTP_VIP: &str = "10.96.0.10";
const TCP_VIP: &str = "10.96.0.11";

// ---- the apps ---------------------------------------------------------------------------

/// An HTTP app (HTTP/1.1 and HTTP/2) answering `<version> from ratings`.
async fn http_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        if let Some(resp) = websocket_echo(&mut req) {
                            return Ok(resp);
                        }
                        let body = format!("{:?} from ratings", req.version());
                        let mut resp =
                            hyper::Response::new(http_body_util::Full::new(Bytes::from(body)));
                        // What the app was told about its client (Envoy's XFCC).
                        if let Some(v) = req.headers().get("x-forwarded-client-cert") {
                            resp.headers_mut().insert("seen-xfcc", v.clone());
                        }
                        // The trace context the app got (it would propagate it onwards).
                        for h in [
                            "x-b3-traceid",
                            "x-b3-spanid",
                            "x-b3-parentspanid",
                            "x-b3-sampled",
                            "traceparent",
                            "x-request-id",
                        ] {
                            if let Some(v) = req.headers().get(h) {
                                resp.headers_mut().insert(
                                    format!("seen-{h}")
                                        .parse::<hyper::header::HeaderName>()
                                        .unwrap(),
                                    v.clone(),
                                );
                            }
                        }
                        // The metadata exchange is the sidecars' business: it must never
                        // reach the app.
                        for h in ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"] {
                            if req.headers().contains_key(h) {
                                resp.headers_mut()
                                    .insert("seen-peer-metadata", h.parse().unwrap());
                            }
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

/// Accepts a WebSocket upgrade and echoes each text message as `echo:<text>`; `None` when the
/// request is not an upgrade.
fn websocket_echo(
    req: &mut hyper::Request<hyper::body::Incoming>,
) -> Option<hyper::Response<http_body_util::Full<Bytes>>> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};
    let key = req.headers().get("sec-websocket-key")?.clone();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(Message::Text(t))) = ws.next().await {
            if ws
                .send(Message::Text(format!("echo:{t}").into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    hyper::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(http_body_util::Full::new(Bytes::new()))
        .ok()
}

/// A TCP app that says `tcp-app` then echoes.
async fn tcp_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"tcp-app\n").await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

// ---- configuration documents, in the shapes the operator renders ------------------------

fn address(ip: &str, port: u16) -> Value {
    json!({"socketAddress": {"address": ip, "portValue": port}})
}

fn tcp_proxy(cluster: &str) -> Value {
    json!([{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {"statPrefix": cluster, "cluster": cluster}}])
}

fn inbound_hcm(port: u16) -> Value {
    let cluster = format!("inbound|{port}||");
    json!([{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "statPrefix": format!("inbound_0.0.0.0_{port}"),
        "routeConfig": {"name": cluster, "virtualHosts": [{"name": format!("inbound|http|{port}"), "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]}}}])
}

fn tls(alpn: &[&str]) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typedConfig": istio_downstream(alpn)})
}

/// The server's `virtualInbound`, Istio's PERMISSIVE shape: per port the mTLS chains (with a
/// transport socket), then the plain ones; `peer` is the PeerAuthentication part.
fn server_doc(app_http: SocketAddr, app_tcp: SocketAddr, peer: Value) -> Value {
    let (h, t) = (HTTP_PORT, TCP_PORT);
    let chains = json!([
        {"name": "virtualInbound-blackhole", "filterChainMatch": {"destinationPort": 15006}, "filters": tcp_proxy("BlackHoleCluster")},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "tls", "applicationProtocols": ALPN_ISTIO_HTTP},
         "transportSocket": tls(&["h2", "http/1.1"]), "filters": inbound_hcm(h)},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "tls", "applicationProtocols": ALPN_ISTIO_TCP},
         "transportSocket": tls(&ALPN_ISTIO_TCP), "filters": tcp_proxy(&format!("inbound|{h}||"))},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "raw_buffer", "applicationProtocols": ["http/1.1", "h2c"]},
         "filters": inbound_hcm(h)},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "raw_buffer"}, "filters": tcp_proxy(&format!("inbound|{h}||"))},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "tls"}, "filters": tcp_proxy(&format!("inbound|{h}||"))},
        {"name": format!("0.0.0.0_{t}"), "filterChainMatch": {"destinationPort": t, "transportProtocol": "tls", "applicationProtocols": ALPN_ISTIO_ALL},
         "transportSocket": tls(&ALPN_ISTIO_TCP), "filters": tcp_proxy(&format!("inbound|{t}||"))},
        {"name": format!("0.0.0.0_{t}"), "filterChainMatch": {"destinationPort": t}, "filters": tcp_proxy(&format!("inbound|{t}||"))},
    ]);
    let stat = |port: u16, app: SocketAddr| {
        let name = format!("inbound|{port}||");
        json!({"name": name, "type": "STATIC", "connectTimeout": "10s", "lbPolicy": "ROUND_ROBIN",
            "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": address("127.0.0.1", app.port())}}]}]}})
    };
    let mut doc = json!({
        "listeners": [{"name": "virtualInbound", "address": address("0.0.0.0", 15006),
            "trafficDirection": "INBOUND", "useOriginalDst": true, "filterChains": chains}],
        "clusters": [
            {"name": "BlackHoleCluster", "type": "STATIC", "connectTimeout": "10s",
             "loadAssignment": {"clusterName": "BlackHoleCluster", "endpoints": []}},
            stat(h, app_http), stat(t, app_tcp)],
    });
    if !peer.is_null() {
        doc["peerAuthentication"] = peer;
    }
    doc
}

fn host() -> String {
    "ratings.bookinfo.svc.cluster.local".to_string()
}

/// The client's configuration: `10.96.0.10:9080` (HTTP) and `10.96.0.11:9000` (TCP) to the
/// server's inbound listeners, with auto mTLS expecting `sans`; `tls_mode` marks the endpoints
/// as sidecar pods.
fn client_doc(
    inbound_http: SocketAddr,
    inbound_tcp: SocketAddr,
    sans: &[String],
    tls_mode: bool,
) -> Value {
    let cluster = |port: u16| format!("outbound|{port}||{}", host());
    let def = |port: u16| {
        let matches = auto_mtls_matches(&istio_sni(port, "", &host()), &ALPN_ISTIO_TCP, sans);
        json!({"name": cluster(port), "type": "EDS", "connectTimeout": "5s", "lbPolicy": "ROUND_ROBIN",
            "edsClusterConfig": {"serviceName": cluster(port)}, "transportSocketMatches": matches,
            "metadata": {"services": [{"host": host(), "name": "ratings", "namespace": "bookinfo"}]}})
    };
    let endpoints = |port: u16, at: SocketAddr| {
        let mut e = json!({"endpoint": {"address": address("127.0.0.1", at.port())},
            // The workload behind the endpoint, as the operator writes it (Istio's format).
            "metadata": {"filterMetadata": {"istio": {"workload": "ratings-v1;bookinfo;ratings;v1;Kubernetes"}}}});
        if tls_mode {
            e["metadata"]["filterMetadata"]["envoy.transport_socket_match"] =
                json!({"tlsMode": "istio"});
        }
        json!({"clusterName": cluster(port), "endpoints": [{"lbEndpoints": [e]}]})
    };
    json!({
        "listeners": [
            {"name": "virtualOutbound", "address": address("0.0.0.0", 15001), "trafficDirection": "OUTBOUND",
             "useOriginalDst": true, "filterChains": [{"name": "catch-all", "filters": tcp_proxy("BlackHoleCluster")}]},
            {"name": format!("{HTTP_VIP}_{HTTP_PORT}"), "address": address(HTTP_VIP, HTTP_PORT), "trafficDirection": "OUTBOUND",
             "bindToPort": false, "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typedConfig": {"statPrefix": "outbound_9080", "rds": {"routeConfigName": "9080"}}}]}]},
            {"name": format!("{TCP_VIP}_{TCP_PORT}"), "address": address(TCP_VIP, TCP_PORT), "trafficDirection": "OUTBOUND",
             "bindToPort": false, "filterChains": [{"filters": tcp_proxy(&cluster(TCP_PORT))}]},
        ],
        "routes": [{"name": "9080", "virtualHosts": [{"name": "ratings", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster(HTTP_PORT)}}]}]}],
        "clusters": [
            {"name": "BlackHoleCluster", "type": "STATIC", "connectTimeout": "10s",
             "loadAssignment": {"clusterName": "BlackHoleCluster", "endpoints": []}},
            def(HTTP_PORT), def(TCP_PORT)],
        "endpoints": [endpoints(HTTP_PORT, inbound_http), endpoints(TCP_PORT, inbound_tcp)],
    })
}

// ---- sidecars on loopback ----------------------------------------------------------------

struct Sidecar {
    /// The access-log lines of the connection managers and TCP proxies that have a log.
    log: Arc<std::sync::Mutex<Vec<String>>>,
    shared: Arc<Shared>,
    certs: Arc<Certs>,
    clusters: Arc<ClusterManager>,
    _drain: drain::Signal,
    watch: drain::Watch,
}

impl Sidecar {
    fn new(name: &str, labels: &[(&str, &str)], cert: Option<WorkloadCert>, doc: Value) -> Sidecar {
        let metrics = Metrics::default();
        let istio = Arc::new(IstioMetrics::new());
        let workload = Arc::new(WorkloadInfo {
            name: name.to_string(),
            namespace: "bookinfo".to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            cluster: "Kubernetes".to_string(),
            pod: format!("{name}-6d8f9c7b5-abcde"),
        });
        let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let lines = log.clone();
        let http = Arc::new(
            ConnectionManager::new(istio.clone(), workload.clone()).with_access_log(
                rustmesh_proxy::access_log::Sink::new(move |l| {
                    lines.lock().unwrap().push(l.to_string())
                }),
            ),
        );
        let certs = Arc::new(Certs::default());
        if let Some(c) = cert {
            certs.install(c);
        }
        let clusters = Arc::new(ClusterManager::with_identity(
            metrics.clone(),
            certs.clone(),
        ));
        let (signal, watch) = drain::channel();
        let sidecar = Sidecar {
            shared: Arc::new(Shared {
                store: Arc::new(Store::new()),
                metrics,
                istio,
                workload,
                http,
                identity: certs.clone(),
                original_source: false,
                router: false,
            }),
            certs,
            clusters,
            _drain: signal,
            watch,
            log,
        };
        sidecar.load(doc);
        sidecar
    }

    /// Loads a configuration (what the sidecar's watcher does with a new ConfigMap).
    fn load(&self, doc: Value) {
        let config = ProxyConfig::from_json(&doc.to_string()).expect("a valid configuration");
        let s = &self.shared;
        let snapshot = Snapshot::compile(config, &self.clusters, &s.metrics, &s.http)
            .expect("the configuration compiles");
        self.clusters.commit(&snapshot.clusters);
        s.store.swap(Arc::new(snapshot));
    }

    /// A capture listener on loopback whose connections all had `orig_dst`.
    fn listen(&self, direction: Direction, orig_dst: &str) -> SocketAddr {
        let orig_dst: SocketAddr = orig_dst.parse().unwrap();
        let l = VirtualListener::new(
            direction,
            "127.0.0.1:0".parse().unwrap(),
            self.shared.clone(),
        )
        .unwrap();
        let addr = l.local_addrs()[0];
        tokio::spawn(l.run_with(self.watch.clone(), move |s: &TcpStream| {
            Ok(FixedAddrs {
                orig_dst: OrigDstAddr(orig_dst),
                client: ClientAddr(s.peer_addr()?),
            })
        }));
        addr
    }

    fn prometheus(&self) -> String {
        self.shared.istio.encode()
    }
}

/// The server and client sidecars wired together, and the addresses a test uses.
struct Mesh {
    server: Sidecar,
    client: Sidecar,
    /// The server's inbound listener for the HTTP port (plain-text clients connect here).
    inbound_http: SocketAddr,
    inbound_tcp: SocketAddr,
    /// The client's outbound listeners (the app's connections to the VIPs).
    outbound_http: SocketAddr,
    outbound_tcp: SocketAddr,
    app_http: SocketAddr,
    app_tcp: SocketAddr,
}

async fn mesh(
    server_cert: Option<WorkloadCert>,
    client_cert: Option<WorkloadCert>,
    peer: Value,
) -> Mesh {
    mesh_with(server_cert, client_cert, peer, |_| {}, |_| {}).await
}

/// Adds `tracing` to every HTTP connection manager of `doc` and Istio's span name of the
/// `ratings` service to every route.
fn traced(doc: &mut Value, tracing: &Value) {
    match doc {
        Value::Object(o) => {
            if o.contains_key("statPrefix")
                && (o.contains_key("rds") || o.contains_key("routeConfig"))
            {
                o.insert("tracing".into(), tracing.clone());
            }
            if o.contains_key("match") && o.contains_key("route") {
                o.insert(
                    "decorator".into(),
                    json!({"operation": format!("{}:{HTTP_PORT}/*", host())}),
                );
            }
            o.values_mut().for_each(|v| traced(v, tracing));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| traced(v, tracing)),
        _ => {}
    }
}

/// Adds an access log of `format` to every connection manager and TCP proxy of `doc`.
fn logged(doc: &mut Value, format: &str) {
    match doc {
        Value::Object(o) => {
            if o.contains_key("statPrefix") {
                o.insert(
                    "accessLog".into(),
                    json!([{"path": "/dev/stdout", "format": format}]),
                );
            }
            o.values_mut().for_each(|v| logged(v, format));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| logged(v, format)),
        _ => {}
    }
}

/// The two sidecars, their configurations changed by `server_edit` and `client_edit`.
async fn mesh_with(
    server_cert: Option<WorkloadCert>,
    client_cert: Option<WorkloadCert>,
    peer: Value,
    server_edit: impl FnOnce(&mut Value),
    client_edit: impl FnOnce(&mut Value),
) -> Mesh {
    let (app_http, app_tcp) = (http_app().await, tcp_app().await);
    let mut server_config = server_doc(app_http, app_tcp, peer);
    server_edit(&mut server_config);
    let server = Sidecar::new(
        "ratings-v1",
        &[
            ("app", "ratings"),
            ("version", "v1"),
            ("service.istio.io/canonical-name", "ratings"),
            ("service.istio.io/canonical-revision", "v1"),
        ],
        server_cert,
        server_config,
    );
    let inbound_http = server.listen(Direction::Inbound, &format!("{POD_IP}:{HTTP_PORT}"));
    let inbound_tcp = server.listen(Direction::Inbound, &format!("{POD_IP}:{TCP_PORT}"));
    let sans = vec![id("bookinfo", "ratings").to_string()];
    let mut client_config = client_doc(inbound_http, inbound_tcp, &sans, true);
    client_edit(&mut client_config);
    let client = Sidecar::new(
        "reviews-v1",
        &[
            ("app", "reviews"),
            ("version", "v2"),
            ("service.istio.io/canonical-name", "reviews"),
            ("service.istio.io/canonical-revision", "v2"),
        ],
        client_cert,
        client_config,
    );
    let outbound_http = client.listen(Direction::Outbound, &format!("{HTTP_VIP}:{HTTP_PORT}"));
    let outbound_tcp = client.listen(Direction::Outbound, &format!("{TCP_VIP}:{TCP_PORT}"));
    Mesh {
        server,
        client,
        inbound_http,
        inbound_tcp,
        outbound_http,
        outbound_tcp,
        app_http,
        app_tcp,
    }
}

/// Everything issued by one mesh root: the server's and the client's certificates.
async fn certs() -> (
    WorkloadCert,
    WorkloadCert,
    Arc<rustmesh_operator::ca::authority::Authority>,
) {
    let root = authority();
    let server = issue(&root, &id("bookinfo", "ratings")).await;
    let client = issue(&root, &id("bookinfo", "reviews")).await;
    (server, client, root)
}

fn strict() -> Value {
    json!({"namespace": {"name": "bookinfo/default", "mode": "STRICT"}})
}

// ---- clients -----------------------------------------------------------------------------

/// One HTTP request (`http2`: prior-knowledge HTTP/2) to `addr`: status and body, or the error.
async fn get(addr: SocketAddr, http2: bool) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let req = hyper::Request::get("http://ratings:9080/ratings/0")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if http2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The `x-forwarded-client-cert` the app saw for one HTTP/1.1 request to `addr` (sending
/// `prior` as the client's own XFCC).
async fn seen_xfcc(addr: SocketAddr, prior: Option<&str>) -> Option<String> {
    let prior: Vec<(&str, &str)> = prior
        .map(|p| ("x-forwarded-client-cert", p))
        .into_iter()
        .collect();
    response_headers(addr, &prior)
        .await?
        .get("seen-xfcc")
        .map(|v| v.to_str().unwrap().to_string())
}

/// The headers of the answer to one HTTP/1.1 `GET /`, sending `headers`.
async fn response_headers(addr: SocketAddr, headers: &[(&str, &str)]) -> Option<hyper::HeaderMap> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get("http://ratings:9080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            k.parse::<hyper::header::HeaderName>().unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = send.send_request(req).await.ok()?;
    Some(resp.headers().clone())
}

/// Connects to `addr`, reads the app's greeting and one echo; `None` when the connection is
/// closed without a word.
async fn talk(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut buf = vec![0u8; 64];
    let mut got = String::new();
    s.write_all(b"ping\n").await.ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !got.ends_with("ping\n") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (!got.is_empty()).then_some(got)
}

/// Like [`talk`], for a client that speaks only after the server's greeting.
async fn greeted(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64];
    for (until, then) in [
        ("tcp-app\n", Some("after the greeting\n")),
        ("greeting\n", None),
    ] {
        while !String::from_utf8_lossy(&got).ends_with(until) {
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if let Some(line) = then {
            s.write_all(line.as_bytes()).await.ok()?;
        }
    }
    String::from_utf8(got).ok()
}

fn has(text: &str, needles: &[&str]) -> bool {
    text.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

// ---- the tests ---------------------------------------------------------------------------

#[tokio::test]
async fn http1_http2_and_tcp_between_sidecars_are_mutual_tls() {
    let (server_cert, client_cert, _root) = certs().await;
    let m = mesh(Some(server_cert), Some(client_cert), Value::Null).await;

    assert_eq!(
        get(m.outbound_http, false).await,
        Ok((200, "HTTP/1.1 from ratings".into()))
    );
    // h2 from the app stays h2 over mTLS (ALPN istio-h2, then h2) to the server's app.
    assert_eq!(
        get(m.outbound_http, true).await,
        Ok((200, "HTTP/2.0 from ratings".into()))
    );
    assert_eq!(
        talk(m.outbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n")
    );

    let client_id = id("bookinfo", "reviews").to_string();
    let server_id = id("bookinfo", "ratings").to_string();
    let server = m.server.prometheus();
    for (metric, protocol) in [
        ("istio_requests_total", "http"),
        ("istio_tcp_connections_opened_total", "tcp"),
    ] {
        assert!(
            has(
                &server,
                &[
                    metric,
                    "reporter=\"destination\"",
                    &format!("source_principal=\"{client_id}\""),
                    &format!("destination_principal=\"{server_id}\""),
                    &format!("request_protocol=\"{protocol}\""),
                    "connection_security_policy=\"mutual_tls\"",
                ]
            ),
            "the server reports the client's identity for {metric}:\n{server}"
        );
    }
    let client = m.client.prometheus();
    assert!(
        has(
            &client,
            &[
                "istio_tcp_connections_opened_total",
                "reporter=\"source\"",
                &format!("source_principal=\"{client_id}\""),
                &format!("destination_principal=\"{server_id}\""),
            ]
        ),
        "the client reports the server's identity:\n{client}"
    );
    // A WebSocket upgrade runs over the mTLS connection too.
    {
        use futures::{SinkExt, StreamExt};
        let stream = TcpStream::connect(m.outbound_http).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://ratings:9080/ws", stream)
            .await
            .expect("websocket handshake through both sidecars");
        assert_eq!(resp.status(), 101);
        ws.send(tokio_tungstenite::tungstenite::Message::Text("hi".into()))
            .await
            .unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), "echo:hi");
    }

    // The app learns its client's identity as Istio's inbound sidecar tells it: XFCC with the
    // server's and the client's SPIFFE ids and the client certificate's hash; a value the
    // client sent is kept first (APPEND_FORWARD).
    let xfcc = seen_xfcc(m.outbound_http, None)
        .await
        .expect("an XFCC header");
    assert!(xfcc.starts_with(&format!("By={server_id};Hash=")), "{xfcc}");
    assert!(
        xfcc.ends_with(&format!(";Subject=\"\";URI={client_id}")),
        "{xfcc}"
    );
    let hash = xfcc.split(';').nth(1).unwrap().trim_start_matches("Hash=");
    assert_eq!(hash.len(), 64, "SHA-256 in hex: {xfcc}");
    let appended = seen_xfcc(m.outbound_http, Some("By=spiffe://x/ns/y/sa/z"))
        .await
        .unwrap();
    assert!(
        appended.starts_with("By=spiffe://x/ns/y/sa/z,By="),
        "{appended}"
    );
    // Plain text: no identity to tell.
    assert_eq!(seen_xfcc(m.inbound_http, None).await, None);

    // The plain-text path still works in PERMISSIVE (the default), reported as such.
    assert_eq!(
        get(m.inbound_http, false).await,
        Ok((200, "HTTP/1.1 from ratings".into()))
    );
    assert!(has(
        &m.server.prometheus(),
        &[
            "istio_requests_total",
            "source_principal=\"unknown\"",
            "connection_security_policy=\"none\"",
        ]
    ));
}

/// Istio's metadata exchange: each sidecar learns the other's workload, so both report the full
/// label set (Kiali's graph edges); neither app sees the exchange headers; TCP's client side
/// takes the server from the endpoint's metadata; a plain-text client outside the mesh stays
/// `unknown`.
#[tokio::test]
async fn sidecars_learn_each_others_workload_and_the_apps_never_see_the_exchange() {
    let (server_cert, client_cert, _root) = certs().await;
    let m = mesh(Some(server_cert), Some(client_cert), Value::Null).await;
    for http2 in [false, true] {
        assert_eq!(get(m.outbound_http, http2).await.map(|(c, _)| c), Ok(200));
    }
    let seen = response_headers(m.outbound_http, &[]).await.unwrap();
    for h in [
        "seen-peer-metadata",
        "x-envoy-peer-metadata",
        "x-envoy-peer-metadata-id",
    ] {
        assert!(!seen.contains_key(h), "{h} reached an app: {seen:?}");
    }
    assert_eq!(
        talk(m.outbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n")
    );
    // A client that waits for the server to speak first: the exchange holds nothing up, and
    // neither app sees a preface byte.
    assert_eq!(
        greeted(m.outbound_tcp).await.as_deref(),
        Some("tcp-app\nafter the greeting\n")
    );
    // Both TCP connections are counted closed once both sidecars have seen them end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(m
        .server
        .prometheus()
        .contains("istio_tcp_connections_closed_total{")
        && m.client
            .prometheus()
            .contains("istio_tcp_connections_closed_total{"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "TCP connections never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let server = m.server.prometheus();
    let source = [
        "source_workload=\"reviews-v1\"",
        "source_canonical_service=\"reviews\"",
        "source_canonical_revision=\"v2\"",
        "source_workload_namespace=\"bookinfo\"",
        "source_app=\"reviews\"",
        "source_version=\"v2\"",
        "source_cluster=\"Kubernetes\"",
    ];
    let destination = [
        "destination_workload=\"ratings-v1\"",
        "destination_canonical_service=\"ratings\"",
        "destination_canonical_revision=\"v1\"",
        "destination_workload_namespace=\"bookinfo\"",
        "destination_app=\"ratings\"",
        "destination_version=\"v1\"",
        "destination_cluster=\"Kubernetes\"",
    ];
    let both: Vec<&str> = source.iter().chain(&destination).copied().collect();
    let line = |text: &str, first: &[&str]| {
        text.lines()
            .find(|l| first.iter().all(|n| l.contains(n)))
            .map(str::to_string)
    };
    let server_line = line(
        &server,
        &["istio_requests_total{", "reporter=\"destination\""],
    )
    .unwrap_or_else(|| panic!("no request metric on the server:\n{server}"));
    for n in &both {
        assert!(
            server_line.contains(n),
            "server side lacks {n}: {server_line}"
        );
    }
    let client = m.client.prometheus();
    let client_line = line(&client, &["istio_requests_total{", "reporter=\"source\""])
        .unwrap_or_else(|| panic!("no request metric on the client:\n{client}"));
    for n in &both {
        assert!(
            client_line.contains(n),
            "client side lacks {n}: {client_line}"
        );
    }
    // The server's identity, as its certificate proved it, on both sides.
    let server_id = format!("destination_principal=\"{}\"", id("bookinfo", "ratings"));
    assert!(client_line.contains(&server_id), "{client_line}");
    assert!(server_line.contains(&server_id), "{server_line}");
    // TCP: the sidecars exchange their workloads in Istio's `istio-peer-exchange` preface, so
    // both sides carry the full label set (app and version included, which the endpoint's
    // metadata lacks), opened and closed alike.
    for (text, reporter) in [(&client, "source"), (&server, "destination")] {
        for metric in [
            "istio_tcp_connections_opened_total{",
            "istio_tcp_connections_closed_total{",
        ] {
            let reporter = format!("reporter=\"{reporter}\"");
            let tcp = line(text, &[metric, &reporter])
                .unwrap_or_else(|| panic!("no {metric} {reporter}:\n{text}"));
            for n in &both {
                assert!(tcp.contains(n), "TCP {reporter} lacks {n}: {tcp}");
            }
        }
    }
    // A plain-text client that is no sidecar sends no metadata and gets none back.
    let plain = response_headers(m.inbound_http, &[]).await.unwrap();
    assert!(!plain.contains_key("x-envoy-peer-metadata"), "{plain:?}");
    let server = m.server.prometheus();
    assert!(
        line(
            &server,
            &[
                "istio_requests_total{",
                "reporter=\"destination\"",
                "source_workload=\"unknown\"",
                "connection_security_policy=\"none\"",
            ]
        )
        .is_some(),
        "{server}"
    );
}

#[tokio::test]
async fn peer_authentication_strict_permissive_disable_and_port_level() {
    let (server_cert, client_cert, _root) = certs().await;
    let m = mesh(Some(server_cert), Some(client_cert), strict()).await;
    let refused = |m: &Mesh| {
        m.server
            .shared
            .metrics
            .refused_count("virtualInbound", Refusal::NoFilterChain)
    };

    // STRICT: a plain-text client (a pod without a sidecar) is refused, HTTP and TCP alike; a
    // sidecar's mTLS is served.
    assert!(
        get(m.inbound_http, false).await.is_err(),
        "plain HTTP is refused under STRICT"
    );
    assert_eq!(
        talk(m.inbound_tcp).await,
        None,
        "plain TCP is refused under STRICT"
    );
    assert_eq!(refused(&m), 2);
    assert_eq!(
        get(m.outbound_http, false).await,
        Ok((200, "HTTP/1.1 from ratings".into()))
    );
    assert_eq!(
        talk(m.outbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n")
    );

    // A workload policy selecting this pod wins over the namespace's, and its port-level mode
    // over its own: STRICT but plain text allowed on the TCP port.
    let (a, b) = (m.app_http, m.app_tcp);
    m.server.load(server_doc(
        a,
        b,
        json!({
        "namespace": {"name": "bookinfo/default", "mode": "PERMISSIVE"},
        "workload": [
            {"name": "bookinfo/other", "selector": {"app": "details"}, "mode": "DISABLE"},
            {"name": "bookinfo/ratings", "selector": {"app": "ratings"}, "mode": "STRICT",
             "portLevelMtls": {"9000": "DISABLE"}}]}),
    ));
    assert!(
        get(m.inbound_http, false).await.is_err(),
        "the workload's STRICT applies to 9080"
    );
    assert_eq!(
        talk(m.inbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n"),
        "9000 is DISABLE"
    );
    assert_eq!(
        get(m.outbound_http, false).await,
        Ok((200, "HTTP/1.1 from ratings".into()))
    );

    // PERMISSIVE: both.
    m.server.load(server_doc(
        a,
        b,
        json!({"mesh": {"name": "istio-system/default", "mode": "PERMISSIVE"}}),
    ));
    assert_eq!(
        get(m.inbound_http, false).await,
        Ok((200, "HTTP/1.1 from ratings".into()))
    );
    assert_eq!(
        get(m.outbound_http, true).await,
        Ok((200, "HTTP/2.0 from ratings".into()))
    );

    // DISABLE: plain text is served and mutual TLS is not terminated: a new mTLS connection's
    // bytes reach the app as they are, and the app's plain answer fails the client's handshake
    // (Istio's behaviour; the client is told with a DestinationRule `tls.mode: DISABLE`).
    m.server.load(server_doc(
        a,
        b,
        json!({"namespace": {"name": "bookinfo/default", "mode": "DISABLE"}}),
    ));
    assert_eq!(
        get(m.inbound_http, false).await,
        Ok((200, "HTTP/1.1 from ratings".into()))
    );
    assert_eq!(
        talk(m.inbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n")
    );
    assert_eq!(
        talk(m.outbound_tcp).await,
        None,
        "mTLS is not terminated under DISABLE"
    );
}

#[tokio::test]
async fn the_client_refuses_the_wrong_identity_and_a_foreign_root() {
    let (_, client_cert, root) = certs().await;
    // The server holds a mesh certificate, but for `details`, not the expected `ratings`.
    let impostor = issue(&root, &id("bookinfo", "details")).await;
    let m = mesh(Some(impostor), Some(client_cert), strict()).await;
    assert_eq!(get(m.outbound_http, false).await.map(|r| r.0), Ok(503));
    assert_eq!(talk(m.outbound_tcp).await, None);
    let client = m.client.prometheus();
    assert!(
        has(
            &client,
            &[
                "istio_requests_total",
                "response_code=\"503\"",
                "response_flags=\"UF\""
            ]
        ),
        "{client}"
    );

    // A server from another mesh (another root) is refused too, whatever its name.
    let stranger = issue(&authority(), &id("bookinfo", "ratings")).await;
    let client_cert = issue(&root, &id("bookinfo", "reviews")).await;
    let m = mesh(Some(stranger), Some(client_cert), strict()).await;
    assert_eq!(get(m.outbound_http, false).await.map(|r| r.0), Ok(503));
    // ... and the stranger's server refuses our client (its chain is not from its root).
    assert!(
        m.server
            .shared
            .metrics
            .refused_count("virtualInbound", Refusal::TlsHandshake)
            >= 1
    );
}

#[tokio::test]
async fn without_a_certificate_nothing_falls_back_to_plain_text() {
    let (server_cert, _, _root) = certs().await;
    // PERMISSIVE server: plain text would be served, so a fallback would be visible.
    let m = mesh(Some(server_cert), None, Value::Null).await;
    assert_eq!(get(m.outbound_http, false).await.map(|r| r.0), Ok(503));
    assert_eq!(talk(m.outbound_tcp).await, None);
    let server = m.server.prometheus();
    assert!(
        !server.contains("reporter=\"destination\""),
        "nothing reached the server's app:\n{server}"
    );
    // An endpoint without a sidecar (no tlsMode) gets plain text, as auto mTLS says.
    let sans = vec![id("bookinfo", "ratings").to_string()];
    m.client
        .load(client_doc(m.inbound_http, m.inbound_tcp, &sans, false));
    assert_eq!(
        get(m.outbound_http, false).await,
        Ok((200, "HTTP/1.1 from ratings".into()))
    );
}

#[tokio::test]
async fn a_renewed_certificate_takes_over_without_a_failed_request() {
    let (server_cert, client_cert, root) = certs().await;
    let m = Arc::new(mesh(Some(server_cert), Some(client_cert), strict()).await);
    let first_serial = m.server.certs.current().unwrap().serial.clone();
    let load = {
        let m = m.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..300 {
                // Half on kept-alive connections (one per request here), half on new ones.
                let r = get(m.outbound_http, i % 2 == 0).await;
                assert_eq!(
                    r,
                    Ok((
                        200,
                        format!(
                            "{} from ratings",
                            if i % 2 == 0 { "HTTP/2.0" } else { "HTTP/1.1" }
                        )
                    )),
                    "request {i}"
                );
                ok += 1;
            }
            ok
        })
    };
    // Both sides renew while requests flow.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m.server
            .certs
            .install(issue(&root, &id("bookinfo", "ratings")).await);
        m.client
            .certs
            .install(issue(&root, &id("bookinfo", "reviews")).await);
    }
    assert_eq!(load.await.unwrap(), 300);
    assert_ne!(m.server.certs.current().unwrap().serial, first_serial);
    // New connections after the renewal still handshake (with the new certificates).
    assert_eq!(
        talk(m.outbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n")
    );
}

/// Distributed tracing across the two sidecars, as Istio's: a request the app sends without a
/// trace becomes one trace of two spans, the client sidecar's (`CLIENT`, reported over Zipkin
/// JSON here) and the server sidecar's (`SERVER`, over OTLP/gRPC), the second a child of the
/// first; the server's app receives the server span's context (B3 and W3C) to continue it;
/// both carry Istio's name and tags. A caller's own trace is continued, and a caller's "not
/// sampled" is obeyed: propagated, never reported.
#[tokio::test]
async fn a_request_through_two_sidecars_is_one_trace_of_a_client_and_a_server_span() {
    use rustmesh_testapp::collector;
    let spans = collector::Store::default();
    let zipkin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // The Zipkin collector by its Service name, found in the mesh's name table (the sidecar's
    // own queries are not captured, and a cluster may have no DNS at all); OTLP by address.
    rustmesh_proxy::trace::export::set_name_table(Arc::new(|host: &str| {
        (host == "zipkin.istio-system.svc.cluster.local").then(|| "127.0.0.1".parse().unwrap())
    }));
    let provider = |name: &str, protocol: &str, service: &str, at: SocketAddr| {
        json!({"provider": {"name": name, "protocol": protocol, "service": service, "port": at.port()},
            "randomSampling": 100.0,
            "customTags": [{"tag": "team", "literal": {"value": "bookinfo"}},
                           {"tag": "user", "header": {"name": "end-user", "defaultValue": "nobody"}}]})
    };
    let client_tracing = provider(
        "zipkin",
        "zipkin",
        "zipkin.istio-system.svc.cluster.local",
        zipkin.local_addr().unwrap(),
    );
    let server_tracing = provider("otel", "otlp-grpc", "127.0.0.1", otlp.local_addr().unwrap());
    tokio::spawn(collector::serve_zipkin(zipkin, spans.clone()));
    tokio::spawn(collector::serve_otlp_grpc(otlp, spans.clone()));
    let (server_cert, client_cert, _root) = certs().await;
    let m = mesh_with(
        Some(server_cert),
        Some(client_cert),
        Value::Null,
        |d| traced(d, &server_tracing),
        |d| traced(d, &client_tracing),
    )
    .await;

    // A new trace.
    let seen = response_headers(
        m.outbound_http,
        &[("x-request-id", "req-one"), ("end-user", "jason")],
    )
    .await
    .unwrap();
    let got = spans.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    let client = got
        .iter()
        .find(|s| s.kind == "CLIENT")
        .expect("a client span");
    let server = got
        .iter()
        .find(|s| s.kind == "SERVER")
        .expect("a server span");
    assert_eq!((client.protocol, server.protocol), ("zipkin", "otlp-grpc"));
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.trace_id.len(), 32);
    assert_eq!(client.parent_id, None);
    assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));
    let seen = |h: &str| {
        seen.get(format!("seen-{h}"))
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        seen("x-b3-traceid").as_deref(),
        Some(client.trace_id.as_str())
    );
    assert_eq!(seen("x-b3-spanid").as_deref(), Some(server.id.as_str()));
    assert_eq!(
        seen("x-b3-parentspanid").as_deref(),
        Some(client.id.as_str())
    );
    assert_eq!(seen("x-b3-sampled").as_deref(), Some("1"));
    assert_eq!(
        seen("traceparent"),
        Some(format!("00-{}-{}-01", server.trace_id, server.id))
    );
    assert_eq!(seen("x-request-id").as_deref(), Some("req-one"));
    for (s, service, canonical, cluster) in [
        (
            client,
            "reviews.bookinfo",
            "reviews",
            format!("outbound|9080||{}", host()),
        ),
        (
            server,
            "ratings.bookinfo",
            "ratings",
            "inbound|9080||".to_string(),
        ),
    ] {
        let tag = |k: &str| s.tags.get(k).map(String::as_str);
        assert_eq!(s.name, format!("{}:9080/*", host()), "{s:?}");
        assert_eq!(s.service, service);
        assert_eq!(tag("guid:x-request-id"), Some("req-one"), "{s:?}");
        assert_eq!(tag("http.status_code"), Some("200"));
        assert_eq!(tag("http.method"), Some("GET"));
        assert_eq!(tag("http.url"), Some("http://ratings:9080/"));
        assert_eq!(tag("upstream_cluster"), Some(cluster.as_str()));
        assert_eq!(tag("istio.canonical_service"), Some(canonical));
        assert_eq!(tag("istio.namespace"), Some("bookinfo"));
        assert_eq!(tag("response_flags"), Some("-"));
        assert_eq!(tag("component"), Some("proxy"));
        assert_eq!(tag("team"), Some("bookinfo"));
        assert_eq!(tag("user"), Some("jason"));
        assert_eq!(tag("error"), None);
    }

    // Not sampled by the caller: propagated as such, reported by neither sidecar.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let seen = response_headers(
        m.outbound_http,
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
    )
    .await
    .unwrap();
    assert_eq!(seen["seen-x-b3-sampled"], "0");
    assert_eq!(seen["seen-x-b3-traceid"], unsampled);
    // The caller's sampled trace is continued: the client span is a child of the caller's.
    let caller = "4bf92f3577b34da6a3ce929d0e0e4736";
    response_headers(
        m.outbound_http,
        &[
            ("x-b3-traceid", caller),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await
    .unwrap();
    let got = spans.wait_for(4, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(got.iter().all(|s| s.trace_id != unsampled), "{got:#?}");
    let continued: Vec<_> = got.iter().filter(|s| s.trace_id == caller).collect();
    assert_eq!(continued.len(), 2, "{got:#?}");
    let client = continued.iter().find(|s| s.kind == "CLIENT").unwrap();
    assert_eq!(client.parent_id.as_deref(), Some("00f067aa0ba902b7"));
}

/// `%REQUESTED_SERVER_NAME%`: the server's sidecar logs the SNI of Istio's mutual TLS
/// (`outbound_.9080_._.<host>`) for HTTP and TCP alike; a plain-text client sent none (`-`).
#[tokio::test]
async fn the_server_logs_the_sni_its_clients_sent() {
    let (server_cert, client_cert, _root) = certs().await;
    let format = "%REQUESTED_SERVER_NAME% %UPSTREAM_CLUSTER%\n";
    let m = mesh_with(
        Some(server_cert),
        Some(client_cert),
        Value::Null,
        |d| logged(d, format),
        |_| {},
    )
    .await;
    assert_eq!(get(m.outbound_http, false).await.map(|(c, _)| c), Ok(200));
    assert_eq!(
        talk(m.outbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n")
    );
    assert_eq!(get(m.inbound_http, false).await.map(|(c, _)| c), Ok(200));
    let want = [
        format!(
            "{} inbound|{HTTP_PORT}||",
            istio_sni(HTTP_PORT, "", &host())
        ),
        format!("{} inbound|{TCP_PORT}||", istio_sni(TCP_PORT, "", &host())),
        format!("- inbound|{HTTP_PORT}||"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = m.server.log.lock().unwrap().clone();
        if want.iter().all(|w| lines.contains(w)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "want {want:#?}, got {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Telemetry API's policies as the operator renders them (`rustmesh_xds::telemetry`): a
/// mesh-wide one turning the `envoy` access log on, and workload ones of each pod.
fn with_telemetry(doc: &mut Value, workload: Value) {
    doc["telemetry"] = json!({
        "providers": {
            "envoy": {"accessLog": {"path": "/dev/stdout",
                                    "format": "%RESPONSE_CODE% %UPSTREAM_CLUSTER%\n"}},
            "prometheus": "prometheus",
        },
        "defaultProviders": {"metrics": ["prometheus"]},
        "defaultSampling": 1.0,
        "mesh": {"name": "istio-system/mesh-default",
                 "accessLogging": [{"providers": ["envoy"]}]},
        "workload": [workload],
    });
}

#[tokio::test]
async fn telemetry_policies_turn_access_logs_and_metrics_on_and_off_per_workload_and_side() {
    let (server_cert, client_cert, _root) = certs().await;
    let m = mesh_with(
        Some(server_cert),
        Some(client_cert),
        Value::Null,
        // ratings: logged (mesh policy), on its server side only the requests a filter
        // accepts, and no request count there.
        |d| {
            with_telemetry(
                d,
                json!({"name": "bookinfo/ratings", "selector": {"app": "ratings"},
                       "accessLogging": [{"mode": "SERVER", "providers": ["envoy"],
                                          "filter": "'x-log' in request.headers"}],
                       "metrics": [{"overrides": [
                           {"metric": "REQUEST_COUNT", "mode": "SERVER", "disabled": true}]}]}),
            )
        },
        // reviews: its client side logs nothing and counts no opened TCP connection; a
        // policy selecting another app is not its own.
        |d| {
            with_telemetry(
                d,
                json!({"name": "bookinfo/reviews", "selector": {"app": "reviews"},
                       "accessLogging": [{"mode": "CLIENT", "disabled": true}],
                       "metrics": [{"overrides": [
                           {"metric": "TCP_OPENED_CONNECTIONS", "mode": "CLIENT", "disabled": true},
                           {"mode": "CLIENT", "tagOverrides": {
                               "request_protocol": {"remove": true},
                               "destination_app": {"value": "renamed"},
                               "team": {"value": "bookinfo"}}}]}]}),
            );
            d["telemetry"]["workload"].as_array_mut().unwrap().insert(
                0,
                json!({"name": "bookinfo/other", "selector": {"app": "other"},
                                  "accessLogging": [{"providers": ["envoy"]}]}),
            );
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(m.outbound_http, false).await.map(|(c, _)| c), Ok(200));
    }
    assert!(
        response_headers(m.outbound_http, &[("x-log", "yes")])
            .await
            .is_some()
    );
    assert_eq!(
        talk(m.outbound_tcp).await.as_deref(),
        Some("tcp-app\nping\n")
    );
    let want = format!("200 inbound|{HTTP_PORT}||");
    // The TCP connection is counted when it closes (and not logged: the filter reads a
    // request header a TCP connection has not, an error, so no line, as in Envoy).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !m
        .client
        .prometheus()
        .contains("istio_tcp_connections_closed_total{")
        || !m.server.log.lock().unwrap().contains(&want)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:#?} {}",
            m.server.log.lock().unwrap(),
            m.client.prometheus()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *m.server.log.lock().unwrap(),
        [want],
        "only the request with x-log passes the server's filter"
    );
    assert_eq!(
        *m.client.log.lock().unwrap(),
        Vec::<String>::new(),
        "the client side's log is disabled"
    );

    let server = m.server.prometheus();
    assert!(!server.contains("istio_requests_total{"), "{server}");
    assert!(
        has(
            &server,
            &[
                "istio_request_duration_milliseconds_count{",
                "reporter=\"destination\""
            ]
        ),
        "{server}"
    );
    let client = m.client.prometheus();
    assert!(
        has(&client, &["istio_requests_total{", "reporter=\"source\""]),
        "{client}"
    );
    assert!(
        !client.contains("istio_tcp_connections_opened_total{"),
        "{client}"
    );
    assert!(
        has(&client, &["istio_tcp_connections_closed_total{"]),
        "{client}"
    );
    // The client side's tag overrides: a label removed, one changed, one added, on every
    // metric of that side.
    let requests = client
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap();
    assert!(
        requests.contains("destination_app=\"renamed\"")
            && requests.contains("team=\"bookinfo\"")
            && !requests.contains("request_protocol="),
        "{requests}"
    );
    assert!(
        has(
            &client,
            &["istio_tcp_connections_closed_total{", "team=\"bookinfo\""]
        ),
        "{client}"
    );
    let server = m.server.prometheus();
    assert!(
        has(&server, &["request_protocol=\"http\""]) && !server.contains("team="),
        "{server}"
    );
}

#[tokio::test]
async fn a_telemetry_change_reaches_the_connections_the_client_sidecar_keeps_open() {
    let (server_cert, client_cert, _root) = certs().await;
    let m = mesh(Some(server_cert), Some(client_cert), Value::Null).await;
    // The client sidecar pools its connection to the server sidecar: every request below after
    // the first could ride the connection accepted on the configuration without a log.
    for _ in 0..2 {
        assert_eq!(get(m.outbound_http, false).await.map(|(c, _)| c), Ok(200));
    }
    assert!(m.server.log.lock().unwrap().is_empty());
    let mut doc = server_doc(m.app_http, m.app_tcp, Value::Null);
    with_telemetry(
        &mut doc,
        json!({"name": "bookinfo/none", "selector": {"app": "none"}}),
    );
    m.server.load(doc);
    let want = format!("200 inbound|{HTTP_PORT}||");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(get(m.outbound_http, false).await.map(|(c, _)| c), Ok(200));
        if m.server.log.lock().unwrap().contains(&want) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new access log never applied to the pooled connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
