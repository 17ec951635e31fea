//! Scenario 12: pods deleted under traffic, as Istio drains a sidecar (issue #17 item 4).
//!
//! * A client whose app makes one last call through its sidecar after SIGTERM (testapp's
//!   `--on-sigterm-get`, a second after the signal): the sidecar, still draining for the pod's
//!   `proxy.istio.io/config` `terminationDrainDuration`, carries it, and the server's sidecar
//!   records it. (A sidecar that stopped accepting at SIGTERM refused it.)
//! * A server replica deleted while a client sends a steady stream of requests: no request fails.

use std::time::Duration;

use kube::api::DeleteParams;
use rustmesh_e2e::sample::{self, App, HTTP_PORT};
use rustmesh_e2e::{poll, setup};

const REQUESTS: &str = "istio_requests_total";

/// `istio_requests_total{reporter="destination",response_code="200"}` summed over the pods.
async fn served(ctx: &rustmesh_e2e::Ctx, ns: &str, pods: &[String]) -> f64 {
    let mut total = 0.0;
    for pod in pods {
        total += ctx
            .sidecar_metric(
                ns,
                pod,
                REQUESTS,
                &["reporter=\"destination\"", "response_code=\"200\""],
            )
            .await
            .unwrap();
    }
    total
}

#[tokio::test]
async fn s12_pods_deleted_under_traffic_drain_as_istio() {
    let Some(ctx) = setup("s12_drain").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-drain", true).await.unwrap();
    let server = App {
        replicas: 2,
        grace_seconds: 10,
        ..sample::details()
    };
    let client = sample::productpage();
    sample::deploy(&ctx, &ns, &[server.clone(), client.clone()])
        .await
        .unwrap();
    let ip = ctx.cluster_ip(&ns, "details").await.unwrap();
    let leaver = App {
        service_ports: vec![],
        grace_seconds: 20,
        annotations: [(
            "proxy.istio.io/config".to_owned(),
            r#"{"terminationDrainDuration": "8s"}"#.to_owned(),
        )]
        .into(),
        extra_args: vec![
            "--on-sigterm-get".into(),
            format!("http://{ip}:{HTTP_PORT}/last-call"),
            "--on-sigterm-delay-ms".into(),
            "1000".into(),
        ],
        ..App::http("leaver", "v1")
    };
    sample::deploy(&ctx, &ns, std::slice::from_ref(&leaver))
        .await
        .unwrap();
    let servers: Vec<String> = ctx
        .pods_with(&ns, &server.selector())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let leaver_pod = ctx.pod_name(&ns, &leaver.selector()).await.unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();

    // The webhook passed the pod's drain duration to its sidecar.
    let pod = ctx.pods(&ns).get(&leaver_pod).await.unwrap();
    let sidecar = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == "istio-proxy")
        .expect("injected");
    let args = sidecar.args.clone().unwrap_or_default();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--termination-drain-duration" && w[1] == "8s"),
        "istio-proxy args {args:?}"
    );

    // 1. The leaving app's last call goes through its draining sidecar.
    ctx.wait_endpoints(&ns, &leaver_pod, "details", &ns, HTTP_PORT, 2)
        .await
        .unwrap();
    let before = served(&ctx, &ns, &servers).await;
    ctx.pods(&ns)
        .delete(&leaver_pod, &DeleteParams::default())
        .await
        .unwrap();
    let (ctx_ref, ns_ref, servers_ref) = (&ctx, &ns, &servers);
    let after = poll(
        "the leaving app's last call at details",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async move {
            let now = served(ctx_ref, ns_ref, servers_ref).await;
            if now > before {
                Ok(Some(now))
            } else {
                Err(format!(
                    "details served {now} requests, {before} before the delete"
                ))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "{leaver_pod} deleted; its app's call 1 s after SIGTERM reached details ({before} -> {after} answers)"
    ));

    // 2. A server replica deleted under a steady stream of requests: none fails.
    ctx.wait_endpoints(&ns, &client_pod, "details", &ns, HTTP_PORT, 2)
        .await
        .unwrap();
    let url = format!("http://{ip}:{HTTP_PORT}/delay/20");
    let load = ctx.http_load(&ns, &client_pod, &client.app, &url, 400, 4, &[]);
    let delete = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        ctx.pods(&ns)
            .delete(&servers[0], &DeleteParams::default())
            .await
            .unwrap();
    };
    let (summary, ()) = tokio::join!(load, delete);
    let summary = summary.unwrap();
    ctx.log(format!(
        "400 requests while {} was deleted: {} answered 200, {} failed",
        servers[0],
        summary.status(200),
        summary.failed()
    ));
    assert_eq!(summary.failed(), 0, "{summary:?}");
    assert_eq!(summary.status(200), 400, "{summary:?}");
    ctx.delete_namespace(&ns).await;
}

/// Issue #18: Istio's documented pattern for Jobs with a classic sidecar: the job's last step
/// is `POST localhost:15020/quitquitquit`, so the sidecar exits and the Job completes. The app
/// container's step fails if the status port does not answer it.
#[tokio::test]
async fn s12_a_job_that_calls_quitquitquit_completes() {
    use k8s_openapi::api::batch::v1::Job;
    use kube::api::{Api, Patch, PatchParams};
    let Some(ctx) = setup("s12_job").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-job", true).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "batch", "namespace": ns},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": {"app": "batch"},
                    "annotations": {
                        "sidecar.istio.io/proxyCPU": "10m",
                        "sidecar.istio.io/proxyMemory": "32Mi",
                        // The app waits for the sidecar, so its POST finds 15020 listening.
                        "proxy.istio.io/config":
                            "{\"holdApplicationUntilProxyStarts\": true, \"terminationDrainDuration\": \"1s\"}",
                    },
                },
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "batch",
                        "image": rustmesh_e2e::TESTAPP_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["post", "http://127.0.0.1:15020/quitquitquit"],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    }],
                },
            },
        },
    });
    jobs.patch(
        "batch",
        &PatchParams::apply(rustmesh_e2e::MANAGER).force(),
        &Patch::Apply(job),
    )
    .await
    .unwrap();
    let outcome = rustmesh_e2e::poll(
        "the Job to finish",
        std::time::Duration::from_secs(120),
        std::time::Duration::from_millis(500),
        || async {
            let j = jobs.get("batch").await.map_err(|e| e.to_string())?;
            let status = j.status.unwrap_or_default();
            Ok(
                match (status.succeeded.unwrap_or(0), status.failed.unwrap_or(0)) {
                    (0, 0) => None,
                    (s, f) => Some((s, f)),
                },
            )
        },
    )
    .await;
    if outcome.is_err() {
        ctx.dump_events(&ns).await;
    }
    let (succeeded, failed) = outcome.unwrap();
    ctx.log(format!("Job batch: succeeded {succeeded}, failed {failed}"));
    assert_eq!((succeeded, failed), (1, 0), "the Job completed");
    ctx.delete_namespace(&ns).await;
}
