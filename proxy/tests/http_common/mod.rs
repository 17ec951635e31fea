//! Shared by the `http_*` tests: real upstream servers on loopback that report who they are,
//! the clusters over them as configuration ([`TestClusters`], built by the real cluster manager,
//! `ClusterManager::build`: load balancing, consistent hashing, limits and pools are the
//! sidecar's), a proxy started with `serve_connection` on a loopback listener, and HTTP/1.1 and
//! h2c clients.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustmesh_proxy::body::{ProxyBody, boxed};
use rustmesh_proxy::cluster::{ClusterManager, Clusters};
use rustmesh_proxy::http::upstreams::ClusterUpstreams;
use rustmesh_proxy::http::{
    HttpContext, HttpSettings, Rng, RouteTable, serve_connection, serve_connection_draining,
    serve_connection_with_drain,
};
use rustmesh_proxy::metrics::{Destinations, Metrics, Reporter, WorkloadInfo};
use rustmesh_proxy::pool::PassthroughPools;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::cluster::Thresholds;
use rustmesh_xds::route::RouteConfiguration;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How a test upstream behaves.
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// Answer every request with this status.
    pub status: Option<u16>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Serve h2c only (prior knowledge); otherwise HTTP/1.1 and h2c.
    pub http2: bool,
}

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The connection's peer (who the upstream thinks the client is).
    pub peer: SocketAddr,
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running upstream.
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests fully answered (after any delay).
    pub finished: Arc<AtomicUsize>,
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A body fed from a channel (streaming responses, gRPC-shaped answers).
pub struct ChannelBody(pub mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn up_full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed()
}

/// Starts an upstream named `name` on loopback.
pub async fn upstream(name: &str, behavior: Behavior) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    upstream_on(listener, name, behavior)
}

/// Starts an upstream named `name` on `listener` (on the current runtime).
pub fn upstream_on(listener: TcpListener, name: &str, behavior: Behavior) -> Upstream {
    let up = Upstream {
        name: name.to_string(),
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        finished: Arc::default(),
        hits: Arc::default(),
    };
    let u = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let u = u.clone();
            let b = behavior.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let u = u.clone();
                    let b = b.clone();
                    async move { Ok::<_, Infallible>(serve(u, b, peer, req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .http2()
                    .max_concurrent_streams(1000)
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

async fn serve(
    u: Upstream,
    b: Behavior,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<UpBody> {
    u.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    // WebSocket: accept and echo every message.
    if path == "/ws" {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static(""));
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                echo_ws(ws).await;
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header(
                "sec-websocket-accept",
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
            )
            .body(up_full(""))
            .unwrap();
    }
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        // Echo each request data frame as it arrives, then trailers with grpc-status 0.
        let (tx, rx) = mpsc::channel(16);
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data()
                    && tx.send(Frame::data(d)).await.is_err()
                {
                    return;
                }
            }
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            t.insert("grpc-message", "echoed".parse().unwrap());
            let _ = tx.send(Frame::trailers(t)).await;
        });
        return Response::builder()
            .header("content-type", "application/grpc")
            .header("x-upstream", u.name.as_str())
            .body(ChannelBody(rx).boxed())
            .unwrap();
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    u.seen.lock().unwrap().push(Seen {
        peer,
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: version.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let mut delay = b.delay;
    if let Some(ms) = path.strip_prefix("/delay/") {
        delay = ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut status = b.status.unwrap_or(200);
    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    }
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let report = json!({
        "upstream": u.name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "path": parts.uri.path(),
        "version": version,
        "headers": headers,
        "body_len": body.len(),
    });
    u.finished.fetch_add(1, Ordering::SeqCst);
    let builder = Response::builder()
        .status(status)
        .header("x-upstream", u.name.as_str())
        .header("x-upstream-only", "remove-me")
        .header("content-type", "application/json");
    if path == "/chunked" {
        // A streamed, chunked answer: three chunks, no content-length.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for c in ["one,", "two,", "three"] {
                let _ = tx.send(Frame::data(Bytes::from_static(c.as_bytes()))).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        return builder.body(ChannelBody(rx).boxed()).unwrap();
    }
    if path == "/echo" {
        return builder.body(up_full(body)).unwrap();
    }
    builder.body(up_full(report.to_string())).unwrap()
}

async fn echo_ws<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) => {
                let echo = Message::Text(format!("echo:{t}").into());
                if ws.send(echo).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

/// The clusters a test proxy sends to, as configuration: STATIC clusters over the tests'
/// loopback upstreams, built by the real cluster manager in [`start_proxy`].
#[derive(Default)]
pub struct TestClusters {
    clusters: Vec<Value>,
}

impl TestClusters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a round-robin HTTP/1.1 cluster over these upstreams.
    pub fn cluster(self, name: &str, ups: &[&Upstream]) -> Self {
        self.add(name, &addrs(ups), "HTTP1", "ROUND_ROBIN", None)
    }

    /// Adds a round-robin h2c cluster.
    pub fn cluster_h2(self, name: &str, ups: &[&Upstream]) -> Self {
        self.add(name, &addrs(ups), "HTTP2", "ROUND_ROBIN", None)
    }

    /// Adds an HTTP/1.1 `RING_HASH` cluster (consistent hashing when the route has a hash
    /// policy).
    pub fn cluster_ring_hash(self, name: &str, ups: &[&Upstream]) -> Self {
        self.add(name, &addrs(ups), "HTTP1", "RING_HASH", None)
    }

    /// Adds a round-robin HTTP/1.1 cluster with connection-pool limits.
    pub fn cluster_limited(self, name: &str, ups: &[&Upstream], t: Thresholds) -> Self {
        self.add(name, &addrs(ups), "HTTP1", "ROUND_ROBIN", Some(t))
    }

    /// Adds a round-robin HTTP/1.1 cluster with these raw addresses (e.g. nothing listening),
    /// in this order.
    pub fn cluster_addrs(self, name: &str, addrs: &[SocketAddr]) -> Self {
        self.add(name, addrs, "HTTP1", "ROUND_ROBIN", None)
    }

    /// Adds a round-robin HTTP/1.1 STRICT_DNS cluster of these `(name, port)`, which the
    /// proxy resolves (again at the answer's TTL, else every second).
    pub fn cluster_dns(mut self, name: &str, hosts: &[(&str, u16)]) -> Self {
        let endpoints: Vec<Value> = hosts.iter().map(|(h, p)| endpoint(h, *p)).collect();
        self.clusters.push(json!({
            "name": name, "type": "STRICT_DNS", "connectTimeout": "2s", "lbPolicy": "ROUND_ROBIN",
            "upstreamProtocol": "HTTP1", "dnsRefreshRate": "1s", "respectDnsTtl": true,
            "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": endpoints}]},
        }));
        self
    }

    fn add(
        mut self,
        name: &str,
        addrs: &[SocketAddr],
        protocol: &str,
        lb: &str,
        t: Option<Thresholds>,
    ) -> Self {
        let endpoints: Vec<Value> = addrs
            .iter()
            .map(|a| endpoint(&a.ip().to_string(), a.port()))
            .collect();
        let mut c = json!({
            "name": name, "type": "STATIC", "connectTimeout": "2s", "lbPolicy": lb,
            "upstreamProtocol": protocol,
            "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": endpoints}]},
        });
        if let Some(t) = t {
            c["circuitBreakers"] = json!({"thresholds": [t]});
        }
        self.clusters.push(c);
        self
    }

    /// The configuration holding these clusters.
    pub fn config(&self) -> ProxyConfig {
        ProxyConfig::from_json(&json!({"clusters": self.clusters}).to_string())
            .expect("test clusters are valid configuration")
    }
}

/// An endpoint of a cluster's `loadAssignment`: an IP address or a DNS name, and a port.
fn endpoint(host: &str, port: u16) -> Value {
    json!({"endpoint": {"address": {"socketAddress": {"address": host, "portValue": port}}}})
}

fn addrs(ups: &[&Upstream]) -> Vec<SocketAddr> {
    ups.iter().map(|u| u.addr).collect()
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// The cluster manager's table the proxy sends to (stats, endpoints).
    pub clusters: Clusters,
    pub log: Arc<Mutex<Vec<String>>>,
    pub routes: rustmesh_proxy::http::SharedRoutes,
}

/// Istio's `accessLogFile: /dev/stdout` with `accessLogEncoding` and its default format.
pub fn access_log(
    encoding: rustmesh_xds::access_log::Encoding,
) -> rustmesh_xds::access_log::AccessLog {
    rustmesh_xds::access_log::AccessLog {
        filter: None,
        path: "/dev/stdout".into(),
        encoding,
        format: None,
    }
}

/// Options for [`start_proxy`].
pub struct Options {
    pub labels: BTreeMap<String, String>,
    pub settings: HttpSettings,
    pub seed: u64,
    /// An access log (`json_access_log()`, or TEXT...), lines in `log`.
    pub access_log: Option<rustmesh_xds::access_log::AccessLog>,
    pub reporter: Reporter,
    pub destinations: Destinations,
    /// Drain signal: connections drain gracefully once it turns true.
    pub drain: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            labels: [("app", "productpage"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            settings: HttpSettings::default(),
            seed: 42,
            access_log: None,
            reporter: Reporter::Source,
            destinations: Destinations::default(),
            drain: None,
        }
    }
}

/// Starts `serve_connection` on a loopback listener.
pub async fn start_proxy(rc: RouteConfiguration, ups: TestClusters, opts: Options) -> Proxy {
    let table = RouteTable::compile(&rc, &opts.labels).expect("routes compile");
    let routes = Arc::new(arc_swap::ArcSwap::from_pointee(table));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    let manager = ClusterManager::new(rustmesh_proxy::stats::Metrics::default());
    let clusters = manager.build(&ups.config());
    manager.commit(&clusters);
    let upstreams = ClusterUpstreams::new(clusters.clone(), Arc::new(PassthroughPools::default()));
    let drain = opts.drain.clone();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = log.clone();
    let access_logs =
        rustmesh_proxy::access_log::AccessLogs::compile(opts.access_log.as_slice()).unwrap();
    let workload = Arc::new(WorkloadInfo {
        name: "productpage-v1".into(),
        namespace: "default".into(),
        labels: opts.labels.clone(),
        cluster: "Kubernetes".into(),
        pod: "productpage-v1-7dbc5495bd-9sm76".into(),
    });
    let base = HttpContext {
        routes: routes.clone(),
        upstreams,
        metrics: metrics.clone(),
        own_metadata: Arc::new(rustmesh_proxy::peer::OwnMetadata::of(&workload, None)),
        workload,
        destinations: Arc::new(opts.destinations),
        reporter: opts.reporter,
        peer: addr,
        local: addr,
        settings: Arc::new(opts.settings),
        rng: Arc::new(Rng::seeded(opts.seed)),
        access_logs,
        access_log: rustmesh_proxy::access_log::Sink::new(move |l| {
            sink.lock().unwrap().push(l.to_string())
        }),
        peer_identity: None,
        own_identity: None,
        client_cert_details: None,
        authz: None,
        trace: None,
        requested_server_name: None,
        metric_settings: Default::default(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let mut ctx = base.clone();
            ctx.peer = peer;
            let drain = drain.clone();
            tokio::spawn(async move {
                let Some(mut rx) = drain else {
                    let _ = serve_connection(stream, ctx).await;
                    return;
                };
                if *rx.borrow() {
                    // Accepted while draining, as the sidecar's inbound side does it.
                    let _ = serve_connection_draining(stream, ctx).await;
                    return;
                }
                let signal = async move {
                    while !*rx.borrow_and_update() {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                };
                let _ = serve_connection_with_drain(stream, ctx, signal).await;
            });
        }
    });
    Proxy {
        addr,
        metrics,
        clusters,
        log,
        routes,
    }
}

/// An answer as a test sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    /// Which upstream answered (`x-upstream`).
    pub fn upstream(&self) -> String {
        self.headers
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// A header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

/// HTTP clients to the proxy.
#[derive(Clone)]
pub struct Clients {
    pub h1: Client<HttpConnector, ProxyBody>,
    pub h2: Client<HttpConnector, ProxyBody>,
}

impl Clients {
    pub fn new() -> Self {
        Clients {
            h1: Client::builder(TokioExecutor::new()).build_http(),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a request to the proxy for `host` + `path`.
pub fn request(proxy: SocketAddr, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
}

/// Sends and reads the whole answer.
pub async fn send(client: &Client<HttpConnector, ProxyBody>, req: Request<ProxyBody>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// GET `path` on `host` over HTTP/1.1.
pub async fn get(c: &Clients, proxy: SocketAddr, host: &str, path: &str) -> Answer {
    send(
        &c.h1,
        request(proxy, host, path).body(empty_body()).unwrap(),
    )
    .await
}

pub fn empty_body() -> ProxyBody {
    boxed(http_body_util::Empty::<Bytes>::new())
}

pub fn body(b: impl Into<Bytes>) -> ProxyBody {
    boxed(Full::new(b.into()))
}

/// One gRPC length-prefixed message (uncompressed) carrying `s`.
pub fn grpc_message(s: &str) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    Bytes::from(b)
}

/// Reads the route table JSON into the model type.
pub fn routes(v: Value) -> RouteConfiguration {
    serde_json::from_value(v).expect("route configuration JSON")
}

/// A one-vhost route table for `domains` with these routes (JSON).
pub fn vhost(domains: &[&str], routes_json: Value) -> RouteConfiguration {
    routes(json!({
        "name": "9080",
        "virtualHosts": [{
            "name": "test",
            "domains": domains,
            "routes": routes_json,
            "includeRequestAttemptCount": true,
        }]
    }))
}
