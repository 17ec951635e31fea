//! Scenario 5: the outbound traffic policy. An "external" server (a pod of a namespace without
//! injection, in no Service: the mesh's registry does not know it) is reached through
//! `PassthroughCluster` under ALLOW_ANY and blocked (`BlackHoleCluster`) under REGISTRY_ONLY,
//! mesh-wide (the operator's `OUTBOUND_TRAFFIC_POLICY`, the install's
//! `meshConfig.outboundTrafficPolicy.mode`) and per Sidecar (which overrides the mesh). A
//! Sidecar with `egress.hosts: ["./*"]` hides the other namespaces' services from its workloads.
//! A ServiceEntry registering the external server (issue #20: its address, an HTTP port,
//! resolution NONE) lets it through REGISTRY_ONLY again.

use crate::with_restore;
use rustmesh_e2e::sample::{self, EXTERNAL_PORT, HTTP_PORT};
use rustmesh_e2e::{Ctx, poll, setup};
use std::time::Duration;

const OWN_NAMESPACE_ONLY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
  egress:
  - hosts: ["./*"]
"#;

const ALLOW_ANY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"#;

/// The external server registered by its address (Istio's egress task, with the test's own
/// server: no traffic leaves the machine).
fn external_entry(ip: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external
spec:
  hosts: [external.e2e.test]
  addresses: ["{ip}"]
  ports:
  - {{number: {EXTERNAL_PORT}, name: http, protocol: HTTP}}
  location: MESH_EXTERNAL
  resolution: NONE
"#
    )
}

struct Setup {
    ns: String,
    pod: String,
    external: String,
    own: String,
    other: String,
}

/// Waits until `n` requests to `url` from the client all succeed (`ok`) or all fail.
async fn until(ctx: &Ctx, s: &Setup, url: &str, ok: bool, what: &str) {
    poll(
        what,
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async {
            let r = ctx
                .http_load(&s.ns, &s.pod, "productpage", url, 5, 1, &[])
                .await
                .map_err(|e| e.to_string())?;
            let done = if ok {
                r.status(200) == 5
            } else {
                r.failed() == 5
            };
            if done {
                Ok(Some(()))
            } else {
                Err(format!("{:?} errors {}", r.statuses, r.errors))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!("{what}: yes"));
}

async fn mesh_policy(ctx: &Ctx, mode: &str) {
    ctx.set_operator_env("OUTBOUND_TRAFFIC_POLICY", mode)
        .await
        .unwrap();
}

#[tokio::test]
async fn s5_outbound_traffic_policy_and_sidecar_egress_hosts() {
    let Some(ctx) = setup("s5_egress").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-egress", true).await.unwrap();
    let other = ctx.fresh_namespace("e2e-other", true).await.unwrap();
    let outside = ctx.fresh_namespace("e2e-external", false).await.unwrap();
    let client = sample::productpage();
    sample::deploy(&ctx, &ns, &[client.clone(), sample::reviews("v1")])
        .await
        .unwrap();
    sample::deploy(&ctx, &other, &[sample::details()])
        .await
        .unwrap();
    sample::deploy(&ctx, &outside, &[sample::external()])
        .await
        .unwrap();
    let ext_ip = sample::pod_ip(&ctx, &outside, "app=external")
        .await
        .unwrap();
    let s = Setup {
        pod: ctx.pod_name(&ns, &client.selector()).await.unwrap(),
        external: format!("http://{ext_ip}:{EXTERNAL_PORT}/"),
        own: format!(
            "http://{}:{HTTP_PORT}/",
            ctx.cluster_ip(&ns, "reviews").await.unwrap()
        ),
        other: format!(
            "http://{}:{HTTP_PORT}/",
            ctx.cluster_ip(&other, "details").await.unwrap()
        ),
        ns: ns.clone(),
    };

    ctx.wait_endpoints(&ns, &s.pod, "reviews", &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    ctx.wait_endpoints(&ns, &s.pod, "details", &other, HTTP_PORT, 1)
        .await
        .unwrap();
    // ALLOW_ANY (the install's default): the unknown destination passes through.
    let r = ctx
        .http_get(&ns, &s.pod, "productpage", &s.external, &[])
        .await
        .unwrap();
    assert_eq!(r.service, "external", "{r:?}");
    let r = ctx
        .http_get(&ns, &s.pod, "productpage", &s.other, &[])
        .await
        .unwrap();
    assert_eq!(r.service, "details", "another namespace's service: {r:?}");

    // Per Sidecar: REGISTRY_ONLY, and only this namespace's services.
    ctx.apply_istio(&ns, OWN_NAMESPACE_ONLY).await.unwrap();
    until(
        &ctx,
        &s,
        &s.external,
        false,
        "Sidecar REGISTRY_ONLY blocks the external server",
    )
    .await;
    until(
        &ctx,
        &s,
        &s.other,
        false,
        "Sidecar egress ./* hides (and blocks) e2e-other/details",
    )
    .await;
    let r = ctx
        .http_get(&ns, &s.pod, "productpage", &s.own, &[])
        .await
        .unwrap();
    assert_eq!(r.service, "reviews", "own namespace still routed: {r:?}");
    let routes = ctx.proxy_config(&ns, &s.pod, &["routes"]).await.unwrap();
    eprintln!(
        "$ rustmeshctl proxy-config routes {} -n {ns}\n{routes}",
        s.pod
    );
    assert!(
        routes.contains(&format!("reviews.{ns}")),
        "own service in the routes:\n{routes}"
    );
    assert!(
        !routes.contains(&format!("details.{other}")),
        "other namespace hidden:\n{routes}"
    );

    // A ServiceEntry for the external server: REGISTRY_ONLY lets it through, to where the
    // client connected (resolution NONE), named as Istio names it.
    ctx.apply_istio(&ns, &external_entry(&ext_ip))
        .await
        .unwrap();
    until(
        &ctx,
        &s,
        &s.external,
        true,
        "a ServiceEntry lets the registered external server through REGISTRY_ONLY",
    )
    .await;
    let r = ctx
        .http_get(&ns, &s.pod, "productpage", &s.external, &[])
        .await
        .unwrap();
    assert_eq!(r.service, "external", "{r:?}");
    let clusters = ctx.proxy_config(&ns, &s.pod, &["clusters"]).await.unwrap();
    assert!(
        clusters.contains("external.e2e.test"),
        "the entry's cluster outbound|{EXTERNAL_PORT}||external.e2e.test:\n{clusters}"
    );

    // Mesh-wide REGISTRY_ONLY, and a Sidecar's ALLOW_ANY overriding it.
    ctx.delete_istio(&ns).await.unwrap();
    until(
        &ctx,
        &s,
        &s.external,
        true,
        "Sidecar gone: external reachable again",
    )
    .await;
    with_restore(
        async {
            mesh_policy(&ctx, "REGISTRY_ONLY").await;
            until(
                &ctx,
                &s,
                &s.external,
                false,
                "mesh-wide REGISTRY_ONLY blocks the external server",
            )
            .await;
            let r = ctx
                .http_get(&ns, &s.pod, "productpage", &s.other, &[])
                .await
                .unwrap();
            assert_eq!(
                r.service, "details",
                "registered services still reachable: {r:?}"
            );
            ctx.apply_istio(&ns, ALLOW_ANY).await.unwrap();
            until(
                &ctx,
                &s,
                &s.external,
                true,
                "Sidecar ALLOW_ANY overrides the mesh's REGISTRY_ONLY",
            )
            .await;
        },
        mesh_policy(&ctx, "ALLOW_ANY"),
    )
    .await;
    for n in [&ns, &other, &outside] {
        ctx.delete_namespace(n).await;
    }
}
