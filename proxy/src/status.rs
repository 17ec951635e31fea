//! The status port (Istio's pilot-agent 15020): the kubelet's probes of the app, rewritten by
//! the injector to `GET /app-health/<container>/livez|readyz|startupz` here, and its HTTP and
//! TCP lifecycle hooks, rewritten to `GET /app-lifecycle/<container>/prestopz|poststartz`, are
//! run from inside the pod against the app as the injector found them in the pod spec
//! (`ISTIO_KUBE_APP_PROBERS`, [`rustmesh_xds::probe`]). So probes and hooks work when the
//! namespace is mTLS STRICT (the kubelet has no mesh certificate), and a TCP probe tests the
//! app, not the capturing sidecar.
//!
//! | answer | when |
//! | --- | --- |
//! | 200 | `httpGet`: the app answered 3xx (the app's 2xx is passed on as it is); `tcpSocket`: connected; `grpc`: `SERVING` |
//! | the app's status | `httpGet`: the app answered 4xx or 5xx |
//! | 500 | the app could not be reached, did not answer within `timeoutSeconds` (when unset: 1 s for a probe, [`DEFAULT_HOOK_TIMEOUT`] for a hook), or a gRPC answer other than `SERVING` |
//! | 404 | no probe at that path (Istio answers 400 for an unknown `/app-health/` path) |
//! | 405 | a method other than `GET`/`HEAD` |
//! | 503 | more than [`MAX_PROBES_IN_FLIGHT`] probes running at once |
//!
//! * **Where**: the probe's `host` when it has one, else the pod's IP (`INSTANCE_IP`, as Istio's
//!   agent does today and as the kubelet does), else 127.0.0.1.
//! * **Not captured back**: the sidecar runs as uid 1337, but the capture rules send uid 1337's
//!   traffic to the pod's own IP over `lo` to the inbound capture port (`ISTIO_OUTPUT ! -d
//!   127.0.0.1/32 -o lo ... --uid-owner 1337 -j ISTIO_IN_REDIRECT`, for the app calling itself
//!   through a service). A probe to a local address is therefore sent from the inbound
//!   passthrough source 127.0.0.6 (`::6`), which the first `ISTIO_OUTPUT` rule returns, as
//!   Istio's agent does.
//! * **HTTPS** is not verified (as the kubelet), HTTP/1.1 only; redirects are not followed (a
//!   3xx is a success, as the kubelet counts a redirect to another host). The kubelet's headers
//!   are passed on (but `Host` and hop-by-hop ones), then the probe's `httpHeaders` set theirs;
//!   `Host` is the probe's `Host` header, else `<destination>:<port>`. The app's body is not
//!   returned.
//! * **gRPC**: `grpc.health.v1.Health/Check` with the probe's `service`, plaintext h2.
//!
//! Istio's agent endpoints are served too (with [`StatusServer::with_agent`], as `proxy run`
//! does):
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /healthz/ready` | the sidecar's readiness, as 15021 |
//! | `GET /stats/prometheus`, `GET /metrics` | the sidecar's metrics merged with the app's ([`crate::merge_metrics`]) |
//! | `POST /quitquitquit` | 200 `OK`, then drain and exit as on SIGTERM (what a Job's last step calls); 403 unless from localhost |
//! | `POST /drain` | 200 `OK`, then start draining (not ready, inbound connections close after their request) without exiting; 403 unless from localhost. A native sidecar's `preStop` hook calls it (`proxy request --debug-port=<port> POST drain`, `crate::wait`) |
//!
//! [`StatusServer::new`] binds (`0.0.0.0` and `[::]` when the host has IPv6), so a taken port
//! fails the start; [`StatusServer::run`] serves until the drain starts, then lets the probes in
//! flight finish. A bad `ISTIO_KUBE_APP_PROBERS` stops the start with an error naming the key.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustmesh_xds::probe::{
    APP_PROBERS_ENV, AppProbers, Grpc, HttpGet, Prober, TcpSocket as TcpProbe,
    parse_app_health_path,
};
use rustmesh_xds::well_known::{
    AGENT_STATUS_PORT, INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::{Error, Result, drain};

/// Probes run at once; more get 503 (the port is reachable from the pod network).
pub const MAX_PROBES_IN_FLIGHT: usize = 64;

/// A probe's time-out when the pod spec has none (Kubernetes' default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lifecycle hook's time-out when its prober has none (Istio's injector writes none; ours
/// writes the pod's grace period): Kubernetes' default `terminationGracePeriodSeconds`, after
/// which the kubelet stops waiting for a `preStop` hook.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `proxy run` for the status port.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Status port (Istio's pilot-agent port): `GET /app-health/<container>/<livez|readyz|startupz>`
    /// runs the app's original probe. 0 turns it off.
    #[arg(long, value_name = "PORT", default_value_t = AGENT_STATUS_PORT)]
    pub status_port: u16,
    /// The app's original probes, as the injector writes them (a JSON object keyed by
    /// `/app-health/...` path).
    #[arg(long, value_name = "JSON", env = APP_PROBERS_ENV)]
    pub app_probers: Option<String>,
    /// The pod's IP, where the probes go (default 127.0.0.1).
    #[arg(long, value_name = "IP", env = "INSTANCE_IP")]
    pub pod_ip: Option<String>,
    /// Where the app's own metrics are, merged into 15020's `/stats/prometheus`: the app's
    /// `prometheus.io/*` annotations as the injector moved them (`{"scrape":"true",
    /// "path":"/metrics","port":"8080"}`).
    #[arg(long, value_name = "JSON", env = crate::merge_metrics::ANNOTATIONS_ENV)]
    pub prometheus_annotations: Option<String>,
}

impl Default for StatusArgs {
    fn default() -> Self {
        StatusArgs {
            status_port: AGENT_STATUS_PORT,
            app_probers: None,
            pod_ip: None,
            prometheus_annotations: None,
        }
    }
}

impl StatusArgs {
    /// The probes (none when unset); a bad value is an error naming the key.
    pub fn probers(&self) -> Result<AppProbers> {
        let text = self.app_probers.as_deref().unwrap_or("");
        AppProbers::parse(text).map_err(|e| Error::InvalidFlag {
            flag: "--app-probers/ISTIO_KUBE_APP_PROBERS",
            value: shorten(text),
            reason: e.to_string(),
        })
    }

    /// Where probes without a `host` go: the pod's IP, else 127.0.0.1.
    pub fn destination(&self) -> Result<IpAddr> {
        match self
            .pod_ip
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(v) => v.parse().map_err(|_| Error::InvalidFlag {
                flag: "--pod-ip/INSTANCE_IP",
                value: v.to_owned(),
                reason: "not an IP address".into(),
            }),
        }
    }

    /// Where the app's metrics are (`None`: not scraped); a bad value is an error naming the
    /// variable.
    pub fn app_metrics(&self) -> Result<Option<crate::merge_metrics::AppMetrics>> {
        match self.prometheus_annotations.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(json) => crate::merge_metrics::parse(json, self.status_port).map_err(|reason| {
                Error::InvalidFlag {
                    flag: "--prometheus-annotations/ISTIO_PROMETHEUS_ANNOTATIONS",
                    value: shorten(json),
                    reason,
                }
            }),
        }
    }

    /// The bound server, or `None` with `--status-port 0`.
    pub fn bind(&self) -> Result<Option<StatusServer>> {
        let probers = self.probers()?;
        let destination = self.destination()?;
        self.app_metrics()?;
        if self.status_port == 0 {
            return Ok(None);
        }
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.status_port);
        StatusServer::new(addr, probers, destination).map(Some)
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// The bound status port.
pub struct StatusServer {
    sockets: Vec<std::net::TcpListener>,
    probes: Arc<Probes>,
    agent: Option<Arc<Agent>>,
}

/// What the status port serves besides the app's probes: Istio's agent endpoints.
pub struct Agent {
    /// Readiness, the sidecar's metrics, `/quitquitquit`.
    pub admin: Arc<crate::admin::AdminState>,
    /// `POST /drain`.
    pub drain: drain::Starter,
    /// The app's metrics to merge (from `ISTIO_PROMETHEUS_ANNOTATIONS`).
    pub app_metrics: Option<crate::merge_metrics::AppMetrics>,
}

/// The probes and where they go.
struct Probes {
    probers: AppProbers,
    destination: IpAddr,
    in_flight: Semaphore,
    tls: Arc<rustls::ClientConfig>,
}

impl StatusServer {
    /// Binds `addr` (with `0.0.0.0`, also `[::]` when the host has IPv6). Probes without a
    /// `host` go to `destination`.
    pub fn new(addr: SocketAddr, probers: AppProbers, destination: IpAddr) -> Result<Self> {
        let sockets = crate::listener::bind("status", addr, false)?;
        Ok(StatusServer {
            sockets,
            probes: Arc::new(Probes {
                probers,
                destination,
                in_flight: Semaphore::new(MAX_PROBES_IN_FLIGHT),
                tls: unverified_tls(),
            }),
            agent: None,
        })
    }

    /// Serves Istio's agent endpoints too (readiness, merged metrics, `/quitquitquit`,
    /// `/drain`).
    pub fn with_agent(mut self, agent: Agent) -> Self {
        self.agent = Some(Arc::new(agent));
        self
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Serves until the drain closes (kubelet's probes keep working while the sidecar drains);
    /// connections open then finish their probe.
    pub async fn run(self, drain: drain::Watch) {
        tracing::info!(
            addrs = ?self.local_addrs(),
            probes = ?self.probes.probers.0.keys().collect::<Vec<_>>(),
            destination = %self.probes.destination,
            "status port serving the app's probes"
        );
        let (probes, agent) = (self.probes, self.agent);
        crate::listener::accept_loop("status", self.sockets, drain, move |stream, drain| {
            serve_connection(probes.clone(), agent.clone(), stream, drain)
        })
        .await;
    }
}

async fn serve_connection(
    probes: Arc<Probes>,
    agent: Option<Arc<Agent>>,
    stream: TcpStream,
    drain: drain::Watch,
) {
    let local_peer = stream
        .peer_addr()
        .is_ok_and(|a| a.ip().to_canonical().is_loopback());
    let service = hyper::service::service_fn(move |req| {
        let (probes, agent) = (probes.clone(), agent.clone());
        async move {
            Ok::<_, Infallible>(match agent {
                Some(agent) if !is_probe_path(req.uri().path()) => {
                    agent_endpoint(&agent, local_peer, req).await
                }
                _ => handle(&probes, req).await,
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = drain.closed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// `/app-health/...` and `/app-lifecycle/...`: the app's probes.
fn is_probe_path(path: &str) -> bool {
    path.starts_with("/app-health/") || path.starts_with("/app-lifecycle/")
}

/// Istio's agent endpoints (see the module doc).
async fn agent_endpoint(
    agent: &Agent,
    local_peer: bool,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz/ready") => {
            let (status, word) = crate::admin::readiness(&agent.admin);
            let mut r = Response::new(Full::new(Bytes::from(format!("{word}\n"))));
            *r.status_mut() = status;
            r
        }
        (&Method::GET, "/stats/prometheus" | "/metrics") => {
            merged_metrics(agent, req.headers()).await
        }
        (_, "/quitquitquit" | "/drain") if !local_peer => answer(
            StatusCode::FORBIDDEN,
            "Only requests from localhost are allowed\n",
        ),
        (&Method::POST, "/quitquitquit") => {
            tracing::info!("POST /quitquitquit on the status port: draining, then exiting");
            agent.admin.quit.notify_one();
            answer(StatusCode::OK, "OK")
        }
        (&Method::POST, "/drain") => {
            tracing::info!("POST /drain on the status port: draining (not exiting)");
            agent.drain.start();
            answer(StatusCode::OK, "OK")
        }
        (_, "/quitquitquit" | "/drain") => {
            answer(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
        }
        (&Method::GET | &Method::HEAD, _) => answer(StatusCode::NOT_FOUND, "not found\n"),
        _ => answer(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// The sidecar's metrics, then the app's (when configured and it answers).
async fn merged_metrics(agent: &Agent, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
    let mut body = agent.admin.prometheus.encode().into_bytes();
    let mut content_type = crate::merge_metrics::TEXT_FORMAT;
    if let Some(app) = &agent.app_metrics {
        match crate::merge_metrics::scrape(app, headers).await {
            Ok(scraped) => {
                content_type = crate::merge_metrics::negotiate(scraped.content_type.as_deref());
                if !body.is_empty() && !body.ends_with(b"\n") {
                    body.push(b'\n');
                }
                body.extend_from_slice(&scraped.body);
            }
            Err(e) => tracing::warn!(
                port = app.port,
                path = %app.path,
                "merged metrics: the app's metrics could not be scraped: {e}"
            ),
        }
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn handle(probes: &Probes, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let path = req.uri().path();
    let Some(prober) = probes.probers.0.get(path) else {
        return answer(StatusCode::NOT_FOUND, "no app probe at this path\n");
    };
    let Ok(_permit) = probes.in_flight.try_acquire() else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "too many probes at once\n");
    };
    let kind = parse_app_health_path(path).map(|(container, kind)| (container.to_owned(), kind));
    let hook = kind.as_ref().is_some_and(|(_, k)| k.is_hook());
    let status = probes.run(prober, hook, req.headers()).await;
    if !status.is_success()
        && let Some((container, kind)) = kind
    {
        tracing::debug!(container, probe = kind.field(), %status, "app probe failed");
    }
    answer(status, "")
}

impl Probes {
    /// Runs one probe (or `hook`) within its time-out; the status to answer the kubelet with.
    async fn run(&self, prober: &Prober, hook: bool, incoming: &http::HeaderMap) -> StatusCode {
        let default = if hook {
            DEFAULT_HOOK_TIMEOUT
        } else {
            DEFAULT_TIMEOUT
        };
        let timeout = prober
            .timeout_seconds
            .filter(|t| *t > 0)
            .map_or(default, |t| Duration::from_secs(u64::from(t)));
        let attempt = async {
            if let Some(get) = &prober.http_get {
                self.http(get, incoming).await
            } else if let Some(tcp) = &prober.tcp_socket {
                self.tcp(tcp).await
            } else if let Some(grpc) = &prober.grpc {
                self.grpc(grpc).await
            } else {
                Err("no action".to_owned())
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                tracing::debug!("app probe: {e}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Err(_) => {
                tracing::debug!(?timeout, "app probe: no answer within the time-out");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The address of `host` (or the default destination) and `port`.
    async fn target(&self, host: Option<&str>, port: u16) -> Result<SocketAddr, String> {
        match host {
            None => Ok(SocketAddr::new(self.destination, port)),
            Some(h) => match h.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => Ok(SocketAddr::new(ip, port)),
                Err(_) => tokio::net::lookup_host((h, port))
                    .await
                    .map_err(|e| format!("resolving {h}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("{h} has no address")),
            },
        }
    }

    /// Connects to `addr`, from the inbound passthrough source when `addr` is this pod's, so
    /// that the capture rules let the connection through (see the module doc).
    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, String> {
        let local = addr.ip().is_loopback() || addr.ip() == self.destination;
        let source = match addr {
            SocketAddr::V4(_) => INBOUND_PASSTHROUGH_SOURCE_V4,
            SocketAddr::V6(_) => INBOUND_PASSTHROUGH_SOURCE_V6,
        };
        let socket = || match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let fail = |e: std::io::Error| format!("connecting to {addr}: {e}");
        let s = socket().map_err(fail)?;
        if local && let Err(e) = s.bind(SocketAddr::new(source, 0)) {
            // `::6` exists on `lo` only where the capture step added it (a pod with IPv6
            // capture); without capture, no source is needed.
            tracing::debug!(%source, "app probe from the default source: {e}");
            return socket().map_err(fail)?.connect(addr).await.map_err(fail);
        }
        s.connect(addr).await.map_err(fail)
    }

    async fn tcp(&self, tcp: &TcpProbe) -> Result<StatusCode, String> {
        let addr = self.target(tcp.host.as_deref(), tcp.port).await?;
        drop(self.connect(addr).await?);
        Ok(StatusCode::OK)
    }

    async fn http(&self, get: &HttpGet, incoming: &http::HeaderMap) -> Result<StatusCode, String> {
        let addr = self.target(get.host.as_deref(), get.port).await?;
        let https = get
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let mut path = get.path.clone().unwrap_or_default();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let mut req = Request::get(path.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("path {path:?}: {e}"))?;
        let headers = req.headers_mut();
        for (name, value) in incoming {
            use http::header::*;
            let hop = [
                HOST,
                CONNECTION,
                TRANSFER_ENCODING,
                UPGRADE,
                TE,
                TRAILER,
                PROXY_AUTHORIZATION,
                CONTENT_LENGTH,
            ];
            if !hop.contains(name) && name.as_str() != "keep-alive" {
                headers.append(name, value.clone());
            }
        }
        for h in &get.http_headers {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is not valid", h.name))?;
            let value = http::HeaderValue::from_str(&h.value)
                .map_err(|_| format!("header {:?}: value is not valid", h.name))?;
            headers.insert(name, value);
        }
        if !headers.contains_key(http::header::HOST) {
            let host = match (get.host.as_deref(), addr.ip()) {
                (Some(h), _) => format!("{h}:{}", addr.port()),
                (None, IpAddr::V6(ip)) => format!("[{ip}]:{}", addr.port()),
                (None, IpAddr::V4(ip)) => format!("{ip}:{}", addr.port()),
            };
            let value = http::HeaderValue::from_str(&host).map_err(|e| e.to_string())?;
            headers.insert(http::header::HOST, value);
        }
        let stream = self.connect(addr).await?;
        let status = if https {
            let name = match get.host.as_deref().map(|h| h.trim_matches(['[', ']'])) {
                Some(h) if h.parse::<IpAddr>().is_err() => {
                    ServerName::try_from(h.to_owned()).map_err(|e| e.to_string())?
                }
                _ => ServerName::IpAddress(addr.ip().into()),
            };
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS with {addr}: {e}"))?;
            send(tls, req).await?
        } else {
            send(stream, req).await?
        };
        Ok(match status.as_u16() {
            300..=399 => StatusCode::OK,
            _ => status,
        })
    }

    async fn grpc(&self, grpc: &Grpc) -> Result<StatusCode, String> {
        let addr = self.target(None, grpc.port).await?;
        let stream = self.connect(addr).await?;
        let mut stream = Some(stream);
        let connector = tower::service_fn(move |_: http::Uri| {
            let s = stream.take();
            async move {
                s.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("one connection per probe"))
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_with_connector(connector)
            .await
            .map_err(|e| format!("gRPC to {addr}: {e}"))?;
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.map_err(|e| e.to_string())?;
        let answer = client
            .unary::<_, HealthCheckResponse, _>(
                tonic::Request::new(HealthCheckRequest {
                    service: grpc.service.clone().unwrap_or_default(),
                }),
                http::uri::PathAndQuery::from_static(HEALTH_CHECK),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(|s| format!("gRPC health check: {}: {}", s.code(), s.message()))?
            .into_inner();
        Ok(if answer.status == SERVING {
            StatusCode::OK
        } else {
            tracing::debug!(status = answer.status, "gRPC health: not SERVING");
            StatusCode::INTERNAL_SERVER_ERROR
        })
    }
}

async fn send<S>(io: S, req: Request<Empty<Bytes>>) -> Result<StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(req).await.map_err(|e| e.to_string());
    drop(sender);
    conn.abort();
    // The body is not read: the status is all the kubelet gets.
    Ok(response?.status())
}

/// The method path of the gRPC health check.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus.SERVING`.
pub const SERVING: i32 = 1;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, tonic_prost::prost::Message)]
#[prost(prost_path = "::tonic_prost::prost")]
pub struct HealthCheckRequest {
    /// The service asked about; empty for the server as a whole.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, tonic_prost::prost::Message)]
#[prost(prost_path = "::tonic_prost::prost")]
pub struct HealthCheckResponse {
    /// `UNKNOWN` 0, `SERVING` 1, `NOT_SERVING` 2, `SERVICE_UNKNOWN` 3.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// TLS towards the app without verifying its certificate, as the kubelet's HTTPS probe.
fn unverified_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth()
        });
    // The ring provider supports the default protocol versions.
    Arc::new(config.unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))))
            .with_no_client_auth()
    }))
}

/// Accepts any server certificate; handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The native sidecar's `preStop` hook as the webhook writes it, `proxy request
    /// --debug-port=<status port> POST drain` (Istio's `pilot-agent request`), against the real
    /// status server: the sidecar starts draining, and the server keeps answering the kubelet.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pre_stop_request_starts_the_drain() {
        let (signal, watch) = drain::channel();
        let admin = Arc::new(crate::admin::AdminState {
            store: Arc::new(crate::snapshot::Store::new()),
            metrics: crate::stats::Metrics::default(),
            prometheus: Arc::new(crate::metrics::Metrics::new()),
            draining: signal.flag(),
            quit: Arc::new(tokio::sync::Notify::new()),
            bound: vec![],
            router: None,
            identity: None,
        });
        let server = StatusServer::new(
            "127.0.0.1:0".parse().unwrap(),
            AppProbers::default(),
            IpAddr::from([127, 0, 0, 1]),
        )
        .unwrap()
        .with_agent(Agent {
            admin,
            drain: signal.starter(),
            app_metrics: None,
        });
        let port = server.local_addrs()[0].port();
        tokio::spawn(server.run(watch));
        assert!(!signal.is_draining());

        let args = crate::wait::RequestArgs {
            method: "POST".into(),
            path: "drain".into(),
            body: None,
            debug_port: port,
            timeout_seconds: 10,
        };
        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            crate::wait::request(&args, &mut out).map(|()| out)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(out, b"OK");
        assert!(signal.is_draining(), "POST /drain starts the drain");

        // Still serving: a GET of /drain is refused by method, not by a closed port.
        let args = crate::wait::RequestArgs {
            method: "GET".into(),
            path: "/drain".into(),
            body: None,
            debug_port: port,
            timeout_seconds: 10,
        };
        let err = tokio::task::spawn_blocking(move || crate::wait::request(&args, &mut Vec::new()))
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed (HTTP 405)"), "{err}");
    }
}
