//! Injection settings: what image to inject, which ports, which resources, which revision.
//!
//! They come from the `data` of a ConfigMap (watched, so a change needs no restart) or from a
//! YAML/JSON file; `image` is required, every other key is optional and falls back to
//! [`InjectionSettings::default`].
//! The keys are listed in [`KEYS`] and in the README.

use std::collections::BTreeMap;
use std::path::Path;

use rustmesh_xds::well_known;

use crate::error::{Error, Result};
use crate::values::{check_quantity, parse_flag, parse_ports};

/// Whether the sidecar is injected as a Kubernetes native sidecar (an init container with
/// `restartPolicy: Always`) or as the first regular container, for pods that do not say
/// (`sidecar.istio.io/nativeSidecar`, [`crate::native`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NativeSidecars {
    /// Always a regular container (works on every Kubernetes version).
    Off,
    /// Always a native sidecar.
    On,
    /// The default, as Istio's (`ENABLE_NATIVE_SIDECARS` detects it): native when the API
    /// server reports version >= 1.33 (sidecar containers stable) at the webhook's start.
    /// The server resolves this to `On`/`Off` (see [`InjectionSettings::resolve`]);
    /// an unresolved `Auto` (no API server to ask) is treated as `Off`.
    #[default]
    Auto,
}

/// CPU and memory requests and limits of an injected container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu`.
    pub cpu: String,
    /// `requests.memory`.
    pub memory: String,
    /// `limits.cpu`.
    pub cpu_limit: String,
    /// `limits.memory`.
    pub memory_limit: String,
}

/// Everything the injector needs to know that is not in the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectionSettings {
    /// Image of both `istio-init` and `istio-proxy` (the `proxy` binary).
    pub image: String,
    /// `imagePullPolicy` of the injected containers; empty leaves it to Kubernetes.
    pub image_pull_policy: String,
    /// The control-plane revision this webhook injects for (`istio.io/rev`).
    pub revision: String,
    /// Native sidecars or a regular first container, for pods that do not say.
    pub native_sidecars: NativeSidecars,
    /// `ISTIO_META_CLUSTER_ID`.
    pub cluster_id: String,
    /// `ISTIO_META_MESH_ID`.
    pub mesh_id: String,
    /// Port that outbound traffic is redirected to (`-p`).
    pub outbound_port: u16,
    /// Port that inbound traffic is redirected to (`-z`).
    pub inbound_port: u16,
    /// Readiness port of the proxy (`/healthz/ready`).
    pub health_port: u16,
    /// Prometheus port of the proxy (`http-envoy-prom`).
    pub prometheus_port: u16,
    /// Agent status port (excluded from inbound capture).
    pub status_port: u16,
    /// Requests/limits of `istio-proxy` (per-pod annotations override them).
    pub proxy_resources: Resources,
    /// Requests/limits of `istio-init`.
    pub init_resources: Resources,
    /// Default of `holdApplicationUntilProxyStarts` for pods that don't say.
    pub hold_application_until_proxy_starts: bool,
    /// Default of `concurrency` (Istio's `meshConfig.defaultConfig.concurrency`) for pods that
    /// don't say: the sidecar's worker threads; 0 passes nothing (one per core it may use).
    pub concurrency: u32,
    /// Default of `terminationDrainDuration` (Istio's `meshConfig.defaultConfig`): how long the
    /// sidecar keeps serving after SIGTERM. See [`crate::proxy_config`].
    pub termination_drain_duration: std::time::Duration,
    /// Default `interceptionMode` (Istio's `meshConfig.defaultConfig.interceptionMode`):
    /// `REDIRECT`, `TPROXY` or `NONE`; a pod's `proxy.istio.io/config` and then its
    /// `sidecar.istio.io/interceptionMode` override it.
    pub interception_mode: crate::traffic::InterceptionMode,
    /// Default `proxyMetadata` (Istio's `meshConfig.defaultConfig.proxyMetadata`): environment
    /// variables of `istio-proxy` (and of `istio-init` for those the capture step reads); only
    /// the keys in [`crate::proxy_config::METADATA`], with values the capture step accepts.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `--log_output_level` given to `istio-iptables`.
    pub log_level: String,
    /// The mesh CA's `host:port` (Istio's `global.caAddress`, `CA_ADDR` in the sidecar). Empty:
    /// no workload identity is set up (no token or root volumes, no `CA_ADDR`).
    pub ca_address: String,
    /// The trust domain of workload identities (`meshConfig.trustDomain`).
    pub trust_domain: String,
    /// Rewrite app HTTP/TCP/gRPC probes to the sidecar's status port (Istio's
    /// `sidecarInjectorWebhook.rewriteAppHTTPProbe`, default on); the pod annotation
    /// `sidecar.istio.io/rewriteAppHTTPProbers` wins. See [`crate::probes`].
    pub rewrite_app_http_probe: bool,
    /// Metrics merging for pods that don't say (Istio's `meshConfig.enablePrometheusMerge`,
    /// default on); the pod annotation `prometheus.istio.io/merge-metrics` wins. See
    /// [`crate::prometheus`].
    pub enable_prometheus_merge: bool,
    /// Secrets added to every injected pod's `imagePullSecrets` (Istio's
    /// `global.imagePullSecrets`), for pulling the sidecar's image from a private registry.
    pub image_pull_secrets: Vec<String>,
    /// Custom injection templates (Istio's `sidecarInjectorWebhook.templates`), static pod
    /// fragments a pod selects with `inject.istio.io/templates`. See
    /// [`crate::custom_templates`].
    pub templates: crate::custom_templates::Templates,
}

/// Every key's default; `image` is only a placeholder (for tests and benchmarks): the settings
/// file and ConfigMap must name the image ([`InjectionSettings::from_map`]).
impl Default for InjectionSettings {
    fn default() -> Self {
        InjectionSettings {
            image: format!("ghcr.io/rustmesh/proxy:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".to_owned(),
            revision: "default".to_owned(),
            native_sidecars: NativeSidecars::Auto,
            cluster_id: "Kubernetes".to_owned(),
            mesh_id: well_known::DEFAULT_DOMAIN_SUFFIX.to_owned(),
            outbound_port: well_known::OUTBOUND_CAPTURE_PORT,
            inbound_port: well_known::INBOUND_CAPTURE_PORT,
            health_port: well_known::HEALTH_PORT,
            prometheus_port: well_known::PROMETHEUS_PORT,
            status_port: well_known::AGENT_STATUS_PORT,
            proxy_resources: Resources {
                cpu: "100m".to_owned(),
                memory: "128Mi".to_owned(),
                cpu_limit: "2".to_owned(),
                memory_limit: "1Gi".to_owned(),
            },
            init_resources: Resources {
                cpu: "10m".to_owned(),
                memory: "40Mi".to_owned(),
                cpu_limit: "2".to_owned(),
                memory_limit: "1Gi".to_owned(),
            },
            hold_application_until_proxy_starts: false,
            concurrency: 0,
            termination_drain_duration: crate::proxy_config::DEFAULT_TERMINATION_DRAIN_DURATION,
            interception_mode: crate::traffic::InterceptionMode::Redirect,
            proxy_metadata: BTreeMap::new(),
            log_level: "default:info".to_owned(),
            ca_address: String::new(),
            trust_domain: rustmesh_xds::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            rewrite_app_http_probe: true,
            enable_prometheus_merge: true,
            image_pull_secrets: Vec::new(),
            templates: crate::custom_templates::Templates::new(),
        }
    }
}

/// Every key the settings ConfigMap/file may hold.
pub const KEYS: &[&str] = &[
    "image",
    "imagePullPolicy",
    "revision",
    "nativeSidecars",
    "clusterId",
    "meshId",
    "outboundPort",
    "inboundPort",
    "healthPort",
    "prometheusPort",
    "statusPort",
    "proxyCPU",
    "proxyMemory",
    "proxyCPULimit",
    "proxyMemoryLimit",
    "initCPU",
    "initMemory",
    "initCPULimit",
    "initMemoryLimit",
    "holdApplicationUntilProxyStarts",
    "concurrency",
    "terminationDrainDuration",
    "interceptionMode",
    "proxyMetadata",
    "logLevel",
    "caAddress",
    "trustDomain",
    "rewriteAppHTTPProbe",
    "enablePrometheusMerge",
    "imagePullSecrets",
    crate::custom_templates::KEY,
];

/// The most sidecar worker threads a setting or a pod may ask for (more than any node has cores).
pub const MAX_CONCURRENCY: u32 = 1024;

impl InjectionSettings {
    /// Inbound ports never redirected to the proxy (`-d`): its own Prometheus, readiness and
    /// status ports. With default ports this is `well_known::DEFAULT_EXCLUDED_INBOUND_PORTS`.
    pub fn excluded_inbound_ports(&self) -> Vec<u16> {
        vec![self.prometheus_port, self.health_port, self.status_port]
    }

    /// Whether to inject a native sidecar. An unresolved [`NativeSidecars::Auto`] means no.
    pub fn use_native_sidecars(&self) -> bool {
        self.native_sidecars == NativeSidecars::On
    }

    /// Resolves [`NativeSidecars::Auto`] with what the server learnt from the API server's
    /// `/version` at start (`None` when it could not ask).
    pub fn resolve(mut self, cluster_supports_native_sidecars: Option<bool>) -> Self {
        if self.native_sidecars == NativeSidecars::Auto {
            self.native_sidecars = match cluster_supports_native_sidecars {
                Some(true) => NativeSidecars::On,
                _ => NativeSidecars::Off,
            };
        }
        self
    }

    /// Builds settings from a ConfigMap's `data`: defaults, overridden by each key present.
    /// An unknown key or a bad value is an error naming the key, so that a typo never silently
    /// falls back to a default; so is a missing `image`, which has no default that is published
    /// (the one in [`InjectionSettings::default`] is a placeholder for tests).
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self> {
        let mut s = InjectionSettings::default();
        for (key, raw) in data {
            let value = raw.trim();
            let non_empty = || {
                if value.is_empty() {
                    Err(Error::setting(key, "must not be empty"))
                } else {
                    Ok(value.to_owned())
                }
            };
            let port = || match parse_ports(value) {
                Ok(p) if p.len() == 1 => Ok(p[0]),
                _ => Err(Error::setting(
                    key,
                    format!("{value:?} is not a port number (1-65535)"),
                )),
            };
            let quantity = || {
                check_quantity(value)
                    .map(|()| value.to_owned())
                    .map_err(|e| Error::setting(key, e))
            };
            match key.as_str() {
                "image" => {
                    s.image = non_empty()?;
                    if s.image.chars().any(char::is_whitespace) {
                        return Err(Error::setting(key, "must not contain whitespace"));
                    }
                }
                "imagePullPolicy" => {
                    s.image_pull_policy = match value {
                        "" | "Always" | "IfNotPresent" | "Never" => value.to_owned(),
                        _ => {
                            return Err(Error::setting(
                                key,
                                format!("{value:?} is not one of Always, IfNotPresent, Never"),
                            ));
                        }
                    }
                }
                "revision" => {
                    let v = non_empty()?;
                    if !is_label_value(&v) {
                        return Err(Error::setting(
                            key,
                            format!("{v:?} is not a valid label value"),
                        ));
                    }
                    s.revision = v;
                }
                "nativeSidecars" => {
                    s.native_sidecars = match value.to_ascii_lowercase().as_str() {
                        "auto" => NativeSidecars::Auto,
                        other => match parse_flag(other) {
                            Some(true) => NativeSidecars::On,
                            Some(false) => NativeSidecars::Off,
                            None => {
                                return Err(Error::setting(
                                    key,
                                    format!("{value:?} is not one of true, false, auto"),
                                ));
                            }
                        },
                    }
                }
                "caAddress" => {
                    if !value.is_empty() {
                        match value.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                            Some((h, Ok(p))) if !h.is_empty() && p != 0 => {}
                            _ => {
                                return Err(Error::setting(
                                    key,
                                    format!("{value:?} is not host:port"),
                                ));
                            }
                        }
                    }
                    s.ca_address = value.to_owned();
                }
                "trustDomain" => {
                    let v = non_empty()?;
                    rustmesh_xds::identity::SpiffeId::new(&v, "ns", "sa")
                        .map_err(|e| Error::setting(key, e.to_string()))?;
                    s.trust_domain = v;
                }
                "clusterId" => s.cluster_id = non_empty()?,
                "meshId" => s.mesh_id = non_empty()?,
                "outboundPort" => s.outbound_port = port()?,
                "inboundPort" => s.inbound_port = port()?,
                "healthPort" => s.health_port = port()?,
                "prometheusPort" => s.prometheus_port = port()?,
                "statusPort" => s.status_port = port()?,
                "proxyCPU" => s.proxy_resources.cpu = quantity()?,
                "proxyMemory" => s.proxy_resources.memory = quantity()?,
                "proxyCPULimit" => s.proxy_resources.cpu_limit = quantity()?,
                "proxyMemoryLimit" => s.proxy_resources.memory_limit = quantity()?,
                "initCPU" => s.init_resources.cpu = quantity()?,
                "initMemory" => s.init_resources.memory = quantity()?,
                "initCPULimit" => s.init_resources.cpu_limit = quantity()?,
                "initMemoryLimit" => s.init_resources.memory_limit = quantity()?,
                "holdApplicationUntilProxyStarts" => {
                    s.hold_application_until_proxy_starts = parse_flag(value).ok_or_else(|| {
                        Error::setting(key, format!("{value:?} is not true or false"))
                    })?
                }
                "rewriteAppHTTPProbe" => {
                    s.rewrite_app_http_probe = parse_flag(value).ok_or_else(|| {
                        Error::setting(key, format!("{value:?} is not true or false"))
                    })?
                }
                "enablePrometheusMerge" => {
                    s.enable_prometheus_merge = parse_flag(value).ok_or_else(|| {
                        Error::setting(key, format!("{value:?} is not true or false"))
                    })?
                }
                "imagePullSecrets" => {
                    s.image_pull_secrets =
                        parse_image_pull_secrets(value).map_err(|e| Error::setting(key, e))?
                }
                "concurrency" => {
                    s.concurrency = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_CONCURRENCY)
                        .ok_or_else(|| {
                            Error::setting(
                                key,
                                format!(
                                    "{value:?} is not a whole number from 0 to {MAX_CONCURRENCY}"
                                ),
                            )
                        })?
                }
                "terminationDrainDuration" => {
                    s.termination_drain_duration = crate::proxy_config::parse_duration(value)
                        .ok_or_else(|| {
                            Error::setting(key, format!("{value:?} is not a duration such as 5s"))
                        })?
                }
                "interceptionMode" => {
                    s.interception_mode = crate::traffic::InterceptionMode::parse(value.trim())
                        .map_err(|e| Error::setting(key, e))?
                }
                "proxyMetadata" => {
                    s.proxy_metadata =
                        parse_proxy_metadata(value).map_err(|e| Error::setting(key, e))?
                }
                crate::custom_templates::KEY => {
                    // The raw value: a YAML block's indentation is part of it.
                    s.templates =
                        crate::custom_templates::parse(raw).map_err(|e| Error::setting(key, e))?
                }
                "logLevel" => {
                    let v = non_empty()?;
                    if v.chars().any(char::is_whitespace) {
                        return Err(Error::setting(key, "must not contain whitespace"));
                    }
                    s.log_level = v;
                }
                _ => {
                    return Err(Error::setting(
                        key,
                        format!("unknown key; known keys: {}", KEYS.join(", ")),
                    ));
                }
            }
        }
        s.check_ports()?;
        if !data.contains_key("image") {
            return Err(Error::setting(
                "image",
                "missing: the sidecar image has no built-in default (set it to the published \
                 proxy image, e.g. docker.io/rustmesh/proxy:<version>)",
            ));
        }
        Ok(s)
    }

    fn check_ports(&self) -> Result<()> {
        let named = [
            ("outboundPort", self.outbound_port),
            ("inboundPort", self.inbound_port),
            ("healthPort", self.health_port),
            ("prometheusPort", self.prometheus_port),
            ("statusPort", self.status_port),
        ];
        for (i, (a, pa)) in named.iter().enumerate() {
            for (b, pb) in &named[i + 1..] {
                if pa == pb {
                    return Err(Error::setting(
                        *b,
                        format!("port {pb} is already used by `{a}`"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Loads settings from a YAML or JSON file holding either a flat map of the keys or a whole
    /// ConfigMap manifest (its `data` is used). Scalars (numbers, booleans) are accepted as
    /// their text, and `templates` also as a mapping.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            Error::SettingsFile { reason, .. } => Error::SettingsFile {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses settings from YAML/JSON text; see [`InjectionSettings::from_file`]. The text is
    /// read within [`rustmesh_xds::yaml::Limits::SETTINGS`] (1 MiB, as a ConfigMap; aliases may
    /// not expand it past the node, text or depth limit).
    pub fn from_yaml(text: &str) -> Result<Self> {
        let file_err = |reason: String| Error::SettingsFile {
            path: "<inline>".into(),
            reason,
        };
        let doc = rustmesh_xds::yaml::from_str(text, &rustmesh_xds::yaml::Limits::SETTINGS)
            .map_err(|e| file_err(e.to_string()))?;
        let map = match &doc {
            serde_norway::Value::Null => return Self::from_map(&BTreeMap::new()),
            serde_norway::Value::Mapping(m) => m,
            _ => return Err(file_err("expected a mapping of settings".to_owned())),
        };
        let is_configmap = map
            .get("kind")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k == "ConfigMap");
        let data = if is_configmap {
            match map.get("data") {
                None | Some(serde_norway::Value::Null) => return Self::from_map(&BTreeMap::new()),
                Some(serde_norway::Value::Mapping(m)) => m,
                Some(_) => return Err(file_err("ConfigMap `data` is not a mapping".to_owned())),
            }
        } else {
            map
        };
        let mut flat = BTreeMap::new();
        for (k, v) in data {
            let key = k
                .as_str()
                .ok_or_else(|| file_err(format!("key {k:?} is not a string")))?;
            let value = match v {
                serde_norway::Value::String(s) => s.clone(),
                serde_norway::Value::Bool(b) => b.to_string(),
                serde_norway::Value::Number(n) => n.to_string(),
                // The custom templates may be written as the mapping they are (not only as a
                // string holding it): read back as JSON, checked as the ConfigMap's value.
                serde_norway::Value::Mapping(_) if key == crate::custom_templates::KEY => {
                    serde_json::to_string(v).map_err(|e| Error::setting(key, e.to_string()))?
                }
                _ => {
                    return Err(Error::setting(
                        key,
                        "value must be a string, number or boolean",
                    ));
                }
            };
            flat.insert(key.to_owned(), value);
        }
        Self::from_map(&flat)
    }
}

/// The `proxyMetadata` setting: a JSON object of names to string values (empty: none), each a
/// key the sidecar or its capture step implements ([`crate::proxy_config::METADATA`]) with a
/// valid value, the capture step's keys in a combination it accepts. Anything
/// else is an error naming the key: a setting is never accepted and ignored.
fn parse_proxy_metadata(value: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    if value.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(value)
        .map_err(|e| format!("not a JSON object of names to values: {e}"))?;
    let mut out = BTreeMap::new();
    for (name, v) in map {
        let Some(known) = crate::proxy_config::metadata(&name) else {
            return Err(crate::proxy_config::unimplemented_metadata(&name).replace("; ignored", ""));
        };
        match v.as_str() {
            Some(text) if (known.valid)(text) => {
                out.insert(name, text.to_owned());
            }
            // Values are strings, as Istio's `proxyMetadata` (a map of strings).
            _ => {
                let string = if v.is_string() { "" } else { " (a string)" };
                return Err(format!("{name} is {v}, not {}{string}", known.expects));
            }
        }
    }
    // A combination the capture step would refuse makes every injected pod fail to start.
    crate::proxy_config::check_capture(&out)?;
    Ok(out)
}

/// The `imagePullSecrets` setting: a JSON list of Secret names, as Istio's
/// `global.imagePullSecrets` (`["regcred"]`), or of references as a pod spec writes them
/// (`[{"name": "regcred"}]`, the chart's `global.imagePullSecrets`); empty: none. Each name must
/// be a Kubernetes object name; a repeated one is an error.
fn parse_image_pull_secrets(value: &str) -> std::result::Result<Vec<String>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(value).map_err(|e| format!("not a JSON list of Secret names: {e}"))?;
    let mut out: Vec<String> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let name = match item {
            serde_json::Value::String(n) => n.as_str(),
            serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("name") => o["name"]
                .as_str()
                .ok_or_else(|| format!("item {i}: name is {}, not a string", o["name"]))?,
            other => {
                return Err(format!(
                    "item {i} is {other}, not a Secret name or {{\"name\": \"<secret>\"}}"
                ));
            }
        };
        crate::values::check_dns_subdomain(name).map_err(|e| format!("item {i}: {e}"))?;
        if out.iter().any(|n| n == name) {
            return Err(format!("item {i}: {name:?} is listed twice"));
        }
        out.push(name.to_owned());
    }
    Ok(out)
}

/// A Kubernetes label value: at most 63 characters, alphanumerics, `-`, `_`, `.`, starting and
/// ending with an alphanumeric.
pub(crate) fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The capture step's variables (Istio copies `proxyMetadata` into `istio-init`'s
    /// environment): accepted with a value `istio-iptables` takes, refused by name with one it
    /// would refuse, as would the pods injected with it.
    #[test]
    fn capture_metadata_is_accepted_and_checked_up_front() {
        let metadata = |json: &str| {
            InjectionSettings::from_map(&map(&[("image", "proxy"), ("proxyMetadata", json)]))
                .map(|s| s.proxy_metadata)
                .map_err(|e| e.to_string())
        };
        let ok = metadata(
            r#"{"INVALID_DROP": "true", "CAPTURE_ALL_DNS": "1", "REDIRECT_DNS": "false",
                "DROP_INVALID": "F", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "1001,istio-proxy",
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"}"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 6, "{ok:?}");
        assert_eq!(ok["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"], "127.0.0.1/8");
        assert_eq!(
            metadata(r#"{"ISTIO_OUTBOUND_OWNER_GROUPS": "*", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "0"}"#)
                .unwrap()
                .len(),
            2
        );
        for (json, names) in [
            (
                r#"{"INVALID_DROP": "yes"}"#,
                "INVALID_DROP is \"yes\", not true or false",
            ),
            (
                r#"{"CAPTURE_ALL_DNS": true}"#,
                "CAPTURE_ALL_DNS is true, not true or false (a string)",
            ),
            (
                r#"{"ISTIO_OUTBOUND_OWNER_GROUPS": "java"}"#,
                "ISTIO_OUTBOUND_OWNER_GROUPS is \"java\", not a comma-separated list",
            ),
            (
                r#"{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "*"}"#,
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE is \"*\"",
            ),
            (
                r#"{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.1/8"}"#,
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR is \"10.0.0.1/8\", not an IPv4 loopback CIDR",
            ),
            (
                r#"{"ISTIO_OUTBOUND_OWNER_GROUPS": "1,2", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "3"}"#,
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE is \"3\", but it only applies when \
                 ISTIO_OUTBOUND_OWNER_GROUPS is * or unset",
            ),
            // Istio's variables rustmesh implements nowhere stay refused by name.
            (
                r#"{"NATIVE_NFTABLES": "true"}"#,
                "NATIVE_NFTABLES is not implemented",
            ),
        ] {
            let e = metadata(json).unwrap_err();
            assert!(
                e.contains("proxyMetadata") && e.contains(names),
                "{json}: {e}"
            );
        }
    }

    #[test]
    fn drain_settings_are_checked() {
        let s = InjectionSettings::from_map(&map(&[
            ("image", "proxy"),
            ("terminationDrainDuration", "45s"),
            (
                "proxyMetadata",
                r#"{"EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "true", "MINIMUM_DRAIN_DURATION": "10s"}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(
            s.termination_drain_duration,
            std::time::Duration::from_secs(45)
        );
        assert_eq!(s.proxy_metadata["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"], "true");
        // DNS capture either way: a real switch, kept as written.
        for v in ["true", "false"] {
            let s = InjectionSettings::from_map(&map(&[
                ("image", "proxy"),
                (
                    "proxyMetadata",
                    &format!(r#"{{"ISTIO_META_DNS_CAPTURE": "{v}"}}"#),
                ),
            ]))
            .unwrap();
            assert_eq!(s.proxy_metadata["ISTIO_META_DNS_CAPTURE"], v);
        }
        assert_eq!(
            InjectionSettings::from_map(&map(&[("image", "proxy"), ("proxyMetadata", "")]))
                .unwrap()
                .proxy_metadata,
            BTreeMap::new()
        );
        let s = InjectionSettings::from_map(&map(&[
            ("image", "proxy"),
            ("interceptionMode", "TPROXY"),
        ]))
        .unwrap();
        assert_eq!(
            s.interception_mode,
            crate::traffic::InterceptionMode::Tproxy
        );
        for (key, value, names) in [
            ("interceptionMode", "tproxy", "use REDIRECT,TPROXY,NONE"),
            ("terminationDrainDuration", "forever", "not a duration"),
            (
                "proxyMetadata",
                "EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true",
                "not a JSON object",
            ),
            (
                "proxyMetadata",
                r#"{"ISTIO_META_DNS_AUTO_ALLOCATE": "true"}"#,
                "ISTIO_META_DNS_AUTO_ALLOCATE is not implemented",
            ),
            (
                "proxyMetadata",
                r#"{"EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "maybe"}"#,
                "not true or false",
            ),
            (
                "proxyMetadata",
                r#"{"ISTIO_META_DNS_CAPTURE": "yes"}"#,
                "ISTIO_META_DNS_CAPTURE is \"yes\", not true or false",
            ),
        ] {
            let e = InjectionSettings::from_map(&map(&[("image", "proxy"), (key, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(names), "{key}={value}: {e}");
        }
    }

    #[test]
    fn defaults_use_the_well_known_values() {
        let s = InjectionSettings::default();
        assert_eq!(
            s.excluded_inbound_ports(),
            well_known::DEFAULT_EXCLUDED_INBOUND_PORTS.to_vec()
        );
        assert_eq!(s.outbound_port, 15001);
        assert_eq!(s.inbound_port, 15006);
        assert_eq!(s.revision, "default");
        // Istio's default: detected (native from Kubernetes 1.33); unresolved, off.
        assert_eq!(s.native_sidecars, NativeSidecars::Auto);
        assert!(!s.use_native_sidecars());
        assert!(s.clone().resolve(Some(true)).use_native_sidecars());
        assert_eq!(
            InjectionSettings::from_map(&map(&[("image", &s.image)])).unwrap(),
            s
        );
    }

    #[test]
    fn the_image_is_required_there_is_no_built_in_one() {
        for text in [
            "",
            "proxyCPU: 1\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  revision: canary\n",
        ] {
            let err = InjectionSettings::from_yaml(text).unwrap_err().to_string();
            assert!(
                err.contains("`image`") && err.contains("missing"),
                "{text:?}: {err}"
            );
        }
        let err = InjectionSettings::from_map(&BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("`image`"), "{err}");
    }

    #[test]
    fn keys_override_defaults() {
        let s = InjectionSettings::from_map(&map(&[
            ("image", "registry.local/proxy:1.2"),
            ("imagePullPolicy", "Always"),
            ("revision", "canary"),
            ("nativeSidecars", "auto"),
            ("clusterId", "east"),
            ("meshId", "mesh1"),
            ("proxyCPU", "50m"),
            ("proxyMemoryLimit", "512Mi"),
            ("holdApplicationUntilProxyStarts", "true"),
            ("concurrency", "2"),
            ("rewriteAppHTTPProbe", "false"),
        ]))
        .unwrap();
        assert_eq!(s.image, "registry.local/proxy:1.2");
        assert_eq!(s.image_pull_policy, "Always");
        assert_eq!(s.revision, "canary");
        assert_eq!(s.native_sidecars, NativeSidecars::Auto);
        assert!(!s.use_native_sidecars());
        assert!(s.clone().resolve(Some(true)).use_native_sidecars());
        assert!(!s.clone().resolve(Some(false)).use_native_sidecars());
        assert!(!s.clone().resolve(None).use_native_sidecars());
        assert_eq!(s.proxy_resources.cpu, "50m");
        assert_eq!(s.proxy_resources.memory, "128Mi");
        assert_eq!(s.proxy_resources.memory_limit, "512Mi");
        assert!(s.hold_application_until_proxy_starts);
        assert_eq!(s.concurrency, 2);
        assert!(!s.rewrite_app_http_probe);
        assert!(InjectionSettings::default().rewrite_app_http_probe);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (k, v) in [
            ("imagePullPolicy", "Sometimes"),
            ("proxyCPU", "lots"),
            ("outboundPort", "0"),
            ("image", ""),
            ("revision", "-bad-"),
            ("nativeSidecars", "maybe"),
            ("concurrency", "-1"),
            ("concurrency", "2000"),
            ("rewriteAppHTTPProbe", "sometimes"),
            ("imagge", "typo"),
        ] {
            let err = InjectionSettings::from_map(&map(&[(k, v)])).unwrap_err();
            assert!(err.to_string().contains(k), "{err} should name {k}");
        }
        let err = InjectionSettings::from_map(&map(&[("healthPort", "15001")])).unwrap_err();
        assert!(err.to_string().contains("outboundPort"), "{err}");
    }

    #[test]
    fn file_forms() {
        let flat =
            InjectionSettings::from_yaml("image: a/b:1\nproxyCPU: 1\nnativeSidecars: true\n")
                .unwrap();
        assert_eq!(flat.image, "a/b:1");
        assert_eq!(flat.proxy_resources.cpu, "1");
        assert!(flat.use_native_sidecars());

        let cm = InjectionSettings::from_yaml(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  revision: canary\n  image: a/b:2\n",
        )
        .unwrap();
        assert_eq!(cm.revision, "canary");

        let json = InjectionSettings::from_yaml(r#"{"meshId": "m", "image": "a/b:3"}"#).unwrap();
        assert_eq!(json.mesh_id, "m");
        assert!(InjectionSettings::from_yaml("[1, 2]").is_err());
        assert!(InjectionSettings::from_yaml("image: [a]").is_err());
    }

    #[test]
    fn an_alias_bomb_is_refused_naming_the_limit() {
        // 102^3 scalars from 1.2 KB: over the 1 Mi nodes a settings file may expand to.
        let mut text = format!("a0: &a0 [{}]\n", vec!["x"; 102].join(", "));
        for l in 1..3 {
            let refs = vec![format!("*a{}", l - 1); 102].join(", ");
            text.push_str(&format!("a{l}: &a{l} [{refs}]\n"));
        }
        let err = InjectionSettings::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("limit of 1048576 nodes"), "{err}");
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.yaml");
        std::fs::write(&path, "image: [").unwrap();
        let err = InjectionSettings::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("settings.yaml"), "{err}");
        let err = InjectionSettings::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn image_pull_secrets_and_metrics_merging() {
        let d = InjectionSettings::default();
        assert!(d.enable_prometheus_merge);
        assert!(d.image_pull_secrets.is_empty());
        for (value, want) in [
            (
                r#"["regcred", "mirror.creds"]"#,
                vec!["regcred", "mirror.creds"],
            ),
            (r#"[{"name": "regcred"}]"#, vec!["regcred"]),
            ("[]", vec![]),
            ("", vec![]),
        ] {
            let s = InjectionSettings::from_map(&map(&[
                ("image", "proxy"),
                ("imagePullSecrets", value),
                ("enablePrometheusMerge", "false"),
            ]))
            .unwrap();
            assert_eq!(s.image_pull_secrets, want, "{value}");
            assert!(!s.enable_prometheus_merge);
        }
        for (key, value, names) in [
            ("imagePullSecrets", "regcred", "not a JSON list"),
            (
                "imagePullSecrets",
                r#"["Reg_Cred"]"#,
                "item 0: \"Reg_Cred\" is not a Kubernetes object name",
            ),
            (
                "imagePullSecrets",
                r#"[{"name": "a", "x": 1}]"#,
                "item 0 is",
            ),
            ("imagePullSecrets", r#"[{"name": 1}]"#, "item 0: name is 1"),
            (
                "imagePullSecrets",
                r#"["a", "a"]"#,
                "item 1: \"a\" is listed twice",
            ),
            ("enablePrometheusMerge", "sometimes", "not true or false"),
        ] {
            let e = InjectionSettings::from_map(&map(&[("image", "proxy"), (key, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(names), "{key}={value}: {e}");
        }
    }

    #[test]
    fn custom_templates_are_read_and_checked_naming_the_key_and_template() {
        let value = r#"{"custom": {"metadata": {"labels": {"x": "y"}}, "spec": {"containers": [{"name": "istio-proxy", "env": [{"name": "FOO", "value": "bar"}]}]}}}"#;
        let s =
            InjectionSettings::from_map(&map(&[("image", "proxy"), ("templates", value)])).unwrap();
        assert_eq!(s.templates.keys().collect::<Vec<_>>(), ["custom"]);
        assert!(InjectionSettings::default().templates.is_empty());
        // The chart's default, and a YAML block as a ConfigMap value.
        for empty in ["{}", ""] {
            let s = InjectionSettings::from_map(&map(&[("image", "proxy"), ("templates", empty)]))
                .unwrap();
            assert!(s.templates.is_empty());
        }
        let block = "custom:\n  metadata:\n    labels: {x: y}\n";
        let s =
            InjectionSettings::from_map(&map(&[("image", "proxy"), ("templates", block)])).unwrap();
        assert!(s.templates.contains_key("custom"));
        // A settings file may write the mapping itself.
        let file = InjectionSettings::from_yaml(
            "image: a/b:1\ntemplates:\n  custom:\n    metadata: {labels: {x: y}}\n    spec:\n      containers:\n      - name: istio-proxy\n        env: [{name: FOO, value: bar}]\n",
        )
        .unwrap();
        assert_eq!(file.templates, s_with(value).templates);
        assert!(InjectionSettings::from_yaml("image: a/b:1\nlogLevel: {a: b}\n").is_err());

        for (value, says) in [
            (r#"{"sidecar": {}}"#, "template \"sidecar\" is built in"),
            (
                r#"{"my_template": {}}"#,
                "template name \"my_template\" is not a DNS-1123 label",
            ),
            (
                r#"{"custom": {"kind": "Pod"}}"#,
                "template \"custom\": kind: not allowed",
            ),
            (
                r#"{"custom": {"spec": {"containers": [{"name": "istio-proxy", "image": "{{ .ProxyImage }}"}]}}}"#,
                "rustmesh's templates are static pod fragments",
            ),
            ("[custom]", "not a mapping of template names"),
        ] {
            let e = InjectionSettings::from_map(&map(&[("image", "proxy"), ("templates", value)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("injection setting `templates`: ") && e.contains(says),
                "{value}: {e}"
            );
        }
    }

    fn s_with(templates: &str) -> InjectionSettings {
        InjectionSettings::from_map(&map(&[("image", "a/b:1"), ("templates", templates)])).unwrap()
    }

    #[test]
    fn label_values() {
        assert!(is_label_value("default"));
        assert!(is_label_value("1-22_3.x"));
        assert!(!is_label_value("-a"));
        assert!(!is_label_value("a b"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn the_ca_address_and_trust_domain_are_checked() {
        let ok = InjectionSettings::from_yaml(
            r#"{"caAddress": "istiod.istio-system.svc:15012", "trustDomain": "example.org", "image": "a/b:1"}"#,
        )
        .unwrap();
        assert_eq!(ok.ca_address, "istiod.istio-system.svc:15012");
        assert_eq!(ok.trust_domain, "example.org");
        for (bad, key) in [
            (r#"{"caAddress": "istiod"}"#, "caAddress"),
            (r#"{"caAddress": "istiod:0"}"#, "caAddress"),
            (r#"{"trustDomain": "Example/Org"}"#, "trustDomain"),
        ] {
            let e = InjectionSettings::from_yaml(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
