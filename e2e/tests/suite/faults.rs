//! Scenario 7: faults. The webhook down with failurePolicy Ignore (pods start uninjected) and
//! Fail (creation refused with the API server's message); the operator restarted during steady
//! traffic (no failed request); a bad VirtualService (its status says why, and the routes in
//! force keep serving).

use crate::with_restore;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rustmesh_api::VirtualService;
use rustmesh_api::status::Condition;
use rustmesh_e2e::sample::{self, HTTP_PORT};
use rustmesh_e2e::{Ctx, MESH_NAMESPACE, Summary, TESTAPP_IMAGE, poll, setup};
use std::time::{Duration, Instant};

const WEBHOOK_CONFIG: &str = "rustmesh-sidecar-injector";

async fn failure_policy(ctx: &Ctx, policy: &str) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    let cfg = api.get(WEBHOOK_CONFIG).await.unwrap();
    let ops: Vec<_> = (0..cfg.webhooks.unwrap_or_default().len())
        .map(|i| serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/failurePolicy"), "value": policy}))
        .collect();
    let patch: kube::api::Patch<()> =
        Patch::Json(serde_json::from_value(serde_json::Value::Array(ops)).unwrap());
    api.patch(WEBHOOK_CONFIG, &PatchParams::default(), &patch)
        .await
        .unwrap();
}

async fn webhook_replicas(ctx: &Ctx, n: i32) {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), MESH_NAMESPACE);
    api.patch(
        "rustmesh-webhook",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": n}})),
    )
    .await
    .unwrap();
}

fn bare_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": name, "image": TESTAPP_IMAGE, "imagePullPolicy": "IfNotPresent",
                "args": ["serve", "--http", "9080"],
            }],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn s7_webhook_down_failure_policy_ignore_and_fail() {
    let Some(ctx) = setup("s7_webhook_down").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-webhook-down", true).await.unwrap();
    let pods = ctx.pods(&ns);
    with_restore(
        async {
            webhook_replicas(&ctx, 0).await;
            ctx.wait_no_pods(MESH_NAMESPACE, "app.kubernetes.io/name=rustmesh-webhook", Duration::from_secs(60))
                .await
                .unwrap();
            ctx.log("webhook scaled to 0");

            // The API server reads webhook configurations from a watch: a change takes a
            // moment to apply, so each step retries until the new policy answers.
            failure_policy(&ctx, "Ignore").await;
            poll("a pod created under Ignore", Duration::from_secs(60), Duration::from_millis(500), || async {
                match pods.create(&PostParams::default(), &bare_pod("ignored")).await {
                    Ok(_) => Ok(Some(())),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .unwrap();
            let pod = poll("pod ignored Running", Duration::from_secs(120), Duration::from_millis(500), || async {
                let p = pods.get("ignored").await.map_err(|e| e.to_string())?;
                if sample::pod_ready(&p) { Ok(Some(p)) } else { Err(sample::describe(&p)) }
            })
            .await
            .unwrap();
            let (init, containers) = sample::container_names(&pod);
            ctx.log(format!("failurePolicy Ignore, webhook down: pod started with init {init:?}, containers {containers:?}"));
            assert!(init.is_empty() && containers == ["ignored"], "uninjected: {init:?} {containers:?}");

            failure_policy(&ctx, "Fail").await;
            let err = poll("pod creation refused under Fail", Duration::from_secs(60), Duration::from_millis(500), || async {
                match pods.create(&PostParams::default(), &bare_pod("refused")).await {
                    Err(e) if e.to_string().contains("failed calling webhook") => Ok(Some(e)),
                    Err(e) => Err(e.to_string()),
                    Ok(_) => {
                        // Still the old policy: undo and try again.
                        let _ = pods.delete("refused", &DeleteParams::default().grace_period(0)).await;
                        let _ = ctx.wait_no_pods(&ns, "app=refused", Duration::from_secs(30)).await;
                        Err("created (the API server still had Ignore)".into())
                    }
                }
            })
            .await
            .expect("with failurePolicy Fail and no webhook the pod must be refused");
            let text = match &err {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            ctx.log(format!("failurePolicy Fail, webhook down: refused: {text}"));
            assert!(
                text.contains("failed calling webhook") && text.contains("sidecar-injector.rustmesh.io"),
                "the refusal names the webhook: {text}"
            );
            // Not created: the name is free (a pod from a try under the old policy is gone or going).
            let refused = pods.get_opt("refused").await.unwrap();
            assert!(
                refused.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
                "no pod was created by the refused request"
            );
        },
        async {
            failure_policy(&ctx, "Fail").await;
            webhook_replicas(&ctx, 1).await;
            ctx.wait_mesh_ready(Duration::from_secs(180)).await.unwrap();
        },
    )
    .await;
    // Up again: injection works at once.
    let pod = poll(
        "a pod injected after the webhook is back",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || async {
            let _ = pods.delete("again", &DeleteParams::default()).await;
            let p = pods
                .create(&PostParams::default(), &bare_pod("again"))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(p))
        },
    )
    .await
    .unwrap();
    let (init, _) = sample::container_names(&pod);
    assert_eq!(
        init,
        ["istio-init"],
        "injected again once the webhook is back"
    );
    ctx.delete_namespace(&ns).await;
}

/// Deletes the operator's pod(s) and waits until a new one is ready.
async fn restart_operator(ctx: &Ctx) {
    let operator_pods = ctx.pods(MESH_NAMESPACE);
    let selector = "app.kubernetes.io/name=rustmesh-operator";
    let old: Vec<String> = operator_pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(!old.is_empty(), "an operator pod runs");
    for name in &old {
        operator_pods
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    ctx.log(format!("deleted operator pod(s) {old:?}"));
    poll(
        "a new operator pod ready",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let pods = ctx
                .pods_with(MESH_NAMESPACE, selector)
                .await
                .map_err(|e| e.to_string())?;
            let new_ready = pods
                .iter()
                .any(|p| !old.contains(p.metadata.name.as_ref().unwrap()) && sample::pod_ready(p));
            if new_ready {
                Ok(Some(()))
            } else {
                Err("waiting".into())
            }
        },
    )
    .await
    .unwrap();
    ctx.log("new operator pod ready");
}

#[tokio::test]
async fn s7_operator_restart_under_steady_traffic_fails_no_request() {
    let Some(ctx) = setup("s7_operator_restart").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-steady", true).await.unwrap();
    let client = sample::productpage();
    sample::deploy(&ctx, &ns, &[client.clone(), sample::reviews("v1")])
        .await
        .unwrap();
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let url = format!(
        "http://{}:{HTTP_PORT}/",
        ctx.cluster_ip(&ns, "reviews").await.unwrap()
    );
    ctx.wait_endpoints(&ns, &pod, "reviews", &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    let restarted = std::cell::Cell::new(false);
    let traffic = async {
        let mut total = Summary::default();
        let start = Instant::now();
        // Batches until the operator is back (and at least 3), so traffic spans the restart.
        let mut batches = 0;
        while batches < 3 || !restarted.get() {
            let s = ctx
                .http_load(&ns, &pod, "productpage", &url, 300, 2, &[])
                .await
                .unwrap();
            total.requests += s.requests;
            total.errors += s.errors;
            for (k, v) in s.statuses {
                *total.statuses.entry(k).or_default() += v;
            }
            batches += 1;
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "operator never came back"
            );
        }
        total
    };
    let restart = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        restart_operator(&ctx).await;
        restarted.set(true);
    };
    let (total, ()) = tokio::join!(traffic, restart);
    ctx.log(format!(
        "during the restart: {} requests, statuses {:?}, errors {}",
        total.requests, total.statuses, total.errors
    ));
    assert_eq!(
        total.failed(),
        0,
        "no request failed while the operator restarted: {total:?}"
    );
    ctx.delete_namespace(&ns).await;
}

const ALL_TO_V1: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"#;

/// A VirtualService named `bad_name` with weights adding up to 110 arrives while `reviews`
/// routes everything to v1: its status must say why, and every request must still go to v1.
async fn bad_virtual_service(test: &str, ns: &str, bad_name: &str) {
    let Some(ctx) = setup(test).await else {
        return;
    };
    let ns = ctx.fresh_namespace(ns, true).await.unwrap();
    let client = sample::productpage();
    sample::deploy(
        &ctx,
        &ns,
        &[client.clone(), sample::reviews("v1"), sample::reviews("v2")],
    )
    .await
    .unwrap();
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let url = format!(
        "http://{}:{HTTP_PORT}/",
        ctx.cluster_ip(&ns, "reviews").await.unwrap()
    );

    // Both versions in the client's sidecar first: otherwise "all to v1" can pass because v2
    // is not known yet, before the operator ever accepted the rule.
    ctx.wait_endpoints(&ns, &pod, "reviews", &ns, HTTP_PORT, 2)
        .await
        .unwrap();
    ctx.apply_istio(&ns, ALL_TO_V1).await.unwrap();
    poll(
        "all requests to v1",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async {
            let s = ctx
                .http_load(&ns, &pod, "productpage", &url, 40, 4, &[])
                .await
                .map_err(|e| e.to_string())?;
            if s.backend("reviews/v1") == 40 {
                Ok(Some(()))
            } else {
                Err(format!("{:?}", s.backends))
            }
        },
    )
    .await
    .unwrap();
    // And the operator's verdict on this version: what it accepted is what a refused update
    // falls back to (an update within one debounce window of it would find nothing to keep).
    let good = accepted_condition(&ctx, &ns, "reviews").await;
    assert_eq!(good.status, "True", "the rule to fall back to: {good:?}");

    // Weights adding up to 110: the schema cannot say, the validating webhook (istiod's
    // validation) refuses it at apply, naming the field.
    let bad = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": bad_name, "namespace": ns},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 60},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50},
        ]}]},
    });
    let refused = ctx
        .apply_raw_virtual_service(&ns, bad_name, &bad)
        .await
        .expect_err("the validating webhook refuses weights adding up to 110")
        .to_string();
    ctx.log(format!("kubectl apply of {bad_name}: {refused}"));
    assert!(
        refused.contains("validation.rustmesh.io") && refused.contains("weight"),
        "{refused}"
    );

    // Past the validator (it was down with failurePolicy Ignore, or the object predates it),
    // the operator refuses it and says why in the status.
    with_restore(
        operator_refuses_and_keeps_serving(&ctx, &ns, bad_name, &bad, &pod, &url),
        validate_namespace_again(&ctx, &ns),
    )
    .await;
    ctx.delete_namespace(&ns).await;
}

/// The VirtualService's `Accepted` condition, once its status is for the object's current
/// generation (the operator's verdict on this version).
async fn accepted_condition(ctx: &Ctx, ns: &str, name: &str) -> Condition {
    let api: Api<VirtualService> = Api::namespaced(ctx.client.clone(), ns);
    poll(
        &format!("status of {name} for its current generation"),
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let vs = api.get(name).await.map_err(|e| e.to_string())?;
            let status = vs.status.unwrap_or_default();
            if status.observed_generation < vs.metadata.generation {
                return Err(format!(
                    "status is for generation {:?}, the object is at {:?}",
                    status.observed_generation, vs.metadata.generation
                ));
            }
            let cond = status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Accepted");
            match cond {
                Some(c) => Ok(Some(c)),
                None => Err("no Accepted condition yet".into()),
            }
        },
    )
    .await
    .unwrap()
}

/// Label on a test namespace the validator is told to skip (see [`skip_validation`]).
const UNVALIDATED: &str = "rustmesh-e2e-unvalidated";
const VALIDATOR: &str = "rustmesh-validator";

/// Makes the validating webhook skip `ns` (a namespaceSelector on a label of it), so an object
/// it would refuse reaches the operator, as when the validator is down with `failurePolicy:
/// Ignore` or the object predates it.
async fn skip_validation(ctx: &Ctx, ns: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {UNVALIDATED: "true"}}})),
        )
        .await
        .unwrap();
    set_validator_selector(
        ctx,
        serde_json::json!({"matchExpressions": [{"key": UNVALIDATED, "operator": "DoesNotExist"}]}),
    )
    .await
    .unwrap();
    ctx.log(format!("{VALIDATOR} skips namespace {ns}"));
}

/// Undoes [`skip_validation`]: the validator sees every namespace again.
async fn validate_namespace_again(ctx: &Ctx, _ns: &str) {
    // An empty list of expressions: every namespace, as installed.
    if let Err(e) = set_validator_selector(ctx, serde_json::json!({"matchExpressions": []})).await {
        ctx.log(format!("restoring {VALIDATOR}'s namespaceSelector: {e}"));
    }
}

/// Sets the validator's `namespaceSelector` (a strategic merge: its webhooks merge by name).
async fn set_validator_selector(ctx: &Ctx, selector: serde_json::Value) -> kube::Result<()> {
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"webhooks": [
        {"name": "validation.rustmesh.io", "namespaceSelector": selector},
    ]});
    configs
        .patch(VALIDATOR, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
}

async fn operator_refuses_and_keeps_serving(
    ctx: &Ctx,
    ns: &str,
    bad_name: &str,
    bad: &serde_json::Value,
    pod: &str,
    url: &str,
) {
    skip_validation(ctx, ns).await;
    // The validator's namespaceSelector takes effect as the API server reloads it.
    poll(
        &format!("{bad_name} past the validator"),
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            ctx.apply_raw_virtual_service(ns, bad_name, bad)
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap();
    let condition = accepted_condition(ctx, ns, bad_name).await;
    ctx.log(format!(
        "{bad_name} Accepted={} reason={:?} message={:?}",
        condition.status, condition.reason, condition.message
    ));
    assert_eq!(condition.status, "False", "{condition:?}");
    let message = condition.message.clone().unwrap_or_default();
    assert!(
        message.contains("weight"),
        "the message names the weights: {message}"
    );

    // The good routes keep serving (checked twice, a few seconds apart, past the operator's
    // debounce and a config poll).
    for _ in 0..2 {
        let s = ctx
            .http_load(ns, pod, "productpage", url, 100, 4, &[])
            .await
            .unwrap();
        assert_eq!(
            s.backend("reviews/v1"),
            100,
            "routes in force keep serving: {s:?}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    if bad_name == "reviews" {
        // An update refused: the status carries the version still served, and an operator
        // restart (which remembers nothing) serves it again instead of dropping the object.
        let api: Api<VirtualService> = Api::namespaced(ctx.client.clone(), ns);
        let vs = api.get(bad_name).await.unwrap();
        let last = vs
            .status
            .and_then(|s| s.last_accepted)
            .expect("status.lastAccepted of a refused update");
        ctx.log(format!(
            "{bad_name} status.lastAccepted: generation {} (current {:?})",
            last.generation, vs.metadata.generation
        ));
        assert!(Some(last.generation) < vs.metadata.generation);
        restart_operator(ctx).await;
        // Past the new operator's first render and a config poll: still all to v1.
        tokio::time::sleep(Duration::from_secs(5)).await;
        for _ in 0..2 {
            let s = ctx
                .http_load(ns, pod, "productpage", url, 100, 4, &[])
                .await
                .unwrap();
            assert_eq!(
                s.backend("reviews/v1"),
                100,
                "after the operator restart the last accepted routes serve: {s:?}"
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

#[tokio::test]
async fn s7_bad_virtual_service_reports_why_and_routes_keep_serving() {
    bad_virtual_service("s7_bad_vs", "e2e-badvs", "reviews-bad").await;
}

/// The same, but the bad version replaces the good VirtualService itself (a typo in an update).
/// Issue #7: "traffic keeps the previous routes": the operator renders the last accepted version
/// of an object whose update is invalid (operator/README.md, "Status conditions").
#[tokio::test]
async fn s7_bad_update_of_a_virtual_service_keeps_the_previous_routes() {
    bad_virtual_service("s7_bad_update", "e2e-badupdate", "reviews").await;
}

/// A namespace deleted and created again under the same name (a redeploy, a test run) must get
/// the reader Role/RoleBinding again: without them its sidecars cannot follow their ConfigMap
/// through the API and fall back to the kubelet's mounted copy (up to a minute behind).
/// (The operator once remembered per name that it had applied them; it now applies them again
/// when the namespace's ConfigMap goes away.)
#[tokio::test]
async fn s7_recreated_namespace_gets_its_config_reader_role_again() {
    let Some(ctx) = setup("s7_recreated_ns").await else {
        return;
    };
    let name = "e2e-recreated";
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(ctx.client.clone(), name);
    let role_present = |what: &'static str| {
        let roles = roles.clone();
        async move {
            poll(
                what,
                Duration::from_secs(60),
                Duration::from_millis(500),
                || async {
                    match roles.get_opt("rustmesh-proxy-config-reader").await {
                        Ok(Some(_)) => Ok(Some(())),
                        Ok(None) => Err("no Role rustmesh-proxy-config-reader".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                },
            )
            .await
        }
    };
    let client = sample::productpage();
    for round in ["first", "second"] {
        // fresh_namespace deletes the namespace left by the round before and waits until it is gone.
        let ns = ctx.fresh_namespace(name, true).await.unwrap();
        sample::deploy(&ctx, &ns, std::slice::from_ref(&client))
            .await
            .unwrap();
        let result = role_present("the reader Role in the namespace").await;
        ctx.log(format!(
            "{round} {ns}: reader Role {}",
            if result.is_ok() { "present" } else { "missing" }
        ));
        result.unwrap_or_else(|e| panic!("{round} incarnation of {ns}: {e}"));
    }
    ctx.delete_namespace(name).await;
}
