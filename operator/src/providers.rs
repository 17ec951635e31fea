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
//! - `envoyFileAccessLog` (path and `logFormat` `text` or `labels`) is the access log kind the
//!   Telemetry API's `accessLogging` names. Istio's built-in providers are there unless a
//!   provider of the same name replaces them: `envoy` (Istio's default text format to
//!   `/dev/stdout`) and `prometheus`.
//! - `defaultProviders.accessLogging` and `.metrics` (Istio's default: `prometheus`) are what a
//!   Telemetry rule naming no provider uses ([`Providers::telemetry`]).

use rustmesh_xds::access_log::{AccessLog, Encoding};
use rustmesh_xds::telemetry::{DefaultProviders, ProviderKind, Telemetry};
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
    #[error("default providers: {0}")]
    Defaults(String),
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
    #[serde(default, rename = "envoyFileAccessLog")]
    file_log: Option<FileLog>,
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileLog {
    #[serde(default)]
    path: String,
    #[serde(default)]
    log_format: Option<LogFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogFormat {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    labels: Option<serde_json::Map<String, serde_json::Value>>,
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
    /// Access log providers (`envoyFileAccessLog`), by name.
    pub access_log: BTreeMap<String, AccessLog>,
}

/// Istio's built-in access log provider's name.
pub const BUILTIN_ACCESS_LOG: &str = "envoy";
/// Istio's built-in metrics provider's name.
pub const BUILTIN_METRICS: &str = "prometheus";

fn headers(h: &[Header]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

impl Providers {
    /// Reads Istio's `extensionProviders` list (JSON; empty text: none).
    pub fn parse(text: &str) -> Result<Providers, ProvidersError> {
        let raw: Vec<Raw> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(text).map_err(|e| ProvidersError::Syntax(e.to_string()))?
        };
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
                     (zipkin, opentelemetry, envoyFileAccessLog and prometheus are)"
                )));
            }
            let kinds = [
                r.zipkin.is_some(),
                r.opentelemetry.is_some(),
                r.prometheus.is_some(),
                r.file_log.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(fail(
                    "exactly one of zipkin, opentelemetry, envoyFileAccessLog or prometheus is \
                     required"
                        .into(),
                ));
            }
            if out.tracing.contains_key(&r.name)
                || out.other.contains(&r.name)
                || out.access_log.contains_key(&r.name)
            {
                return Err(ProvidersError::Duplicate(r.name.clone()));
            }
            if let Some(f) = &r.file_log {
                let log = file_log(f).map_err(fail)?;
                out.access_log.insert(r.name.clone(), log);
                continue;
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
        if !out.other.iter().any(|n| n == BUILTIN_METRICS)
            && !out.tracing.contains_key(BUILTIN_METRICS)
            && !out.access_log.contains_key(BUILTIN_METRICS)
        {
            out.other.push(BUILTIN_METRICS.to_string());
        }
        if !out.other.iter().any(|n| n == BUILTIN_ACCESS_LOG)
            && !out.tracing.contains_key(BUILTIN_ACCESS_LOG)
            && !out.access_log.contains_key(BUILTIN_ACCESS_LOG)
        {
            out.access_log.insert(
                BUILTIN_ACCESS_LOG.to_string(),
                AccessLog {
                    filter: None,
                    path: rustmesh_xds::access_log::STDOUT.to_string(),
                    encoding: Encoding::Text,
                    format: None,
                },
            );
        }
        Ok(out)
    }

    /// The mesh's side of the Telemetry API: every provider, the default providers
    /// (comma-separated lists; each must name a provider of the right kind) and the sampling
    /// percentage, for the renderer to add the policies to.
    pub fn telemetry(
        &self,
        default_tracing: &str,
        default_access_logging: &str,
        default_metrics: &str,
        sampling: f64,
    ) -> Result<Telemetry, ProvidersError> {
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        };
        let mut providers: BTreeMap<String, ProviderKind> = BTreeMap::new();
        for (n, p) in &self.tracing {
            providers.insert(n.clone(), ProviderKind::Tracing(p.clone()));
        }
        for (n, a) in &self.access_log {
            providers.insert(n.clone(), ProviderKind::AccessLog(a.clone()));
        }
        for n in &self.other {
            providers.insert(n.clone(), ProviderKind::Prometheus);
        }
        let t = Telemetry {
            providers,
            default_providers: DefaultProviders {
                tracing: list(default_tracing),
                access_logging: list(default_access_logging),
                metrics: list(default_metrics),
            },
            default_sampling: sampling,
            ..Telemetry::default()
        };
        t.check()
            .map_err(|e| ProvidersError::Defaults(e.to_string()))?;
        Ok(t)
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
                None if self.other.iter().any(|o| o == n) || self.access_log.contains_key(*n) => {
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

/// An `envoyFileAccessLog` provider as the sidecar's access log: `text` is a TEXT format,
/// `labels` a JSON one (Istio's `EnvoyJSONLogFormatIstio` when empty), neither Istio's default
/// text format.
fn file_log(f: &FileLog) -> Result<AccessLog, String> {
    let path = if f.path.is_empty() {
        rustmesh_xds::access_log::STDOUT.to_string()
    } else {
        f.path.clone()
    };
    let (encoding, format) = match &f.log_format {
        None => (Encoding::Text, None),
        Some(LogFormat {
            text: Some(_),
            labels: Some(_),
        }) => {
            return Err("envoyFileAccessLog.logFormat: text and labels are exclusive".into());
        }
        Some(LogFormat { text: Some(t), .. }) => {
            (Encoding::Text, (!t.is_empty()).then(|| t.clone()))
        }
        Some(LogFormat {
            labels: Some(l), ..
        }) => (
            Encoding::Json,
            (!l.is_empty()).then(|| serde_json::Value::Object(l.clone()).to_string()),
        ),
        Some(LogFormat {
            text: None,
            labels: None,
        }) => (Encoding::Text, None),
    };
    let log = AccessLog {
        filter: None,
        path,
        encoding,
        format,
    };
    log.compile()
        .map_err(|e| format!("envoyFileAccessLog.{e}"))?;
    Ok(log)
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
        // Istio's built-in providers are there without being listed.
        let none = Providers::parse("").unwrap();
        assert!(none.tracing.is_empty());
        assert_eq!(none.other, ["prometheus"]);
        assert_eq!(none.access_log["envoy"].path, "/dev/stdout");
        assert_eq!(none.access_log["envoy"].format, None);
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

    #[test]
    fn file_access_log_providers_are_read_and_replace_the_builtin_envoy() {
        let p = Providers::parse(
            r#"[{"name": "envoy", "envoyFileAccessLog": {"path": "/dev/stderr"}},
                {"name": "json", "envoyFileAccessLog": {"path": "/dev/stdout",
                  "logFormat": {"labels": {"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%"}}}},
                {"name": "short", "envoyFileAccessLog": {"logFormat": {"text": "%RESPONSE_CODE%\n"}}}]"#,
        )
        .unwrap();
        assert_eq!(p.access_log["envoy"].path, "/dev/stderr");
        assert_eq!(p.access_log["json"].encoding, Encoding::Json);
        let labels: serde_json::Value =
            serde_json::from_str(p.access_log["json"].format.as_deref().unwrap()).unwrap();
        assert_eq!(labels["code"], "%RESPONSE_CODE%");
        assert_eq!(p.access_log["short"].path, "/dev/stdout");
        assert_eq!(
            p.access_log["short"].format.as_deref(),
            Some("%RESPONSE_CODE%\n")
        );
        for (text, want) in [
            (
                r#"[{"name": "f", "envoyFileAccessLog": {"path": "/var/log/x"}}]"#,
                "extension-providers[0] (\"f\"): envoyFileAccessLog.path",
            ),
            (
                r#"[{"name": "f", "envoyFileAccessLog": {"logFormat": {"text": "%NOPE%"}}}]"#,
                "NOPE",
            ),
            (
                r#"[{"name": "f", "envoyFileAccessLog": {"logFormat": {"text": "a", "labels": {}}}}]"#,
                "exclusive",
            ),
            (
                r#"[{"name": "f", "envoyFileAccessLog": {"omitEmptyValues": true}}]"#,
                "omitEmptyValues",
            ),
        ] {
            let e = Providers::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn the_telemetry_defaults_name_providers_of_the_right_kind() {
        let p = Providers::parse(ISTIO_DOCS).unwrap();
        let t = p.telemetry("zipkin", "envoy", "prometheus", 1.0).unwrap();
        assert_eq!(t.default_providers.access_logging, ["envoy"]);
        assert!(matches!(t.providers["envoy"], ProviderKind::AccessLog(_)));
        assert!(matches!(t.providers["zipkin"], ProviderKind::Tracing(_)));
        assert_eq!(t.providers["prometheus"], ProviderKind::Prometheus);
        for (tracing, logs, metrics, want) in [
            ("", "zipkin", "prometheus", "accessLogging"),
            ("", "", "envoy", "metrics"),
            ("", "nope", "", "\"nope\" is not one of"),
        ] {
            let e = p
                .telemetry(tracing, logs, metrics, 1.0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{logs}/{metrics}: {e}");
        }
    }
}
