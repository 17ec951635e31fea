//! The HTTP connection manager: serves one downstream connection (HTTP/1.1 with keep-alive,
//! chunked bodies and upgrades, or h2c with prior knowledge) and routes every request.

use crate::body::{BodyEnd, ObservedBody, ProxyBody, ReplayLog, boxed, empty, full};
use crate::drive::{BatchIo, ConnExecutor, Driven, Queue};
use crate::http::headers;
use crate::http::route::{
    AbortWith, Action, AttemptFailure, CompiledRoute, ForwardAction, RequestView, RouteTable,
};
use crate::http::{
    ConnectionError, DownstreamInfo, HttpContext, UpstreamError, UpstreamResponse, hash, route,
};
use crate::metrics::{DestinationService, Peers, Reporter, RequestHandles, RequestSample};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustmesh_xds::listener::HttpConnectionManager;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

/// Serves one downstream connection until it closes.
///
/// `io` is the accepted (and, after sniffing, replayed) connection; `hcm` is the filter chain's
/// connection manager (its `accessLog` turns on the JSON access log); `ctx` carries the routes,
/// the cluster manager and the connection's addresses. Returns when the client closes, after a
/// protocol error (bad HTTP/1.1 framing, invalid HTTP/2 frames) or when the request head is not
/// received within [`HttpSettings::header_read_timeout`](crate::http::HttpSettings).
pub async fn serve_connection<IO>(
    io: IO,
    hcm: &HttpConnectionManager,
    ctx: HttpContext,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_with_drain(io, hcm, ctx, std::future::pending()).await
}

/// [`serve_connection`], draining gracefully once `drain` resolves (SIGTERM): requests in
/// flight finish, HTTP/1.1 answers carry `Connection: close` and stop keep-alive, HTTP/2 sends
/// GOAWAY; then the connection ends.
pub async fn serve_connection_with_drain<IO, D>(
    io: IO,
    hcm: &HttpConnectionManager,
    ctx: HttpContext,
    drain: D,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: std::future::Future<Output = ()>,
{
    let peer = ctx.peer;
    let settings = ctx.settings.clone();
    let conn = Arc::new(Conn {
        ctx,
        access_log: hcm.access_log,
        route_name_prefix: hcm.stat_prefix.clone(),
        metric_handles: Mutex::new(Vec::new()),
    });
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    // HTTP/2 streams run in this connection's task, and what a turn of it writes goes out in
    // one system call (`drive`).
    let queue = Arc::new(Queue::default());
    let io = BatchIo::new(io);
    let flush = io.flusher();
    let mut builder = auto::Builder::new(ConnExecutor::for_connection(queue.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_request_headers_bytes.max(8192))
        .max_headers(settings.max_request_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_request_headers_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(settings.max_concurrent_streams);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let main = async move {
        tokio::pin!(conn);
        tokio::pin!(drain);
        tokio::select! {
            r = conn.as_mut() => r,
            () = &mut drain => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    let result = Driven::new(main, queue, Some(flush), false).await;
    result.map_err(|source| ConnectionError { peer, source })
}

struct Conn {
    ctx: HttpContext,
    access_log: bool,
    route_name_prefix: String,
    /// Metric handles by what varies between the requests of one connection. The connection
    /// holds its configuration (and so the `DestinationService`s) for its whole life, so the
    /// service's address identifies it here.
    metric_handles: Mutex<Vec<(MetricKey, RequestHandles)>>,
}

/// What picks a request's metric label set within one connection.
#[derive(PartialEq, Eq)]
struct MetricKey {
    service: usize,
    grpc: bool,
    code: u16,
    flags: String,
    grpc_status: Option<String>,
}

/// Distinct label sets a connection keeps handles for (then it looks them up each time).
const MAX_CACHED_LABEL_SETS: usize = 16;

/// What is known about one request, for metrics and the access log.
struct Exchange {
    start: Instant,
    wall_start: SystemTime,
    method: Method,
    path: String,
    version: Version,
    authority: String,
    grpc: bool,
    request_id: String,
    user_agent: Option<String>,
    forwarded_for: Option<String>,
    route_name: Option<String>,
    cluster: Option<String>,
    upstream_host: Option<SocketAddr>,
    upstream_time: Option<Duration>,
    flags: Vec<&'static str>,
    request_body: Option<Arc<ReplayLog>>,
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Envoy's mapping of a local reply's HTTP status to a gRPC status.
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn grpc_reply(code: u32, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(empty());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        r.headers_mut().insert("grpc-message", v);
    }
    r
}

/// The size of a request head: request line and `name: value` header lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    // The length of the URI as written (`Display`), without writing it.
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1);
    let line = req.method().as_str().len() + uri_len + 11;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// A reply made by the proxy itself (`text/plain`, or a trailers-only gRPC answer for gRPC requests).
fn local_reply(code: u16, body: &str, grpc: bool) -> Response<ProxyBody> {
    if grpc {
        return grpc_reply(http_to_grpc(code), body);
    }
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status(code);
    if !body.is_empty() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

const RESET_BEFORE_HEADERS: &str = "upstream connect error or disconnect/reset before headers";

/// The local reply and response flag for an upstream error.
fn error_reply(e: &UpstreamError, grpc: bool) -> (Response<ProxyBody>, &'static str) {
    let (body, flag) = match e {
        UpstreamError::ClusterNotFound(_) => ("cluster not found".to_string(), "NC"),
        UpstreamError::NoHealthyUpstream => ("no healthy upstream".to_string(), "UH"),
        UpstreamError::Overflow => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: overflow"),
            "UO",
        ),
        UpstreamError::ConnectFailure { .. } => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: connection failure"),
            "UF",
        ),
        UpstreamError::Reset { .. } => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: connection termination"),
            "UC",
        ),
        UpstreamError::RefusedStream { .. } => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: remote refused stream reset"),
            "UR",
        ),
    };
    let mut r = local_reply(503, &body, grpc);
    if matches!(e, UpstreamError::Overflow) {
        r.headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    (r, flag)
}

async fn handle(conn: Arc<Conn>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let ctx = &conn.ctx;
    let routes: Arc<RouteTable> = ctx.routes.load_full();
    // The URI and the Host header share hyper's read buffer: cloning them counts references,
    // where copying authority, path and query into strings cost an allocation each.
    let uri = req.uri().clone();
    let host = match uri.authority() {
        Some(_) => None,
        None => req.headers().get(HOST).cloned(),
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let scheme = uri.scheme_str().unwrap_or("http");
    let path = uri.path();
    let query = uri.query();
    // What only the access log reads is copied only when it is on.
    let log = conn.access_log;
    let given = req
        .headers()
        .get(&headers::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty());
    let request_id = if let Some(id) = given {
        if log { id.to_owned() } else { String::new() }
    } else {
        let id = ctx.rng.uuid();
        if let Ok(v) = HeaderValue::from_bytes(&id) {
            req.headers_mut().insert(headers::X_REQUEST_ID, v);
        }
        if log {
            String::from_utf8_lossy(&id).into_owned()
        } else {
            String::new()
        }
    };
    let mut ex = Exchange {
        start: Instant::now(),
        wall_start: SystemTime::now(),
        method: req.method().clone(),
        path: if log {
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| path.to_string())
        } else {
            String::new()
        },
        version: req.version(),
        authority: if log {
            authority.to_string()
        } else {
            String::new()
        },
        grpc: is_grpc(req.headers()),
        request_id,
        user_agent: log
            .then(|| header_str(req.headers(), "user-agent"))
            .flatten(),
        forwarded_for: log
            .then(|| header_str(req.headers(), "x-forwarded-for"))
            .flatten(),
        route_name: None,
        cluster: None,
        upstream_host: None,
        upstream_time: None,
        flags: Vec::new(),
        request_body: None,
    };
    // hyper's HTTP/1 read buffer cannot go below 8 KiB, so smaller limits are enforced here,
    // on the head as received (request line and headers), as Envoy's max_request_headers_kb.
    if head_size(&req) > ctx.settings.max_request_headers_bytes {
        let grpc = ex.grpc;
        return conn.finish(ex, local_reply(431, "", grpc));
    }
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let view = RequestView {
        method: req.method(),
        scheme,
        authority,
        path,
        query,
        headers: req.headers(),
    };
    let Some(m) = routes.find(&view) else {
        ex.flags.push("NR");
        let grpc = ex.grpc;
        return conn.finish(ex, local_reply(404, "", grpc));
    };
    let route = m.route;
    if log {
        ex.route_name = route.name.clone();
    }
    // Choose the cluster first, so faults and local replies are counted against it too.
    let chosen = match &route.action {
        Action::Forward(fwd) => {
            let (cluster, weighted) = fwd.clusters.choose(&ctx.rng);
            ex.cluster = Some(cluster.to_string());
            Some((cluster, weighted))
        }
        _ => None,
    };
    let fault = route::decide_fault(route.fault.as_ref(), &ctx.rng);
    if let Some(d) = fault.delay {
        ex.flags.push("DI");
        tokio::time::sleep(d).await;
    }
    if let Some(a) = fault.abort {
        ex.flags.push("FI");
        let resp = match a {
            AbortWith::Http(code) => local_reply(code, "fault filter abort", ex.grpc),
            AbortWith::Grpc(code) => grpc_reply(code, "fault filter abort"),
        };
        return conn.finish(ex, resp);
    }
    match &route.action {
        Action::Redirect(rd) => {
            let location = route::redirect_location(rd, scheme, authority, path, query);
            let mut resp = Response::new(empty());
            *resp.status_mut() = status(rd.response_code);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, v);
            }
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(0));
            headers::apply(
                resp.headers_mut(),
                &route.response_headers_to_add,
                &route.response_headers_to_remove,
            );
            conn.finish(ex, resp)
        }
        Action::Direct { status: code, body } => {
            let mut resp = local_reply(*code, body.as_deref().unwrap_or(""), false);
            headers::apply(
                resp.headers_mut(),
                &route.response_headers_to_add,
                &route.response_headers_to_remove,
            );
            conn.finish(ex, resp)
        }
        Action::Forward(fwd) => {
            let Some((cluster, weighted)) = chosen else {
                unreachable!("chosen for forward actions")
            };
            let target = Target {
                cluster,
                weighted,
                scheme,
                authority,
                path,
                query,
                include_attempt_count: m.vhost.include_request_attempt_count,
                upgrade,
            };
            let resp = forward(&conn, &mut ex, req, route, fwd, target).await;
            conn.finish(ex, resp)
        }
    }
}

struct Target<'a> {
    cluster: &'a str,
    weighted: Option<&'a rustmesh_xds::route::ClusterWeight>,
    scheme: &'a str,
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    include_attempt_count: bool,
    upgrade: bool,
}

/// A request's head, reusable for each attempt and mirror.
#[derive(Clone)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    info: DownstreamInfo,
}

impl Head {
    /// The request for the only attempt (no copy of the headers).
    fn into_request(self, body: ProxyBody) -> Request<ProxyBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method;
        *r.uri_mut() = self.uri;
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers;
        r.extensions_mut().insert(self.info);
        r
    }

    fn request(&self, body: ProxyBody) -> Request<ProxyBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r.extensions_mut().insert(self.info);
        r
    }
}

fn absolute_uri(authority: &str, path_and_query: &str, fallback: SocketAddr) -> Uri {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .or_else(|_| {
            Uri::builder()
                .scheme("http")
                .authority(fallback.to_string())
                .path_and_query(path_and_query)
                .build()
        })
        .unwrap_or_else(|_| Uri::from_static("http://localhost/"))
}

enum Attempt {
    Done(Result<UpstreamResponse, UpstreamError>),
    PerTryTimeout,
    GlobalTimeout,
}

async fn forward(
    conn: &Arc<Conn>,
    ex: &mut Exchange,
    req: Request<Incoming>,
    route: &CompiledRoute,
    fwd: &ForwardAction,
    t: Target<'_>,
) -> Response<ProxyBody> {
    let ctx = &conn.ctx;
    let grpc = ex.grpc;
    let (cluster, weighted) = (t.cluster, t.weighted);
    let (mut parts, body) = req.into_parts();
    let downstream_upgrade = if t.upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let mut h = std::mem::take(&mut parts.headers);
    headers::strip_hop_by_hop(&mut h, t.upgrade);
    h.remove(http::header::EXPECT);
    if !h.contains_key(&headers::X_FORWARDED_PROTO) {
        // http and https as static values (no allocation); any other scheme as given.
        let v = match t.scheme {
            "http" => Ok(HeaderValue::from_static("http")),
            "https" => Ok(HeaderValue::from_static("https")),
            other => HeaderValue::from_str(other),
        };
        if let Ok(v) = v {
            h.insert(headers::X_FORWARDED_PROTO, v);
        }
    }
    if let Some(w) = weighted {
        headers::apply(
            &mut h,
            &w.request_headers_to_add,
            &w.request_headers_to_remove,
        );
    }
    headers::apply(
        &mut h,
        &route.request_headers_to_add,
        &route.request_headers_to_remove,
    );
    let path_and_query = route
        .rewrite_path(t.path, t.query)
        .unwrap_or_else(|| match t.query {
            Some(q) => format!("{}?{q}", t.path),
            None => t.path.to_string(),
        });
    let upstream_authority = fwd
        .host_rewrite
        .clone()
        .unwrap_or_else(|| t.authority.to_string());
    let uri = absolute_uri(&upstream_authority, &path_and_query, ctx.local);
    if let Some(a) = uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        h.insert(HOST, v);
    }
    let hashed = hash::request_hash(
        &fwd.hash_policy,
        &h,
        t.query,
        Some(ctx.peer.ip()),
        t.authority,
        t.path,
    );
    let head = Head {
        method: parts.method.clone(),
        uri,
        version: parts.version,
        headers: h,
        info: DownstreamInfo {
            peer: ctx.peer,
            local: ctx.local,
        },
    };
    let retry = fwd
        .retry
        .as_ref()
        .filter(|r| r.num_retries > 0 && !t.upgrade);
    let replay = retry.is_some() || !fwd.mirrors.is_empty();
    // A request without a body that is sent once needs no log.
    let log = (replay || !body.is_end_stream()).then(|| {
        ReplayLog::new(
            boxed(body),
            if replay && !t.upgrade {
                ctx.settings.retry_buffer_bytes
            } else {
                0
            },
        )
    });
    ex.request_body = log.clone();

    if !t.upgrade
        && let Some(log) = &log
    {
        for mirror in route::decide_mirrors(&fwd.mirrors, &ctx.rng) {
            spawn_mirror(conn, mirror, &head, log, hashed.hash, fwd.timeout);
        }
    }
    let mut head = Some(head);

    let deadline = fwd.timeout.map(|d| Instant::now() + d);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    let upstream_start = Instant::now();
    let (result, endpoint) = loop {
        attempt += 1;
        let body = log.as_ref().map_or_else(empty, |l| boxed(l.reader()));
        let mut req = match retry {
            None => head.take().expect("one attempt").into_request(body),
            Some(_) => head.as_ref().expect("kept for retries").request(body),
        };
        if t.include_attempt_count {
            req.headers_mut()
                .insert(headers::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
        }
        let exclude: Vec<SocketAddr> = if retry.is_some_and(|r| r.retry_previous_hosts) {
            tried.clone()
        } else {
            Vec::new()
        };
        let fut = ctx.upstreams.request(cluster, hashed.hash, &exclude, req);
        let per_try = retry
            .and_then(|r| r.per_try_timeout)
            .map(|d| Instant::now() + d);
        let limit = match (per_try, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let outcome = match limit {
            None => Attempt::Done(fut.await),
            Some(l) => match tokio::time::timeout_at(l.into(), fut).await {
                Ok(r) => Attempt::Done(r),
                Err(_) if deadline.is_some_and(|d| d <= l) => Attempt::GlobalTimeout,
                Err(_) => Attempt::PerTryTimeout,
            },
        };
        let failure = match &outcome {
            Attempt::GlobalTimeout => {
                ex.flags.push("UT");
                return local_reply(504, "upstream request timeout", grpc);
            }
            Attempt::PerTryTimeout => AttemptFailure::PerTryTimeout,
            Attempt::Done(Ok(r)) => {
                if retry.is_some() {
                    tried.push(r.endpoint);
                }
                AttemptFailure::Status {
                    status: r.response.status().as_u16(),
                    grpc_status: r
                        .response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok()),
                }
            }
            Attempt::Done(Err(e)) => {
                if let Some(ep) = e.endpoint()
                    && retry.is_some()
                {
                    tried.push(ep);
                }
                match e {
                    UpstreamError::ConnectFailure { .. } => AttemptFailure::ConnectFailure,
                    UpstreamError::Reset { .. } => AttemptFailure::Reset,
                    UpstreamError::RefusedStream { .. } => AttemptFailure::RefusedStream,
                    // Not retried: the cluster has nothing to offer or is overloaded.
                    _ => AttemptFailure::Status {
                        status: 0,
                        grpc_status: None,
                    },
                }
            }
        };
        if log.as_ref().is_some_and(|l| l.downstream_error().is_some()) {
            ex.flags.push("DPE");
            return local_reply(400, "downstream protocol error", grpc);
        }
        let wanted = retry.is_some_and(|r| r.should_retry(failure));
        let budget = retry.is_some_and(|r| attempt <= r.num_retries)
            && log.as_ref().is_none_or(|l| l.replayable());
        if wanted && budget {
            let r = retry.expect("wanted implies a policy");
            let mut pause = r.backoff(attempt, &ctx.rng);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left <= pause {
                    tokio::time::sleep(left).await;
                    ex.flags.push("UT");
                    return local_reply(504, "upstream request timeout", grpc);
                }
                pause = pause.min(left);
            }
            drop(outcome);
            tokio::time::sleep(pause).await;
            continue;
        }
        if wanted {
            ex.flags.push("URX");
        }
        match outcome {
            Attempt::PerTryTimeout => {
                ex.flags.push("UT");
                return local_reply(504, "upstream request timeout", grpc);
            }
            Attempt::GlobalTimeout => unreachable!("returned above"),
            Attempt::Done(Ok(r)) => break (r.response, r.endpoint),
            Attempt::Done(Err(e)) => {
                let (resp, flag) = error_reply(&e, grpc);
                ex.flags.push(flag);
                ex.upstream_host = e.endpoint();
                return resp;
            }
        }
    };
    let mut resp = result;
    ex.upstream_host = Some(endpoint);
    let service_time = upstream_start.elapsed();
    ex.upstream_time = Some(service_time);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = downstream_upgrade
        && let Some(up) = resp.extensions_mut().remove::<OnUpgrade>()
    {
        bridge(down, up);
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    if let Some(w) = weighted {
        headers::apply(
            resp.headers_mut(),
            &w.response_headers_to_add,
            &w.response_headers_to_remove,
        );
    }
    headers::apply(
        resp.headers_mut(),
        &route.response_headers_to_add,
        &route.response_headers_to_remove,
    );
    resp.headers_mut().insert(
        headers::X_ENVOY_UPSTREAM_SERVICE_TIME,
        HeaderValue::from(service_time.as_millis() as u64),
    );
    if let Some(c) = &hashed.set_cookie
        && let Ok(v) = HeaderValue::from_str(&c.set_cookie())
    {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    resp
}

/// Sends a copy of the request to a mirror cluster, in the background. The copy reads the body
/// from the shared log at its own pace and its answer is thrown away, so a slow or failing
/// mirror never delays or changes the main response.
fn spawn_mirror(
    conn: &Arc<Conn>,
    cluster: &str,
    head: &Head,
    log: &Arc<ReplayLog>,
    hash: Option<u64>,
    timeout: Option<Duration>,
) {
    let mut head = head.clone();
    let shadow = head
        .uri
        .authority()
        .map(|a| headers::shadow_authority(a.as_str()))
        .unwrap_or_default();
    let pq = head
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    head.uri = absolute_uri(&shadow, &pq, conn.ctx.local);
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        head.headers.insert(HOST, v);
    }
    let req = head.request(boxed(log.reader()));
    let upstreams = conn.ctx.upstreams.clone();
    let cluster = cluster.to_string();
    let limit = timeout.unwrap_or(Duration::from_secs(60));
    tokio::spawn(async move {
        let send = async {
            if let Ok(r) = upstreams.request(&cluster, hash, &[], req).await {
                let _ = r.response.into_body().collect().await;
            }
        };
        let _ = tokio::time::timeout(limit, send).await;
    });
}

/// Joins an upgraded downstream connection (e.g. WebSocket) to the upgraded upstream one.
fn bridge(down: OnUpgrade, up: OnUpgrade) {
    tokio::spawn(async move {
        let (Ok(d), Ok(u)) = tokio::join!(down, up) else {
            return;
        };
        let mut d = TokioIo::new(d);
        let mut u = TokioIo::new(u);
        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
    });
}

impl Conn {
    /// Wraps the response body so metrics and the access log are written when it ends.
    fn finish(self: &Arc<Self>, ex: Exchange, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let (parts, body) = resp.into_parts();
        let code = parts.status.as_u16();
        let grpc_header = header_str(&parts.headers, "grpc-status");
        let me = self.clone();
        let body = ObservedBody::new(body, move |end| me.record(&ex, code, grpc_header, end));
        Response::from_parts(parts, boxed(body))
    }

    fn record(&self, ex: &Exchange, code: u16, grpc_header: Option<String>, end: BodyEnd) {
        let ctx = &self.ctx;
        let mut flags = ex.flags.clone();
        if !end.complete && flags.is_empty() {
            // The client went away or the upstream body broke mid-way.
            flags.push("DC");
        }
        let flags = flags.join(",");
        let grpc_status = if ex.grpc {
            end.grpc_status.clone().or(grpc_header)
        } else {
            None
        };
        let service = ex.cluster.as_deref().and_then(|c| ctx.destinations.get(c));
        let key = MetricKey {
            service: service.map_or(0, |s| s as *const DestinationService as usize),
            grpc: ex.grpc,
            code,
            flags,
            grpc_status,
        };
        let handles = {
            let mut cache = crate::sync::lock(&self.metric_handles);
            match cache.iter().find(|(k, _)| *k == key) {
                Some((_, h)) => h.clone(),
                None => {
                    let peers = Peers {
                        reporter: ctx.reporter,
                        own: &ctx.workload,
                        service,
                        security_policy: match ctx.reporter {
                            Reporter::Source => "unknown",
                            Reporter::Destination => "none",
                        },
                    };
                    let labels = peers.http_labels(
                        if key.grpc { "grpc" } else { "http" },
                        key.code,
                        &key.flags,
                        key.grpc_status.as_deref(),
                    );
                    let h = ctx.metrics.request_handles(&labels);
                    if cache.len() < MAX_CACHED_LABEL_SETS {
                        cache.push((
                            MetricKey {
                                service: key.service,
                                grpc: key.grpc,
                                code: key.code,
                                flags: key.flags.clone(),
                                grpc_status: key.grpc_status.clone(),
                            },
                            h.clone(),
                        ));
                    }
                    h
                }
            }
        };
        let MetricKey {
            flags, grpc_status, ..
        } = key;
        let request_bytes = ex
            .request_body
            .as_ref()
            .map(|l| l.bytes_received())
            .unwrap_or(0);
        let duration = ex.start.elapsed();
        handles.record(RequestSample {
            duration,
            request_bytes,
            response_bytes: end.bytes,
        });
        if self.access_log {
            let line = serde_json::json!({
                "start_time": rfc3339(ex.wall_start),
                "method": ex.method.as_str(),
                "path": ex.path,
                "protocol": format!("{:?}", ex.version),
                "response_code": code,
                "response_flags": if flags.is_empty() { "-".to_string() } else { flags },
                "grpc_status": grpc_status,
                "bytes_received": request_bytes,
                "bytes_sent": end.bytes,
                "duration": duration.as_millis() as u64,
                "upstream_service_time": ex.upstream_time.map(|d| d.as_millis() as u64),
                "x_forwarded_for": ex.forwarded_for,
                "user_agent": ex.user_agent,
                "request_id": ex.request_id,
                "authority": ex.authority,
                "upstream_host": ex.upstream_host.map(|a| a.to_string()),
                "upstream_cluster": ex.cluster,
                "downstream_remote_address": ctx.peer.to_string(),
                "downstream_local_address": ctx.local.to_string(),
                "route_name": ex.route_name,
                "stat_prefix": self.route_name_prefix,
            });
            ctx.access_log.write(&line.to_string());
        }
    }
}

/// `2026-11-21T16:32:15.123Z` without a date library (civil-from-days, Howard Hinnant's).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn grpc_mapping() {
        assert_eq!(http_to_grpc(503), 14);
        assert_eq!(http_to_grpc(404), 12);
        assert_eq!(http_to_grpc(418), 2);
        let r = local_reply(503, "no healthy upstream", true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
    }
}
