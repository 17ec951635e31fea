//! Scenario 11 (a DestinationRule's `credentialName`, as Istio's sidecars read it): a server
//! outside the mesh (a pod without a sidecar, `testapp serve --https` requiring a client
//! certificate of a private CA) sits behind a Service whose port is named `http`, so meshed
//! clients send plain HTTP and their sidecar decides whether TLS is originated. A
//! DestinationRule with a `workloadSelector` (applied through the selected client's own
//! `Sidecar` scope) and `tls: {mode: MUTUAL, credentialName: ext-client}` makes that client's
//! sidecar present the certificate of the Secret `ext-client` of its namespace and verify the
//! server against its `ca.crt`. The mesh CA hands the Secret over only once the client's
//! service account may `list` Secrets there (a Role and RoleBinding, Istio's rule).
//!
//! Asserted: before the rule, plain text is refused by the server; with the rule but without
//! the right, the selected client is still refused (the CA does not serve the Secret); with the
//! right, its requests succeed and the server reports the client certificate's common name and
//! the SNI (the service's FQDN); a client of the same namespace that the rule does not select
//! still sends plain text and is refused.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use rustmesh_e2e::pki::{
    HttpsServer, Pki, deploy_https_server, grant_list_secrets, put_secret, wait_handshake_failed,
};
use rustmesh_e2e::sample::{self, HTTP_PORT};
use rustmesh_e2e::{Ctx, MANAGER, poll, setup};
use serde_json::{Value, json};

/// The TLS server's app, Service and Secret name.
const SERVER: &str = "tls-server";
/// The client Secret the DestinationRule names.
const CREDENTIAL: &str = "ext-client";
/// The common name of the client certificate in it.
const CLIENT_CN: &str = "e2e-credential-client";

fn pki(server_names: Vec<String>) -> Pki {
    Pki::new("rustmesh e2e private CA", SERVER, server_names, CLIENT_CN)
}

/// The TLS server: no sidecar, its certificate, key and client CA from the Secret `tls-server`,
/// TLS on the Service's `http` port.
async fn deploy_server(ctx: &Ctx, ns: &str) -> sample::App {
    let app = deploy_https_server(
        ctx,
        ns,
        &HttpsServer {
            name: SERVER,
            port: HTTP_PORT,
            client_ca: true,
        },
    )
    .await;
    // Port name `http`: the clients' sidecars treat it as HTTP (plain text from the app).
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVER, "namespace": ns, "labels": {"app": SERVER}},
        "spec": {
            "selector": {"app": SERVER},
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"}],
        },
    });
    Api::<Service>::namespaced(ctx.client.clone(), ns)
        .patch(
            SERVER,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(service),
        )
        .await
        .unwrap();
    app
}

/// `testapp get --body URL` in `pod`: the server's report, or (the command failed: a status
/// >= 400 or no answer) what it printed. An exec that could not run at all panics.
async fn get(ctx: &Ctx, ns: &str, pod: &str, container: &str, url: &str) -> Result<Value, String> {
    ctx.testapp_report(ns, pod, container, &["testapp", "get", "--body", url])
        .await
}

/// Waits until the TLS server has logged a failed handshake from `ip`: a plain-text request
/// reached it and was refused (not lost on the way).
async fn refused_by_server(ctx: &Ctx, ns: &str, server_pod: &str, ip: &str) {
    wait_handshake_failed(ctx, ns, server_pod, SERVER, ip, 0).await;
}

#[tokio::test]
async fn s11_credential_name_originates_mutual_tls_for_the_selected_client_only() {
    let Some(ctx) = setup("s11_credential").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-credential", true).await.unwrap();
    let fqdn = format!("{SERVER}.{ns}.svc.cluster.local");
    let pki = pki(vec![
        fqdn.clone(),
        format!("{SERVER}.{ns}.svc"),
        format!("{SERVER}.{ns}"),
        SERVER.to_string(),
    ]);
    put_secret(
        &ctx,
        &ns,
        SERVER,
        "kubernetes.io/tls",
        &[
            ("tls.crt", &pki.server.0),
            ("tls.key", &pki.server.1),
            ("ca.crt", &pki.ca),
        ],
    )
    .await;
    put_secret(
        &ctx,
        &ns,
        CREDENTIAL,
        "kubernetes.io/tls",
        &[
            ("tls.crt", &pki.client.0),
            ("tls.key", &pki.client.1),
            ("ca.crt", &pki.ca),
        ],
    )
    .await;
    let server = deploy_server(&ctx, &ns).await;
    // Two injected clients: productpage is selected by the rule, bystander is not.
    let (client, bystander) = (
        sample::productpage(),
        sample::App {
            service_ports: vec![],
            ..sample::App::http("bystander", "v1")
        },
    );
    sample::deploy(&ctx, &ns, &[client.clone(), bystander.clone()])
        .await
        .unwrap();
    let server_pod = ctx.pod_name(&ns, &server.selector()).await.unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let bystander_pod = ctx.pod_name(&ns, &bystander.selector()).await.unwrap();
    let client_ip = sample::pod_ip(&ctx, &ns, &client.selector()).await.unwrap();
    let bystander_ip = sample::pod_ip(&ctx, &ns, &bystander.selector())
        .await
        .unwrap();
    let url = format!(
        "http://{}:{HTTP_PORT}/credential",
        ctx.cluster_ip(&ns, SERVER).await.unwrap()
    );
    for pod in [&client_pod, &bystander_pod] {
        ctx.wait_endpoints(&ns, pod, SERVER, &ns, HTTP_PORT, 1)
            .await
            .unwrap();
    }

    // No rule: the server has no sidecar, so auto mTLS sends plain text, which it refuses.
    let plain = get(&ctx, &ns, &client_pod, &client.app, &url).await;
    assert!(plain.is_err(), "plain text was served: {plain:?}");
    refused_by_server(&ctx, &ns, &server_pod, &client_ip).await;
    ctx.log(format!(
        "without the rule: refused ({})",
        plain.unwrap_err()
    ));

    // The rule, in the client's own Sidecar scope; the account may not list Secrets yet.
    let rule = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: {app}
spec:
  workloadSelector:
    labels: {{app: {app}}}
  egress:
  - hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {SERVER}
spec:
  host: {fqdn}
  workloadSelector:
    matchLabels: {{app: {app}}}
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: {CREDENTIAL}}}
"#,
        app = client.app
    );
    ctx.apply_istio(&ns, &rule).await.unwrap();
    let sds = format!("kubernetes://{CREDENTIAL}");
    poll(
        "the client's sidecar originates TLS with the credential",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let clusters = ctx
                .proxy_config(
                    &ns,
                    &client_pod,
                    &["clusters", "--fqdn", &fqdn, "-o", "json"],
                )
                .await
                .map_err(|e| e.to_string())?;
            if clusters.contains(&sds) {
                Ok(Some(()))
            } else {
                Err(format!("no {sds} in:\n{clusters}"))
            }
        },
    )
    .await
    .unwrap();
    ctx.wait_endpoints(&ns, &client_pod, SERVER, &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    // Without the right to list Secrets the CA does not serve the credential: still refused.
    for _ in 0..3 {
        let r = get(&ctx, &ns, &client_pod, &client.app, &url).await;
        assert!(
            r.is_err(),
            "served without the right to list Secrets: {r:?}"
        );
    }
    ctx.log("with the rule, without the Role: refused");

    // With the right: mutual TLS with the Secret's certificate, the server verified by its CA.
    grant_list_secrets(&ctx, &ns).await;
    let start = std::time::Instant::now();
    let report = poll(
        "the selected client is served over mutual TLS",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            get(&ctx, &ns, &client_pod, &client.app, &url)
                .await
                .map(Some)
        },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "served {:.1} s after the Role: {report}",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(report["service"], SERVER, "{report}");
    assert_eq!(
        report["tls"]["client_cn"], CLIENT_CN,
        "the server saw the Secret's client certificate: {report}"
    );
    assert_eq!(
        report["tls"]["sni"],
        fqdn.as_str(),
        "SNI defaults to the service's FQDN: {report}"
    );
    for _ in 0..3 {
        let r = get(&ctx, &ns, &client_pod, &client.app, &url)
            .await
            .expect("the selected client keeps being served");
        assert_eq!(r["tls"]["client_cn"], CLIENT_CN, "{r}");
    }
    let secrets = ctx
        .proxy_config(&ns, &client_pod, &["secret"])
        .await
        .unwrap();
    eprintln!("$ rustmeshctl proxy-config secret {client_pod} -n {ns}\n{secrets}");
    assert!(
        secrets.contains(&sds),
        "the credential is among the sidecar's secrets:\n{secrets}"
    );

    // The namespace's other workload is not selected: plain text, refused by the server.
    let other = get(&ctx, &ns, &bystander_pod, &bystander.app, &url).await;
    assert!(
        other.is_err(),
        "the unselected client was served: {other:?}"
    );
    refused_by_server(&ctx, &ns, &server_pod, &bystander_ip).await;
    let clusters = ctx
        .proxy_config(
            &ns,
            &bystander_pod,
            &["clusters", "--fqdn", &fqdn, "-o", "json"],
        )
        .await
        .unwrap();
    assert!(
        !clusters.contains(&sds),
        "the unselected client has no credential:\n{clusters}"
    );
    ctx.delete_namespace(&ns).await;
}
