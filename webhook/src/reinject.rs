//! Injecting a pod that was injected before: one carrying `sidecar.istio.io/status`, e.g. a pod
//! spec copied from a running pod, or a pod the API server sends again. As Istio's injector
//! (`stripPod`, `reinsertOverrides`), such a pod is not skipped but injected again, from the pod
//! it was before:
//!
//! * the containers and init containers the status lists are removed (Istio's rendering sees
//!   the pod without them), and so is the status annotation;
//! * the volumes it lists are set aside: those injected again are replaced by the new ones, the
//!   others are dropped unless a container of the result still mounts them
//!   ([`keep_listed_volume`]); image pull secrets are merged by name, as before (Istio removes
//!   none either);
//! * what the previous sidecar carried for the app is given back to it before injecting again:
//!   the app's probes, rewritten to `/app-health/...` on the status port, get back the
//!   originals from the old sidecar's `ISTIO_KUBE_APP_PROBERS`, and the app's own
//!   `prometheus.io/*` annotations come back from its `ISTIO_PROMETHEUS_ANNOTATIONS`;
//! * the overlay the pod declared the first time comes back from `proxy.istio.io/overrides`
//!   ([`crate::overlay`]).
//!
//! So injecting the result of an injection again gives the same pod (and no patch), while a
//! changed setting or annotation is applied.
//!
//! rustmesh's difference: Istio merges its template over the previous containers and keeps the
//! previous prober list merged with the new one, so a changed status port or a probe rewrite
//! turned off leaves the app's probes pointing at the old place; rustmesh restores the app's
//! own probes first and rewrites them as the pod now asks.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, GRPCAction, HTTPGetAction, HTTPHeader, Pod, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustmesh_xds::probe::{APP_PROBERS_ENV, AppProbers, ProbeKind, Prober, app_health_path};

use crate::inject::SidecarStatus;
use crate::names::*;

/// The pod as it was before its previous injection.
#[derive(Clone, Debug, Default)]
pub struct Stripped {
    /// The pod without what the previous injection added (or the pod itself, when it carries no
    /// readable status).
    pub pod: Pod,
    /// The previous injection's status, when the pod had a readable one.
    pub status: Option<SidecarStatus>,
}

impl Stripped {
    /// The volumes the previous injection added.
    pub fn volumes(&self) -> &[String] {
        self.status
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default()
    }
}

/// The previous injection's status, when the pod carries one that reads as Istio's.
pub fn status(pod: &Pod) -> Option<SidecarStatus> {
    let raw = pod.metadata.annotations.as_ref()?.get(ANNOTATION_STATUS)?;
    serde_json::from_str(raw).ok()
}

/// Strips the previous injection from `pod` (see the module doc). A status annotation that does
/// not read as Istio's adds a warning; the pod is then injected as it is (its containers named
/// like ours are overlays).
pub fn strip(pod: &Pod, warnings: &mut Vec<String>) -> Stripped {
    let mut out = pod.clone();
    let Some(raw) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_STATUS))
    else {
        return Stripped {
            pod: out,
            status: None,
        };
    };
    if let Some(a) = out.metadata.annotations.as_mut() {
        a.remove(ANNOTATION_STATUS);
    }
    let Ok(status) = serde_json::from_str::<SidecarStatus>(raw) else {
        warnings.push(format!(
            "annotation {ANNOTATION_STATUS} is not Istio's injection status; nothing of a previous \
             injection is removed (it is replaced)"
        ));
        return Stripped {
            pod: out,
            status: None,
        };
    };
    let listed = |list: &Option<Vec<String>>, name: &str| {
        list.as_ref().is_some_and(|l| l.iter().any(|n| n == name))
    };

    let mut old_sidecar: Option<Container> = None;
    if let Some(spec) = out.spec.as_mut() {
        let mut strip_list = |list: &mut Vec<Container>, names: &Option<Vec<String>>| {
            list.retain(|c| {
                if !listed(names, &c.name) {
                    return true;
                }
                if c.name == SIDECAR_CONTAINER_NAME && old_sidecar.is_none() {
                    old_sidecar = Some(c.clone());
                }
                false
            });
        };
        strip_list(&mut spec.containers, &status.containers);
        if let Some(inits) = spec.init_containers.as_mut() {
            strip_list(inits, &status.init_containers);
        }
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| !listed(&status.volumes, &v.name));
        }
    }

    if let Some(sidecar) = &old_sidecar {
        let env = |name: &str| {
            sidecar
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        if let Some(text) = env(APP_PROBERS_ENV) {
            match AppProbers::parse(&text) {
                Ok(probers) => restore_probes(&mut out, &probers),
                Err(e) => warnings.push(format!(
                    "the previous sidecar's {APP_PROBERS_ENV} does not read ({e}); the app's \
                     probes on /app-health/ are left as they are"
                )),
            }
        }
        if let Some(text) = env(ENV_PROMETHEUS_ANNOTATIONS) {
            match serde_json::from_str::<BTreeMap<String, String>>(&text) {
                Ok(scrape) => restore_prometheus(&mut out, &scrape),
                Err(e) => warnings.push(format!(
                    "the previous sidecar's {ENV_PROMETHEUS_ANNOTATIONS} does not read ({e}); \
                     the pod's prometheus.io annotations are left as they are"
                )),
            }
        }
    }
    Stripped {
        pod: out,
        status: Some(status),
    }
}

/// Whether a volume the previous injection listed stays in the pod although it is not injected
/// again: only when a container of the result still mounts it (removing it would make the API
/// server refuse the pod).
pub fn keep_listed_volume(name: &str, containers: &[&Container]) -> bool {
    containers.iter().any(|c| {
        c.volume_mounts.iter().flatten().any(|m| m.name == name)
            || c.volume_devices.iter().flatten().any(|d| d.name == name)
    })
}

/// Gives every probe and hook that the previous injection rewrote to
/// `/app-health/<container>/<kind>` or `/app-lifecycle/<container>/<kind>` its original back
/// from the old sidecar's prober list, keeping its timing fields.
pub fn restore_probes(pod: &mut Pod, probers: &AppProbers) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let inits = spec.init_containers.iter_mut().flatten();
    for c in spec.containers.iter_mut().chain(inits) {
        for kind in ProbeKind::ALL {
            let path = app_health_path(&c.name, kind);
            let Some(mut probe) = crate::probes::slot(c, kind) else {
                continue;
            };
            let rewritten = probe
                .http_get
                .as_ref()
                .is_some_and(|g| g.path.as_deref() == Some(path.as_str()));
            if let (true, Some(original)) = (rewritten, probers.0.get(&path)) {
                restore_probe(&mut probe, original);
                crate::probes::set_slot(c, kind, probe);
            }
        }
    }
}

/// `probe`, rewritten, with its original handler from `prober`.
fn restore_probe(probe: &mut Probe, prober: &Prober) {
    probe.http_get = prober.http_get.as_ref().map(|g| HTTPGetAction {
        path: g.path.clone(),
        port: IntOrString::Int(i32::from(g.port)),
        host: g.host.clone(),
        scheme: g.scheme.clone(),
        http_headers: (!g.http_headers.is_empty()).then(|| {
            g.http_headers
                .iter()
                .map(|h| HTTPHeader {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect()
        }),
    });
    probe.tcp_socket = prober.tcp_socket.as_ref().map(|t| TCPSocketAction {
        port: IntOrString::Int(i32::from(t.port)),
        host: t.host.clone(),
    });
    probe.grpc = prober.grpc.as_ref().map(|g| GRPCAction {
        port: i32::from(g.port),
        service: g.service.clone(),
    });
}

/// Gives the pod back its own `prometheus.io/scrape`, `port` and `path` from the old sidecar's
/// `ISTIO_PROMETHEUS_ANNOTATIONS` (an empty value: the pod had none).
pub fn restore_prometheus(pod: &mut Pod, scrape: &BTreeMap<String, String>) {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (key, name) in [
        ("scrape", ANNOTATION_PROMETHEUS_SCRAPE),
        ("port", ANNOTATION_PROMETHEUS_PORT),
        ("path", ANNOTATION_PROMETHEUS_PATH),
    ] {
        match scrape.get(key).filter(|v| !v.is_empty()) {
            Some(v) => annotations.insert(name.to_owned(), v.clone()),
            None => annotations.remove(name),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn injected_pod() -> Pod {
        pod(json!({
            "metadata": {"name": "p", "annotations": {
                "sidecar.istio.io/status": r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy","istio-token"],"imagePullSecrets":null,"revision":"default"}"#,
                "prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/stats/prometheus"
            }},
            "spec": {
                "initContainers": [{"name": "istio-init"}, {"name": "migrate"}],
                "containers": [
                    {"name": "istio-proxy", "env": [
                        {"name": "ISTIO_KUBE_APP_PROBERS", "value": r#"{"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTPS"},"timeoutSeconds":2},"/app-health/app/livez":{"tcpSocket":{"port":8080}},"/app-lifecycle/app/prestopz":{"tcpSocket":{"port":8080},"timeoutSeconds":30}}"#},
                        {"name": "ISTIO_PROMETHEUS_ANNOTATIONS", "value": r#"{"scrape":"true","path":"","port":"9090"}"#}
                    ]},
                    {"name": "app",
                     "readinessProbe": {"httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"}, "periodSeconds": 3, "timeoutSeconds": 2},
                     "livenessProbe": {"httpGet": {"path": "/app-health/app/livez", "port": 15020}},
                     "startupProbe": {"httpGet": {"path": "/started", "port": 8080}},
                     "lifecycle": {"preStop": {"httpGet": {"path": "/app-lifecycle/app/prestopz", "port": 15020, "scheme": "HTTP"}}},
                     "volumeMounts": [{"name": "istio-token", "mountPath": "/t"}]}
                ],
                "volumes": [{"name": "data"}, {"name": "istio-envoy"}, {"name": "istio-token"}]
            }
        }))
    }

    #[test]
    fn the_listed_containers_volumes_and_status_go() {
        let mut warnings = Vec::new();
        let s = strip(&injected_pod(), &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        let spec = s.pod.spec.as_ref().unwrap();
        let names = |l: &[Container]| l.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&spec.containers), ["app"]);
        assert_eq!(names(spec.init_containers.as_ref().unwrap()), ["migrate"]);
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["data"]);
        assert_eq!(s.volumes(), ["istio-envoy", "istio-token"]);
        assert!(
            !s.pod
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(ANNOTATION_STATUS)
        );
        // A listed volume the app still mounts stays.
        let app = &spec.containers[0];
        assert!(keep_listed_volume("istio-token", &[app]));
        assert!(!keep_listed_volume("istio-envoy", &[app]));
    }

    #[test]
    fn the_apps_probes_and_prometheus_annotations_come_back() {
        let s = strip(&injected_pod(), &mut Vec::new());
        let app = &s.pod.spec.as_ref().unwrap().containers[0];
        let ready = serde_json::to_value(app.readiness_probe.as_ref().unwrap()).unwrap();
        assert_eq!(
            ready,
            json!({"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS"}, "periodSeconds": 3, "timeoutSeconds": 2})
        );
        let live = serde_json::to_value(app.liveness_probe.as_ref().unwrap()).unwrap();
        assert_eq!(live, json!({"tcpSocket": {"port": 8080}}));
        let hooks = serde_json::to_value(app.lifecycle.as_ref().unwrap()).unwrap();
        assert_eq!(hooks, json!({"preStop": {"tcpSocket": {"port": 8080}}}));
        // Not one the injection wrote: untouched.
        assert_eq!(
            app.startup_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/started")
        );
        let a = s.pod.metadata.annotations.unwrap();
        assert_eq!(a["prometheus.io/scrape"], "true");
        assert_eq!(a["prometheus.io/port"], "9090");
        assert!(!a.contains_key("prometheus.io/path"), "the app had none");
    }

    #[test]
    fn without_a_readable_status_the_pod_is_kept() {
        let plain = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "istio-proxy"}]}}),
        );
        let s = strip(&plain, &mut Vec::new());
        assert!(s.status.is_none());
        assert_eq!(s.pod, plain);
        let mut bad = plain.clone();
        bad.metadata.annotations =
            Some([(ANNOTATION_STATUS.to_owned(), "{not json".to_owned())].into());
        let mut warnings = Vec::new();
        let s = strip(&bad, &mut warnings);
        assert!(s.status.is_none());
        assert_eq!(s.pod.spec, plain.spec, "nothing removed");
        assert!(
            !s.pod
                .metadata
                .annotations
                .unwrap()
                .contains_key(ANNOTATION_STATUS)
        );
        assert!(
            warnings[0].contains("not Istio's injection status"),
            "{warnings:?}"
        );
        // Istio's own status, with fields rustmesh does not write, reads.
        let istio = r#"{"initContainers":["istio-validation"],"containers":["istio-proxy"],"volumes":["workload-socket"],"imagePullSecrets":null,"revision":"1-22"}"#;
        let mut copied = plain;
        copied.metadata.annotations =
            Some([(ANNOTATION_STATUS.to_owned(), istio.to_owned())].into());
        let s = strip(&copied, &mut Vec::new());
        assert_eq!(s.status.unwrap().revision, "1-22");
        assert!(s.pod.spec.unwrap().containers.is_empty());
    }

    #[test]
    fn an_unreadable_prober_list_is_a_warning() {
        let mut p = injected_pod();
        p.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap()[0].value = Some("[".into());
        let mut warnings = Vec::new();
        let s = strip(&p, &mut warnings);
        assert!(
            warnings[0].contains("ISTIO_KUBE_APP_PROBERS does not read"),
            "{warnings:?}"
        );
        let app = &s.pod.spec.unwrap().containers[0];
        assert_eq!(
            app.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .port,
            IntOrString::Int(15020)
        );
    }
}
