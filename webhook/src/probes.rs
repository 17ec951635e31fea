//! Kubelet probes under mutual TLS, as Istio's injector does it: each app container's HTTP
//! (`httpGet`), TCP (`tcpSocket`) and gRPC (`grpc`) liveness, readiness and startup probe is
//! rewritten to `httpGet` on the sidecar's status port (`statusPort`, 15020, or the pod's
//! `status.sidecar.istio.io/port`; with `0` nothing is rewritten) at
//! `/app-health/<container>/livez|readyz|startupz`, keeping the probe's timing fields; the
//! originals go to the sidecar in `ISTIO_KUBE_APP_PROBERS` ([`rustmesh_xds::probe`]), and the
//! sidecar runs them against the app from inside the pod.
//!
//! Why: in a STRICT namespace the kubelet, which has no mesh certificate, would be refused by
//! the sidecar; and a TCP probe would always succeed, since the capture rules send every
//! inbound port to the sidecar.
//!
//! * On by default (Istio's `sidecarInjectorWebhook.rewriteAppHTTPProbe`, our setting
//!   `rewriteAppHTTPProbe`); the pod annotation `sidecar.istio.io/rewriteAppHTTPProbers`
//!   (`"false"`/`"true"`) wins.
//! * `exec` probes are left alone (they run in the container, no network involved).
//! * A named port is resolved through the container's `ports`. A probe whose port cannot be
//!   resolved (a name the container does not declare, a number outside 1-65535) is left as it is
//!   and reported with a warning naming the container and the probe.
//! * A probe already on the status port is left alone (Istio: already rewritten).
//! * Containers and init containers (a native-sidecar app container may have probes) are
//!   visited; the sidecar itself never.
//!
//! [`rewrite`] is pure: the pod and the settings in, the patch operations, the env value and
//! the warnings out.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustmesh_xds::probe::{
    AppProbers, Grpc, HttpGet, HttpHeader, ProbeKind, Prober, REWRITE_ANNOTATION, TcpSocket,
    app_health_path, parse_app_health_path,
};

use crate::names::SIDECAR_CONTAINER_NAME;
use crate::settings::InjectionSettings;
use crate::values::parse_flag;

/// What [`rewrite`] produces.
#[derive(Debug, Default)]
pub struct ProbeRewrite {
    /// `replace` operations on the pod's probes, against the submitted pod's container indices:
    /// they must come before any operation that inserts a container.
    pub ops: Vec<PatchOperation>,
    /// The originals, for the sidecar's `ISTIO_KUBE_APP_PROBERS`; empty when nothing was
    /// rewritten (the env var is then not set, as Istio does).
    pub probers: AppProbers,
}

/// Whether probes are rewritten for this pod: the annotation when it reads as a boolean
/// (Istio's `strconv.ParseBool` values, and `yes`/`no`/`on`/`off`), else the setting. An
/// unreadable annotation is a warning and the setting applies.
pub fn enabled(
    annotations: &BTreeMap<String, String>,
    settings: &InjectionSettings,
    warnings: &mut Vec<String>,
) -> bool {
    let default = settings.rewrite_app_http_probe;
    let Some(raw) = annotations.get(REWRITE_ANNOTATION) else {
        return default;
    };
    let parsed = match raw.trim() {
        "1" | "t" | "T" => Some(true),
        "0" | "f" | "F" => Some(false),
        v => parse_flag(v),
    };
    parsed.unwrap_or_else(|| {
        warnings.push(format!(
            "annotation {REWRITE_ANNOTATION} ignored: {raw:?} is not true or false; \
             using the default {default}"
        ));
        default
    })
}

/// Rewrites the pod's app probes to the `statusPort` setting (see the module doc). Nothing when
/// [`enabled`] says no.
pub fn rewrite(
    pod: &Pod,
    settings: &InjectionSettings,
    warnings: &mut Vec<String>,
) -> ProbeRewrite {
    rewrite_to(pod, settings, settings.status_port, warnings)
}

/// [`rewrite`] to the pod's own status port (`status.sidecar.istio.io/port`, read by
/// [`crate::readiness`]), which must not be 0.
pub fn rewrite_to(
    pod: &Pod,
    settings: &InjectionSettings,
    status_port: u16,
    warnings: &mut Vec<String>,
) -> ProbeRewrite {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut out = ProbeRewrite::default();
    if !enabled(annotations, settings, warnings) {
        return out;
    }
    let Some(spec) = &pod.spec else { return out };
    let no_inits = Vec::new();
    let lists = [
        ("containers", &spec.containers),
        (
            "initContainers",
            spec.init_containers.as_ref().unwrap_or(&no_inits),
        ),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            if c.name == SIDECAR_CONTAINER_NAME {
                continue;
            }
            for (kind, rewritten, prober) in rewrite_container(c, status_port, warnings) {
                let path = app_health_path(&c.name, kind);
                out.ops.push(PatchOperation::Replace(ReplaceOperation {
                    path: PointerBuf::from_tokens(["spec", list, &i.to_string(), kind.field()]),
                    value: serde_json::to_value(&rewritten).unwrap_or_default(),
                }));
                out.probers.0.insert(path, prober);
            }
        }
    }
    out
}

/// [`rewrite_to`] applied to the pod itself: its probes are replaced in place and the
/// originals returned, for the sidecar's `ISTIO_KUBE_APP_PROBERS`. Containers named
/// `istio-proxy` are skipped.
pub fn rewrite_in_place(
    pod: &mut Pod,
    settings: &InjectionSettings,
    status_port: u16,
    warnings: &mut Vec<String>,
) -> AppProbers {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.clone().unwrap_or(empty);
    let mut probers = AppProbers::default();
    if !enabled(&annotations, settings, warnings) {
        return probers;
    }
    let Some(spec) = pod.spec.as_mut() else {
        return probers;
    };
    let inits = spec.init_containers.iter_mut().flatten();
    for c in spec.containers.iter_mut().chain(inits) {
        if c.name == SIDECAR_CONTAINER_NAME {
            continue;
        }
        for (kind, rewritten, prober) in rewrite_container(c, status_port, warnings) {
            probers.0.insert(app_health_path(&c.name, kind), prober);
            let slot = match kind {
                ProbeKind::Readiness => &mut c.readiness_probe,
                ProbeKind::Liveness => &mut c.liveness_probe,
                ProbeKind::Startup => &mut c.startup_probe,
            };
            *slot = Some(rewritten);
        }
    }
    probers
}

/// The probes of one container that are rewritten: for each, its kind, the new probe (for the
/// kubelet) and the original (for the sidecar).
pub fn rewrite_container(
    c: &Container,
    status_port: u16,
    warnings: &mut Vec<String>,
) -> Vec<(ProbeKind, Probe, Prober)> {
    let mut out = Vec::new();
    for kind in ProbeKind::ALL {
        let probe = match kind {
            ProbeKind::Readiness => &c.readiness_probe,
            ProbeKind::Liveness => &c.liveness_probe,
            ProbeKind::Startup => &c.startup_probe,
        };
        let Some(probe) = probe else { continue };
        let mut warn = |what: String| {
            warnings.push(format!(
                "container {:?} {}: {what}; probe not rewritten (it may fail under mTLS STRICT)",
                c.name,
                kind.field()
            ))
        };
        let timeout_seconds = probe
            .timeout_seconds
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0);
        if parse_app_health_path(&app_health_path(&c.name, kind)).is_none() {
            // Not a container name Kubernetes takes (the API server refuses the pod); the
            // sidecar could not serve the path either.
            warn(format!("the name {:?} cannot be a path segment", c.name));
            continue;
        }
        let prober = if let Some(get) = &probe.http_get {
            if get.port == IntOrString::Int(i32::from(status_port)) {
                continue; // already the sidecar's
            }
            if let Some(scheme) = get.scheme.as_deref().filter(|s| {
                !s.is_empty() && !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https")
            }) {
                // The sidecar refuses such a prober (and the API server such a probe).
                warn(format!("httpGet.scheme {scheme:?} is not HTTP or HTTPS"));
                continue;
            }
            let port = match resolve_port(c, &get.port) {
                Ok(p) => p,
                Err(e) => {
                    warn(e);
                    continue;
                }
            };
            Prober {
                http_get: Some(HttpGet {
                    path: get.path.clone().filter(|p| !p.is_empty()),
                    port,
                    host: get.host.clone().filter(|h| !h.is_empty()),
                    scheme: get.scheme.clone().filter(|s| !s.is_empty()),
                    http_headers: get
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|h| HttpHeader {
                            name: h.name.clone(),
                            value: h.value.clone(),
                        })
                        .collect(),
                }),
                timeout_seconds,
                ..Default::default()
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = match resolve_port(c, &tcp.port) {
                Ok(p) => p,
                Err(e) => {
                    warn(e);
                    continue;
                }
            };
            Prober {
                tcp_socket: Some(TcpSocket {
                    port,
                    host: tcp.host.clone().filter(|h| !h.is_empty()),
                }),
                timeout_seconds,
                ..Default::default()
            }
        } else if let Some(grpc) = &probe.grpc {
            let Some(port) = u16::try_from(grpc.port).ok().filter(|p| *p > 0) else {
                warn(format!("grpc port {} is not a port (1-65535)", grpc.port));
                continue;
            };
            Prober {
                grpc: Some(Grpc {
                    port,
                    service: grpc.service.clone().filter(|s| !s.is_empty()),
                }),
                timeout_seconds,
                ..Default::default()
            }
        } else {
            continue; // exec (or nothing): runs in the container, left alone
        };

        // The kubelet's probe: the same timing, an HTTP GET on the status port. Headers of an
        // httpGet stay (the kubelet sends them and the sidecar passes them on); `host` goes, so
        // the kubelet reaches the sidecar at the pod's IP.
        let mut rewritten = probe.clone();
        let headers = rewritten
            .http_get
            .take()
            .and_then(|g| g.http_headers)
            .filter(|h| !h.is_empty());
        rewritten.tcp_socket = None;
        rewritten.grpc = None;
        rewritten.http_get = Some(HTTPGetAction {
            path: Some(app_health_path(&c.name, kind)),
            port: IntOrString::Int(i32::from(status_port)),
            scheme: Some("HTTP".to_owned()),
            http_headers: headers,
            host: None,
        });
        out.push((kind, rewritten, prober));
    }
    out
}

/// A probe's port as a number: a number from 1 to 65535, or the name of one of the container's
/// ports.
fn resolve_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {n} is not a port (1-65535)")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok().filter(|p| *p > 0))
            .ok_or_else(|| format!("port {name:?} is not a named port of the container")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(annotations: Value, containers: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": containers}
        }))
        .unwrap()
    }

    fn replaced(r: &ProbeRewrite) -> BTreeMap<String, Value> {
        r.ops
            .iter()
            .map(|op| match op {
                PatchOperation::Replace(o) => (o.path.to_string(), o.value.clone()),
                other => panic!("not a replace: {other:?}"),
            })
            .collect()
    }

    fn web() -> Value {
        json!([{
            "name": "web",
            "image": "web",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
            "readinessProbe": {
                "httpGet": {"path": "/ready", "port": "http", "scheme": "HTTPS",
                            "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                "initialDelaySeconds": 5, "periodSeconds": 7, "timeoutSeconds": 2,
                "successThreshold": 1, "failureThreshold": 4
            },
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 10},
            "startupProbe": {"grpc": {"port": 9090, "service": "up"}, "failureThreshold": 30}
        }])
    }

    #[test]
    fn each_kind_is_rewritten_to_the_status_port_keeping_the_timing() {
        let mut warnings = Vec::new();
        let r = rewrite(
            &pod(json!({}), web()),
            &InjectionSettings::default(),
            &mut warnings,
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let ops = replaced(&r);
        assert_eq!(
            ops["/spec/containers/0/readinessProbe"],
            json!({
                "httpGet": {"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP",
                            "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                "initialDelaySeconds": 5, "periodSeconds": 7, "timeoutSeconds": 2,
                "successThreshold": 1, "failureThreshold": 4
            })
        );
        assert_eq!(
            ops["/spec/containers/0/livenessProbe"],
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP"},
                   "periodSeconds": 10})
        );
        assert_eq!(
            ops["/spec/containers/0/startupProbe"],
            json!({"httpGet": {"path": "/app-health/web/startupz", "port": 15020, "scheme": "HTTP"},
                   "failureThreshold": 30})
        );
        // The originals, as Istio writes them: the named port resolved, HTTPS kept for the
        // sidecar (which probes the app over TLS), the time-out carried.
        assert_eq!(
            serde_json::to_value(&r.probers).unwrap(),
            json!({
                "/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS",
                    "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 2},
                "/app-health/web/livez": {"tcpSocket": {"port": 8080}},
                "/app-health/web/startupz": {"grpc": {"port": 9090, "service": "up"}}
            })
        );
        // What the sidecar reads back.
        assert_eq!(AppProbers::parse(&r.probers.to_json()).unwrap(), r.probers);
    }

    #[test]
    fn the_annotation_turns_it_off_and_on() {
        let settings = InjectionSettings::default();
        for off in ["false", "0", "f", "no"] {
            let mut w = Vec::new();
            let r = rewrite(
                &pod(json!({REWRITE_ANNOTATION: off}), web()),
                &settings,
                &mut w,
            );
            assert!(r.ops.is_empty() && r.probers.0.is_empty(), "{off}");
            assert!(w.is_empty());
        }
        let off = InjectionSettings {
            rewrite_app_http_probe: false,
            ..InjectionSettings::default()
        };
        let mut w = Vec::new();
        assert!(rewrite(&pod(json!({}), web()), &off, &mut w).ops.is_empty());
        let r = rewrite(
            &pod(json!({REWRITE_ANNOTATION: "true"}), web()),
            &off,
            &mut w,
        );
        assert_eq!(r.ops.len(), 3, "the pod's annotation wins over the setting");
        // Unreadable: a warning naming the annotation, and the setting.
        let r = rewrite(
            &pod(json!({REWRITE_ANNOTATION: "maybe"}), web()),
            &settings,
            &mut w,
        );
        assert_eq!(r.ops.len(), 3);
        assert!(w.len() == 1 && w[0].contains(REWRITE_ANNOTATION), "{w:?}");
    }

    #[test]
    fn exec_probes_and_the_status_port_are_left_alone() {
        let containers = json!([{
            "name": "job", "image": "job",
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}},
            "readinessProbe": {"httpGet": {"path": "/app-health/job/readyz", "port": 15020}}
        }]);
        let mut w = Vec::new();
        let r = rewrite(
            &pod(json!({}), containers),
            &InjectionSettings::default(),
            &mut w,
        );
        assert!(r.ops.is_empty() && r.probers.0.is_empty() && w.is_empty());
    }

    #[test]
    fn an_unresolvable_port_is_warned_and_left() {
        let containers = json!([{
            "name": "api", "image": "api",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "admin"}},
            "livenessProbe": {"tcpSocket": {"port": 70000}},
            "startupProbe": {"tcpSocket": {"port": "http"}}
        }]);
        let mut w = Vec::new();
        let r = rewrite(
            &pod(json!({}), containers),
            &InjectionSettings::default(),
            &mut w,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("\"api\" readinessProbe") && w[0].contains("\"admin\""),
            "{w:?}"
        );
        assert!(
            w[1].contains("\"api\" livenessProbe") && w[1].contains("70000"),
            "{w:?}"
        );
        assert_eq!(
            replaced(&r).keys().collect::<Vec<_>>(),
            ["/spec/containers/0/startupProbe"]
        );
        assert_eq!(
            r.probers.0["/app-health/api/startupz"].tcp_socket,
            Some(TcpSocket {
                port: 8080,
                host: None
            })
        );
    }

    #[test]
    fn init_containers_count_and_the_sidecar_does_not() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "setup", "image": "s"},
                    {"name": "log", "image": "l", "restartPolicy": "Always",
                     "readinessProbe": {"tcpSocket": {"port": 2020}}}
                ],
                "containers": [
                    {"name": "istio-proxy", "image": "proxy",
                     "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}}},
                    {"name": "app", "image": "a"}
                ]
            }
        }))
        .unwrap();
        let mut w = Vec::new();
        let r = rewrite(&p, &InjectionSettings::default(), &mut w);
        assert_eq!(
            replaced(&r).keys().collect::<Vec<_>>(),
            ["/spec/initContainers/1/readinessProbe"]
        );
        assert!(r.probers.0.contains_key("/app-health/log/readyz"));
    }

    #[test]
    fn the_status_port_setting_is_used() {
        let settings = InjectionSettings {
            status_port: 16020,
            ..InjectionSettings::default()
        };
        let mut w = Vec::new();
        let r = rewrite(&pod(json!({}), web()), &settings, &mut w);
        assert_eq!(
            replaced(&r)["/spec/containers/0/livenessProbe"]["httpGet"]["port"],
            16020
        );
    }

    #[test]
    fn a_probe_the_sidecar_could_not_run_is_left_alone_with_a_warning() {
        // A scheme other than HTTP/HTTPS, a name that is not one path segment: the sidecar
        // would refuse the prober list, so the probe stays as it is (the API server refuses
        // such a pod anyway).
        let p = pod(
            json!({}),
            json!([
                {"name": "web", "readinessProbe": {"httpGet": {"path": "/", "port": 80, "scheme": "FTP"}}},
                {"name": "a/b", "livenessProbe": {"tcpSocket": {"port": 80}}}
            ]),
        );
        let mut w = Vec::new();
        let r = rewrite(&p, &InjectionSettings::default(), &mut w);
        assert!(r.ops.is_empty() && r.probers.0.is_empty());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("httpGet.scheme \"FTP\" is not HTTP or HTTPS"),
            "{w:?}"
        );
        assert!(w[1].contains("cannot be a path segment"), "{w:?}");
        // The in-place rewrite agrees.
        let mut q = p.clone();
        let probers = rewrite_in_place(
            &mut q,
            &InjectionSettings::default(),
            15020,
            &mut Vec::new(),
        );
        assert!(probers.0.is_empty());
        assert_eq!(q, p);
    }
}
