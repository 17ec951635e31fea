//! The mesh's extension providers and default tracing (Istio's meshConfig `extensionProviders`,
//! `defaultProviders.tracing`, `enableTracing`, and istiod's `PILOT_TRACE_SAMPLING`), read from
//! the operator's flags and turned into the tracing settings every sidecar's HTTP connection
//! managers get (`rustmesh_xds::trace::Tracing`).
//!
//! Decisions:
//! - `extensionProviders` is Istio's list, as JSON (the chart writes `toJson` of
//!   `meshConfig.extensionProviders`). Kinds understood: `zipkin` and `opentelemetry` (tracing)
//!   and `prometheus` (metrics, which every sidecar serves anyway). Any other kind, and any
//!   field of a known kind that rustmesh does not implement, is refused at start naming it.
//! - Tracing is on when `enableTracing` is true and `defaultProviders.tracing` names a
//!   tracing provider (Istio installs without a provider trace nothing; istio's old
//!   `defaultConfig.tracing.zipkin.address` is not read). One provider at a time, as Envoy's
//!   connection manager has one.
//! - Sampling is `PILOT_TRACE_SAMPLING` (percent, default 1.0, Istio's default).

use rustmesh_xds::trace::{Protocol, Provider, Tracing};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Why the providers flags are refused; each message names the provider and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvidersError {
    #[error("extension-providers: not a JSON list of Istio extension providers: {0}")]
    Syntax(String),
    #[error("extension-providers[{index}] ({name:?}): {message}")]
    Provider {
        index: usize,
        name: String,
        message: String,
    },
    #[error("extension-providers: two providers are named {0:?}")]
    Duplicate(String),
    #[error("default-tracing-providers: {0:?} is not an extension provider")]
    UnknownDefault(String),
    #[error("default-tracing-providers: {0:?} is not a tracing provider (zipkin or opentelemetry)")]
    NotTracing(String),
    #[error(
        "default-tracing-providers: {0:?} — one tracing provider at a time (an Envoy connection manager has one)"
    )]
    Several(String),
    #[error("trace-sampling: {0} is not a percentage between 0 and 100")]
    Sampling(String),
}

/// One provider as Istio writes it: a name and exactly one kind (every unknown key lands in
/// `other` and is refused by name).
#[derive(Deserialize)]
struct Raw {
    name: String,
    #[serde(default)]
    zipkin: Option<Zipkin>,
    #[serde(default)]
    opentelemetry: Option<Otel>,
    #[serde(default)]
    prometheus: Option<serde_json::Value>,
    /// Every other kind Istio has (`envoyExtAuthzHttp`, `envoyFileAccessLog`, ...).
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Zipkin {
    service: String,
    port: u32,
    #[serde(default)]
    max_tag_length: Option<u32>,
    #[serde(default)]
    enable64bit_trace_id: bool,
    #[serde(default)]
    path: String,
    #[serde(default)]
    timeout: Option<rustmesh_xds::duration::Duration>,
    #[serde(default)]
    headers: Vec<Header>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Otel {
    service: String,
    port: u32,
    #[serde(default)]
    max_tag_length: Option<u32>,
    #[serde(default)]
    http: Option<OtelHttp>,
    #[serde(default)]
    grpc: Option<OtelGrpc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelHttp {
    #[serde(default)]
    path: String,
    #[serde(default)]
    timeout: Option<rustmesh_xds::duration::Duration>,
    #[serde(default)]
    headers: Vec<Header>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelGrpc {
    #[serde(default)]
    timeout: Option<rustmesh_xds::duration::Duration>,
    #[serde(default)]
    initial_metadata: Vec<Header>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    value: String,
}

/// What the providers are: tracing ones by name, and the names of the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Providers {
    /// Tracing providers (`zipkin`, `opentelemetry`), by name.
    pub tracing: BTreeMap<String, Provider>,
    /// Other providers rustmesh accepts (`prometheus`), by name.
    pub other: Vec<String>,
}

fn headers(h: &[Header]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

impl Providers {
    /// Reads Istio's `extensionProviders` list (JSON; empty text: none).
    pub fn parse(text: &str) -> Result<Providers, ProvidersError> {
        if text.trim().is_empty() {
            return Ok(Providers::default());
        }
        let raw: Vec<Raw> =
            serde_json::from_str(text).map_err(|e| ProvidersError::Syntax(e.to_string()))?;
        let mut out = Providers::default();
        for (index, r) in raw.into_iter().enumerate() {
            let fail = |message: String| ProvidersError::Provider {
                index,
                name: r.name.clone(),
                message,
            };
            if let Some(kind) = r.other.keys().next() {
                return Err(fail(format!(
                    "the provider kind {kind:?} is not implemented by rustmesh \
                     (zipkin, opentelemetry and prometheus are)"
                )));
            }
            let kinds = [
                r.zipkin.is_some(),
                r.opentelemetry.is_some(),
                r.prometheus.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(fail(
                    "exactly one of zipkin, opentelemetry or prometheus is required".into(),
                ));
            }
            if out.tracing.contains_key(&r.name) || out.other.contains(&r.name) {
                return Err(ProvidersError::Duplicate(r.name.clone()));
            }
            let port = |p: u32, field: &str| {
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| fail(format!("{field}.port: {p} is not a port")))
            };
            let provider = match (&r.zipkin, &r.opentelemetry) {
                (Some(z), _) => Provider {
                    name: r.name.clone(),
                    protocol: Protocol::Zipkin,
                    service: z.service.clone(),
                    port: port(z.port, "zipkin")?,
                    path: z.path.clone(),
                    max_tag_length: z
                        .max_tag_length
                        .unwrap_or(rustmesh_xds::trace::DEFAULT_MAX_TAG_LENGTH),
                    trace_id_64bit: z.enable64bit_trace_id,
                    timeout: z.timeout,
                    headers: headers(&z.headers),
                },
                (None, Some(o)) => {
                    if o.http.is_some() && o.grpc.is_some() {
                        return Err(fail(
                            "opentelemetry: http and grpc are exclusive (one protocol)".into(),
                        ));
                    }
                    let (protocol, path, timeout, hs) = match (&o.http, &o.grpc) {
                        (Some(h), _) => (
                            Protocol::OtlpHttp,
                            h.path.clone(),
                            h.timeout,
                            headers(&h.headers),
                        ),
                        (None, Some(g)) => (
                            Protocol::OtlpGrpc,
                            String::new(),
                            g.timeout,
                            headers(&g.initial_metadata),
                        ),
                        (None, None) => (Protocol::OtlpGrpc, String::new(), None, Vec::new()),
                    };
                    Provider {
                        name: r.name.clone(),
                        protocol,
                        service: o.service.clone(),
                        port: port(o.port, "opentelemetry")?,
                        path,
                        max_tag_length: o
                            .max_tag_length
                            .unwrap_or(rustmesh_xds::trace::DEFAULT_MAX_TAG_LENGTH),
                        trace_id_64bit: false,
                        timeout,
                        headers: hs,
                    }
                }
                (None, None) => {
                    out.other.push(r.name.clone());
                    continue;
                }
            };
            // The provider's own checks, through a tracing setting that holds it.
            let probe = Tracing {
                provider: provider.clone(),
                random_sampling: 0.0,
                custom_tags: Vec::new(),
                max_path_tag_length: rustmesh_xds::trace::DEFAULT_MAX_PATH_TAG_LENGTH,
                disable_span_reporting: false,
                use_request_id_for_sampling: true,
            };
            probe.check().map_err(|e| fail(e.to_string()))?;
            out.tracing.insert(r.name.clone(), provider);
        }
        Ok(out)
    }

    /// The mesh's default tracing: on with `enable`, the provider `defaults` names (a
    /// comma-separated list of one), and `sampling` percent.
    pub fn default_tracing(
        &self,
        enable: bool,
        defaults: &str,
        sampling: f64,
    ) -> Result<Option<Tracing>, ProvidersError> {
        if !(0.0..=100.0).contains(&sampling) {
            return Err(ProvidersError::Sampling(sampling.to_string()));
        }
        let names: Vec<&str> = defaults
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        let mut chosen = None;
        for n in &names {
            match self.tracing.get(*n) {
                Some(p) if chosen.is_none() => chosen = Some(p.clone()),
                Some(_) => return Err(ProvidersError::Several(defaults.to_string())),
                None if self.other.iter().any(|o| o == n) => {
                    return Err(ProvidersError::NotTracing(n.to_string()));
                }
                None => return Err(ProvidersError::UnknownDefault(n.to_string())),
            }
        }
        Ok(chosen.filter(|_| enable).map(|provider| Tracing {
            provider,
            random_sampling: sampling,
            custom_tags: Vec::new(),
            max_path_tag_length: rustmesh_xds::trace::DEFAULT_MAX_PATH_TAG_LENGTH,
            disable_span_reporting: false,
            use_request_id_for_sampling: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO_DOCS: &str = r#"[
        {"name": "prometheus", "prometheus": {}},
        {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
        {"name": "otel-tracing", "opentelemetry": {"service": "opentelemetry-collector.observability.svc.cluster.local", "port": 4317}},
        {"name": "otel-http", "opentelemetry": {"service": "otel.observability", "port": 4318,
            "http": {"path": "/v1/traces", "timeout": "2s", "headers": [{"name": "x-tenant", "value": "a"}]}}}
    ]"#;

    #[test]
    fn istios_documented_providers_are_read() {
        let p = Providers::parse(ISTIO_DOCS).unwrap();
        assert_eq!(p.other, vec!["prometheus".to_string()]);
        let z = &p.tracing["zipkin"];
        assert_eq!(
            (z.protocol, z.port, z.effective_path()),
            (Protocol::Zipkin, 9411, "/api/v2/spans")
        );
        assert_eq!(p.tracing["otel-tracing"].protocol, Protocol::OtlpGrpc);
        let h = &p.tracing["otel-http"];
        assert_eq!(h.protocol, Protocol::OtlpHttp);
        assert_eq!(h.headers, vec![("x-tenant".to_string(), "a".to_string())]);
        assert_eq!(h.effective_timeout(), std::time::Duration::from_secs(2));
        assert_eq!(Providers::parse("").unwrap(), Providers::default());
    }

    #[test]
    fn the_default_provider_turns_tracing_on_at_the_sampling_rate() {
        let p = Providers::parse(ISTIO_DOCS).unwrap();
        let t = p.default_tracing(true, "zipkin", 1.0).unwrap().unwrap();
        assert_eq!(t.provider.name, "zipkin");
        assert_eq!(t.random_sampling, 1.0);
        // No default provider, or tracing disabled: off.
        assert_eq!(p.default_tracing(true, "", 1.0).unwrap(), None);
        assert_eq!(p.default_tracing(false, "zipkin", 1.0).unwrap(), None);
        for (names, sampling, want) in [
            ("jaeger", 1.0, "default-tracing-providers: \"jaeger\""),
            ("prometheus", 1.0, "not a tracing provider"),
            ("zipkin,otel-tracing", 1.0, "one tracing provider at a time"),
            ("zipkin", 101.0, "trace-sampling"),
        ] {
            let e = p
                .default_tracing(true, names, sampling)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{names}: {e}");
        }
    }

    #[test]
    fn unimplemented_kinds_and_fields_are_refused_by_name() {
        for (text, want) in [
            (
                r#"[{"name": "authz", "envoyExtAuthzHttp": {"service": "a", "port": 1}}]"#,
                "\"envoyExtAuthzHttp\" is not implemented",
            ),
            (
                r#"[{"name": "z", "zipkin": {"service": "z", "port": 9411, "traceContextOption": "USE_B3"}}]"#,
                "traceContextOption",
            ),
            (
                r#"[{"name": "o", "opentelemetry": {"service": "o", "port": 4317, "resourceDetectors": {}}}]"#,
                "resourceDetectors",
            ),
            (
                r#"[{"name": "z", "zipkin": {"service": "z", "port": 70000}}]"#,
                "extension-providers[0] (\"z\"): zipkin.port: 70000",
            ),
            (
                r#"[{"name": "z", "zipkin": {"service": "", "port": 9411}}]"#,
                "provider.service",
            ),
            (
                r#"[{"name": "z", "zipkin": {"service": "z", "port": 1}}, {"name": "z", "prometheus": {}}]"#,
                "two providers are named \"z\"",
            ),
            (r#"[{"name": "n"}]"#, "exactly one of"),
            (r#"{"name": "n"}"#, "not a JSON list"),
        ] {
            let e = Providers::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
