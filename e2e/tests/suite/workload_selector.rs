//! Scenario 21 (issue #20): a ServiceEntry's `workloadSelector`, Istio's way to put pods behind
//! a host of the mesh's own (MESH_INTERNAL). A meshed pod `vm-api` (no Kubernetes Service) and
//! a ServiceEntry `api.vm.internal` (STATIC, port 80 HTTP with `targetPort: 9080`) selecting it
//! by `app: vm-api`; a meshed client sends `http://api.vm.internal/` (the name answered by its
//! sidecar's DNS proxy).
//!
//! Asserted: the client's sidecar lists the selected pod's address at the targetPort as the
//! endpoint of `outbound|80||api.vm.internal`, and only it (a pod of the same namespace with
//! other labels is not selected); the request reaches that pod through both sidecars with
//! mutual TLS (the app sees the client's SPIFFE id in `x-forwarded-client-cert`: the endpoint
//! carried the pod's `tlsMode` label); with the selected Deployment scaled to zero the endpoint
//! is gone, and scaled back, the new pod's address is the endpoint once it is ready.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use rustmesh_e2e::sample::{self, App, HTTP_PORT};
use rustmesh_e2e::{Ctx, poll, setup};
use std::time::Duration;

const HOST: &str = "api.vm.internal";
const CLUSTER: &str = "outbound|80||api.vm.internal";

fn service_entry() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: vm-api
spec:
  hosts: ["{HOST}"]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {HTTP_PORT}}}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels: {{app: vm-api}}
"#
    )
}

/// The addresses the client's sidecar lists for [`CLUSTER`] (`proxy-config endpoints`).
async fn endpoints(ctx: &Ctx, ns: &str, pod: &str) -> Result<Vec<String>, String> {
    let table = ctx
        .proxy_config(ns, pod, &["endpoints", "--cluster", CLUSTER])
        .await
        .map_err(|e| e.to_string())?;
    Ok(table
        .lines()
        .filter(|l| l.trim_end().ends_with(CLUSTER))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Waits until the client's sidecar lists exactly `want` for [`CLUSTER`].
async fn wait_endpoints(ctx: &Ctx, ns: &str, pod: &str, want: Vec<String>) {
    poll(
        &format!("{CLUSTER} lists {want:?}"),
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let got = endpoints(ctx, ns, pod).await?;
            if got == want {
                Ok(Some(()))
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
    .unwrap();
}

async fn scale(ctx: &Ctx, ns: &str, app: &App, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    deployments
        .patch(
            &app.deployment_name(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// The report of the first request `client` (pod `pod`) gets served for `http://HOST/`.
async fn served(ctx: &Ctx, ns: &str, pod: &str, client: &App, what: &str) -> serde_json::Value {
    let url = format!("http://{HOST}/selected");
    poll(
        what,
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            ctx.testapp_report(ns, pod, &client.app, &["testapp", "get", "--body", &url])
                .await
                .map(Some)
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn s21_a_service_entry_workload_selector_makes_the_selected_pods_its_endpoints() {
    let Some(ctx) = setup("s21_workload_selector").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-se-selector", true).await.unwrap();
    let mut api = App::http("vm-api", "v1");
    api.service_ports = vec![];
    let mut other = App::http("vm-other", "v1");
    other.service_ports = vec![];
    let client = sample::productpage();
    sample::deploy(&ctx, &ns, &[api.clone(), other.clone(), client.clone()])
        .await
        .unwrap();
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let api_pod = ctx.pod_name(&ns, &api.selector()).await.unwrap();
    let api_ip = sample::pod_ip(&ctx, &ns, &api.selector()).await.unwrap();
    let other_ip = sample::pod_ip(&ctx, &ns, &other.selector()).await.unwrap();
    ctx.log(format!(
        "client {pod}, selected {api_pod} ({api_ip}), not selected {other_ip}"
    ));

    ctx.apply_istio(&ns, &service_entry()).await.unwrap();
    wait_endpoints(&ctx, &ns, &pod, vec![format!("{api_ip}:{HTTP_PORT}")]).await;

    let report = served(
        &ctx,
        &ns,
        &pod,
        &client,
        "the ServiceEntry host reaches the selected pod",
    )
    .await;
    assert_eq!(report["service"], "vm-api", "{report}");
    assert_eq!(report["pod"], api_pod.as_str(), "{report}");
    assert_eq!(report["headers"]["host"], HOST, "{report}");
    let xfcc = report["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains(&format!("URI=spiffe://cluster.local/ns/{ns}/sa/default")),
        "mutual TLS from the client's sidecar (the endpoint's tlsMode): {report}"
    );

    // The selected pods go away: so does the endpoint. Back: the new pod's address.
    scale(&ctx, &ns, &api, 0).await;
    wait_endpoints(&ctx, &ns, &pod, vec![]).await;
    scale(&ctx, &ns, &api, 1).await;
    sample::wait_ready(&ctx, &ns, &api).await.unwrap();
    let new_ip = sample::pod_ip(&ctx, &ns, &api.selector()).await.unwrap();
    wait_endpoints(&ctx, &ns, &pod, vec![format!("{new_ip}:{HTTP_PORT}")]).await;
    let again = served(&ctx, &ns, &pod, &client, "the new pod serves the host").await;
    assert_eq!(again["service"], "vm-api", "{again}");
    assert_ne!(again["pod"], api_pod.as_str(), "{again}");

    ctx.delete_istio(&ns).await.unwrap();
    ctx.delete_namespace(&ns).await;
}
