//! Scenario 8 (issue #16, workload identity): the operator's mesh CA publishes its root as
//! `istio-ca-root-cert` in a namespace created after the install, an injected pod's sidecar
//! obtains a certificate for exactly its SPIFFE id (`spiffe://cluster.local/ns/<ns>/sa/default`)
//! through a real TokenReview of its projected `istio-ca` token, becomes ready only then, and
//! shows it on its admin API's `/certs` and in `rustmeshctl proxy-config secret`; the CA counts
//! the issuance.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use rustmesh_e2e::{poll, sample, setup};

#[tokio::test]
async fn s8_a_sidecar_gets_its_workload_certificate_from_the_mesh_ca() {
    let Some(ctx) = setup("s8_identity").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-identity", true).await.unwrap();

    // The root reaches the new namespace, and it is the CA's own.
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let published = poll(
        "istio-ca-root-cert in the new namespace",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            Ok(cms
                .get_opt("istio-ca-root-cert")
                .await
                .map_err(|e| e.to_string())?
                .and_then(|cm| cm.data?.get("root-cert.pem").cloned()))
        },
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), "istio-system");
    let ca_secret = match secrets.get_opt("cacerts").await.unwrap() {
        Some(s) => s,
        None => secrets.get("istio-ca-secret").await.unwrap(),
    };
    let data = ca_secret.data.unwrap_or_default();
    let root = data
        .get("root-cert.pem")
        .or_else(|| data.get("ca-cert.pem"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .expect("the CA Secret holds its root");
    assert_eq!(
        published.trim(),
        root.trim(),
        "the published root is the CA's"
    );

    // The sidecar became ready (deploy waits for 2/2), which it only does with a certificate.
    let app = sample::productpage();
    sample::deploy(&ctx, &ns, std::slice::from_ref(&app))
        .await
        .unwrap();
    let pod = ctx.pod_name(&ns, &app.selector()).await.unwrap();
    let certs = ctx.pod_port_get(&ns, &pod, 15000, "/certs").await.unwrap();
    ctx.log(format!("{ns}/{pod} /certs: {certs}"));
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    let entry = &certs["certificates"][0];
    assert_eq!(
        entry["cert_chain"][0]["subject_alt_names"][0]["uri"],
        format!("spiffe://cluster.local/ns/{ns}/sa/default").as_str(),
        "the workload certificate names exactly the pod's service account: {certs}"
    );
    assert_eq!(entry["ca_cert"].as_array().map(Vec::len), Some(1));
    assert!(!certs.to_string().contains("PRIVATE KEY"));
    // What a user sees: `rustmeshctl proxy-config secret POD -n NS` (istioctl's table).
    let table = ctx.proxy_config(&ns, &pod, &["secret"]).await.unwrap();
    eprintln!("$ rustmeshctl proxy-config secret {pod} -n {ns}\n{table}");
    let serial = entry["cert_chain"][0]["serial_number"]
        .as_str()
        .unwrap()
        .trim_start_matches('0')
        .to_lowercase();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter().any(|r| r[0] == "default"
            && r.contains(&"ACTIVE")
            && r.contains(&"true")
            && r.contains(&serial.as_str())),
        "the workload certificate's row in:\n{table}"
    );
    assert!(
        rows.iter().any(|r| r[0] == "ROOTCA" && r.contains(&"true")),
        "the root's row in:\n{table}"
    );

    // The CA counted it (Istio's citadel_server_success_cert_issuance, OpenMetrics form).
    let operator = ctx
        .pod_name("istio-system", "app.kubernetes.io/name=rustmesh-operator")
        .await
        .unwrap();
    let metrics = ctx
        .pod_port_get("istio-system", &operator, 15014, "/metrics")
        .await
        .unwrap();
    let issued =
        rustmesh_e2e::sum_metric(&metrics, "citadel_server_success_cert_issuance_total", &[]);
    assert!(issued >= 1.0, "issued certificates: {issued}");

    ctx.delete_namespace(&ns).await;
}
