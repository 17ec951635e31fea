//! Scenario 10 (issue #16, mutual TLS): with nothing configured, traffic between two injected
//! pods is mutual TLS (auto mTLS by the `security.istio.io/tlsMode: istio` label): the
//! server's sidecar reports the client's SPIFFE id and `connection_security_policy="mutual_tls"`.
//! A namespace-wide `PeerAuthentication` STRICT then refuses a pod without a sidecar while the
//! injected client keeps working; deleting it serves plain text again.

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use rustmesh_e2e::sample::{self, HTTP_PORT};
use rustmesh_e2e::{poll, setup};
use serde_json::json;

const REQUESTS: &str = "istio_requests_total";

fn peer_authentication_api(ctx: &rustmesh_e2e::Ctx, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "security.istio.io".into(),
        version: "v1".into(),
        api_version: "security.istio.io/v1".into(),
        kind: "PeerAuthentication".into(),
        plural: "peerauthentications".into(),
    };
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

#[tokio::test]
async fn s10_sidecars_talk_mutual_tls_and_strict_refuses_plain_text() {
    let Some(ctx) = setup("s10_mtls").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-mtls", true).await.unwrap();
    let (client, server) = (sample::productpage(), sample::ratings());
    let plain = sample::App {
        service_ports: vec![],
        inject: Some(false),
        ..sample::App::http("plain", "v1")
    };
    sample::deploy(&ctx, &ns, &[client.clone(), server.clone(), plain.clone()])
        .await
        .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let server_pod = ctx.pod_name(&ns, &server.selector()).await.unwrap();
    let plain_pod = ctx.pod_name(&ns, &plain.selector()).await.unwrap();
    let ip = ctx.cluster_ip(&ns, "ratings").await.unwrap();
    let url = format!("http://{ip}:{HTTP_PORT}/ratings");
    ctx.wait_endpoints(&ns, &client_pod, "ratings", &ns, HTTP_PORT, 1)
        .await
        .unwrap();

    // Auto mTLS: nothing configured, the injected client's requests arrive as mutual TLS.
    let principal = format!("source_principal=\"spiffe://cluster.local/ns/{ns}/sa/default\"");
    let mtls = [
        "reporter=\"destination\"",
        principal.as_str(),
        "connection_security_policy=\"mutual_tls\"",
    ];
    for _ in 0..3 {
        let report = ctx
            .http_get(&ns, &client_pod, &client.app, &url, &[])
            .await
            .unwrap();
        assert_eq!(report.service, "ratings");
    }
    let seen = ctx
        .sidecar_metric(&ns, &server_pod, REQUESTS, &mtls)
        .await
        .unwrap();
    assert!(
        seen >= 3.0,
        "the server's sidecar saw the client's identity over mTLS: {seen}"
    );
    // PERMISSIVE (Istio's default): the pod without a sidecar is served too, in plain text.
    // (It reaches the ClusterIP through kube-proxy, whose rules may lag the Endpoints the
    // deploy waited for: a refused connection is retried for a while.)
    let report = poll(
        "the plain-text client served through the ClusterIP",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            ctx.http_get(&ns, &plain_pod, &plain.app, &url, &[])
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap();
    assert_eq!(report.service, "ratings");
    let table = ctx
        .proxy_config(&ns, &client_pod, &["secret"])
        .await
        .unwrap();
    eprintln!("$ rustmeshctl proxy-config secret {client_pod} -n {ns}\n{table}");

    // STRICT for the namespace: the plain-text client is refused, the sidecar client is not.
    let pa = peer_authentication_api(&ctx, &ns);
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"mtls": {"mode": "STRICT"}},
    }))
    .unwrap();
    pa.patch(
        "default",
        &PatchParams::apply("rustmesh-e2e").force(),
        &Patch::Apply(&policy),
    )
    .await
    .unwrap();
    let start = std::time::Instant::now();
    poll(
        "STRICT refuses the pod without a sidecar",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            match ctx.http_get(&ns, &plain_pod, &plain.app, &url, &[]).await {
                Err(_) => Ok(Some(())),
                Ok(r) => Err(format!("still served by {}", r.pod)),
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "STRICT in force after {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    for _ in 0..3 {
        let report = ctx
            .http_get(&ns, &client_pod, &client.app, &url, &[])
            .await
            .expect("the sidecar client is served under STRICT");
        assert_eq!(report.service, "ratings");
    }
    // The refusal is the server sidecar's: no plain-text request reached its app since.
    let plain_after = ctx
        .sidecar_metric(
            &ns,
            &server_pod,
            REQUESTS,
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"none\"",
            ],
        )
        .await
        .unwrap();

    // Deleting the policy serves plain text again.
    pa.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    poll(
        "plain text served again without the policy",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            match ctx.http_get(&ns, &plain_pod, &plain.app, &url, &[]).await {
                Ok(r) => Ok(Some(r)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .unwrap();
    let plain_final = ctx
        .sidecar_metric(
            &ns,
            &server_pod,
            REQUESTS,
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"none\"",
            ],
        )
        .await
        .unwrap();
    assert!(plain_final > plain_after, "{plain_after} -> {plain_final}");
    ctx.delete_namespace(&ns).await;
}
