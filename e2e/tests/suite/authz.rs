//! Scenario 13 (issue #19, authorization): Istio's documented task flows for
//! `AuthorizationPolicy` on real sidecars with their mesh identities.
//!
//! HTTP (Istio's "HTTP Traffic" and "Explicit Deny" tasks): with no policy every client is
//! served; `allow-nothing` (`spec: {}`) makes the namespace's workloads answer 403
//! `RBAC: access denied`; an ALLOW policy for the server lets one service account GET and not
//! the other; a DENY policy on a header wins over that ALLOW; deleting the policies serves
//! everyone again. TCP (Istio's "TCP Traffic" task): an ALLOW policy on port 9000 for one
//! principal closes the other's connections, and a DENY policy with an HTTP-only field
//! (`methods`) denies all TCP traffic on its port (the HTTP-only field is ignored, so the rule
//! denies more, never less).

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use rustmesh_e2e::sample::{self, HTTP_PORT, TCP_PORT};
use rustmesh_e2e::{Ctx, poll, setup};
use serde_json::{Value, json};

fn policies(ctx: &Ctx, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "security.istio.io".into(),
        version: "v1".into(),
        api_version: "security.istio.io/v1".into(),
        kind: "AuthorizationPolicy".into(),
        plural: "authorizationpolicies".into(),
    };
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

async fn apply_policy(ctx: &Ctx, ns: &str, name: &str, spec: Value) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    policies(ctx, ns)
        .patch(
            name,
            &PatchParams::apply("rustmesh-e2e").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
}

async fn delete_policy(ctx: &Ctx, ns: &str, name: &str) {
    policies(ctx, ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// One GET from `pod`: `Ok(status)` for an answer (the body when denied must be Envoy's).
async fn status(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    url: &str,
    headers: &[&str],
) -> Result<u16, String> {
    match ctx.http_get(ns, pod, container, url, headers).await {
        Ok(_) => Ok(200),
        Err(e) => {
            let text = e.to_string();
            if text.contains("status 403") {
                assert!(
                    text.contains("RBAC: access denied"),
                    "a 403 from the sidecar says why, as Envoy's: {text}"
                );
                Ok(403)
            } else {
                Err(text)
            }
        }
    }
}

/// Waits until every (client, headers) case answers as `want` says (policies reach the
/// sidecars through the operator's ConfigMap: a few seconds).
async fn expect(ctx: &Ctx, ns: &str, what: &str, url: &str, cases: &[(&str, &str, &[&str], u16)]) {
    let start = std::time::Instant::now();
    poll(
        what,
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let mut wrong = Vec::new();
            for (pod, container, headers, want) in cases {
                let got = status(ctx, ns, pod, container, url, headers).await;
                if got != Ok(*want) {
                    wrong.push(format!("{pod} {headers:?}: {got:?}, want {want}"));
                }
            }
            if wrong.is_empty() {
                Ok(Some(()))
            } else {
                Err(wrong.join("; "))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "{what}: in force after {:.1} s",
        start.elapsed().as_secs_f64()
    ));
}

fn client(app: &str, account: &str) -> sample::App {
    sample::App {
        service_account: Some(account.into()),
        ..sample::App::http(app, "v1")
    }
}

#[tokio::test]
async fn s13_http_authorization_follows_istios_tasks() {
    let Some(ctx) = setup("s13_authz_http").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-authz", true).await.unwrap();
    let (a, b, server) = (
        client("curl-a", "curl-a"),
        client("curl-b", "curl-b"),
        sample::ratings(),
    );
    sample::deploy(&ctx, &ns, &[a.clone(), b.clone(), server.clone()])
        .await
        .unwrap();
    let pod_a = ctx.pod_name(&ns, &a.selector()).await.unwrap();
    let pod_b = ctx.pod_name(&ns, &b.selector()).await.unwrap();
    ctx.wait_endpoints(&ns, &pod_a, "ratings", &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    ctx.wait_endpoints(&ns, &pod_b, "ratings", &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    let ip = ctx.cluster_ip(&ns, "ratings").await.unwrap();
    let url = format!("http://{ip}:{HTTP_PORT}/ratings");
    let (ca, cb) = (a.app.as_str(), b.app.as_str());
    let none: &[&str] = &[];

    expect(
        &ctx,
        &ns,
        "no policy: both clients served",
        &url,
        &[(&pod_a, ca, none, 200), (&pod_b, cb, none, 200)],
    )
    .await;

    // Istio's allow-nothing: an ALLOW policy without rules denies every request.
    apply_policy(&ctx, &ns, "allow-nothing", json!({})).await;
    expect(
        &ctx,
        &ns,
        "allow-nothing: both clients denied",
        &url,
        &[(&pod_a, ca, none, 403), (&pod_b, cb, none, 403)],
    )
    .await;

    // ALLOW GET on ratings from curl-a's identity: curl-a served, curl-b still denied.
    let principal_a = format!("cluster.local/ns/{ns}/sa/curl-a");
    apply_policy(
        &ctx,
        &ns,
        "ratings-viewer",
        json!({
            "selector": {"matchLabels": {"app": "ratings"}},
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": [principal_a]}}],
                "to": [{"operation": {"methods": ["GET"], "paths": ["/ratings*"]}}],
            }],
        }),
    )
    .await;
    expect(
        &ctx,
        &ns,
        "ALLOW by principal",
        &url,
        &[(&pod_a, ca, none, 200), (&pod_b, cb, none, 403)],
    )
    .await;
    // What the server's sidecar applies, as `istioctl x authz check` shows it: the workload's
    // ALLOW policy (allow-nothing adds no rule beside it, so istioctl does not list it).
    let server_pod = ctx.pod_name(&ns, &server.selector()).await.unwrap();
    let table = ctx.authz_check(&ns, &server_pod).await.unwrap();
    eprintln!("$ rustmeshctl x authz check {server_pod} -n {ns}\n{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let viewer = format!("ratings-viewer.{ns}");
    assert_eq!(rows, vec![vec!["ALLOW", viewer.as_str(), "1"]], "{table}");
    // A path the rule does not allow is denied for curl-a too.
    let other_path = format!("http://{ip}:{HTTP_PORT}/other");
    assert_eq!(
        status(&ctx, &ns, &pod_a, ca, &other_path, none).await,
        Ok(403)
    );

    // Explicit deny wins over the allow: a request with `x-token: guest` is denied.
    apply_policy(
        &ctx,
        &ns,
        "deny-guest",
        json!({
            "selector": {"matchLabels": {"app": "ratings"}},
            "action": "DENY",
            "rules": [{"when": [{"key": "request.headers[x-token]", "values": ["guest"]}]}],
        }),
    )
    .await;
    expect(
        &ctx,
        &ns,
        "DENY on a header over ALLOW",
        &url,
        &[
            (&pod_a, ca, &["x-token: guest"], 403),
            (&pod_a, ca, &["x-token: admin"], 200),
        ],
    )
    .await;

    for name in ["deny-guest", "ratings-viewer", "allow-nothing"] {
        delete_policy(&ctx, &ns, name).await;
    }
    expect(
        &ctx,
        &ns,
        "policies deleted: both clients served",
        &url,
        &[(&pod_a, ca, none, 200), (&pod_b, cb, none, 200)],
    )
    .await;
    ctx.delete_namespace(&ns).await;
}

/// `Ok(true)`: the echo came back; `Ok(false)`: the connection was closed without it.
async fn echoed(ctx: &Ctx, ns: &str, pod: &str, container: &str, addr: &str) -> bool {
    match ctx
        .tcp_send(ns, pod, container, addr, "hello")
        .await
        .unwrap()
    {
        Ok(answer) => answer == "hello",
        Err(_) => false,
    }
}

#[tokio::test]
async fn s13_tcp_authorization_follows_istios_task() {
    let Some(ctx) = setup("s13_authz_tcp").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-authz-tcp", true).await.unwrap();
    let (a, b, echo) = (
        client("curl-a", "curl-a"),
        client("curl-b", "curl-b"),
        sample::tcp_echo(),
    );
    sample::deploy(&ctx, &ns, &[a.clone(), b.clone(), echo.clone()])
        .await
        .unwrap();
    let pod_a = ctx.pod_name(&ns, &a.selector()).await.unwrap();
    let pod_b = ctx.pod_name(&ns, &b.selector()).await.unwrap();
    for pod in [&pod_a, &pod_b] {
        ctx.wait_endpoints(&ns, pod, "tcp-echo", &ns, TCP_PORT, 1)
            .await
            .unwrap();
    }
    let ip = ctx.cluster_ip(&ns, "tcp-echo").await.unwrap();
    let addr = format!("{ip}:{TCP_PORT}");
    let (ca, cb) = (a.app.as_str(), b.app.as_str());

    let wait = |what: &'static str, want_a: bool, want_b: bool| {
        let (ctx, ns, addr, pod_a, pod_b) = (&ctx, &ns, &addr, &pod_a, &pod_b);
        async move {
            let start = std::time::Instant::now();
            poll(
                what,
                Duration::from_secs(90),
                Duration::from_millis(500),
                || async {
                    let got = (
                        echoed(ctx, ns, pod_a, ca, addr).await,
                        echoed(ctx, ns, pod_b, cb, addr).await,
                    );
                    if got == (want_a, want_b) {
                        Ok(Some(()))
                    } else {
                        Err(format!("(curl-a, curl-b) echoed {got:?}"))
                    }
                },
            )
            .await
            .unwrap();
            ctx.log(format!(
                "{what}: in force after {:.1} s",
                start.elapsed().as_secs_f64()
            ));
        }
    };
    wait("no policy: both echo", true, true).await;

    let principal_a = format!("cluster.local/ns/{ns}/sa/curl-a");
    apply_policy(
        &ctx,
        &ns,
        "tcp-policy",
        json!({
            "selector": {"matchLabels": {"app": "tcp-echo"}},
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": [principal_a]}}],
                "to": [{"operation": {"ports": [TCP_PORT.to_string()]}}],
            }],
        }),
    )
    .await;
    wait("ALLOW port 9000 for curl-a only", true, false).await;

    // Istio's task: a DENY policy with an HTTP-only field denies all TCP on its port.
    apply_policy(
        &ctx,
        &ns,
        "deny-get",
        json!({
            "selector": {"matchLabels": {"app": "tcp-echo"}},
            "action": "DENY",
            "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": [TCP_PORT.to_string()]}}]}],
        }),
    )
    .await;
    wait("DENY with methods denies all TCP on the port", false, false).await;

    delete_policy(&ctx, &ns, "deny-get").await;
    delete_policy(&ctx, &ns, "tcp-policy").await;
    wait("policies deleted: both echo", true, true).await;
    ctx.delete_namespace(&ns).await;
}
