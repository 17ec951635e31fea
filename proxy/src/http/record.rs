//! The last stage of a request: when its response body ends (or breaks), Istio's request
//! metrics and, when the connection manager asks for it, one JSON access-log line. The request
//! stage (`http/request.rs`) opens an [`Exchange`] as the request arrives and the stages after it
//! fill it in (route, cluster, upstream host and time, response flags); [`Conn::finish`] wraps the
//! response body so the recording happens when the body is done.

use crate::body::{BodyEnd, ObservedBody, ProxyBody, ReplayLog, boxed};
use crate::http::HttpContext;
use crate::metrics::RequestHandles;
use crate::metrics::{DestinationService, Peers, Reporter, RequestSample, WorkloadInfo};
use http::{HeaderMap, Method, Response, Version};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What is known about one request, for metrics and the access log.
pub(super) struct Exchange {
    pub(super) start: Instant,
    pub(super) wall_start: SystemTime,
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) version: Version,
    pub(super) authority: String,
    pub(super) grpc: bool,
    pub(super) request_id: String,
    pub(super) user_agent: Option<String>,
    pub(super) forwarded_for: Option<String>,
    pub(super) route_name: Option<String>,
    pub(super) cluster: Option<String>,
    pub(super) upstream_host: Option<SocketAddr>,
    pub(super) upstream_time: Option<Duration>,
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
}

/// What the requests of one connection share: its context, whether it writes the access log,
/// and the metric handles it has looked up.
pub(super) struct Conn {
    /// Routes, cluster manager, metrics, addresses, settings.
    pub(super) ctx: HttpContext,
    /// The connection manager's `accessLog`.
    pub(super) access_log: bool,
    /// The connection manager's `statPrefix` (the access log's `stat_prefix`).
    pub(super) route_name_prefix: String,
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
                    let h = ctx.metrics.request_handles(&labels);
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
            let mut line = serde_json::json!({
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
            if let Some(d) = &ex.details {
                line["response_code_details"] = serde_json::Value::from(d.as_str());
            }
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
}
