//! AuthorizationPolicy enforced by a real sidecar, on loopback: the server sidecar (`ratings`)
//! is the real inbound listener, filter chains, HTTP connection manager and TCP proxy, with the
//! policies in its configuration (`authorization`, as the operator renders them); clients are
//! real HTTP/1.1 and h2c clients and raw TCP, in plain text or through client sidecars holding
//! certificates of the real mesh CA (`rustmesh_operator::ca`), so the server sees real mutual
//! TLS identities. The one stand-in is the original destination (`run_with`), as in `mtls.rs`.
//!
//! What is proved, from Istio's documentation and Envoy's RBAC filters:
//! - `spec: {}` denies every request (403 `RBAC: access denied`, never forwarded) and every TCP
//!   connection (closed before the app is reached), on the declared ports' chains and on the
//!   passthrough ones;
//! - DENY before ALLOW, paths after Istio's normalization, methods, `when` headers, ip blocks,
//!   ports, HTTP-only fields on TCP (ALLOW fails closed, DENY denies more);
//! - ALLOW by principal and by namespace over mutual TLS, for HTTP/1.1, HTTP/2 and TCP;
//! - a denied request is in `istio_requests_total` with code 403 and flags `-`, in Envoy's
//!   `rbac.*` counters, and its access-log line names the policy;
//! - RequestAuthentication (tokens signed here with an Ed25519 key of a test issuer): no token
//!   passes, an invalid one is refused with Envoy's 401/403 texts and `www-authenticate`, a
//!   valid one is taken off the request and its claim headers added (forged ones stripped); the
//!   policies see its principal and claims (Istio's "require JWT" task); a rule without keys
//!   (`jwksError`) refuses its issuer's tokens; a change reaches open connections.

mod ca_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ca_common::{authority, id, issue};
use http_body_util::{BodyExt, Empty};
use rustmesh_proxy::access_log::Sink;
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
const STAT_PREFIX: &str = "inbound_0.0.0.0_9080";

// ---- the apps ---------------------------------------------------------------------------

/// An HTTP app (HTTP/1.1 and HTTP/2) answering `<version> <path>`; counts what reaches it.
async fn http_app(hits: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let mut body = format!("{:?} {}", req.version(), req.uri());
                    // `x-echo: a,b`: the app says what it got for those headers.
                    if let Some(names) = req.headers().get("x-echo") {
                        for name in names.to_str().unwrap().split(',') {
                            let v = req.headers().get(name).map(|v| v.to_str().unwrap());
                            body.push_str(&format!("\n{name}: {}", v.unwrap_or("-")));
                        }
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

/// A TCP app that says `tcp-app` then echoes; counts its connections.
async fn tcp_app(conns: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
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

fn inbound_hcm(prefix: &str, cluster: &str) -> Value {
    json!([{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "statPrefix": prefix, "accessLog": [{"path": "/dev/stdout", "encoding": "JSON"}],
        "routeConfig": {"name": cluster, "virtualHosts": [{"name": cluster, "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]}}}])
}

fn tls(alpn: &[&str]) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typedConfig": istio_downstream(alpn)})
}

/// The server's `virtualInbound` in Istio's PERMISSIVE shape (per port: mTLS chains, then
/// plain ones; then the passthrough chains for undeclared ports), with `authorization`.
fn server_doc(app_http: SocketAddr, app_tcp: SocketAddr, authorization: Value) -> Value {
    let (h, t) = (HTTP_PORT, TCP_PORT);
    let hh = format!("inbound|{h}||");
    let th = format!("inbound|{t}||");
    let pass = "InboundPassthroughClusterIpv4";
    let chains = json!([
        {"name": "virtualInbound-blackhole", "filterChainMatch": {"destinationPort": 15006}, "filters": tcp_proxy("BlackHoleCluster")},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "tls", "applicationProtocols": ALPN_ISTIO_HTTP},
         "transportSocket": tls(&["h2", "http/1.1"]), "filters": inbound_hcm(STAT_PREFIX, &hh)},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "tls", "applicationProtocols": ALPN_ISTIO_TCP},
         "transportSocket": tls(&ALPN_ISTIO_TCP), "filters": tcp_proxy(&hh)},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "raw_buffer", "applicationProtocols": ["http/1.1", "h2c"]},
         "filters": inbound_hcm(STAT_PREFIX, &hh)},
        {"name": format!("0.0.0.0_{h}"), "filterChainMatch": {"destinationPort": h, "transportProtocol": "raw_buffer"}, "filters": tcp_proxy(&hh)},
        {"name": format!("0.0.0.0_{t}"), "filterChainMatch": {"destinationPort": t, "transportProtocol": "tls", "applicationProtocols": ALPN_ISTIO_ALL},
         "transportSocket": tls(&ALPN_ISTIO_TCP), "filters": tcp_proxy(&th)},
        {"name": format!("0.0.0.0_{t}"), "filterChainMatch": {"destinationPort": t}, "filters": tcp_proxy(&th)},
        {"name": "virtualInbound-catchall-http", "filterChainMatch": {"transportProtocol": "raw_buffer", "applicationProtocols": ["http/1.1", "h2c"]},
         "filters": inbound_hcm("InboundPassthroughClusterIpv4", pass)},
        {"name": "virtualInbound", "filterChainMatch": {"transportProtocol": "raw_buffer"}, "filters": tcp_proxy(pass)},
    ]);
    let stat = |name: &str, app: SocketAddr| {
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
            stat(&hh, app_http), stat(&th, app_tcp),
            {"name": pass, "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED", "connectTimeout": "10s"}],
    });
    if !authorization.is_null() {
        doc["authorization"] = authorization;
    }
    doc
}

fn host() -> String {
    "ratings.bookinfo.svc.cluster.local".to_string()
}

/// A client's configuration: `10.96.0.10:9080` (HTTP) and `10.96.0.11:9000` (TCP) to the
/// server's inbound listeners, with auto mTLS expecting the server's identity.
fn client_doc(inbound_http: SocketAddr, inbound_tcp: SocketAddr) -> Value {
    let sans = vec![id("bookinfo", "ratings").to_string()];
    let cluster = |port: u16| format!("outbound|{port}||{}", host());
    let def = |port: u16| {
        let matches = auto_mtls_matches(&istio_sni(port, "", &host()), &ALPN_ISTIO_TCP, &sans);
        json!({"name": cluster(port), "type": "EDS", "connectTimeout": "5s", "lbPolicy": "ROUND_ROBIN",
            "edsClusterConfig": {"serviceName": cluster(port)}, "transportSocketMatches": matches})
    };
    let endpoints = |port: u16, at: SocketAddr| {
        json!({"clusterName": cluster(port), "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": address("127.0.0.1", at.port())},
             "metadata": {"filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}}]}]})
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
    shared: Arc<Shared>,
    clusters: Arc<ClusterManager>,
    access_log: Arc<Mutex<Vec<String>>>,
    _drain: drain::Signal,
    watch: drain::Watch,
}

impl Sidecar {
    fn new(name: &str, ns: &str, cert: Option<WorkloadCert>, doc: Value) -> Sidecar {
        // One registry for everything, as `proxy run` has it.
        let istio = Arc::new(IstioMetrics::new());
        let mut metrics = Metrics::default();
        istio.register(|registry| metrics = Metrics::register(registry));
        let workload = Arc::new(WorkloadInfo {
            name: name.to_string(),
            namespace: ns.to_string(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            ..Default::default()
        });
        let access_log = Arc::new(Mutex::new(Vec::new()));
        let lines = access_log.clone();
        let http = Arc::new(
            ConnectionManager::new(istio.clone(), workload.clone()).with_access_log(Sink::new(
                move |l| lines.lock().unwrap().push(l.to_string()),
            )),
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
                identity: certs,
                original_source: false,
                router: false,
            }),
            clusters,
            access_log,
            _drain: signal,
            watch,
        };
        sidecar.load(doc).expect("the configuration compiles");
        sidecar
    }

    /// Loads a configuration as the watcher does: compiled, then swapped in.
    fn load(&self, doc: Value) -> Result<(), String> {
        let config = ProxyConfig::from_json(&doc.to_string()).expect("a valid configuration");
        let s = &self.shared;
        let snapshot = Snapshot::compile(config, &self.clusters, &s.metrics, &s.http)
            .map_err(|e| e.to_string())?;
        self.clusters.commit(&snapshot.clusters);
        s.store.swap(Arc::new(snapshot));
        Ok(())
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

    fn access_log(&self) -> Vec<Value> {
        self.access_log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The server sidecar with its apps, and where clients connect.
struct Server {
    sidecar: Sidecar,
    /// Inbound listener whose connections were for the pod's HTTP port.
    http: SocketAddr,
    /// ... for its TCP port.
    tcp: SocketAddr,
    /// ... for an undeclared port of the pod (the passthrough chains), here the TCP app's.
    passthrough: SocketAddr,
    /// ... for an undeclared port where the HTTP app listens.
    passthrough_http: SocketAddr,
    http_hits: Arc<AtomicUsize>,
    tcp_conns: Arc<AtomicUsize>,
}

async fn server(cert: Option<WorkloadCert>, authorization: Value) -> Server {
    let http_hits = Arc::new(AtomicUsize::new(0));
    let tcp_conns = Arc::new(AtomicUsize::new(0));
    let app_http = http_app(http_hits.clone()).await;
    let app_tcp = tcp_app(tcp_conns.clone()).await;
    let sidecar = Sidecar::new(
        "ratings",
        "bookinfo",
        cert,
        server_doc(app_http, app_tcp, authorization),
    );
    let http = sidecar.listen(Direction::Inbound, &format!("{POD_IP}:{HTTP_PORT}"));
    let tcp = sidecar.listen(Direction::Inbound, &format!("{POD_IP}:{TCP_PORT}"));
    // The passthrough cluster connects to the original destination itself: the apps.
    let passthrough = sidecar.listen(Direction::Inbound, &app_tcp.to_string());
    let passthrough_http = sidecar.listen(Direction::Inbound, &app_http.to_string());
    Server {
        sidecar,
        http,
        tcp,
        passthrough,
        passthrough_http,
        http_hits,
        tcp_conns,
    }
}

// ---- clients -----------------------------------------------------------------------------

/// What one HTTP request got: status, content type, body.
#[derive(Debug, PartialEq)]
struct Got {
    status: u16,
    content_type: Option<String>,
    body: String,
    /// `www-authenticate` (a JWT refusal's).
    www_authenticate: Option<String>,
}

/// One request (`http2`: prior-knowledge HTTP/2) with `method`, `path` and headers.
async fn request(
    addr: SocketAddr,
    http2: bool,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Got, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let mut req = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("http://ratings:9080{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
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
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Got {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
        www_authenticate,
    })
}

async fn get(addr: SocketAddr, http2: bool, path: &str) -> Got {
    request(addr, http2, "GET", path, &[]).await.unwrap()
}

fn denied() -> Got {
    Got {
        status: 403,
        content_type: Some("text/plain".into()),
        body: "RBAC: access denied".into(),
        www_authenticate: None,
    }
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

fn has(text: &str, needles: &[&str]) -> bool {
    text.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

fn policies(list: Value) -> Value {
    json!({ "policies": list })
}

// ---- the tests ---------------------------------------------------------------------------

#[tokio::test]
async fn without_policies_everything_passes() {
    let s = server(None, Value::Null).await;
    assert_eq!(get(s.http, false, "/a").await.status, 200);
    assert_eq!(get(s.passthrough_http, true, "/a").await.status, 200);
    assert_eq!(talk(s.tcp).await.as_deref(), Some("tcp-app\nping\n"));
    assert_eq!(
        talk(s.passthrough).await.as_deref(),
        Some("tcp-app\nping\n")
    );
    let text = s.sidecar.prometheus();
    assert!(
        !has(&text, &["envoy_http_rbac_allowed_total{", "} 1"]),
        "no policy: no RBAC filter counts:\n{text}"
    );
}

/// Sends `GET path` requests over one open connection (HTTP/1.1 keep-alive or HTTP/2), as a
/// client sidecar's pool does; each answer's status.
struct OpenConnection {
    h1: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
}

impl OpenConnection {
    async fn open(addr: SocketAddr, http2: bool) -> Self {
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
        if http2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            OpenConnection {
                h1: None,
                h2: Some(send),
            }
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            OpenConnection {
                h1: Some(send),
                h2: None,
            }
        }
    }

    async fn get(&mut self, path: &str) -> u16 {
        self.get_with(path, &[]).await
    }

    async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> u16 {
        let mut req = hyper::Request::builder().uri(format!("http://ratings:9080{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let resp = match (&mut self.h1, &mut self.h2) {
            (Some(h1), _) => {
                h1.ready().await.unwrap();
                h1.send_request(req).await.unwrap()
            }
            (_, Some(h2)) => h2.send_request(req).await.unwrap(),
            _ => unreachable!(),
        };
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }
}

#[tokio::test]
async fn a_policy_change_reaches_requests_on_connections_already_open() {
    // A client sidecar keeps its pooled connections open while it sends on them: a policy
    // applied after they opened must decide their next requests (e2e scenario 13 saw a busy
    // client served for 90 s after `allow-nothing`), and removing it must let them through.
    let hits = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let app_http = http_app(hits.clone()).await;
    let app_tcp = tcp_app(conns.clone()).await;
    let doc = |authorization: Value| server_doc(app_http, app_tcp, authorization);
    let sidecar = Sidecar::new("ratings", "bookinfo", None, doc(Value::Null));
    let addr = sidecar.listen(Direction::Inbound, &format!("{POD_IP}:{HTTP_PORT}"));
    let mut h1 = OpenConnection::open(addr, false).await;
    let mut h2 = OpenConnection::open(addr, true).await;
    assert_eq!(h1.get("/ratings/0").await, 200);
    assert_eq!(h2.get("/ratings/0").await, 200);

    sidecar
        .load(doc(policies(json!([{"name": "bookinfo/allow-nothing"}]))))
        .unwrap();
    assert_eq!(h1.get("/ratings/0").await, 403, "HTTP/1.1 keep-alive");
    assert_eq!(h2.get("/ratings/0").await, 403, "HTTP/2");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the denied requests were not forwarded"
    );

    sidecar.load(doc(Value::Null)).unwrap();
    assert_eq!(h1.get("/ratings/0").await, 200);
    assert_eq!(h2.get("/ratings/0").await, 200);
}

#[tokio::test]
async fn allow_nothing_denies_every_request_and_connection() {
    // Istio's `allow-nothing`: `spec: {}`, an ALLOW policy without rules.
    let s = server(None, policies(json!([{"name": "bookinfo/allow-nothing"}]))).await;
    assert_eq!(get(s.http, false, "/ratings/0").await, denied());
    assert_eq!(get(s.http, true, "/ratings/0").await, denied());
    assert_eq!(
        get(s.passthrough_http, false, "/x").await,
        denied(),
        "the passthrough HTTP chain is checked too"
    );
    assert_eq!(s.http_hits.load(Ordering::SeqCst), 0, "never forwarded");
    assert_eq!(talk(s.tcp).await, None, "closed without a word");
    assert_eq!(talk(s.passthrough).await, None);
    assert_eq!(
        s.tcp_conns.load(Ordering::SeqCst),
        0,
        "no upstream connection"
    );

    let text = s.sidecar.prometheus();
    assert!(
        has(
            &text,
            &[
                "istio_requests_total{",
                "reporter=\"destination\"",
                "response_code=\"403\"",
                "response_flags=\"-\"",
                "} 3"
            ]
        ),
        "the denials are requests answered 403 with no flag:\n{text}"
    );
    assert!(
        has(
            &text,
            &[&format!(
                "envoy_http_rbac_denied_total{{http_conn_manager_prefix=\"{STAT_PREFIX}\"}} 2"
            )]
        ),
        "{text}"
    );
    assert!(has(&text, &["envoy_tcp_rbac_denied_total 2"]), "{text}");
    let refused = s
        .sidecar
        .shared
        .metrics
        .refused_count("virtualInbound", Refusal::RbacDenied);
    assert_eq!(refused, 2);
    let log = s.sidecar.access_log();
    assert_eq!(log.len(), 3, "{log:?}");
    for line in &log {
        assert_eq!(line["response_code"], 403);
        assert_eq!(line["response_flags"], "-");
        assert_eq!(
            line["response_code_details"],
            "rbac_access_denied_matched_policy[none]"
        );
    }
}

#[tokio::test]
async fn deny_is_evaluated_before_allow_on_normalized_paths() {
    let s = server(
        None,
        policies(json!([
            {"name": "bookinfo/allow-all", "rules": [{}]},
            {"name": "bookinfo/deny-admin", "action": "DENY", "rules": [
                {"to": [{"paths": ["/admin", "/admin/*"]}]},
                {"to": [{"methods": ["DELETE"]}]}]},
        ])),
    )
    .await;
    for http2 in [false, true] {
        assert_eq!(get(s.http, http2, "/admin").await, denied());
        assert_eq!(get(s.http, http2, "/admin/users").await, denied());
        // Istio's default normalization: what the app would resolve to /admin is /admin.
        assert_eq!(get(s.http, http2, "/public/../admin/x").await, denied());
        assert_eq!(get(s.http, http2, "/public/%2e%2e/admin").await, denied());
        let ok = get(s.http, http2, "/public/./ratings?x=/admin").await;
        assert_eq!(ok.status, 200);
        assert!(
            ok.body.ends_with("/public/ratings?x=/admin"),
            "the app gets the normalized path and the query as sent: {}",
            ok.body
        );
        let del = request(s.http, http2, "DELETE", "/ratings/1", &[])
            .await
            .unwrap();
        assert_eq!(del, denied());
    }
    // Istio refuses a method that is not upper case and a %00 in the path.
    let lower = request(s.http, false, "get", "/ratings", &[])
        .await
        .unwrap();
    assert_eq!(lower.status, 400);
    assert_eq!(get(s.http, false, "/a%00b").await.status, 400);
    assert_eq!(s.http_hits.load(Ordering::SeqCst), 2);

    let log = s.sidecar.access_log();
    let details: Vec<&str> = log
        .iter()
        .filter_map(|l| l["response_code_details"].as_str())
        .collect();
    assert!(
        details.contains(
            &"rbac_access_denied_matched_policy[ns[bookinfo]-policy[deny-admin]-rule[0]]"
        )
    );
    assert!(
        details.contains(
            &"rbac_access_denied_matched_policy[ns[bookinfo]-policy[deny-admin]-rule[1]]"
        )
    );
    let text = s.sidecar.prometheus();
    // Each denial: the DENY filter's `denied`; each pass: DENY's and ALLOW's `allowed`.
    for (counter, n) in [("denied", 10), ("allowed", 4)] {
        let line = format!(
            "envoy_http_rbac_{counter}_total{{http_conn_manager_prefix=\"{STAT_PREFIX}\"}} {n}"
        );
        assert!(has(&text, &[&line]), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn allow_rules_on_methods_headers_ips_and_ports() {
    let s = server(
        None,
        policies(json!([{"name": "bookinfo/ratings", "rules": [
            {"to": [{"methods": ["GET"], "paths": ["/ratings/*"]}],
             "when": [{"key": "request.headers[x-token]", "values": ["ok", "admin*"]}]},
            {"from": [{"ipBlocks": ["127.0.0.0/8"]}], "to": [{"ports": [TCP_PORT]}]},
            {"from": [{"ipBlocks": ["10.0.0.0/8"]}]},
        ]}])),
    )
    .await;
    for http2 in [false, true] {
        let ok = request(s.http, http2, "GET", "/ratings/1", &[("x-token", "ok")]).await;
        assert_eq!(ok.unwrap().status, 200);
        let ok = request(
            s.http,
            http2,
            "GET",
            "/ratings/1",
            &[("x-token", "admin-2")],
        )
        .await;
        assert_eq!(ok.unwrap().status, 200);
        let no_token = request(s.http, http2, "GET", "/ratings/1", &[]).await;
        assert_eq!(no_token.unwrap(), denied());
        let wrong = request(s.http, http2, "GET", "/ratings/1", &[("x-token", "nope")]).await;
        assert_eq!(wrong.unwrap(), denied());
        let post = request(s.http, http2, "POST", "/ratings/1", &[("x-token", "ok")]).await;
        assert_eq!(post.unwrap(), denied());
    }
    // TCP on 9000 from 127.0.0.1: allowed by rule 1; raw TCP to the HTTP port: only rule 0
    // could be about it, and an ALLOW rule with HTTP-only fields never matches on TCP.
    assert_eq!(talk(s.tcp).await.as_deref(), Some("tcp-app\nping\n"));
    assert_eq!(talk(s.http).await, None);
    assert_eq!(s.tcp_conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http_only_fields_deny_more_on_tcp_and_audit_only_counts() {
    let s = server(
        None,
        policies(json!([
            {"name": "bookinfo/audit-all", "action": "AUDIT", "rules": [{"to": [{"paths": ["/audited"]}]}]},
            {"name": "bookinfo/deny-get", "action": "DENY", "rules": [{"to": [{"methods": ["GET"]}]}]},
        ])),
    )
    .await;
    assert_eq!(get(s.http, false, "/x").await, denied());
    let post = request(s.http, false, "POST", "/audited", &[])
        .await
        .unwrap();
    assert_eq!(post.status, 200, "AUDIT never denies");
    // On TCP the DENY rule loses its method: it matches every connection.
    assert_eq!(talk(s.tcp).await, None);
    assert_eq!(s.tcp_conns.load(Ordering::SeqCst), 0);
    let text = s.sidecar.prometheus();
    for line in [
        format!("envoy_http_rbac_logged_total{{http_conn_manager_prefix=\"{STAT_PREFIX}\"}} 1"),
        format!("envoy_http_rbac_not_logged_total{{http_conn_manager_prefix=\"{STAT_PREFIX}\"}} 1"),
        format!("envoy_http_rbac_denied_total{{http_conn_manager_prefix=\"{STAT_PREFIX}\"}} 1"),
        // On TCP the AUDIT rule loses its path too: logged, then denied.
        "envoy_tcp_rbac_logged_total 1".to_string(),
        "envoy_tcp_rbac_denied_total 1".to_string(),
    ] {
        assert!(has(&text, &[&line]), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn a_policy_that_does_not_compile_refuses_the_configuration() {
    let s = server(
        None,
        policies(json!([{"name": "bookinfo/allow-all", "rules": [{}]}])),
    )
    .await;
    let (app_http, app_tcp) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let bad = server_doc(
        app_http,
        app_tcp,
        policies(
            json!([{"name": "bookinfo/bad", "rules": [{"from": [{"ipBlocks": ["10.0.0.0/99"]}]}]}]),
        ),
    );
    let err = s.sidecar.load(bad).unwrap_err();
    assert!(
        err.contains("authorization.policies[0].rules[0].from[0].ipBlocks[0]")
            && err.contains("bookinfo/bad"),
        "{err}"
    );
    assert_eq!(
        get(s.http, false, "/still").await.status,
        200,
        "the previous one serves"
    );
}

/// The server's certificate and three clients': `bookinfo/reviews`, `trusted/sleep`,
/// `other/sleep`, all from one mesh root.
async fn identities() -> (WorkloadCert, [WorkloadCert; 3]) {
    let root = authority();
    let server = issue(&root, &id("bookinfo", "ratings")).await;
    let clients = [
        issue(&root, &id("bookinfo", "reviews")).await,
        issue(&root, &id("trusted", "sleep")).await,
        issue(&root, &id("other", "sleep")).await,
    ];
    (server, clients)
}

#[tokio::test]
async fn allow_by_principal_and_namespace_over_mutual_tls() {
    let (server_cert, [reviews, trusted, other]) = identities().await;
    let s = server(
        Some(server_cert),
        policies(json!([{"name": "bookinfo/ratings", "rules": [
            {"from": [{"principals": ["cluster.local/ns/bookinfo/sa/reviews"]}]},
            {"from": [{"namespaces": ["trusted"]}]},
        ]}])),
    )
    .await;
    let mut clients = Vec::new();
    for (name, ns, cert) in [
        ("reviews", "bookinfo", reviews),
        ("sleep", "trusted", trusted),
        ("sleep", "other", other),
    ] {
        let c = Sidecar::new(name, ns, Some(cert), client_doc(s.http, s.tcp));
        let http = c.listen(Direction::Outbound, &format!("{HTTP_VIP}:{HTTP_PORT}"));
        let tcp = c.listen(Direction::Outbound, &format!("{TCP_VIP}:{TCP_PORT}"));
        clients.push((c, http, tcp));
    }
    for (i, (_, http, tcp)) in clients.iter().enumerate() {
        let allowed = i < 2;
        for http2 in [false, true] {
            let got = get(*http, http2, "/ratings/0").await;
            if allowed {
                assert_eq!(got.status, 200, "client {i}, h2 {http2}: {got:?}");
                let version = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
                assert!(got.body.starts_with(version), "{got:?}");
            } else {
                assert_eq!(got, denied(), "client {i}, h2 {http2}");
            }
        }
        let said = talk(*tcp).await;
        if allowed {
            assert_eq!(said.as_deref(), Some("tcp-app\nping\n"), "client {i}");
        } else {
            assert_eq!(said, None, "client {i}: closed after the handshake");
        }
    }
    // Plain text has no principal: neither rule matches.
    assert_eq!(get(s.http, false, "/ratings/0").await, denied());
    assert_eq!(talk(s.tcp).await, None);
    assert_eq!(s.tcp_conns.load(Ordering::SeqCst), 2);
    assert_eq!(s.http_hits.load(Ordering::SeqCst), 4);

    let text = s.sidecar.prometheus();
    let other = id("other", "sleep").to_string();
    assert!(
        has(
            &text,
            &[
                "istio_requests_total{",
                "response_code=\"403\"",
                &format!("source_principal=\"{other}\""),
                "connection_security_policy=\"mutual_tls\"",
                "} 2"
            ]
        ),
        "the denied mTLS requests are reported with their principal:\n{text}"
    );
    let allowed = s
        .sidecar
        .access_log()
        .iter()
        .filter(|l| l["response_code"] == 200)
        .count();
    assert_eq!(allowed, 4);
}

// ---- RequestAuthentication ---------------------------------------------------------------

/// An issuer made here: an Ed25519 key, its key set, and tokens it signs.
struct Issuer {
    key: ring::signature::Ed25519KeyPair,
    jwks: String,
}

const ISS: &str = "https://issuer.test";

impl Issuer {
    fn new(kid: &str) -> Issuer {
        use base64::Engine;
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}]});
        Issuer {
            key,
            jwks: jwks.to_string(),
        }
    }

    /// A token with `claims` (plus `exp` an hour from now unless given).
    fn token(&self, kid: &str, claims: Value) -> String {
        use base64::Engine;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let mut claims = claims;
        if claims.get("exp").is_none() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            claims["exp"] = json!(now + 3600);
        }
        let signing_input = format!(
            "{}.{}",
            b64(&json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"})),
            b64(&claims)
        );
        let sig = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
        )
    }
}

/// The server sidecar with `request_authentication` (and `authorization`) in its configuration.
async fn jwt_server(request_authentication: Value, authorization: Value) -> Server {
    let http_hits = Arc::new(AtomicUsize::new(0));
    let tcp_conns = Arc::new(AtomicUsize::new(0));
    let app_http = http_app(http_hits.clone()).await;
    let app_tcp = tcp_app(tcp_conns.clone()).await;
    let mut doc = server_doc(app_http, app_tcp, authorization);
    doc["requestAuthentication"] = request_authentication;
    let sidecar = Sidecar::new("ratings", "bookinfo", None, doc);
    let http = sidecar.listen(Direction::Inbound, &format!("{POD_IP}:{HTTP_PORT}"));
    let tcp = sidecar.listen(Direction::Inbound, &format!("{POD_IP}:{TCP_PORT}"));
    let passthrough = sidecar.listen(Direction::Inbound, &app_tcp.to_string());
    let passthrough_http = sidecar.listen(Direction::Inbound, &app_http.to_string());
    Server {
        sidecar,
        http,
        tcp,
        passthrough,
        passthrough_http,
        http_hits,
        tcp_conns,
    }
}

fn jwt_rule(issuer: &Issuer, extra: Value) -> Value {
    let mut rule = json!({"issuer": ISS, "jwks": issuer.jwks});
    if let (Some(r), Value::Object(extra)) = (rule.as_object_mut(), extra) {
        r.extend(extra);
    }
    rule
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn request_authentication_refuses_bad_tokens_and_passes_good_ones_and_none() {
    // Istio's "Authorization with JWT" task, on loopback: a RequestAuthentication alone lets
    // requests without a token through, refuses any invalid token (401, Envoy's texts, never
    // forwarded) and takes a valid one off the request, adding its claim headers.
    let issuer = Issuer::new("k1");
    let other = Issuer::new("k1");
    let ra = json!({"policies": [{"name": "bookinfo/jwt", "selector": {"app": "ratings"},
        "jwtRules": [jwt_rule(&issuer, json!({"audiences": ["ratings.bookinfo"],
            "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}]}))]}]});
    let srv = jwt_server(ra, Value::Null).await;
    let echo = ("x-echo", "authorization,x-jwt-sub");
    let good = issuer.token(
        "k1",
        json!({"iss": ISS, "sub": "alice", "aud": "ratings.bookinfo"}),
    );
    for http2 in [false, true] {
        // No token: through; a client cannot forge the claim header.
        let got = request(
            srv.http,
            http2,
            "GET",
            "/r",
            &[echo, ("x-jwt-sub", "mallory")],
        )
        .await
        .unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        assert!(
            got.body.ends_with("authorization: -\nx-jwt-sub: -"),
            "{got:?}"
        );

        // A valid token: through, taken off the request, its `sub` copied to the header.
        let got = request(
            srv.http,
            http2,
            "GET",
            "/r",
            &[echo, ("authorization", &bearer(&good))],
        )
        .await
        .unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        assert!(
            got.body.ends_with("authorization: -\nx-jwt-sub: alice"),
            "{got:?}"
        );

        // Invalid tokens: refused here with Envoy's answer, never forwarded.
        let before = srv.http_hits.load(Ordering::SeqCst);
        let expired = issuer.token(
            "k1",
            json!({"iss": ISS, "sub": "alice", "aud": "ratings.bookinfo", "exp": 1000}),
        );
        let forged = other.token(
            "k1",
            json!({"iss": ISS, "sub": "alice", "aud": "ratings.bookinfo"}),
        );
        let wrong_aud = issuer.token("k1", json!({"iss": ISS, "sub": "alice", "aud": "other"}));
        let unknown = issuer.token(
            "k1",
            json!({"iss": "https://elsewhere.test", "sub": "alice"}),
        );
        for (token, status, body) in [
            (expired.as_str(), 401, "Jwt is expired"),
            (forged.as_str(), 401, "Jwt verification fails"),
            (wrong_aud.as_str(), 403, "Audiences in Jwt are not allowed"),
            (unknown.as_str(), 401, "Jwt issuer is not configured"),
            (
                "not-a-jwt",
                401,
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            ),
        ] {
            let got = request(
                srv.http,
                http2,
                "GET",
                "/r?x=1",
                &[("authorization", &bearer(token))],
            )
            .await
            .unwrap();
            assert_eq!((got.status, got.body.as_str()), (status, body), "{got:?}");
            let realm = got.www_authenticate.unwrap_or_default();
            assert!(
                realm.starts_with("Bearer realm=\"http://ratings:9080/r?x=1\"")
                    && realm.contains("error=\"invalid_token\""),
                "{realm}"
            );
        }
        assert_eq!(
            srv.http_hits.load(Ordering::SeqCst),
            before,
            "no refused request forwarded"
        );
    }
    // The default locations: the access_token parameter too (taken off the query).
    let got = request(
        srv.http,
        false,
        "GET",
        &format!("/r?a=1&access_token={good}"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!((got.status, got.body.as_str()), (200, "HTTP/1.1 /r?a=1"));
    // The refusal is in the access log with Envoy's response code details.
    let log = srv.sidecar.access_log.lock().unwrap().join("\n");
    assert!(
        has(&log, &["401", "jwt_authn_access_denied{Jwt_is_expired}"]),
        "{log}"
    );
}

#[tokio::test]
async fn authorization_sees_the_request_principal_and_claims() {
    // Istio's task: require a valid token (requestPrincipals ["*"]), then a principal and a
    // claim (`request.auth.claims[groups]`), for HTTP/1.1 and HTTP/2.
    let issuer = Issuer::new("k1");
    let ra =
        json!({"policies": [{"name": "bookinfo/jwt", "jwtRules": [jwt_rule(&issuer, json!({}))]}]});
    let authz = policies(json!([
        {"name": "bookinfo/require-jwt", "rules": [{"from": [{"requestPrincipals": ["*"]}]}]},
        {"name": "bookinfo/admins-delete", "action": "DENY", "rules": [{
            "to": [{"methods": ["DELETE"]}],
            "when": [{"key": "request.auth.claims[groups]", "notValues": ["admin"]}]}]},
    ]));
    let srv = jwt_server(ra, authz).await;
    let alice = issuer.token(
        "k1",
        json!({"iss": ISS, "sub": "alice", "groups": ["admin", "dev"]}),
    );
    let bob = issuer.token("k1", json!({"iss": ISS, "sub": "bob", "groups": ["dev"]}));
    for http2 in [false, true] {
        assert_eq!(
            get(srv.http, http2, "/r").await,
            denied(),
            "no token: no principal"
        );
        let with = |t: &str| [("authorization", bearer(t))];
        for (method, token, status) in [
            ("GET", &alice, 200),
            ("GET", &bob, 200),
            ("DELETE", &alice, 200),
            ("DELETE", &bob, 403),
        ] {
            let h = with(token);
            let got = request(srv.http, http2, method, "/r", &[(h[0].0, h[0].1.as_str())])
                .await
                .unwrap();
            assert_eq!(got.status, status, "{method} as {token:.20}: {got:?}");
        }
    }
}

#[tokio::test]
async fn a_rule_whose_key_set_could_not_be_fetched_refuses_its_tokens() {
    // The operator renders `jwksError` when no key set can be had: fail closed for tokens of
    // that issuer, while requests without a token still pass (Istio's behaviour).
    let issuer = Issuer::new("k1");
    let ra = json!({"policies": [{"name": "bookinfo/jwt", "jwtRules": [
        {"issuer": ISS, "jwksUri": "http://keys.test/jwks", "jwksError": "GET http://keys.test/jwks: status 503"}]}]});
    let srv = jwt_server(ra, Value::Null).await;
    let token = issuer.token("k1", json!({"iss": ISS, "sub": "alice"}));
    let got = request(
        srv.http,
        false,
        "GET",
        "/r",
        &[("authorization", &bearer(&token))],
    )
    .await
    .unwrap();
    assert_eq!(
        (got.status, got.body.as_str()),
        (401, "Jwks remote fetch is failed")
    );
    assert_eq!(get(srv.http, false, "/r").await.status, 200);
}

#[tokio::test]
async fn a_request_authentication_change_reaches_connections_already_open() {
    let issuer = Issuer::new("k1");
    let hits = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let app_http = http_app(hits.clone()).await;
    let app_tcp = tcp_app(conns.clone()).await;
    let doc = |ra: Value| {
        let mut d = server_doc(app_http, app_tcp, Value::Null);
        if !ra.is_null() {
            d["requestAuthentication"] = ra;
        }
        d
    };
    let sidecar = Sidecar::new("ratings", "bookinfo", None, doc(Value::Null));
    let addr = sidecar.listen(Direction::Inbound, &format!("{POD_IP}:{HTTP_PORT}"));
    let token = issuer.token("k1", json!({"iss": ISS, "sub": "alice", "exp": 1000}));
    let stale = [("authorization", bearer(&token))];
    let stale = [(stale[0].0, stale[0].1.as_str())];
    let mut h2 = OpenConnection::open(addr, true).await;
    assert_eq!(
        h2.get_with("/r", &stale).await,
        200,
        "no rule: not looked at"
    );
    sidecar
        .load(doc(json!({"policies": [{"name": "bookinfo/jwt", "jwtRules": [jwt_rule(&issuer, json!({}))]}]})))
        .unwrap();
    assert_eq!(
        h2.get_with("/r", &stale).await,
        401,
        "the expired token is now refused"
    );
    // A rule that does not compile (a key set with no usable key) refuses the configuration;
    // the previous one keeps serving.
    let err = sidecar
        .load(doc(
            json!({"policies": [{"name": "bookinfo/bad", "jwtRules": [
            {"issuer": ISS, "jwks": "{\"keys\":[]}"}]}]}),
        ))
        .unwrap_err();
    assert!(
        err.contains("requestAuthentication") && err.contains("bookinfo/bad"),
        "{err}"
    );
    assert_eq!(h2.get_with("/r", &stale).await, 401);
}
