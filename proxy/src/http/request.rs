//! One request, from its head to the route's action: the request id, the head-size limit
//! (431), the authorization of an inbound request (`http/authorize.rs`: 403 before routing),
//! virtual host and route (`http::route`, 404 `NR`), the cluster of a weighted choice, the
//! fault's delay and abort, then the action: a redirect or a direct response answered here, or
//! forwarding (`http/forward.rs`), with the route's CORS policy (`route/cors.rs`: a preflight
//! answered here, an allowed origin's headers added to the response). Comes after the
//! connection stage (`http/server.rs`, which calls [`handle`] for every request hyper reads);
//! every answer goes through the recording stage (`http/record.rs`).

use crate::access_log::Copied;
use crate::body::{ProxyBody, empty};
use crate::http::authorize::{self, Verdict};
use crate::http::forward::{Target, forward};
use crate::http::headers;
use crate::http::record::Conn;
use crate::http::record::{Exchange, protocol_name};
use crate::http::reply::{grpc_reply, local_reply, status};
use crate::http::route::{self, AbortWith, Action, CorsCheck, RequestView, RouteTable};
use crate::metrics::Reporter;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, LOCATION};
use http::{HeaderMap, Request, Response, Version};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Whether the request is gRPC (`content-type: application/grpc*`): its local replies are then
/// trailers-only gRPC answers.
/// `:method` for the access log: a static value for the standard methods (no copy per request).
fn method_value(m: &http::Method) -> Option<HeaderValue> {
    use http::Method;
    let s = match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return HeaderValue::from_str(m.as_str()).ok(),
    };
    Some(HeaderValue::from_static(s))
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
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

/// Answers one request (hyper calls this for each request of the connection).
pub(super) async fn handle(conn: Arc<Conn>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let ctx = &conn.ctx;
    // Decided first, since it may normalize the path everything after reads; answered after
    // the head-size check, as Envoy's RBAC filter runs after the codec's limits.
    let verdict = match &ctx.authz {
        Some(a) => authorize::check(a, &mut req),
        None => Verdict::Pass,
    };
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
    // Envoy's: a request without an id (or with an empty one) gets a new UUID.
    if req
        .headers()
        .get(&headers::X_REQUEST_ID)
        .is_none_or(|v| v.is_empty())
    {
        let id = ctx.rng.uuid();
        if let Ok(v) = HeaderValue::from_bytes(&id) {
            req.headers_mut().insert(headers::X_REQUEST_ID, v);
        }
    }
    // Inbound over mutual TLS: who the client is, for the app (Envoy's APPEND_FORWARD, as
    // Istio's inbound sidecar sets it); a value the client sent is kept before ours.
    if let Some(details) = &ctx.client_cert_details {
        let merged = match req.headers().get(&headers::X_FORWARDED_CLIENT_CERT) {
            Some(prior) => {
                let mut v = prior.as_bytes().to_vec();
                v.push(b',');
                v.extend_from_slice(details.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| details.clone())
            }
            None => details.clone(),
        };
        req.headers_mut()
            .insert(headers::X_FORWARDED_CLIENT_CERT, merged);
    }
    // The request's span: its context goes on with the request (to the app inbound, to the
    // server outbound), so its decision is taken before anything can answer locally.
    let trace = ctx.trace.as_ref().map(|t| {
        let method = req.method().clone();
        let line = crate::trace::RequestLine {
            method: method.as_str(),
            scheme,
            authority,
            path,
            query,
            protocol: protocol_name(req.version()),
        };
        t.tracer.start(
            req.headers_mut(),
            &line,
            &mut || ctx.rng.next_u64(),
            ctx.reporter,
        )
    });
    let mut ex = Exchange {
        start: Instant::now(),
        wall_start: SystemTime::now(),
        version: req.version(),
        grpc: is_grpc(req.headers()),
        // What only the access logs read is copied only when there are some.
        logged_request: if ctx.access_logs.is_empty() {
            Copied::default()
        } else {
            Copied::take(ctx.access_logs.request_headers(), |n| match n {
                ":method" => method_value(req.method()),
                ":path" => req
                    .uri()
                    .path_and_query()
                    .and_then(|p| HeaderValue::from_str(p.as_str()).ok()),
                ":authority" => match &host {
                    Some(h) => Some(h.clone()),
                    None => HeaderValue::from_str(authority).ok(),
                },
                ":scheme" => Some(HeaderValue::from_static(if scheme == "https" {
                    "https"
                } else {
                    "http"
                })),
                _ => req.headers().get(n).cloned(),
            })
        },
        logged_response: Copied::default(),
        route_name: None,
        cluster: None,
        upstream_host: None,
        upstream_local: None,
        flags: Vec::new(),
        request_body: None,
        details: None,
        // Inbound: the client's workload, from the metadata exchange (removed before the app).
        peer: match ctx.reporter {
            Reporter::Destination => crate::peer::take(req.headers_mut(), &conn.peer_cache),
            Reporter::Source => None,
        },
        server_identity: None,
        trace,
        operation: None,
    };
    // hyper's HTTP/1 read buffer cannot go below 8 KiB, so smaller limits are enforced here,
    // on the head as received (request line and headers), as Envoy's max_request_headers_kb.
    if head_size(&req) > ctx.settings.max_request_headers_bytes {
        let grpc = ex.grpc;
        return conn.finish(ex, local_reply(431, "", grpc));
    }
    if let Verdict::Refuse {
        status,
        body,
        details,
        www_authenticate,
    } = verdict
    {
        let mut resp = local_reply(status, body, ex.grpc);
        if let Some(v) = www_authenticate {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
        ex.details = Some(details);
        return conn.finish(ex, resp);
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
    if !ctx.access_logs.is_empty() {
        ex.route_name = route.name.clone();
    }
    if ex.trace.as_ref().is_some_and(|t| t.reported()) {
        ex.operation = route.operation.clone();
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
            // The CORS filter's place in Istio's chain: after the fault filter, before the router.
            let cors = match &fwd.cors {
                Some(c) => c.check(req.method(), req.headers()),
                None => CorsCheck::Pass,
            };
            let allowed = match cors {
                CorsCheck::Answer(resp) => return conn.finish(ex, resp),
                CorsCheck::Allowed(a) => Some(a),
                CorsCheck::Pass => None,
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
            let mut resp = forward(&conn, &mut ex, req, route, fwd, target).await;
            // Upstream answers and the router's own (timeouts, no healthy upstream) alike.
            if let Some(a) = allowed {
                a.apply(resp.headers_mut());
            }
            conn.finish(ex, resp)
        }
    }
}
