//! Distributed tracing, as Istio's sidecars do it: every request through an HTTP connection
//! manager with `tracing` gets a span of its own, a child of the span the request brought
//! (`context`: W3C and B3 headers), reported to the mesh's provider (`export`: Zipkin JSON or
//! OTLP) when the request is sampled.
//!
//! * [`Tracer::compile`]: a connection manager's settings, compiled once per configuration
//!   (sampling as parts per 10 000, custom tags with environment values read once).
//! * [`Tracer::start`] (request stage): the sampling decision and this proxy's span context,
//!   written onto the request so the next hop (the app inbound, the server's sidecar outbound)
//!   continues the trace. A request without a decision is sampled at the configured
//!   percentage, decided from a hash of its `x-request-id`, so every proxy that sees the same
//!   request id decides alike (Envoy's `use_request_id_for_trace_sampling`).
//! * [`Started::finish`] (recording stage): the span's Istio tags, then off to the exporter,
//!   which never makes a request wait (a full queue drops the span and counts it).
//!
//! Spans are named after the route's decorator (Istio's `<host>:<port>/*`), or Envoy's
//! defaults `ingress` / `egress <authority>` where a route has none. Kinds: `SERVER` inbound,
//! `CLIENT` outbound; client and server spans have ids of their own (Istio's Zipkin
//! `shared_span_context: false`).

pub mod context;
pub mod export;

use crate::metrics::{Reporter, WorkloadInfo};
use context::{Incoming, SpanContext};
use export::{Exporter, FinishedSpan, Kind};
use http::HeaderMap;
use http::header::HeaderName;
use rustmesh_xds::access_log::truncate;
use rustmesh_xds::trace::{Protocol, TagValue, Tracing, TracingError};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// A connection manager's tracing, compiled.
pub struct Tracer {
    settings: Tracing,
    /// Parts per 10 000 of undecided requests that are sampled.
    per_10000: u64,
    /// Tags of every span: literals and environment values resolved.
    fixed_tags: Vec<(String, String)>,
    /// Tags read from each request's headers.
    header_tags: Vec<(String, HeaderName, String)>,
    /// The exporter, looked up at the first span (the compile stays pure).
    exporter: OnceLock<Arc<Exporter>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("provider", &self.settings.provider.name)
            .field("per_10000", &self.per_10000)
            .finish_non_exhaustive()
    }
}

/// What the requests of one connection trace with: its connection manager's tracer and this
/// pod's identity in spans.
#[derive(Clone, Debug)]
pub struct ConnTracing {
    /// The connection manager's tracer.
    pub tracer: Arc<Tracer>,
    /// This pod in spans.
    pub local: Arc<Local>,
}

/// What this proxy says about itself in every span: the service name of its spans (Istio's
/// `<canonical service>.<namespace>`) and Istio's node tags.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// Zipkin `localEndpoint.serviceName`, OTLP `service.name`.
    pub service_name: String,
    /// Zipkin `localEndpoint.ipv4`/`ipv6`: the pod's address, when known.
    pub ip: Option<std::net::IpAddr>,
    /// `node_id`, `istio.canonical_service`, `istio.canonical_revision`, `istio.namespace`,
    /// `istio.mesh_id`, `istio.cluster_id`.
    pub tags: Vec<(&'static str, String)>,
}

impl Local {
    /// This pod's identity in spans.
    pub fn of(w: &WorkloadInfo, node_id: Option<&str>, ip: Option<std::net::IpAddr>) -> Local {
        let mut tags = vec![("component", "proxy".to_string())];
        if let Some(id) = node_id {
            tags.push(("node_id", id.to_string()));
        }
        tags.extend([
            ("istio.canonical_service", w.canonical_service().to_string()),
            (
                "istio.canonical_revision",
                w.canonical_revision().to_string(),
            ),
            ("istio.namespace", w.workload_namespace().to_string()),
            ("istio.mesh_id", "cluster.local".to_string()),
            ("istio.cluster_id", w.cluster_id().to_string()),
        ]);
        Local {
            service_name: format!("{}.{}", w.canonical_service(), w.workload_namespace()),
            ip,
            tags,
        }
    }
}

impl Tracer {
    /// Compiles `t`; `env` reads the proxy's environment for `environment` tags.
    pub fn compile(
        t: &Tracing,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TracingError> {
        t.check()?;
        let mut fixed_tags = Vec::new();
        let mut header_tags = Vec::new();
        for c in &t.custom_tags {
            match &c.value {
                TagValue::Literal { value } => fixed_tags.push((c.tag.clone(), value.clone())),
                TagValue::Environment {
                    name,
                    default_value,
                } => fixed_tags.push((
                    c.tag.clone(),
                    env(name).unwrap_or_else(|| default_value.clone()),
                )),
                TagValue::Header {
                    name,
                    default_value,
                } => header_tags.push((
                    c.tag.clone(),
                    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .expect("checked by Tracing::check"),
                    default_value.clone(),
                )),
            }
        }
        Ok(Tracer {
            per_10000: (t.random_sampling * 100.0).round() as u64,
            settings: t.clone(),
            fixed_tags,
            header_tags,
            exporter: OnceLock::new(),
        })
    }

    /// The settings this tracer was compiled from.
    pub fn settings(&self) -> &Tracing {
        &self.settings
    }

    /// Decides whether a request is sampled and gives it this proxy's span context, written
    /// onto `headers` (the request as it goes on). `request_id` is its `x-request-id`.
    pub fn start(
        &self,
        headers: &mut HeaderMap,
        line: &RequestLine<'_>,
        random: &mut dyn FnMut() -> u64,
        reporter: Reporter,
    ) -> Started {
        let request_id = headers
            .get("x-request-id")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let incoming = Incoming::parse(headers);
        let sampled = incoming.sampled.unwrap_or_else(|| {
            let draw = if self.settings.use_request_id_for_sampling {
                rustmesh_xds::fnv::hash(request_id)
            } else {
                random()
            };
            self.per_10000 > 0 && draw % 10_000 < self.per_10000
        });
        let (trace_id, trace_id_64bit, parent_span_id) = match incoming.parent {
            Some(p) => (p.trace_id, p.trace_id_64bit, Some(p.span_id)),
            None if self.settings.provider.trace_id_64bit => (random() as u128, true, None),
            None => (((random() as u128) << 64) | random() as u128, false, None),
        };
        let span = SpanContext {
            trace_id,
            trace_id_64bit,
            span_id: random().max(1),
            parent_span_id,
            sampled,
        };
        // The provider's own format, and every format the request came with.
        let mut formats = incoming.formats;
        match self.settings.provider.protocol {
            Protocol::Zipkin => formats.b3_multi = true,
            Protocol::OtlpGrpc | Protocol::OtlpHttp => formats.w3c = true,
        }
        context::inject(headers, &span, formats);
        let report = sampled && !self.settings.disable_span_reporting;
        Started {
            span,
            kind: match reporter {
                Reporter::Source => Kind::Client,
                Reporter::Destination => Kind::Server,
            },
            start: SystemTime::now(),
            request_tags: if report {
                self.request_tags(headers, line)
            } else {
                Vec::new()
            },
            egress_name: match (report, reporter) {
                (true, Reporter::Source) => format!("egress {}", line.authority),
                _ => String::new(),
            },
            report,
        }
    }

    fn request_tags(
        &self,
        h: &HeaderMap,
        line: &RequestLine<'_>,
    ) -> Vec<(Cow<'static, str>, String)> {
        let mut tags: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(24);
        let mut url = format!("{}://{}{}", line.scheme, line.authority, line.path);
        if let Some(q) = line.query {
            url.push('?');
            url.push_str(q);
        }
        url.truncate(truncate(&url, self.settings.max_path_tag_length as usize).len());
        tags.push(("http.url".into(), url));
        tags.push(("http.method".into(), line.method.to_string()));
        tags.push(("http.protocol".into(), line.protocol.to_string()));
        let header = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .unwrap_or("-")
                .to_string()
        };
        tags.push(("guid:x-request-id".into(), header("x-request-id")));
        tags.push(("user_agent".into(), header("user-agent")));
        tags.push((
            "downstream_cluster".into(),
            header("x-envoy-downstream-service-cluster"),
        ));
        for (tag, name, default) in &self.header_tags {
            let v = h
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| default.clone());
            tags.push((Cow::Owned(tag.clone()), v));
        }
        tags
    }

    fn exporter(&self) -> &Arc<Exporter> {
        self.exporter
            .get_or_init(|| export::exporter(&self.settings.provider))
    }
}

/// The request as it arrived, for the span's tags and default name.
pub struct RequestLine<'a> {
    /// `GET`.
    pub method: &'a str,
    /// `http`.
    pub scheme: &'a str,
    /// `reviews:9080`.
    pub authority: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
}

/// A request's span from its start to its end.
#[derive(Debug)]
pub struct Started {
    /// Its context, as propagated.
    pub span: SpanContext,
    kind: Kind,
    start: SystemTime,
    /// Tags read from the request (only when the span is reported).
    request_tags: Vec<(Cow<'static, str>, String)>,
    /// Envoy's name of an outbound span without a decorator (`egress <authority>`).
    egress_name: String,
    report: bool,
}

/// What the recording stage knows when a request ends.
pub struct Outcome<'a> {
    /// The span's name (the route's decorator), if the route had one.
    pub operation: Option<&'a str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The response code (0: none was sent).
    pub status: u16,
    /// Envoy's response flags, comma-separated (empty: none).
    pub response_flags: &'a str,
    /// The upstream cluster, when a route chose one.
    pub cluster: Option<&'a str>,
    /// Request body bytes received.
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// From the request's first byte to the response's last.
    pub duration: Duration,
}

impl Started {
    /// Whether a span will be reported (sampled, and reporting not disabled).
    pub fn reported(&self) -> bool {
        self.report
    }

    /// Reports the span (when sampled) with Istio's tags.
    pub fn finish(self, tracer: &Tracer, local: &Local, o: &Outcome<'_>) {
        if !self.report {
            return;
        }
        let name = match (o.operation, self.kind) {
            (Some(op), _) => op.to_string(),
            (None, Kind::Server) => "ingress".to_string(),
            (None, Kind::Client) => self.egress_name,
        };
        let mut tags = self.request_tags;
        tags.reserve(16 + local.tags.len() + tracer.fixed_tags.len());
        for (k, v) in &local.tags {
            tags.push((Cow::Borrowed(k), v.clone()));
        }
        let cluster = o.cluster.unwrap_or("-").to_string();
        tags.extend([
            ("http.status_code".into(), o.status.to_string()),
            ("peer.address".into(), o.peer.ip().to_string()),
            ("request_size".into(), o.request_bytes.to_string()),
            ("response_size".into(), o.response_bytes.to_string()),
            (
                "response_flags".into(),
                if o.response_flags.is_empty() {
                    "-".to_string()
                } else {
                    o.response_flags.to_string()
                },
            ),
            ("upstream_cluster".into(), cluster.clone()),
            ("upstream_cluster.name".into(), cluster),
        ]);
        if o.status >= 500 || o.status == 0 {
            tags.push(("error".into(), "true".to_string()));
        }
        for (k, v) in &tracer.fixed_tags {
            tags.push((Cow::Owned(k.clone()), v.clone()));
        }
        tracer.exporter().report(FinishedSpan {
            context: self.span,
            name,
            kind: self.kind,
            start: self.start,
            duration: o.duration,
            service_name: local.service_name.clone(),
            local_ip: local.ip,
            tags,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::trace::{CustomTag, Protocol, Provider};

    fn tracing(sampling: f64) -> Tracing {
        Tracing {
            provider: Provider {
                name: "zipkin".into(),
                protocol: Protocol::Zipkin,
                service: "127.0.0.1".into(),
                port: 9,
                path: String::new(),
                max_tag_length: 256,
                trace_id_64bit: false,
                timeout: None,
                headers: vec![],
            },
            random_sampling: sampling,
            custom_tags: vec![
                CustomTag {
                    tag: "cluster".into(),
                    value: TagValue::Environment {
                        name: "ISTIO_META_CLUSTER_ID".into(),
                        default_value: "none".into(),
                    },
                },
                CustomTag {
                    tag: "user".into(),
                    value: TagValue::Header {
                        name: "End-User".into(),
                        default_value: "anonymous".into(),
                    },
                },
            ],
            max_path_tag_length: 256,
            disable_span_reporting: false,
            use_request_id_for_sampling: true,
        }
    }

    const LINE: RequestLine<'static> = RequestLine {
        method: "GET",
        scheme: "http",
        authority: "reviews:9080",
        path: "/r",
        query: Some("x=1"),
        protocol: "HTTP/1.1",
    };

    fn with_id(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", id.parse().unwrap());
        h
    }

    #[test]
    fn without_request_id_sampling_the_same_request_id_is_drawn_anew_each_time() {
        let rng = crate::http::Rng::seeded(11);
        let mut random = || rng.next_u64();
        let mut t = tracing(50.0);
        t.use_request_id_for_sampling = false;
        let t = Tracer::compile(&t, |_| None).unwrap();
        let decisions: Vec<bool> = (0..400)
            .map(|_| {
                t.start(&mut with_id("same"), &LINE, &mut random, Reporter::Source)
                    .span
                    .sampled
            })
            .collect();
        let n = decisions.iter().filter(|s| **s).count();
        assert!((120..280).contains(&n), "{n} of 400 at 50%");
    }

    #[test]
    fn sampling_follows_the_percentage_and_the_request_id_decides_alike_everywhere() {
        let rng = crate::http::Rng::seeded(7);
        let mut random = || rng.next_u64();
        let t = Tracer::compile(&tracing(25.0), |_| None).unwrap();
        let mut sampled = 0;
        for i in 0..4000 {
            let id = format!("req-{i}");
            let a = t.start(&mut with_id(&id), &LINE, &mut random, Reporter::Source);
            let b = t.start(&mut with_id(&id), &LINE, &mut random, Reporter::Destination);
            assert_eq!(a.span.sampled, b.span.sampled, "{id}");
            sampled += a.span.sampled as usize;
        }
        assert!((800..1200).contains(&sampled), "{sampled} of 4000 at 25%");
        let none = Tracer::compile(&tracing(0.0), |_| None).unwrap();
        let all = Tracer::compile(&tracing(100.0), |_| None).unwrap();
        for i in 0..200 {
            let id = format!("{i}");
            assert!(
                !none
                    .start(&mut with_id(&id), &LINE, &mut random, Reporter::Source)
                    .span
                    .sampled
            );
            assert!(
                all.start(&mut with_id(&id), &LINE, &mut random, Reporter::Source)
                    .span
                    .sampled
            );
        }
    }

    #[test]
    fn a_callers_decision_and_parent_are_kept_and_the_next_hop_sees_our_span() {
        let rng = crate::http::Rng::seeded(1);
        let mut random = || rng.next_u64();
        let t = Tracer::compile(&tracing(0.0), |_| None).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-b3-traceid",
            "463ac35c9f6413ad48485a3953bb6124".parse().unwrap(),
        );
        h.insert("x-b3-spanid", "a2fb4a1d1a96d312".parse().unwrap());
        h.insert("x-b3-sampled", "1".parse().unwrap());
        let s = t.start(&mut h, &LINE, &mut random, Reporter::Destination);
        assert!(s.span.sampled && s.reported());
        assert_eq!(s.span.trace_id, 0x463ac35c9f6413ad48485a3953bb6124);
        assert_eq!(s.span.parent_span_id, Some(0xa2fb4a1d1a96d312));
        assert_ne!(s.span.span_id, 0xa2fb4a1d1a96d312);
        assert_eq!(
            h["x-b3-spanid"].to_str().unwrap(),
            format!("{:016x}", s.span.span_id)
        );
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        // A new trace at 100%: 128-bit ids, no parent.
        let all = Tracer::compile(&tracing(100.0), |_| None).unwrap();
        let mut h = HeaderMap::new();
        let s = all.start(&mut h, &LINE, &mut random, Reporter::Source);
        assert_eq!(s.span.parent_span_id, None);
        assert_eq!(h["x-b3-traceid"].len(), 32);
        // Reporting disabled: propagated, sampled, not reported.
        let mut quiet = tracing(100.0);
        quiet.disable_span_reporting = true;
        let q = Tracer::compile(&quiet, |_| None).unwrap();
        let s = q.start(&mut HeaderMap::new(), &LINE, &mut random, Reporter::Source);
        assert!(s.span.sampled && !s.reported());
    }

    #[test]
    fn custom_tags_read_the_environment_once_and_headers_per_request() {
        let t = Tracer::compile(&tracing(100.0), |n| {
            (n == "ISTIO_META_CLUSTER_ID").then(|| "east".to_string())
        })
        .unwrap();
        assert_eq!(t.fixed_tags, vec![("cluster".into(), "east".into())]);
        let mut h = HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        h.insert("x-request-id", "r1".parse().unwrap());
        let tags = t.request_tags(&h, &LINE);
        assert!(tags.contains(&("user".into(), "jason".into())));
        assert!(tags.contains(&("http.url".into(), "http://reviews:9080/r?x=1".into())));
        assert!(tags.contains(&("http.protocol".into(), "HTTP/1.1".into())));
        assert!(tags.contains(&("guid:x-request-id".into(), "r1".into())));
        assert!(tags.contains(&("user_agent".into(), "-".into())));
        let tags = t.request_tags(&HeaderMap::new(), &LINE);
        assert!(tags.contains(&("user".into(), "anonymous".into())));
    }
}
