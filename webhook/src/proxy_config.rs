//! The pod's `proxy.istio.io/config` annotation (Istio's `ProxyConfig`, YAML or JSON) over the
//! mesh's defaults from the settings (Istio's `meshConfig.defaultConfig`): what the injected
//! sidecar is told about itself.
//!
//! Implemented fields, each resolved as Istio merges a pod's `ProxyConfig` over the mesh's (a
//! field the pod sets wins; `proxyMetadata` merges key by key):
//!
//! | field | injected as |
//! |---|---|
//! | `holdApplicationUntilProxyStarts` | the sidecar first, with a `postStart` wait (or a startup probe when native) |
//! | `concurrency` | `--concurrency N` when positive |
//! | `terminationDrainDuration` | `--termination-drain-duration D` when not the proxy's 5 s |
//! | `interceptionMode` | `istio-init -m` and `ISTIO_META_INTERCEPTION_MODE` (`REDIRECT`, `TPROXY`, `NONE`: no `istio-init`), unless the pod's `sidecar.istio.io/interceptionMode` says |
//! | `proxyMetadata` | environment variables of `istio-proxy`, for the keys in [`METADATA`]; those the capture step reads (`ISTIO_META_DNS_CAPTURE`) also of `istio-init` |
//!
//! Every other field, and a `proxyMetadata` key rustmesh does not implement, is reported in a
//! warning naming it (the pod is still injected): nothing is accepted and silently ignored.
//! A bad value is a warning too, and the mesh default applies. The annotation is read through
//! the bounded YAML reader ([`yaml::Limits::ANNOTATION`]).

use std::collections::BTreeMap;
use std::time::Duration;

use rustmesh_xds::yaml;
use serde_json::Value;

use crate::names::ANNOTATION_PROXY_CONFIG;
use crate::settings::{InjectionSettings, MAX_CONCURRENCY};
use crate::traffic::InterceptionMode;

/// `ProxyConfig` fields rustmesh implements.
pub const FIELDS: &[&str] = &[
    "holdApplicationUntilProxyStarts",
    "concurrency",
    "terminationDrainDuration",
    "interceptionMode",
    "proxyMetadata",
];

/// The sidecar's own default `terminationDrainDuration` (Istio's).
pub const DEFAULT_TERMINATION_DRAIN_DURATION: Duration = Duration::from_secs(5);

/// A `proxyMetadata` key rustmesh implements: its name and how a value is checked.
pub struct Metadata {
    /// The environment variable.
    pub name: &'static str,
    /// What a value must be, for messages.
    pub expects: &'static str,
    /// Whether a value is acceptable.
    pub valid: fn(&str) -> bool,
    /// Whether `istio-init` (the capture step) reads it too, so it is set there as well.
    pub init: bool,
}

/// The `proxyMetadata` keys (environment variables of Istio's agent) the sidecar reads.
pub const METADATA: &[Metadata] = &[
    Metadata {
        name: "EXIT_ON_ZERO_ACTIVE_CONNECTIONS",
        expects: "true or false",
        valid: |v| parse_bool(v).is_some(),
        init: false,
    },
    Metadata {
        name: "MINIMUM_DRAIN_DURATION",
        expects: "a duration such as 5s",
        valid: |v| parse_duration(v).is_some(),
        init: false,
    },
    // Whether the capture step sends the app's DNS to the sidecar's DNS proxy. Unset, rustmesh's
    // capture does (its documented default; Istio's is off); `false` turns it off.
    Metadata {
        name: "ISTIO_META_DNS_CAPTURE",
        expects: "true or false",
        valid: |v| parse_bool(v).is_some(),
        init: true,
    },
];

/// What the mesh's `ProxyConfig` defaults and the pod's annotation make of the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProxyOptions {
    /// Start the app only once the sidecar is ready.
    pub hold_application_until_proxy_starts: bool,
    /// `--concurrency`, only when positive.
    pub concurrency: Option<u32>,
    /// `--termination-drain-duration`, only when not [`DEFAULT_TERMINATION_DRAIN_DURATION`].
    pub termination_drain_duration: Option<Duration>,
    /// How traffic is captured, when the pod's `sidecar.istio.io/interceptionMode` does not
    /// say.
    pub interception_mode: InterceptionMode,
    /// Environment variables from `proxyMetadata`.
    pub env: BTreeMap<String, String>,
    /// The annotation as compact JSON (passed on as `PROXY_CONFIG`, as Istio does).
    pub annotation_json: Option<String>,
}

/// Resolves the options of one pod; a problem adds a warning naming the field.
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    settings: &InjectionSettings,
    warnings: &mut Vec<String>,
) -> ProxyOptions {
    let pod = annotation(annotations, warnings);
    let pod = pod.as_ref();
    let warn = |warnings: &mut Vec<String>, what: String| {
        warnings.push(format!("annotation {ANNOTATION_PROXY_CONFIG}: {what}"));
    };

    let mut out = ProxyOptions {
        hold_application_until_proxy_starts: settings.hold_application_until_proxy_starts,
        interception_mode: settings.interception_mode,
        annotation_json: pod.and_then(|m| serde_json::to_string(m).ok()),
        ..Default::default()
    };
    let mut concurrency = settings.concurrency;
    let mut drain = settings.termination_drain_duration;
    out.env = settings.proxy_metadata.clone();

    for (key, value) in pod.into_iter().flatten() {
        match key.as_str() {
            "holdApplicationUntilProxyStarts" => match value {
                Value::Bool(b) => out.hold_application_until_proxy_starts = *b,
                other => warn(
                    warnings,
                    format!("holdApplicationUntilProxyStarts is {other}, not a boolean; ignored"),
                ),
            },
            "concurrency" => match value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= MAX_CONCURRENCY)
            {
                Some(n) => concurrency = n,
                None => warn(
                    warnings,
                    format!(
                        "concurrency is {value}, not a whole number from 0 to {MAX_CONCURRENCY}; \
                         ignored"
                    ),
                ),
            },
            "terminationDrainDuration" => match value.as_str().and_then(parse_duration) {
                Some(d) => drain = d,
                None => warn(
                    warnings,
                    format!(
                        "terminationDrainDuration is {value}, not a duration such as \"5s\"; \
                         ignored"
                    ),
                ),
            },
            "interceptionMode" => match value.as_str().map(InterceptionMode::parse) {
                Some(Ok(mode)) => out.interception_mode = mode,
                _ => warn(
                    warnings,
                    format!("interceptionMode is {value}, not REDIRECT, TPROXY or NONE; ignored"),
                ),
            },
            "proxyMetadata" => match value {
                Value::Object(m) => {
                    for (name, v) in m {
                        match (metadata(name), v.as_str()) {
                            (Some(known), Some(v)) if (known.valid)(v) => {
                                out.env.insert(name.clone(), v.to_owned());
                            }
                            (Some(known), _) => warn(
                                warnings,
                                format!(
                                    "proxyMetadata {name} is {v}, not {}; ignored",
                                    known.expects
                                ),
                            ),
                            (None, _) => warn(warnings, unimplemented_metadata(name)),
                        }
                    }
                }
                other => warn(
                    warnings,
                    format!("proxyMetadata is {other}, not a mapping of names to values; ignored"),
                ),
            },
            other => warn(
                warnings,
                format!(
                    "{other} is not implemented by rustmesh; ignored (implemented: {})",
                    FIELDS.join(", ")
                ),
            ),
        }
    }
    out.concurrency = (concurrency > 0).then_some(concurrency);
    out.termination_drain_duration = (drain != DEFAULT_TERMINATION_DRAIN_DURATION).then_some(drain);
    out
}

/// The message for a `proxyMetadata` key the sidecar does not read.
pub fn unimplemented_metadata(name: &str) -> String {
    let known: Vec<&str> = METADATA.iter().map(|m| m.name).collect();
    format!(
        "proxyMetadata {name} is not implemented by rustmesh; ignored (implemented: {})",
        known.join(", ")
    )
}

/// The implemented `proxyMetadata` key `name`.
pub fn metadata(name: &str) -> Option<&'static Metadata> {
    METADATA.iter().find(|m| m.name == name)
}

/// A duration as Istio writes them (`5s`, `1m30s`, `500ms`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    s.trim()
        .parse::<rustmesh_xds::Duration>()
        .ok()
        .map(|d| d.as_std())
}

/// A boolean as Go's `strconv.ParseBool` reads one (Istio's environment variables).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The annotation as a JSON mapping; one warning when it is something else, or over a limit of
/// [`yaml::Limits::ANNOTATION`] (its length is checked before parsing; its aliases may not
/// expand it past the node, text or depth limit), and the defaults apply.
fn annotation(
    annotations: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<serde_json::Map<String, Value>> {
    let raw = annotations.get(ANNOTATION_PROXY_CONFIG)?;
    let not_a_mapping =
        || format!("annotation {ANNOTATION_PROXY_CONFIG} ignored: not a YAML/JSON mapping");
    match yaml::from_str(raw, &yaml::Limits::ANNOTATION) {
        Ok(serde_norway::Value::Null) => None,
        Ok(v @ serde_norway::Value::Mapping(_)) => match serde_json::to_value(v) {
            Ok(Value::Object(m)) => Some(m),
            _ => {
                warnings.push(not_a_mapping());
                None
            }
        },
        Err(e) if e.is_limit() => {
            warnings.push(format!("annotation {ANNOTATION_PROXY_CONFIG} ignored: {e}"));
            None
        }
        Ok(_) | Err(_) => {
            warnings.push(not_a_mapping());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(config: &str, settings: &InjectionSettings) -> (ProxyOptions, Vec<String>) {
        let annotations = BTreeMap::from([(ANNOTATION_PROXY_CONFIG.to_owned(), config.to_owned())]);
        let mut warnings = Vec::new();
        let o = resolve(&annotations, settings, &mut warnings);
        (o, warnings)
    }

    #[test]
    fn termination_drain_duration_from_the_pod_or_the_mesh() {
        let mesh = InjectionSettings::default();
        let (o, w) = with("terminationDrainDuration: 20s", &mesh);
        assert_eq!(o.termination_drain_duration, Some(Duration::from_secs(20)));
        assert!(w.is_empty(), "{w:?}");
        let (o, _) = with("terminationDrainDuration: 5s", &mesh);
        assert_eq!(
            o.termination_drain_duration, None,
            "the proxy's own default"
        );
        let (o, _) = with("{}", &mesh);
        assert_eq!(o.termination_drain_duration, None);

        let mesh = InjectionSettings {
            termination_drain_duration: Duration::from_secs(30),
            ..InjectionSettings::default()
        };
        let (o, _) = with("concurrency: 1", &mesh);
        assert_eq!(o.termination_drain_duration, Some(Duration::from_secs(30)));
        let (o, _) = with("terminationDrainDuration: 1m", &mesh);
        assert_eq!(o.termination_drain_duration, Some(Duration::from_secs(60)));
        let (o, w) = with("terminationDrainDuration: soon", &mesh);
        assert_eq!(
            o.termination_drain_duration,
            Some(Duration::from_secs(30)),
            "a bad value: the mesh's"
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("terminationDrainDuration"), "{w:?}");
    }

    #[test]
    fn proxy_metadata_merges_key_by_key_over_the_mesh() {
        let mesh = InjectionSettings {
            proxy_metadata: BTreeMap::from([
                (
                    "EXIT_ON_ZERO_ACTIVE_CONNECTIONS".to_owned(),
                    "true".to_owned(),
                ),
                ("MINIMUM_DRAIN_DURATION".to_owned(), "10s".to_owned()),
            ]),
            ..InjectionSettings::default()
        };
        let (o, w) = with("proxyMetadata: {MINIMUM_DRAIN_DURATION: 2s}", &mesh);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.env["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"], "true");
        assert_eq!(o.env["MINIMUM_DRAIN_DURATION"], "2s");
    }

    #[test]
    fn unimplemented_fields_and_keys_are_named_in_warnings() {
        let mesh = InjectionSettings::default();
        let (o, w) = with(
            "tracing: {sampling: 10}\nproxyMetadata:\n  ISTIO_META_DNS_AUTO_ALLOCATE: \"true\"\n  \
             EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\"\n",
            &mesh,
        );
        assert_eq!(
            o.env,
            BTreeMap::from([(
                "EXIT_ON_ZERO_ACTIVE_CONNECTIONS".to_owned(),
                "true".to_owned()
            )])
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w.iter().any(|m| m.contains("tracing is not implemented")),
            "{w:?}"
        );
        assert!(
            w.iter().any(
                |m| m.contains("proxyMetadata ISTIO_META_DNS_AUTO_ALLOCATE is not implemented")
            ),
            "{w:?}"
        );
    }

    /// `ISTIO_META_DNS_CAPTURE` is a real switch now: both values are passed on, the pod's
    /// winning over the mesh's; a value that is not a boolean is a warning.
    #[test]
    fn dns_capture_is_passed_on_either_way() {
        let mesh = InjectionSettings::default();
        for v in ["true", "false"] {
            let (o, w) = with(
                &format!("proxyMetadata: {{ISTIO_META_DNS_CAPTURE: \"{v}\"}}"),
                &mesh,
            );
            assert!(w.is_empty(), "{w:?}");
            assert_eq!(o.env["ISTIO_META_DNS_CAPTURE"], v);
        }
        let (o, _) = with("{}", &mesh);
        assert!(
            !o.env.contains_key("ISTIO_META_DNS_CAPTURE"),
            "unset: the capture's default"
        );
        let off = InjectionSettings {
            proxy_metadata: BTreeMap::from([(
                "ISTIO_META_DNS_CAPTURE".to_owned(),
                "false".to_owned(),
            )]),
            ..InjectionSettings::default()
        };
        let (o, _) = with("concurrency: 1", &off);
        assert_eq!(o.env["ISTIO_META_DNS_CAPTURE"], "false", "the mesh's");
        let (o, _) = with("proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}", &off);
        assert_eq!(o.env["ISTIO_META_DNS_CAPTURE"], "true", "the pod wins");
        let (o, w) = with("proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"yes\"}", &off);
        assert_eq!(
            o.env["ISTIO_META_DNS_CAPTURE"], "false",
            "a bad value: the mesh's"
        );
        assert!(
            w[0].contains("ISTIO_META_DNS_CAPTURE is \"yes\", not true or false"),
            "{w:?}"
        );
        assert!(metadata("ISTIO_META_DNS_CAPTURE").unwrap().init);
        assert!(!metadata("EXIT_ON_ZERO_ACTIVE_CONNECTIONS").unwrap().init);
    }

    #[test]
    fn bad_metadata_values_are_refused_not_passed() {
        let mesh = InjectionSettings::default();
        let (o, w) = with(
            "proxyMetadata: {EXIT_ON_ZERO_ACTIVE_CONNECTIONS: sometimes, MINIMUM_DRAIN_DURATION: 5}",
            &mesh,
        );
        assert!(o.env.is_empty(), "{:?}", o.env);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("EXIT_ON_ZERO_ACTIVE_CONNECTIONS is \"sometimes\", not true or false"),
            "{w:?}"
        );
        assert!(
            w[1].contains("MINIMUM_DRAIN_DURATION is 5, not a duration"),
            "{w:?}"
        );
        let (_, w) = with("proxyMetadata: [a]", &mesh);
        assert!(
            w[0].contains("proxyMetadata is [\"a\"], not a mapping"),
            "{w:?}"
        );
    }

    #[test]
    fn go_booleans() {
        for (s, want) in [
            ("true", Some(true)),
            ("T", Some(true)),
            ("0", Some(false)),
            ("yes", None),
            ("", None),
        ] {
            assert_eq!(parse_bool(s), want, "{s:?}");
        }
    }
}
