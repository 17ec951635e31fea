//! Distributed tracing as Istio configures it: the tracing settings of an HTTP connection
//! manager ([`Tracing`], Envoy's `HttpConnectionManager.tracing` with its provider), rendered by
//! the operator from the mesh's `extensionProviders` (`zipkin`, `opentelemetry`) and sampling,
//! and checked here so that a bad provider is refused with the field at fault. A pure library:
//! the proxy's `trace` module does the propagation, the spans and the export.
//!
//! Decisions:
//! - Providers are Istio's `MeshConfig.ExtensionProvider` kinds `zipkin` (Zipkin v2 JSON over
//!   HTTP, `path` default `/api/v2/spans`) and `opentelemetry` (OTLP over gRPC, or over HTTP
//!   with protobuf bodies when `http` is set, `path` default `/v1/traces`). The proxy connects
//!   to `service:port` itself (the sidecar's own connections are not captured).
//! - `randomSampling` is a percentage with Istio's precision of 0.01 (Istio's
//!   `randomSamplingPercentage`, `PILOT_TRACE_SAMPLING`); a request that arrives with a
//!   sampling decision (B3 or W3C) keeps it.
//! - Custom tags are Istio's three kinds: `literal`, `environment` (read once when the proxy
//!   compiles the configuration) and `header` (read from each request), each with a default.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Zipkin's span API path (Istio's default for a `zipkin` provider).
pub const ZIPKIN_DEFAULT_PATH: &str = "/api/v2/spans";
/// OTLP/HTTP's trace path (Istio's default for an `opentelemetry` provider with `http`).
pub const OTLP_HTTP_DEFAULT_PATH: &str = "/v1/traces";
/// Istio's default `maxPathTagLength`: the longest `http.url` tag.
pub const DEFAULT_MAX_PATH_TAG_LENGTH: u32 = 256;
/// The longest tag value an export carries unless the provider says otherwise (Istio's
/// `maxTagLength` default).
pub const DEFAULT_MAX_TAG_LENGTH: u32 = 256;
/// The most custom tags a configuration may have.
pub const MAX_CUSTOM_TAGS: usize = 64;

/// The tracing settings of one HTTP connection manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Where spans go.
    pub provider: Provider,
    /// Percent (0 to 100, precision 0.01) of requests without a sampling decision that are
    /// traced.
    pub random_sampling: f64,
    /// Tags added to every span besides the standard ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_tags: Vec<CustomTag>,
    /// The longest `http.url` tag, in bytes (Istio's `maxPathTagLength`).
    #[serde(
        default = "default_max_path",
        skip_serializing_if = "is_default_max_path"
    )]
    pub max_path_tag_length: u32,
    /// Propagate the trace context but report no span (Istio's `disableSpanReporting`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_span_reporting: bool,
    /// Draw the sampling decision from a hash of `x-request-id`, so every sidecar of a request
    /// decides alike (Istio's `useRequestIdForTraceSampling`, on by default); off: at random.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub use_request_id_for_sampling: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

// `randomSampling` is never NaN in a checked configuration ([`Tracing::check`]), so equality
// is an equivalence (the operator's settings compare configurations).
impl Eq for Tracing {}

fn default_max_path() -> u32 {
    DEFAULT_MAX_PATH_TAG_LENGTH
}

fn is_default_max_path(v: &u32) -> bool {
    *v == DEFAULT_MAX_PATH_TAG_LENGTH
}

/// A span exporter, as Istio's `extensionProviders` entry names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    /// The provider's name in the mesh config (`zipkin`, `otel-tracing`), for logs and
    /// `config_dump`.
    pub name: String,
    /// The wire protocol.
    pub protocol: Protocol,
    /// The collector's host (a service's DNS name or an address).
    pub service: String,
    /// The collector's port.
    pub port: u16,
    /// The HTTP path of `zipkin` and `otlp-http` (empty: the protocol's default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Longest tag value sent, in bytes (Istio's `maxTagLength`).
    #[serde(
        default = "default_max_tag",
        skip_serializing_if = "is_default_max_tag"
    )]
    pub max_tag_length: u32,
    /// Zipkin: 64-bit trace ids for new traces (Istio's `enable64bitTraceId`); 128 otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_id_64bit: bool,
    /// How long one export may take before it is abandoned (Istio's `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<crate::duration::Duration>,
    /// Extra HTTP headers (or gRPC metadata) sent with each export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

fn default_max_tag() -> u32 {
    DEFAULT_MAX_TAG_LENGTH
}

fn is_default_max_tag(v: &u32) -> bool {
    *v == DEFAULT_MAX_TAG_LENGTH
}

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Zipkin v2 JSON, `POST` over HTTP/1.1 (Istio's `zipkin` provider).
    Zipkin,
    /// OTLP over gRPC (Istio's `opentelemetry` provider).
    OtlpGrpc,
    /// OTLP over HTTP with protobuf bodies (Istio's `opentelemetry` provider with `http`).
    OtlpHttp,
}

impl Provider {
    /// The HTTP path exports are sent to (`zipkin`, `otlp-http`).
    pub fn effective_path(&self) -> &str {
        match (self.protocol, self.path.as_str()) {
            (_, p) if !p.is_empty() => p,
            (Protocol::Zipkin, _) => ZIPKIN_DEFAULT_PATH,
            (_, _) => OTLP_HTTP_DEFAULT_PATH,
        }
    }

    /// The time one export may take (5 s unless set, Istio's default for OTLP).
    pub fn effective_timeout(&self) -> Duration {
        self.timeout
            .map(|d| d.0)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(5))
    }

    /// `service:port`, bracketing an IPv6 address.
    pub fn authority(&self) -> String {
        if self.service.contains(':') {
            format!("[{}]:{}", self.service, self.port)
        } else {
            format!("{}:{}", self.service, self.port)
        }
    }
}

/// A tag added to every span (Istio's `Tracing.CustomTag`): `{"tag": .., "literal": {..}}`.
/// (serde cannot deny unknown fields next to a flattened enum; the operator writes these.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomTag {
    /// The tag's name.
    pub tag: String,
    /// Where its value comes from.
    #[serde(flatten)]
    pub value: TagValue,
}

/// Where a custom tag's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum TagValue {
    /// A fixed value.
    Literal { value: String },
    /// An environment variable of the proxy, or the default when unset.
    Environment {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        default_value: String,
    },
    /// A request header, or the default when absent.
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        default_value: String,
    },
}

/// Why a [`Tracing`] is refused; each message starts with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TracingError {
    #[error("randomSampling: {0} is not a percentage between 0 and 100")]
    Sampling(String),
    #[error("provider.service: empty (the collector's host is required)")]
    NoService,
    #[error("provider.port: 0 is not a port")]
    NoPort,
    #[error("provider.path: {0:?} must start with '/'")]
    Path(String),
    #[error("provider.path: a path means nothing to OTLP over gRPC (set `http` to use one)")]
    GrpcPath,
    #[error("provider.traceId64bit: only the zipkin provider has 64-bit trace ids")]
    TraceId64,
    #[error("provider.headers[{0}]: {1:?} is not a valid header name")]
    HeaderName(usize, String),
    #[error("provider.headers[{0}]: the value of {1:?} is not a valid header value")]
    HeaderValue(usize, String),
    #[error("customTags: {0} tags is over the limit of {MAX_CUSTOM_TAGS}")]
    TooManyTags(usize),
    #[error("customTags[{0}].tag: empty")]
    EmptyTag(usize),
    #[error("customTags[{0}]: the {1} name is empty")]
    EmptySource(usize, &'static str),
    #[error("customTags[{0}].header.name: {1:?} is not a valid header name")]
    TagHeader(usize, String),
}

impl Tracing {
    /// Checks every field (the operator before writing, the proxy before serving).
    pub fn check(&self) -> Result<(), TracingError> {
        let s = self.random_sampling;
        if !(0.0..=100.0).contains(&s) {
            return Err(TracingError::Sampling(s.to_string()));
        }
        let p = &self.provider;
        if p.service.trim().is_empty() {
            return Err(TracingError::NoService);
        }
        if p.port == 0 {
            return Err(TracingError::NoPort);
        }
        if !p.path.is_empty() {
            if p.protocol == Protocol::OtlpGrpc {
                return Err(TracingError::GrpcPath);
            }
            if !p.path.starts_with('/') {
                return Err(TracingError::Path(p.path.clone()));
            }
        }
        if p.trace_id_64bit && p.protocol != Protocol::Zipkin {
            return Err(TracingError::TraceId64);
        }
        for (i, (k, v)) in p.headers.iter().enumerate() {
            if http_name_invalid(k) {
                return Err(TracingError::HeaderName(i, k.clone()));
            }
            if v.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(TracingError::HeaderValue(i, k.clone()));
            }
        }
        if self.custom_tags.len() > MAX_CUSTOM_TAGS {
            return Err(TracingError::TooManyTags(self.custom_tags.len()));
        }
        for (i, t) in self.custom_tags.iter().enumerate() {
            if t.tag.is_empty() {
                return Err(TracingError::EmptyTag(i));
            }
            match &t.value {
                TagValue::Literal { .. } => {}
                TagValue::Environment { name, .. } if name.is_empty() => {
                    return Err(TracingError::EmptySource(i, "environment"));
                }
                TagValue::Header { name, .. } if name.is_empty() => {
                    return Err(TracingError::EmptySource(i, "header"));
                }
                TagValue::Header { name, .. } if http_name_invalid(name) => {
                    return Err(TracingError::TagHeader(i, name.clone()));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether `name` is not an HTTP header token.
fn http_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A route's span name (Envoy's route `decorator.operation`; Istio's `<host>:<port>/*`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Decorator {
    pub operation: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zipkin() -> Tracing {
        Tracing {
            provider: Provider {
                name: "zipkin".into(),
                protocol: Protocol::Zipkin,
                service: "zipkin.istio-system.svc.cluster.local".into(),
                port: 9411,
                path: String::new(),
                max_tag_length: DEFAULT_MAX_TAG_LENGTH,
                trace_id_64bit: false,
                timeout: None,
                headers: vec![],
            },
            random_sampling: 1.0,
            custom_tags: vec![],
            max_path_tag_length: DEFAULT_MAX_PATH_TAG_LENGTH,
            disable_span_reporting: false,
            use_request_id_for_sampling: true,
        }
    }

    #[test]
    fn defaults_are_istios_and_the_json_round_trips() {
        let t = zipkin();
        assert_eq!(t.check(), Ok(()));
        assert_eq!(t.provider.effective_path(), "/api/v2/spans");
        assert_eq!(t.provider.effective_timeout(), Duration::from_secs(5));
        assert_eq!(
            t.provider.authority(),
            "zipkin.istio-system.svc.cluster.local:9411"
        );
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"provider": {"name": "zipkin", "protocol": "zipkin",
                "service": "zipkin.istio-system.svc.cluster.local", "port": 9411},
                "randomSampling": 1.0})
        );
        let back: Tracing = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
        let mut otlp = zipkin();
        otlp.provider.protocol = Protocol::OtlpHttp;
        assert_eq!(otlp.provider.effective_path(), "/v1/traces");
        otlp.provider.service = "fd00::1".into();
        assert_eq!(otlp.provider.authority(), "[fd00::1]:9411");
    }

    #[test]
    fn custom_tags_are_istios_three_kinds() {
        let tags: Vec<CustomTag> = serde_json::from_value(serde_json::json!([
            {"tag": "team", "literal": {"value": "blue"}},
            {"tag": "cluster", "environment": {"name": "ISTIO_META_CLUSTER_ID", "defaultValue": "k"}},
            {"tag": "user", "header": {"name": "end-user"}},
        ]))
        .unwrap();
        assert_eq!(
            tags[1].value,
            TagValue::Environment {
                name: "ISTIO_META_CLUSTER_ID".into(),
                default_value: "k".into()
            }
        );
        let mut t = zipkin();
        t.custom_tags = tags;
        assert_eq!(t.check(), Ok(()));
        let bad: Result<Vec<CustomTag>, _> =
            serde_json::from_value(serde_json::json!([{"tag": "x", "regex": {"value": "a"}}]));
        assert!(bad.is_err());
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut Tracing)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|t| t.random_sampling = 100.5), "randomSampling"),
            (Box::new(|t| t.random_sampling = f64::NAN), "randomSampling"),
            (Box::new(|t| t.provider.service.clear()), "provider.service"),
            (Box::new(|t| t.provider.port = 0), "provider.port"),
            (Box::new(|t| t.provider.path = "v2".into()), "provider.path"),
            (
                Box::new(|t| {
                    t.provider.protocol = Protocol::OtlpGrpc;
                    t.provider.path = "/x".into()
                }),
                "provider.path",
            ),
            (
                Box::new(|t| {
                    t.provider.protocol = Protocol::OtlpGrpc;
                    t.provider.trace_id_64bit = true
                }),
                "provider.traceId64bit",
            ),
            (
                Box::new(|t| t.provider.headers = vec![("bad name".into(), "v".into())]),
                "provider.headers[0]",
            ),
            (
                Box::new(|t| t.provider.headers = vec![("x".into(), "a\nb".into())]),
                "provider.headers[0]",
            ),
            (
                Box::new(|t| {
                    t.custom_tags = vec![CustomTag {
                        tag: String::new(),
                        value: TagValue::Literal { value: "v".into() },
                    }]
                }),
                "customTags[0].tag",
            ),
            (
                Box::new(|t| {
                    t.custom_tags = vec![CustomTag {
                        tag: "u".into(),
                        value: TagValue::Header {
                            name: "a b".into(),
                            default_value: String::new(),
                        },
                    }]
                }),
                "customTags[0].header.name",
            ),
            (
                Box::new(|t| {
                    t.custom_tags = vec![
                        CustomTag {
                            tag: "t".into(),
                            value: TagValue::Literal { value: "v".into() }
                        };
                        MAX_CUSTOM_TAGS + 1
                    ]
                }),
                "customTags",
            ),
        ];
        for (change, field) in cases {
            let mut t = zipkin();
            change(&mut t);
            let e = t.check().expect_err(field).to_string();
            assert!(e.starts_with(field), "{e:?} should name {field}");
        }
    }
}
