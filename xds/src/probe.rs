//! The app-probe contract between the injector and the sidecar, Istio's: the webhook rewrites
//! an app container's HTTP, TCP and gRPC probes to `httpGet` on the sidecar's status port
//! (15020) at `/app-health/<container>/livez|readyz|startupz`, and its HTTP and TCP lifecycle
//! hooks at `/app-lifecycle/<container>/prestopz|poststartz`, and hands the originals to the
//! sidecar in the env var `ISTIO_KUBE_APP_PROBERS`: a JSON object keyed by those paths, each
//! value one of `httpGet` (port a number: named ports are resolved by the injector),
//! `tcpSocket` or `grpc`, with the probe's `timeoutSeconds`:
//!
//! ```json
//! {"/app-health/web/readyz": {"httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
//!                             "timeoutSeconds": 1},
//!  "/app-health/web/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1}}
//! ```
//!
//! [`AppProbers::parse`] is the sidecar's (untrusted-input) reader: size-limited, and every
//! refusal names the key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The env var of the sidecar holding the original probes (Istio's name).
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// The annotation that turns the rewrite off (`"false"`) or on for one pod (Istio's).
pub const REWRITE_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";

/// The largest `ISTIO_KUBE_APP_PROBERS` the sidecar accepts (bytes). A probe is about 150
/// bytes; a pod with 20 containers of three probes each stays under 10 KiB.
pub const MAX_APP_PROBERS_BYTES: usize = 64 * 1024;

/// Path prefix of the rewritten probes on the status port.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// Path prefix of the rewritten lifecycle hooks on the status port.
pub const APP_LIFECYCLE_PREFIX: &str = "/app-lifecycle/";

/// Which of a container's probes or lifecycle hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// `livenessProbe`: `livez`.
    Liveness,
    /// `readinessProbe`: `readyz`.
    Readiness,
    /// `startupProbe`: `startupz`.
    Startup,
    /// `lifecycle.preStop`: `prestopz`.
    PreStop,
    /// `lifecycle.postStart`: `poststartz`.
    PostStart,
}

impl ProbeKind {
    /// The five, in the order the injector visits them (Istio's).
    pub const ALL: [ProbeKind; 5] = [
        ProbeKind::Readiness,
        ProbeKind::Liveness,
        ProbeKind::Startup,
        ProbeKind::PreStop,
        ProbeKind::PostStart,
    ];

    /// The last path segment: `livez`, `readyz`, `startupz`, `prestopz`, `poststartz`.
    pub fn segment(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livez",
            ProbeKind::Readiness => "readyz",
            ProbeKind::Startup => "startupz",
            ProbeKind::PreStop => "prestopz",
            ProbeKind::PostStart => "poststartz",
        }
    }

    /// The container field: `livenessProbe`, `readinessProbe`, `startupProbe`,
    /// `lifecycle.preStop`, `lifecycle.postStart`.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
            ProbeKind::PreStop => "lifecycle.preStop",
            ProbeKind::PostStart => "lifecycle.postStart",
        }
    }

    /// A lifecycle hook rather than a probe.
    pub fn is_hook(self) -> bool {
        matches!(self, ProbeKind::PreStop | ProbeKind::PostStart)
    }

    /// `/app-lifecycle/` for a hook, `/app-health/` for a probe.
    pub fn prefix(self) -> &'static str {
        if self.is_hook() {
            APP_LIFECYCLE_PREFIX
        } else {
            APP_HEALTH_PREFIX
        }
    }
}

/// `/app-health/<container>/<livez|readyz|startupz>` or
/// `/app-lifecycle/<container>/<prestopz|poststartz>`.
pub fn app_health_path(container: &str, kind: ProbeKind) -> String {
    format!("{}{container}/{}", kind.prefix(), kind.segment())
}

/// The container and kind of an `/app-health/...` or `/app-lifecycle/...` path, when it has
/// that shape (the container is one non-empty segment, the kind one of its prefix).
pub fn parse_app_health_path(path: &str) -> Option<(&str, ProbeKind)> {
    let (rest, hook) = match path.strip_prefix(APP_HEALTH_PREFIX) {
        Some(rest) => (rest, false),
        None => (path.strip_prefix(APP_LIFECYCLE_PREFIX)?, true),
    };
    let (container, segment) = rest.split_once('/')?;
    if container.is_empty() || segment.contains('/') {
        return None;
    }
    let kind = ProbeKind::ALL
        .into_iter()
        .find(|k| k.is_hook() == hook && k.segment() == segment)?;
    Some((container, kind))
}

/// One original probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prober {
    /// An HTTP GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    /// A `grpc.health.v1.Health/Check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
    /// The probe's time-out (when absent or 0: Kubernetes' default, 1 s, for a probe; 30 s, its
    /// default termination grace period, for a hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// Kubernetes' `HTTPGetAction` with the port resolved to a number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    /// The path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The app's port.
    pub port: u16,
    /// Host to connect to (default: the pod's IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` (default) or `HTTPS` (not verified, as the kubelet does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Headers to send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// A header of [`HttpGet`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// Kubernetes' `TCPSocketAction` with the port resolved to a number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocket {
    /// The app's port.
    pub port: u16,
    /// Host to connect to (default: the pod's IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Kubernetes' `GRPCAction`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grpc {
    /// The app's port.
    pub port: u16,
    /// The service name asked about (empty: the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Why an `ISTIO_KUBE_APP_PROBERS` value was refused; names the key when one is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{APP_PROBERS_ENV}{}: {reason}", key.as_ref().map(|k| format!(" key {k:?}")).unwrap_or_default())]
pub struct AppProbersError {
    /// The key at fault, if one is.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// `ISTIO_KUBE_APP_PROBERS`: the original probes by rewritten path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppProbers(pub BTreeMap<String, Prober>);

impl AppProbers {
    /// Reads the env var's value: at most [`MAX_APP_PROBERS_BYTES`], a JSON object whose keys
    /// are `/app-health/<container>/<livez|readyz|startupz>` or
    /// `/app-lifecycle/<container>/<prestopz|poststartz>` and whose values each hold exactly
    /// one of `httpGet`, `tcpSocket`, `grpc` (not for a hook) with a port from 1 to 65535.
    /// Empty text means none.
    pub fn parse(text: &str) -> Result<Self, AppProbersError> {
        let whole = |reason: String| AppProbersError { key: None, reason };
        if text.len() > MAX_APP_PROBERS_BYTES {
            return Err(whole(format!(
                "{} bytes, over the limit of {MAX_APP_PROBERS_BYTES}",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Ok(AppProbers::default());
        }
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| whole(format!("not a JSON object of probes: {e}")))?;
        let mut out = BTreeMap::new();
        for (key, value) in raw {
            let bad = |reason: String| AppProbersError {
                key: Some(key.clone()),
                reason,
            };
            let Some((_, kind)) = parse_app_health_path(&key) else {
                return Err(bad(format!(
                    "not a path of the form {APP_HEALTH_PREFIX}<container>/<livez|readyz|startupz> \
                     or {APP_LIFECYCLE_PREFIX}<container>/<prestopz|poststartz>"
                )));
            };
            let prober: Prober = serde_path_to_error::deserialize(value)
                .map_err(|e| bad(format!("at `{}`: {}", e.path(), e.inner())))?;
            let actions = [
                prober.http_get.as_ref().map(|h| h.port),
                prober.tcp_socket.as_ref().map(|t| t.port),
                prober.grpc.as_ref().map(|g| g.port),
            ];
            match actions.iter().flatten().collect::<Vec<_>>()[..] {
                [0] => return Err(bad("port 0 is not a port (1-65535)".into())),
                [_] => {}
                _ => {
                    return Err(bad(
                        "must hold exactly one of httpGet, tcpSocket, grpc".into()
                    ));
                }
            }
            if kind.is_hook() && prober.grpc.is_some() {
                return Err(bad(
                    "a lifecycle hook is httpGet or tcpSocket, never grpc".into()
                ));
            }
            if let Some(scheme) = prober.http_get.as_ref().and_then(|h| h.scheme.as_deref())
                && !scheme.eq_ignore_ascii_case("http")
                && !scheme.eq_ignore_ascii_case("https")
            {
                return Err(bad(format!(
                    "httpGet.scheme {scheme:?} is not HTTP or HTTPS"
                )));
            }
            out.insert(key, prober);
        }
        Ok(AppProbers(out))
    }

    /// The env var's value (compact JSON).
    pub fn to_json(&self) -> String {
        // A map of plain structs with string keys always serialises.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            app_health_path("web", ProbeKind::Readiness),
            "/app-health/web/readyz"
        );
        assert_eq!(
            parse_app_health_path("/app-health/web/startupz"),
            Some(("web", ProbeKind::Startup))
        );
        assert_eq!(
            app_health_path("web", ProbeKind::PreStop),
            "/app-lifecycle/web/prestopz"
        );
        assert_eq!(
            parse_app_health_path("/app-lifecycle/web/poststartz"),
            Some(("web", ProbeKind::PostStart))
        );
        for bad in [
            "/app-health/web/prestopz",
            "/app-lifecycle/web/livez",
            "/app-lifecycle//prestopz",
            "/app-health//livez",
            "/app-health/web/healthz",
            "/app-health/web/livez/x",
            "/healthz/ready",
            "/app-health/web",
        ] {
            assert_eq!(parse_app_health_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn istios_shape_round_trips() {
        let text = r#"{"/app-health/web/livez":{"tcpSocket":{"port":8080},"timeoutSeconds":1},"/app-health/web/readyz":{"httpGet":{"path":"/health","port":8080,"scheme":"HTTP","httpHeaders":[{"name":"X-A","value":"b"}]},"timeoutSeconds":3},"/app-health/rpc/startupz":{"grpc":{"port":9090,"service":"ready"}}}"#;
        let probers = AppProbers::parse(text).unwrap();
        assert_eq!(probers.0.len(), 3);
        let ready = &probers.0["/app-health/web/readyz"];
        assert_eq!(ready.http_get.as_ref().unwrap().port, 8080);
        assert_eq!(ready.timeout_seconds, Some(3));
        assert_eq!(AppProbers::parse(&probers.to_json()).unwrap(), probers);
        assert!(
            probers
                .to_json()
                .contains(r#""httpGet":{"path":"/health","port":8080"#)
        );
        assert_eq!(AppProbers::parse("").unwrap(), AppProbers::default());
        // Istio's hooks: no time-out.
        let hooks = r#"{"/app-lifecycle/web/prestopz":{"httpGet":{"path":"/shutdown","port":8080}},"/app-lifecycle/web/poststartz":{"tcpSocket":{"port":8080}}}"#;
        let hooks = AppProbers::parse(hooks).unwrap();
        assert_eq!(hooks.0.len(), 2);
        assert_eq!(hooks.0["/app-lifecycle/web/prestopz"].timeout_seconds, None);
    }

    #[test]
    fn refusals_name_the_key() {
        for (text, key) in [
            (r#"{"/x": {"tcpSocket": {"port": 1}}}"#, "/x"),
            (r#"{"/app-health/a/livez": {}}"#, "/app-health/a/livez"),
            (
                r#"{"/app-health/a/livez": {"tcpSocket": {"port": 1}, "grpc": {"port": 2}}}"#,
                "/app-health/a/livez",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": "http"}}}"#,
                "/app-health/a/livez",
            ),
            (
                r#"{"/app-health/a/livez": {"tcpSocket": {"port": 0}}}"#,
                "/app-health/a/livez",
            ),
            (
                r#"{"/app-health/a/livez": {"exec": {"command": ["true"]}}}"#,
                "/app-health/a/livez",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 1, "scheme": "FTP"}}}"#,
                "/app-health/a/livez",
            ),
            (
                r#"{"/app-lifecycle/a/prestopz": {"grpc": {"port": 1}}}"#,
                "/app-lifecycle/a/prestopz",
            ),
        ] {
            let e = AppProbers::parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert!(e.to_string().contains(APP_PROBERS_ENV), "{e}");
        }
        assert!(AppProbers::parse("[1]").is_err());
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_APP_PROBERS_BYTES));
        let e = AppProbers::parse(&big).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
    }
}
