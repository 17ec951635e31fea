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
//! | `proxyMetadata` | environment variables of `istio-proxy`, for the keys in [`METADATA`]; those the capture step reads ([`Metadata::init`]) also of `istio-init`, as Istio's template sets every key on both |
//!
//! Every other field, and a `proxyMetadata` key rustmesh does not implement, is reported in a
//! warning naming it (the pod is still injected): nothing is accepted and silently ignored.
//! A bad value is a warning too, and the mesh default applies, except for the keys the capture
//! step reads: `istio-iptables` would refuse such a value and the pod would never start, so the
//! pod is refused instead, naming the key ([`Failures`]); so is a combination of them the
//! capture step refuses ([`check_capture`]). The annotation is read through the bounded YAML
//! reader ([`yaml::Limits::ANNOTATION`]).

use std::collections::BTreeMap;
use std::time::Duration;

use rustmesh_xds::yaml;
use serde_json::Value;

use crate::annotations::Failures;
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
    // `--redirect-dns`'s own variable (ISTIO_META_DNS_CAPTURE wins over it).
    Metadata {
        name: "REDIRECT_DNS",
        expects: "true or false",
        valid: |v| parse_bool(v).is_some(),
        init: true,
    },
    // With DNS capture: port 53 to any address, not only to the resolv.conf nameservers.
    Metadata {
        name: "CAPTURE_ALL_DNS",
        expects: "true or false",
        valid: |v| parse_bool(v).is_some(),
        init: true,
    },
    // Drop inbound packets conntrack finds INVALID (Istio's variable; wins over DROP_INVALID).
    Metadata {
        name: "INVALID_DROP",
        expects: "true or false",
        valid: |v| parse_bool(v).is_some(),
        init: true,
    },
    // `--drop-invalid`'s own variable.
    Metadata {
        name: "DROP_INVALID",
        expects: "true or false",
        valid: |v| parse_bool(v).is_some(),
        init: true,
    },
    // The groups whose outbound traffic is captured (`*`, the default: all).
    Metadata {
        name: "ISTIO_OUTBOUND_OWNER_GROUPS",
        expects: OWNER_GROUPS_EXPECTED,
        // `*` exactly: the capture step does not trim it.
        valid: |v| v == "*" || owner_groups(v).is_some_and(|g| g.len() <= MAX_OWNER_GROUPS),
        init: true,
    },
    // The groups never captured, when all are (ISTIO_OUTBOUND_OWNER_GROUPS `*` or unset).
    Metadata {
        name: "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        expects: OWNER_GROUPS_EXPECTED,
        valid: |v| owner_groups(v).is_some(),
        init: true,
    },
    // The IPv4 loopback range whose outbound traffic is the app's (default 127.0.0.1/32).
    Metadata {
        name: "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        expects: "an IPv4 loopback CIDR (127.0.0.0/8) with a mask of 8 to 32 bits, such as \
                  127.0.0.1/32",
        valid: valid_loopback_cidr,
        init: true,
    },
];

/// What the owner-group variables take, for messages.
const OWNER_GROUPS_EXPECTED: &str = "a comma-separated list of numeric gids or of the groups \
     the proxy image has (root, istio-proxy, nonroot, nogroup), at most 64; \
     ISTIO_OUTBOUND_OWNER_GROUPS may also be *";

/// At most this many groups in `ISTIO_OUTBOUND_OWNER_GROUPS` (Istio's limit, which the capture
/// step enforces).
pub const MAX_OWNER_GROUPS: usize = 64;

/// The group names of the proxy image's group database (`images/rootfs`), where `istio-init`
/// resolves a group name to its gid: any other name would make it fail.
pub const IMAGE_GROUPS: [&str; 4] = ["root", "istio-proxy", "nonroot", "nogroup"];

/// A list of owner groups as the capture step reads it (empty items skipped, each trimmed),
/// when each is a gid or a group of the proxy image; an empty list is valid (no group).
fn owner_groups(list: &str) -> Option<Vec<&str>> {
    list.split(',')
        .filter(|g| !g.is_empty())
        .map(str::trim)
        .map(|g| {
            let gid =
                !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && g.parse::<u32>().is_ok();
            (gid || IMAGE_GROUPS.contains(&g)).then_some(g)
        })
        .collect()
}

/// An IPv4 loopback range with a mask of 8 to 32 bits, as the capture step requires.
fn valid_loopback_cidr(value: &str) -> bool {
    let Some((addr, bits)) = value.split_once('/') else {
        return false;
    };
    let addr = addr.parse::<std::net::Ipv4Addr>();
    // Decimal digits, no sign and no leading zero (as Go's `netip.ParsePrefix` reads them).
    let bits = (bits.bytes().all(|b| b.is_ascii_digit()) && !bits.starts_with('0'))
        .then(|| bits.parse::<u8>().ok())
        .flatten();
    matches!((addr, bits), (Ok(a), Some(8..=32)) if a.is_loopback())
}

/// Checks the `proxyMetadata` keys the capture step reads together: the problem, naming the
/// key, when their combination would make `istio-iptables` fail. (Each value is checked on its
/// own by its [`Metadata::valid`].)
pub fn check_capture(env: &BTreeMap<String, String>) -> Result<(), String> {
    let include = env.get("ISTIO_OUTBOUND_OWNER_GROUPS").map(String::as_str);
    let exclude = env
        .get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE")
        .filter(|v| !v.is_empty());
    match (include, exclude) {
        (Some(include), Some(exclude)) if include != "*" => Err(format!(
            "proxyMetadata ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE is {exclude:?}, but it only \
             applies when ISTIO_OUTBOUND_OWNER_GROUPS is * or unset (it is {include:?})"
        )),
        _ => Ok(()),
    }
}

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

/// Resolves the options of one pod; a problem adds a warning naming the field, or a failure
/// (the pod is refused) for a `proxyMetadata` key the capture step reads.
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    settings: &InjectionSettings,
    warnings: &mut Vec<String>,
    failures: &mut Failures,
) -> ProxyOptions {
    let pod = annotation(annotations, warnings);
    let pod = pod.as_ref();
    let raw = annotations
        .get(ANNOTATION_PROXY_CONFIG)
        .map_or("", String::as_str);
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
                            // istio-iptables would refuse it: the pod would never start.
                            (Some(known), _) if known.init => failures.add(
                                ANNOTATION_PROXY_CONFIG,
                                raw,
                                format!(
                                    "proxyMetadata {name} is {v}, not {} (a string); istio-init \
                                     would fail on it",
                                    known.expects
                                ),
                            ),
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
    // The pod's keys over the mesh's may make a combination the capture step refuses (the
    // mesh's alone were checked with the settings).
    if let Err(why) = check_capture(&out.env) {
        failures.add(
            ANNOTATION_PROXY_CONFIG,
            raw,
            format!("{why} (with the mesh's proxyMetadata); istio-init would fail on it"),
        );
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
        let (o, w, refused) = checked(config, settings);
        assert_eq!(refused, None, "{config}");
        (o, w)
    }

    /// The options, the warnings, and the refusal's message if the pod is refused.
    fn checked(
        config: &str,
        settings: &InjectionSettings,
    ) -> (ProxyOptions, Vec<String>, Option<String>) {
        let annotations = BTreeMap::from([(ANNOTATION_PROXY_CONFIG.to_owned(), config.to_owned())]);
        let mut warnings = Vec::new();
        let mut failures = Failures::default();
        let o = resolve(&annotations, settings, &mut warnings, &mut failures);
        (
            o,
            warnings,
            failures.into_result(()).err().map(|e| e.message()),
        )
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
        // A bad value would make istio-init fail: the pod is refused, naming the key.
        let (_, _, refused) = checked("proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"yes\"}", &off);
        assert_eq!(
            refused.as_deref(),
            Some(
                "1 error occurred:\n\t* invalid value 'proxyMetadata: {ISTIO_META_DNS_CAPTURE: \
                 \"yes\"}' for annotation 'proxy.istio.io/config': proxyMetadata \
                 ISTIO_META_DNS_CAPTURE is \"yes\", not true or false (a string); istio-init \
                 would fail on it\n\n"
            )
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

    /// Istio copies every `proxyMetadata` entry into istio-init's environment; the variables
    /// the capture step reads are accepted, the pod's over the mesh's, and marked for
    /// istio-init.
    #[test]
    fn capture_variables_are_accepted_for_istio_init() {
        let mesh = InjectionSettings {
            proxy_metadata: BTreeMap::from([
                ("INVALID_DROP".to_owned(), "true".to_owned()),
                (
                    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE".to_owned(),
                    "1001".to_owned(),
                ),
            ]),
            ..InjectionSettings::default()
        };
        let (o, w) = with(
            "proxyMetadata:\n  INVALID_DROP: \"false\"\n  CAPTURE_ALL_DNS: \"true\"\n  \
             DROP_INVALID: \"1\"\n  REDIRECT_DNS: \"true\"\n  \
             ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: 127.0.0.1/8\n  \
             ISTIO_OUTBOUND_OWNER_GROUPS: \"*\"\n",
            &mesh,
        );
        assert!(w.is_empty(), "{w:?}");
        let want = [
            ("CAPTURE_ALL_DNS", "true"),
            ("DROP_INVALID", "1"),
            ("INVALID_DROP", "false"),
            ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "1001"),
            ("REDIRECT_DNS", "true"),
        ];
        let got: Vec<(&str, &str)> = o
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
        for (name, _) in want {
            assert!(metadata(name).unwrap().init, "{name}");
        }
        // Owner groups: gids, the proxy image's groups, an empty include list (no group).
        for ok in ["0,1337", "istio-proxy, nonroot", "", "*"] {
            let (o, _) = with(
                &format!("proxyMetadata: {{ISTIO_OUTBOUND_OWNER_GROUPS: \"{ok}\"}}"),
                &InjectionSettings::default(),
            );
            assert_eq!(o.env["ISTIO_OUTBOUND_OWNER_GROUPS"], ok);
        }
    }

    /// A value istio-iptables would refuse refuses the pod, each named, in Istio's list format.
    #[test]
    fn bad_capture_values_refuse_the_pod() {
        let mesh = InjectionSettings::default();
        let many = (0..65).map(|g| g.to_string()).collect::<Vec<_>>().join(",");
        for (config, names) in [
            (
                "proxyMetadata: {INVALID_DROP: maybe}",
                "proxyMetadata INVALID_DROP is \"maybe\", not true or false",
            ),
            // YAML's boolean: proxyMetadata is a map of strings.
            (
                "proxyMetadata: {CAPTURE_ALL_DNS: true}",
                "proxyMetadata CAPTURE_ALL_DNS is true, not true or false (a string)",
            ),
            (
                "proxyMetadata: {ISTIO_OUTBOUND_OWNER_GROUPS: java}",
                "proxyMetadata ISTIO_OUTBOUND_OWNER_GROUPS is \"java\", not a comma-separated",
            ),
            // The capture step compares `*` untrimmed: " *" would be a group named `*`.
            (
                "proxyMetadata: {ISTIO_OUTBOUND_OWNER_GROUPS: \" *\"}",
                "proxyMetadata ISTIO_OUTBOUND_OWNER_GROUPS is \" *\"",
            ),
            (
                &format!("proxyMetadata: {{ISTIO_OUTBOUND_OWNER_GROUPS: \"{many}\"}}"),
                "at most 64",
            ),
            (
                "proxyMetadata: {ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: \"1, ,2\"}",
                "proxyMetadata ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE is \"1, ,2\"",
            ),
            (
                "proxyMetadata: {ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: 127.0.0.1}",
                "proxyMetadata ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR is \"127.0.0.1\"",
            ),
            (
                "proxyMetadata: {ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: 127.0.0.1/7}",
                "mask of 8 to 32 bits",
            ),
            (
                "proxyMetadata: {ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: \"::1/128\"}",
                "an IPv4 loopback CIDR",
            ),
        ] {
            let (_, _, refused) = checked(config, &mesh);
            let refused = refused.unwrap_or_else(|| panic!("{config}: not refused"));
            assert!(
                refused.starts_with(&format!(
                    "1 error occurred:\n\t* invalid value '{config}' for annotation \
                     'proxy.istio.io/config': "
                )) && refused.contains(names)
                    && refused.ends_with("; istio-init would fail on it\n\n"),
                "{config}: {refused}"
            );
        }
        // The pod's include list over the mesh's exclude list: a combination the capture step
        // refuses.
        let mesh = InjectionSettings {
            proxy_metadata: BTreeMap::from([(
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE".to_owned(),
                "1001".to_owned(),
            )]),
            ..InjectionSettings::default()
        };
        let (_, _, refused) = checked("proxyMetadata: {ISTIO_OUTBOUND_OWNER_GROUPS: \"0\"}", &mesh);
        let refused = refused.expect("refused");
        assert!(
            refused.contains(
                "for annotation 'proxy.istio.io/config': proxyMetadata \
                 ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE is \"1001\", but it only applies when \
                 ISTIO_OUTBOUND_OWNER_GROUPS is * or unset (it is \"0\") (with the mesh's \
                 proxyMetadata)"
            ),
            "{refused}"
        );
        // The sidecar's own keys are still only warned about.
        let (_, w, refused) = checked(
            "proxyMetadata: {MINIMUM_DRAIN_DURATION: soon}",
            &InjectionSettings::default(),
        );
        assert_eq!((w.len(), refused), (1, None), "{w:?}");
    }

    #[test]
    fn loopback_cidrs_as_the_capture_step_takes_them() {
        for ok in ["127.0.0.1/32", "127.0.0.1/8", "127.1.2.3/16"] {
            assert!(valid_loopback_cidr(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1/33",
            "127.0.0.1/+8",
            "127.0.0.1/08",
            "127.0.0.01/8",
            "10.0.0.1/8",
            "::1/128",
            "",
        ] {
            assert!(!valid_loopback_cidr(bad), "{bad}");
        }
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
