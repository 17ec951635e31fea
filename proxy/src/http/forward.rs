//! Forwarding: from a route's forward action to the client's answer. Builds the upstream request
//! once (hop-by-hop headers removed, `x-forwarded-proto`, header changes, path and host rewrites,
//! the absolute URI, the hash key), keeps its body for retries and mirrors, starts the mirrors,
//! sends it through the cluster manager (`ClusterUpstreams::request`) as many times as the retry
//! loop (`http::retry`) decides, then finishes the answer: upgrades joined, hop-by-hop headers
//! removed, response header changes, `x-envoy-upstream-service-time`, the hash cookie.
//!
//! Comes after the request stage (`http/request.rs`: route matched, faults passed); local replies
//! come from `http/reply.rs`; the answer then goes through the recording stage
//! (`http/record.rs`).

use crate::body::{ProxyBody, ReplayLog, boxed, empty};
use crate::http::hash::{self, HashOutcome};
use crate::http::record::Conn;
use crate::http::record::Exchange;
use crate::http::reply::{error_reply, local_reply};
use crate::http::retry::{AttemptFailure, Next, RetryLoop, Timeout};
use crate::http::route::{self, CompiledRoute, ForwardAction};
use crate::http::{DownstreamInfo, HttpContext, UpstreamError, UpstreamResponse, headers};
use crate::metrics::Reporter;
use http::header::{HOST, HeaderValue, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the request stage hands to forwarding: the chosen cluster and the request's
/// authority, path and query as received.
pub(super) struct Target<'a> {
    pub(super) cluster: &'a str,
    pub(super) weighted: Option<&'a rustmesh_xds::route::ClusterWeight>,
    pub(super) scheme: &'a str,
    pub(super) authority: &'a str,
    pub(super) path: &'a str,
    pub(super) query: Option<&'a str>,
    pub(super) include_attempt_count: bool,
    pub(super) upgrade: bool,
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

/// How one attempt ended.
enum Attempt {
    /// The cluster manager answered (an upstream response or the cluster's error).
    Done(Result<UpstreamResponse, UpstreamError>),
    /// The attempt's time limit passed first.
    TimedOut(Timeout),
}

/// Forwards a request the route sends to a cluster and returns the answer for the client (or a
/// local reply), with the route's response header changes.
pub(super) async fn forward(
    conn: &Arc<Conn>,
    ex: &mut Exchange,
    req: Request<Incoming>,
    route: &CompiledRoute,
    fwd: &ForwardAction,
    t: Target<'_>,
) -> Response<ProxyBody> {
    let ctx = &conn.ctx;
    let (mut parts, body) = req.into_parts();
    let downstream_upgrade = if t.upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let (head, hashed) = upstream_head(ctx, parts, route, fwd, &t);
    // Upgrades are sent once: their body is the upgraded connection.
    let attempts = RetryLoop::new(
        fwd.retry.as_ref().filter(|_| !t.upgrade),
        fwd.timeout,
        Instant::now(),
    );
    let replay = attempts.may_retry() || !fwd.mirrors.is_empty();
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
    let upstream_start = Instant::now();
    let answer = send(ctx, ex, attempts, head, log.as_ref(), &t, hashed.hash).await;
    let UpstreamResponse {
        response: mut resp,
        endpoint,
        server_identity,
    } = match answer {
        Ok(a) => a,
        Err(local) => return local,
    };
    ex.upstream_host = Some(endpoint);
    ex.upstream_local = resp
        .extensions()
        .get::<crate::pool::UpstreamLocal>()
        .map(|l| l.0);
    ex.server_identity = server_identity;
    // The server's workload, from the metadata exchange (removed before the app).
    if ctx.reporter == Reporter::Source {
        ex.peer = crate::peer::take(resp.headers_mut(), &conn.peer_cache);
    }
    let service_time = upstream_start.elapsed();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = downstream_upgrade
        && let Some(up) = resp.extensions_mut().remove::<OnUpgrade>()
    {
        bridge(down, up);
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    if let Some(w) = t.weighted {
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

/// The upstream request's head, built once for every attempt and mirror: hop-by-hop headers
/// and `Expect` removed, `x-forwarded-proto`, the weighted cluster's then the route's header
/// changes, the path and host rewrites as an absolute URI with `host`, and the request's hash key
/// (with the cookie to set, if the hash policy generated one).
fn upstream_head(
    ctx: &HttpContext,
    mut parts: http::request::Parts,
    route: &CompiledRoute,
    fwd: &ForwardAction,
    t: &Target<'_>,
) -> (Head, HashOutcome) {
    let mut h = std::mem::take(&mut parts.headers);
    headers::strip_hop_by_hop(&mut h, t.upgrade);
    // To a service of the mesh: this workload's metadata (`crate::peer`).
    if ctx.reporter == Reporter::Source && ctx.destinations.get(t.cluster).is_some() {
        ctx.own_metadata.insert(&mut h);
    }
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
    if let Some(w) = t.weighted {
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
        method: parts.method,
        uri,
        version: parts.version,
        headers: h,
        info: DownstreamInfo {
            peer: ctx.peer,
            local: ctx.local,
        },
    };
    (head, hashed)
}

/// Sends the request through the cluster manager, attempt after attempt as the route's retry
/// policy decides ([`RetryLoop`]): the answer and the endpoint that gave it, or the local reply
/// that ends the request (timeout `UT`, broken request body `DPE`, the cluster's error after the
/// last attempt), with its response flags in `ex`.
async fn send(
    ctx: &HttpContext,
    ex: &mut Exchange,
    mut attempts: RetryLoop<'_>,
    head: Head,
    log: Option<&Arc<ReplayLog>>,
    t: &Target<'_>,
    hash: Option<u64>,
) -> Result<UpstreamResponse, Response<ProxyBody>> {
    let grpc = ex.grpc;
    let mut head = Some(head);
    // The cluster's `maxRetries` budget, held while a retry's attempt runs.
    let mut _retrying = None;
    loop {
        let (attempt, limit) = attempts.begin(Instant::now());
        let body = log.map_or_else(empty, |l| boxed(l.reader()));
        let mut req = if attempts.may_retry() {
            head.as_ref().expect("kept for retries").request(body)
        } else {
            head.take().expect("one attempt").into_request(body)
        };
        if t.include_attempt_count {
            req.headers_mut()
                .insert(headers::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
        }
        let fut = ctx
            .upstreams
            .request(t.cluster, hash, attempts.exclude(), req);
        let outcome = match limit {
            None => Attempt::Done(fut.await),
            Some(l) => match tokio::time::timeout_at(l.at.into(), fut).await {
                Ok(r) => Attempt::Done(r),
                Err(_) => Attempt::TimedOut(l.timeout),
            },
        };
        let failure = match &outcome {
            Attempt::TimedOut(Timeout::Overall) => {
                ex.flags.push("UT");
                return Err(local_reply(504, "upstream request timeout", grpc));
            }
            Attempt::TimedOut(Timeout::PerTry) => AttemptFailure::PerTryTimeout,
            Attempt::Done(Ok(r)) => {
                attempts.tried(r.endpoint);
                AttemptFailure::of_response(&r.response)
            }
            Attempt::Done(Err(e)) => {
                if let Some(ep) = e.endpoint() {
                    attempts.tried(ep);
                }
                AttemptFailure::of_error(e)
            }
        };
        if log.is_some_and(|l| l.downstream_error().is_some()) {
            ex.flags.push("DPE");
            return Err(local_reply(400, "downstream protocol error", grpc));
        }
        let replayable = log.is_none_or(|l| l.replayable());
        let next = attempts.next(failure, replayable, Instant::now(), &ctx.rng);
        // The previous retry's attempt is over.
        _retrying = None;
        let next = match next {
            // Over the cluster's maxRetries the answer in hand goes back (Envoy's retry
            // overflow), as when retries run out.
            Next::Retry { .. } => match ctx.upstreams.try_retry(t.cluster) {
                Ok(permit) => {
                    _retrying = permit;
                    next
                }
                Err(_) => Next::Deliver,
            },
            other => other,
        };
        match next {
            Next::Retry { after } => {
                drop(outcome);
                tokio::time::sleep(after).await;
                continue;
            }
            Next::TimeOut { after } => {
                tokio::time::sleep(after).await;
                ex.flags.push("UT");
                return Err(local_reply(504, "upstream request timeout", grpc));
            }
            Next::Exhausted => ex.flags.push("URX"),
            Next::Deliver => {}
        }
        return match outcome {
            Attempt::TimedOut(_) => {
                ex.flags.push("UT");
                Err(local_reply(504, "upstream request timeout", grpc))
            }
            Attempt::Done(Ok(r)) => Ok(r),
            Attempt::Done(Err(e)) => {
                let (resp, flag) = error_reply(&e, grpc);
                ex.flags.push(flag);
                ex.upstream_host = e.endpoint();
                Err(resp)
            }
        };
    }
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
