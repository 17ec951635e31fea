//! Scenario 9 (issue #16, probes under mTLS): the webhook rewrites an injected pod's `httpGet`
//! readiness probe (on a named port) and `tcpSocket` liveness probe to the sidecar's status
//! port (`/app-health/<container>/readyz|livez` on 15020), with the originals in the sidecar's
//! `ISTIO_KUBE_APP_PROBERS`; the pod becomes Ready through the rewritten probe, and a pod whose
//! app answers its probe with 503 gets the kubelet's "probe failed" event with that status (the
//! sidecar runs the real probe, it does not just answer 200). When the cluster knows
//! `PeerAuthentication`, the namespace is mTLS STRICT first, which the kubelet's probes (no mesh
//! certificate) must survive. Its `httpGet` `preStop` hook goes the same way, to
//! `/app-lifecycle/<container>/prestopz`, and the sidecar runs it against the app.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Event, Pod};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use rustmesh_e2e::sample::{self, App, HTTP_PORT, TCP_PORT};
use rustmesh_e2e::{Ctx, MANAGER, poll, setup};
use serde_json::json;

/// `testapp serve` with HTTP on 9080 (named `http`) and a TCP echo on 9000, probed by the
/// kubelet: readiness `httpGet <ready_path>` on the named port, liveness `tcpSocket` 9000.
fn probed(app: &str, ready_path: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "labels": {"app": app, "version": "v1"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app, "version": "v1"}},
            "template": {
                "metadata": {
                    "labels": {"app": app, "version": "v1"},
                    "annotations": {
                        "sidecar.istio.io/proxyCPU": "10m",
                        "sidecar.istio.io/proxyMemory": "32Mi",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": app,
                        "image": rustmesh_e2e::TESTAPP_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["serve", "--http", HTTP_PORT.to_string(), "--tcp-echo",
                                 TCP_PORT.to_string(), "--service", app, "--version", "v1"],
                        "ports": [
                            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                            {"name": "tcp", "containerPort": TCP_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": ready_path, "port": "http"},
                            "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 3,
                        },
                        "livenessProbe": {
                            "tcpSocket": {"port": TCP_PORT},
                            "initialDelaySeconds": 2, "periodSeconds": 5, "failureThreshold": 6,
                        },
                        "lifecycle": {"preStop": {"httpGet": {"path": ready_path, "port": "http"}}},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    }],
                },
            },
        },
    })
}

/// Makes the namespace mTLS STRICT when the cluster serves `security.istio.io/v1`
/// `PeerAuthentication`; says so either way.
async fn strict(ctx: &Ctx, ns: &str) -> bool {
    let gvk = GroupVersionKind::gvk("security.istio.io", "v1", "PeerAuthentication");
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &ApiResource::from_gvk(&gvk));
    let doc = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"mtls": {"mode": "STRICT"}},
    });
    match api
        .patch(
            "default",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(doc),
        )
        .await
    {
        Ok(_) => {
            ctx.log(format!("{ns}: PeerAuthentication default STRICT"));
            true
        }
        Err(e) => {
            ctx.log(format!(
                "{ns}: PeerAuthentication not served ({e}); the probes are checked without STRICT"
            ));
            false
        }
    }
}

fn app_container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[tokio::test]
async fn s9_probes_are_rewritten_to_the_sidecar_and_pass_under_strict() {
    let Some(ctx) = setup("s9_probes").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-probes", true).await.unwrap();
    let is_strict = strict(&ctx, &ns).await;

    // Ready through the rewritten probe (wait_ready: every container ready).
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::apply(MANAGER).force();
    deployments
        .patch("probed", &pp, &Patch::Apply(probed("probed", "/ready")))
        .await
        .unwrap();
    let app = App {
        service_ports: vec![],
        ..App::http("probed", "v1")
    };
    let pods = sample::wait_ready(&ctx, &ns, &app).await.unwrap();
    let pod = &pods[0];
    let c = app_container(pod, "probed");
    let ready = c.readiness_probe.as_ref().unwrap();
    let get = ready.http_get.as_ref().expect("rewritten to httpGet");
    assert_eq!(get.path.as_deref(), Some("/app-health/probed/readyz"));
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
    );
    assert_eq!(ready.period_seconds, Some(1), "timing kept");
    let live = c.liveness_probe.as_ref().unwrap();
    assert!(live.tcp_socket.is_none());
    assert_eq!(
        live.http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-health/probed/livez")
    );
    let sidecar = app_container(pod, "istio-proxy");
    let probers = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ISTIO_KUBE_APP_PROBERS")
        .and_then(|e| e.value.clone())
        .expect("the originals are given to the sidecar");
    let probers: serde_json::Value = serde_json::from_str(&probers).unwrap();
    assert_eq!(
        probers,
        json!({
            // As the API server hands the pod to the webhook: defaulted (`scheme: HTTP`,
            // `timeoutSeconds: 1`) before admission.
            "/app-health/probed/readyz": {"httpGet": {"path": "/ready", "port": HTTP_PORT, "scheme": "HTTP"}, "timeoutSeconds": 2},
            "/app-health/probed/livez": {"tcpSocket": {"port": TCP_PORT}, "timeoutSeconds": 1},
            // The hook, with the pod's grace period as its time-out.
            "/app-lifecycle/probed/prestopz": {"httpGet": {"path": "/ready", "port": HTTP_PORT, "scheme": "HTTP"}, "timeoutSeconds": 2},
        })
    );
    let hook = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.http_get.as_ref())
        .expect("the preStop hook stays an httpGet");
    assert_eq!(hook.path.as_deref(), Some("/app-lifecycle/probed/prestopz"));
    assert_eq!(
        hook.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
    );
    let name = pod.metadata.name.clone().unwrap();
    let answer = ctx
        .pod_port_get(&ns, &name, 15020, "/app-health/probed/readyz")
        .await;
    ctx.log(format!(
        "{ns}/{name} Ready (strict: {is_strict}); GET :15020/app-health/probed/readyz -> {answer:?}"
    ));
    // What the kubelet calls at deletion: the sidecar runs the app's hook.
    let (status, _) = ctx
        .pod_port_answer(&ns, &name, 15020, "/app-lifecycle/probed/prestopz")
        .await
        .unwrap();
    assert!(
        (200..300).contains(&status),
        "the app's /ready through the preStop hook: {status}"
    );

    // A failing app: the kubelet sees the app's own 503 through the sidecar.
    deployments
        .patch("sick", &pp, &Patch::Apply(probed("sick", "/status/503")))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    let failed = poll(
        "the kubelet's readiness probe of sick fails with the app's 503",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(list.items.into_iter().find_map(|e| {
                let msg = e.message.unwrap_or_default();
                let pod = e.involved_object.name.unwrap_or_default();
                (pod.starts_with("sick-")
                    && msg.contains("Readiness probe failed")
                    && msg.contains("503"))
                .then_some(msg)
            }))
        },
    )
    .await
    .unwrap();
    ctx.log(format!("sick: {failed}"));
    ctx.delete_namespace(&ns).await;
}
