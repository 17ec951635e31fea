//! Kubelet probes and lifecycle hooks under mutual TLS, as Istio's injector does it: each app
//! container's HTTP (`httpGet`), TCP (`tcpSocket`) and gRPC (`grpc`) liveness, readiness and
//! startup probe is rewritten to `httpGet` on the sidecar's status port (`statusPort`, 15020,
//! or the pod's `status.sidecar.istio.io/port`; with `0` nothing is rewritten) at
//! `/app-health/<container>/livez|readyz|startupz`, keeping the probe's timing fields; its
//! `httpGet` and `tcpSocket` `preStop` and `postStart` hooks likewise at
//! `/app-lifecycle/<container>/prestopz|poststartz`. The originals go to the sidecar in
//! `ISTIO_KUBE_APP_PROBERS` ([`rustmesh_xds::probe`]), and the sidecar runs them against the
//! app from inside the pod.
//!
//! Why: in a STRICT namespace the kubelet, which has no mesh certificate, would be refused by
//! the sidecar; and a TCP probe would always succeed, since the capture rules send every
//! inbound port to the sidecar.
//!
//! * On by default (Istio's `sidecarInjectorWebhook.rewriteAppHTTPProbe`, our setting
//!   `rewriteAppHTTPProbe`); the pod annotation `sidecar.istio.io/rewriteAppHTTPProbers`
//!   (`"false"`/`"true"`) wins.
//! * `exec` probes and `exec`/`sleep` hooks are left alone (they run in the container, no
//!   network involved).
//! * A named port is resolved through the container's `ports`. A probe whose port cannot be
//!   resolved (a name the container does not declare, a number outside 1-65535) is left as it is
//!   and reported with a warning naming the container and the probe.
//! * A probe already on the status port is left alone (Istio: already rewritten).
//! * Containers and init containers (a native-sidecar app container may have probes) are
//!   visited; the sidecar itself never.
//! * A hook's original carries the pod's `terminationGracePeriodSeconds` (Kubernetes' default
//!   30) as its time-out, where Istio's carries none: the kubelet gives up on a `preStop` hook
//!   at the end of the grace period, and the sidecar stops waiting then too.
//!
//! [`rewrite_in_place`] is pure: the pod and the settings in, the rewritten pod, the prober
//! list and the warnings out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustmesh_xds::probe::{
    AppProbers, Grpc, HttpGet, HttpHeader, ProbeKind, Prober, REWRITE_ANNOTATION, TcpSocket,
    app_health_path, parse_app_health_path,
};

use crate::names::SIDECAR_CONTAINER_NAME;
use crate::settings::InjectionSettings;
use crate::values::parse_flag;

/// Kubernetes' default `terminationGracePeriodSeconds`: a hook's time-out when the pod sets
/// none.
pub const DEFAULT_GRACE_SECONDS: u32 = 30;

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

/// Rewrites the pod's app probes and hooks to `status_port` in place (see the module doc) and
/// returns the originals, for the sidecar's `ISTIO_KUBE_APP_PROBERS`. Nothing when [`enabled`]
/// says no. Containers named `istio-proxy` are skipped.
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
    let grace = spec
        .termination_grace_period_seconds
        .and_then(|g| u32::try_from(g).ok())
        .filter(|g| *g > 0)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let inits = spec.init_containers.iter_mut().flatten();
    for c in spec.containers.iter_mut().chain(inits) {
        if c.name == SIDECAR_CONTAINER_NAME {
            continue;
        }
        for (kind, rewritten, prober) in rewrite_container(c, status_port, grace, warnings) {
            probers.0.insert(app_health_path(&c.name, kind), prober);
            set_slot(c, kind, rewritten);
        }
    }
    probers
}

/// The container's probe of `kind`, or its hook of `kind` as a probe (its `httpGet`,
/// `tcpSocket` and `exec`, no timing), so both are rewritten and restored one way.
pub fn slot(c: &Container, kind: ProbeKind) -> Option<Probe> {
    let hook = |h: Option<&k8s_openapi::api::core::v1::LifecycleHandler>| {
        h.map(|h| Probe {
            exec: h.exec.clone(),
            http_get: h.http_get.clone(),
            tcp_socket: h.tcp_socket.clone(),
            ..Probe::default()
        })
    };
    let lifecycle = c.lifecycle.as_ref();
    match kind {
        ProbeKind::Readiness => c.readiness_probe.clone(),
        ProbeKind::Liveness => c.liveness_probe.clone(),
        ProbeKind::Startup => c.startup_probe.clone(),
        ProbeKind::PreStop => hook(lifecycle.and_then(|l| l.pre_stop.as_ref())),
        ProbeKind::PostStart => hook(lifecycle.and_then(|l| l.post_start.as_ref())),
    }
}

/// Puts `probe` in the container's probe of `kind`; for a hook, its `httpGet` and `tcpSocket`
/// replace the hook's (the hook exists: only what [`slot`] returned is put back).
pub fn set_slot(c: &mut Container, kind: ProbeKind, probe: Probe) {
    let hook = match kind {
        ProbeKind::Readiness => return c.readiness_probe = Some(probe),
        ProbeKind::Liveness => return c.liveness_probe = Some(probe),
        ProbeKind::Startup => return c.startup_probe = Some(probe),
        ProbeKind::PreStop => c.lifecycle.as_mut().and_then(|l| l.pre_stop.as_mut()),
        ProbeKind::PostStart => c.lifecycle.as_mut().and_then(|l| l.post_start.as_mut()),
    };
    if let Some(hook) = hook {
        hook.http_get = probe.http_get;
        hook.tcp_socket = probe.tcp_socket;
    }
}

/// The probes and hooks of one container that are rewritten: for each, its kind, the new probe
/// (for the kubelet; see [`set_slot`]) and the original (for the sidecar). A hook's original
/// gets `hook_timeout` seconds.
pub fn rewrite_container(
    c: &Container,
    status_port: u16,
    hook_timeout: u32,
    warnings: &mut Vec<String>,
) -> Vec<(ProbeKind, Probe, Prober)> {
    let mut out = Vec::new();
    for kind in ProbeKind::ALL {
        let Some(probe) = slot(c, kind) else { continue };
        let probe = &probe;
        let mut warn = |what: String| {
            warnings.push(format!(
                "container {:?} {}: {what}; not rewritten (it may fail under mTLS STRICT)",
                c.name,
                kind.field()
            ))
        };
        let timeout_seconds = if kind.is_hook() {
            Some(hook_timeout)
        } else {
            probe
                .timeout_seconds
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
        };
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

    /// What [`rewrite_in_place`] did: the probe and hook fields it changed, by JSON pointer,
    /// and the originals.
    struct Rewritten {
        ops: BTreeMap<String, Value>,
        probers: AppProbers,
    }

    fn rewrite(p: &Pod, settings: &InjectionSettings, w: &mut Vec<String>) -> Rewritten {
        let mut q = p.clone();
        let probers = rewrite_in_place(&mut q, settings, settings.status_port, w);
        let (before, after) = (
            serde_json::to_value(p).unwrap(),
            serde_json::to_value(&q).unwrap(),
        );
        let mut ops = BTreeMap::new();
        for list in ["containers", "initContainers"] {
            let n = after["spec"][list].as_array().map_or(0, Vec::len);
            for i in 0..n {
                for field in [
                    "readinessProbe",
                    "livenessProbe",
                    "startupProbe",
                    "lifecycle/preStop",
                    "lifecycle/postStart",
                ] {
                    let ptr = format!("/spec/{list}/{i}/{field}");
                    if after.pointer(&ptr) != before.pointer(&ptr) {
                        ops.insert(ptr.clone(), after.pointer(&ptr).cloned().unwrap());
                    }
                }
            }
        }
        Rewritten { ops, probers }
    }

    fn replaced(r: &Rewritten) -> BTreeMap<String, Value> {
        r.ops.clone()
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
    fn http_and_tcp_hooks_are_rewritten_to_app_lifecycle_with_the_grace_period() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "terminationGracePeriodSeconds": 45,
                "containers": [{
                    "name": "web", "image": "web",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "lifecycle": {
                        "preStop": {"httpGet": {"path": "/shutdown", "port": "http", "scheme": "HTTPS"}},
                        "postStart": {"tcpSocket": {"port": 8080}}
                    }
                }, {
                    "name": "batch", "image": "batch",
                    "lifecycle": {
                        "preStop": {"exec": {"command": ["drain"]}},
                        "postStart": {"sleep": {"seconds": 1}}
                    }
                }]
            }
        }))
        .unwrap();
        let mut w = Vec::new();
        let r = rewrite(&p, &InjectionSettings::default(), &mut w);
        assert!(w.is_empty(), "{w:?}");
        // Istio's shape: the kubelet's hook becomes an HTTP GET on the status port; exec and
        // sleep hooks stay.
        assert_eq!(
            replaced(&r),
            BTreeMap::from([
                (
                    "/spec/containers/0/lifecycle/preStop".to_owned(),
                    json!({"httpGet": {"path": "/app-lifecycle/web/prestopz", "port": 15020, "scheme": "HTTP"}})
                ),
                (
                    "/spec/containers/0/lifecycle/postStart".to_owned(),
                    json!({"httpGet": {"path": "/app-lifecycle/web/poststartz", "port": 15020, "scheme": "HTTP"}})
                ),
            ])
        );
        // The originals, with the pod's grace period as the sidecar's time-out.
        assert_eq!(
            serde_json::to_value(&r.probers).unwrap(),
            json!({
                "/app-lifecycle/web/prestopz": {"httpGet": {"path": "/shutdown", "port": 8080, "scheme": "HTTPS"},
                                                "timeoutSeconds": 45},
                "/app-lifecycle/web/poststartz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 45}
            })
        );
        assert_eq!(AppProbers::parse(&r.probers.to_json()).unwrap(), r.probers);
        // Without a grace period, Kubernetes' default.
        let mut q = p.clone();
        q.spec.as_mut().unwrap().termination_grace_period_seconds = None;
        let r = rewrite(&q, &InjectionSettings::default(), &mut w);
        assert_eq!(
            r.probers.0["/app-lifecycle/web/prestopz"].timeout_seconds,
            Some(DEFAULT_GRACE_SECONDS)
        );
        // Turned off with the probes.
        let off = InjectionSettings {
            rewrite_app_http_probe: false,
            ..InjectionSettings::default()
        };
        assert!(rewrite(&p, &off, &mut w).ops.is_empty());
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
