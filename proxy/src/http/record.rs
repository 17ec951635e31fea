//! The last stage of a request: when its response body ends (or breaks), Istio's request
//! metrics and a line to each of the connection manager's access logs (`crate::access_log`,
//! Envoy's format: Istio's default TEXT or JSON, or the mesh's `accessLogFormat`). The request
//! stage (`http/request.rs`) opens an [`Exchange`] as the request arrives and the stages after it
//! fill it in (route, cluster, upstream host and time, response flags); [`Conn::finish`] wraps the
//! response body so the recording happens when the body is done.

use crate::access_log::Copied;
use crate::body::{BodyEnd, ObservedBody, ProxyBody, ReplayLog, boxed};
use crate::http::HttpContext;
use crate::metrics::RequestHandles;
use crate::metrics::{DestinationService, Peers, Reporter, RequestSample, WorkloadInfo};
use http::{HeaderMap, Response, Version};
use rustmesh_xds::access_log::Entry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// What is known about one request, for metrics and the access log.
pub(super) struct Exchange {
    pub(super) start: Instant,
    pub(super) wall_start: SystemTime,
    pub(super) version: Version,
    pub(super) grpc: bool,
    /// The request headers the access logs read (none without access logs).
    pub(super) logged_request: Copied,
    /// The response headers the access logs read, copied when the answer is known.
    pub(super) logged_response: Copied,
    pub(super) route_name: Option<String>,
    pub(super) cluster: Option<String>,
    pub(super) upstream_host: Option<SocketAddr>,
    /// The local address of the upstream connection that carried the request.
    pub(super) upstream_local: Option<SocketAddr>,
    pub(super) flags: Vec<&'static str>,
    pub(super) request_body: Option<Arc<ReplayLog>>,
    /// Envoy's response code details, when a stage of ours answered with a reason worth
    /// naming (an authorization denial names the policy).
    pub(super) details: Option<String>,
    /// The other side's workload (`crate::peer`): the client's from the request (inbound),
    /// the server's from the answer or the endpoint's metadata (outbound).
    pub(super) peer: Option<Arc<WorkloadInfo>>,
    /// Outbound: the SPIFFE id the server proved over mutual TLS.
    pub(super) server_identity: Option<Arc<String>>,
    /// The request's span, when the connection manager traces.
    pub(super) trace: Option<crate::trace::Started>,
    /// The span's name: the matched route's decorator (only read for reported spans).
    pub(super) operation: Option<Arc<str>>,
}

/// How Envoy names a request's protocol (`%PROTOCOL%`, the `http.protocol` tag).
pub(super) fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// What the requests of one connection share: its context (access logs included) and the
/// metric handles it has looked up.
pub(super) struct Conn {
    /// Routes, cluster manager, metrics, addresses, settings, access logs.
    pub(super) ctx: HttpContext,
    /// Metric handles by what varies between the requests of one connection. The connection
    /// holds its configuration (and so the `DestinationService`s) for its whole life, so the
    /// service's address identifies it here.
    pub(super) metric_handles: Mutex<Vec<(MetricKey, RequestHandles)>>,
    /// The last metadata exchange header of this connection's peer, decoded.
    pub(super) peer_cache: crate::peer::PeerCache,
}

/// What picks a request's metric label set within one connection.
#[derive(PartialEq, Eq)]
pub(super) struct MetricKey {
    service: usize,
    grpc: bool,
    code: u16,
    flags: String,
    grpc_status: Option<String>,
    peer: Option<Arc<WorkloadInfo>>,
    server_identity: Option<Arc<String>>,
}

/// Distinct label sets a connection keeps handles for (then it looks them up each time).
const MAX_CACHED_LABEL_SETS: usize = 16;

/// Header `name`'s first value, if it is text.
pub(super) fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Conn {
    /// Wraps the response body so metrics and the access log are written when it ends.
    pub(super) fn finish(
        self: &Arc<Self>,
        ex: Exchange,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let mut ex = ex;
        if !self.ctx.access_logs.is_empty() {
            ex.logged_response = Copied::take(self.ctx.access_logs.response_headers(), |n| {
                parts.headers.get(n).cloned()
            });
        }
        match self.ctx.reporter {
            // A client that sent its metadata gets the server's back.
            Reporter::Destination if ex.peer.is_some() => {
                self.ctx.own_metadata.insert(&mut parts.headers)
            }
            Reporter::Destination => {}
            // No metadata came back (or no answer came): the endpoint's metadata says who it was.
            Reporter::Source => {
                if ex.peer.is_none() {
                    ex.peer = ex
                        .upstream_host
                        .and_then(|h| self.ctx.destinations.workload_at(h))
                        .cloned();
                }
            }
        }
        let code = parts.status.as_u16();
        let grpc_header = header_str(&parts.headers, "grpc-status");
        let me = self.clone();
        // Trailers are kept only when a log format reads them (`%TRAILER(...)%`).
        let keep = self.ctx.access_logs.response_trailers().clone();
        let body = ObservedBody::new(body, move |end| me.record(ex, code, grpc_header, end))
            .keeping_trailers(keep);
        Response::from_parts(parts, boxed(body))
    }

    fn record(&self, ex: Exchange, code: u16, grpc_header: Option<String>, end: BodyEnd) {
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
            peer: ex.peer.clone(),
            server_identity: ex.server_identity.clone(),
        };
        let handles = {
            let mut cache = crate::sync::lock(&self.metric_handles);
            match cache.iter().find(|(k, _)| *k == key) {
                Some((_, h)) => h.clone(),
                None => {
                    let peer = ctx.peer_identity.as_ref().map(|p| p.to_string());
                    let own = ctx.own_identity.as_deref();
                    let (source_principal, destination_principal, security_policy) =
                        match (ctx.reporter, &peer) {
                            (Reporter::Source, _) => (
                                own,
                                key.server_identity.as_deref().map(String::as_str),
                                "unknown",
                            ),
                            (Reporter::Destination, Some(p)) => {
                                (Some(p.as_str()), own, "mutual_tls")
                            }
                            (Reporter::Destination, None) => (None, None, "none"),
                        };
                    let peers = Peers {
                        reporter: ctx.reporter,
                        own: &ctx.workload,
                        service,
                        security_policy,
                        source_principal,
                        destination_principal,
                        peer: key.peer.as_deref(),
                    };
                    let labels = peers.http_labels(
                        if key.grpc { "grpc" } else { "http" },
                        key.code,
                        &key.flags,
                        key.grpc_status.as_deref(),
                    );
                    let h = ctx.metrics.request_handles(&labels, &ctx.metric_settings);
                    if cache.len() < MAX_CACHED_LABEL_SETS {
                        cache.push((
                            MetricKey {
                                service: key.service,
                                grpc: key.grpc,
                                code: key.code,
                                flags: key.flags.clone(),
                                grpc_status: key.grpc_status.clone(),
                                peer: key.peer.clone(),
                                server_identity: key.server_identity.clone(),
                            },
                            h.clone(),
                        ));
                    }
                    h
                }
            }
        };
        let MetricKey { flags, .. } = key;
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
        if !ctx.access_logs.is_empty() {
            let protocol = protocol_name(ex.version);
            let details = ex
                .details
                .as_deref()
                .or_else(|| response_code_details(&flags, &ex));
            let request = |n: &str| ex.logged_request.get(n);
            let response = |n: &str| ex.logged_response.get(n);
            let trailer = |n: &str| {
                end.trailers
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.as_str())
            };
            let entry = Entry {
                start_time: ex.wall_start,
                protocol: Some(protocol),
                response_code: code,
                response_flags: &flags,
                response_code_details: details,
                connection_termination_details: None,
                upstream_transport_failure_reason: None,
                bytes_received: request_bytes,
                bytes_sent: end.bytes,
                duration,
                upstream_host: ex.upstream_host,
                upstream_cluster: ex.cluster.as_deref(),
                upstream_local_address: ex.upstream_local,
                downstream_local_address: Some(ctx.local),
                downstream_remote_address: Some(ctx.peer),
                requested_server_name: ctx.requested_server_name.as_deref(),
                route_name: ex.route_name.as_deref(),
                request_header: &request,
                response_header: &response,
                response_trailer: &trailer,
            };
            ctx.access_logs.write(&ctx.access_log, &entry);
        }
        if let (Some(span), Some(t)) = (ex.trace, &ctx.trace)
            && span.reported()
        {
            // An inbound route without a decorator (a port several services share): the name
            // Istio gives, from the service that selects this pod.
            let fallback;
            let operation = match (&ex.operation, ctx.reporter, service) {
                (Some(op), _, _) => Some(&**op),
                (None, Reporter::Destination, Some(s)) => {
                    fallback = format!("{}:{}/*", s.host, ctx.local.port());
                    Some(fallback.as_str())
                }
                _ => None,
            };
            span.finish(
                &t.tracer,
                &t.local,
                &crate::trace::Outcome {
                    operation,
                    peer: ctx.peer,
                    status: code,
                    response_flags: &flags,
                    cluster: ex.cluster.as_deref(),
                    request_bytes,
                    response_bytes: end.bytes,
                    duration,
                },
            );
        }
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for what this proxy decided (a stage that named its own
/// reason, such as an authorization denial, sets `Exchange::details` instead).
fn response_code_details(flags: &str, ex: &Exchange) -> Option<&'static str> {
    let first = flags.split(',').next().unwrap_or_default();
    Some(match first {
        "NR" => "route_not_found",
        "UH" => "no_healthy_upstream",
        "UF" => "upstream_reset_before_response_started{connection_failure}",
        "UO" => "upstream_reset_before_response_started{overflow}",
        "UT" => "response_timeout",
        "FI" => "fault_filter_abort",
        "DPE" => "downstream_protocol_error",
        "NC" => "cluster_not_found",
        _ if ex.upstream_host.is_some() => "via_upstream",
        _ => return None,
    })
}
