//! Scenario 20 (issue #20): Istio's egress TLS origination task, with the test's own HTTPS
//! server. The "external" server is a pod outside the mesh (a namespace without injection)
//! running `testapp serve --https 443` with a certificate for `secure.e2e.test` from a private
//! CA the test makes; it asks for no client certificate. A ServiceEntry registers the host
//! (MESH_EXTERNAL, resolution STATIC at the pod's address: the local cluster has no DNS, the
//! client's sidecar answers the name with the entry's automatic address) with the task's two
//! ports: 80 `http-port` (HTTP, `targetPort: 443`) and 443 `https-port` (HTTPS). A meshed client
//! sends plain HTTP to `http://secure.e2e.test/`.
//!
//! Asserted: without a DestinationRule the client's sidecar forwards the plain text to the
//! server's 443, which refuses it (the request fails and the server logs the failed handshake
//! from the client's address), and `outbound|80||secure.e2e.test` has no transport socket. With
//! a DestinationRule selecting the client (`workloadSelector`, applied through the client's own
//! `Sidecar` scope as in s11) whose `portLevelSettings` give port 80 `tls: {mode: SIMPLE,
//! credentialName: <Secret holding only ca.crt>, sni: secure.e2e.test}`, the cluster carries a
//! TLS transport socket with that SNI and roots `kubernetes://<secret>-cacert`, the port-443
//! cluster still has none, the request succeeds and the server reports the SNI
//! `secure.e2e.test` and no client certificate. With the rule pointed at a Secret of another
//! CA (which the sidecar holds, `proxy-config secret`), requests fail again: the server's
//! certificate is not trusted, and the server logs the refused handshakes.

use rustmesh_e2e::pki::{
    HttpsServer, Pki, deploy_https_server, grant_list_secrets, handshake_failures, put_secret,
    wait_handshake_failed,
};
use rustmesh_e2e::sample;
use rustmesh_e2e::{Ctx, poll, setup};
use serde_json::Value;
use std::time::Duration;

/// The external host, as in the task's `edition.cnn.com`.
const HOST: &str = "secure.e2e.test";
/// The external server's app, container and Secret (certificate and key).
const SERVER: &str = "secure-server";
/// The Secret (client namespace) with the CA that signed the server's certificate, `ca.crt` only.
const CA_SECRET: &str = "secure-ca";
/// A Secret with another CA's certificate, `ca.crt` only.
const OTHER_CA_SECRET: &str = "other-ca";
/// The client's app (and its container).
const CLIENT: &str = "productpage";

/// The task's ServiceEntry: port 80 HTTP to the server's 443, port 443 HTTPS.
fn service_entry(server_ip: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: secure-external
spec:
  hosts: ["{HOST}"]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: 443}}
  - {{number: 443, name: https-port, protocol: HTTPS}}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: "{server_ip}"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: {CLIENT}
spec:
  workloadSelector:
    labels: {{app: {CLIENT}}}
  egress:
  - hosts: ["./*"]
"#
    )
}

/// The task's DestinationRule, its CA from the Secret `credential` (the client's namespace).
fn destination_rule(credential: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-tls-for-secure
spec:
  host: "{HOST}"
  workloadSelector:
    matchLabels: {{app: {CLIENT}}}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, credentialName: {credential}, sni: "{HOST}"}}
"#
    )
}

/// The client sidecar's cluster `name` (`proxy-config clusters -o json`), if it has one.
async fn cluster(ctx: &Ctx, ns: &str, pod: &str, name: &str) -> Result<Option<Value>, String> {
    let out = ctx
        .proxy_config(ns, pod, &["clusters", "--fqdn", HOST, "-o", "json"])
        .await
        .map_err(|e| e.to_string())?;
    let all: Vec<Value> =
        serde_json::from_str(&out).map_err(|e| format!("not JSON ({e}): {out}"))?;
    Ok(all.into_iter().find(|c| c["name"] == name))
}

/// Waits until the client's cluster `name` originates TLS with SNI [`HOST`] and the roots of
/// Secret `credential`; the cluster.
async fn wait_tls_cluster(ctx: &Ctx, ns: &str, pod: &str, name: &str, credential: &str) -> Value {
    let roots = format!("kubernetes://{credential}-cacert");
    poll(
        &format!("{name} originates TLS with {roots}"),
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let c = cluster(ctx, ns, pod, name)
                .await?
                .ok_or_else(|| format!("no cluster {name}"))?;
            let socket = &c["transportSocket"];
            let tls = &socket["typedConfig"];
            let got = tls.pointer(
                "/commonTlsContext/combinedValidationContext/validationContextSdsSecretConfig/name",
            );
            if socket["name"] == "envoy.transport_sockets.tls"
                && tls["sni"] == HOST
                && got.and_then(Value::as_str) == Some(roots.as_str())
            {
                Ok(Some(c))
            } else {
                Err(format!("not yet: {c}"))
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn s20_a_sidecar_originates_tls_to_a_service_entry_host_with_a_credential_ca() {
    let Some(ctx) = setup("s20_tls_origination").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-tls-orig", true).await.unwrap();
    let outside = ctx
        .fresh_namespace("e2e-tls-orig-external", false)
        .await
        .unwrap();
    // The server's certificate for the host, from a private CA; another CA that did not sign it.
    let pki = Pki::new("rustmesh e2e egress CA", HOST, vec![HOST.into()], "unused");
    let other = Pki::new("rustmesh e2e other CA", HOST, vec![HOST.into()], "unused");
    put_secret(
        &ctx,
        &outside,
        SERVER,
        "kubernetes.io/tls",
        &[("tls.crt", &pki.server.0), ("tls.key", &pki.server.1)],
    )
    .await;
    put_secret(&ctx, &ns, CA_SECRET, "Opaque", &[("ca.crt", &pki.ca)]).await;
    put_secret(
        &ctx,
        &ns,
        OTHER_CA_SECRET,
        "Opaque",
        &[("ca.crt", &other.ca)],
    )
    .await;
    // The mesh CA serves a credentialName only to accounts that may list the Secrets (s11).
    grant_list_secrets(&ctx, &ns).await;

    let server = deploy_https_server(
        &ctx,
        &outside,
        &HttpsServer {
            name: SERVER,
            port: 443,
            client_ca: false,
        },
    )
    .await;
    let server_pod = ctx.pod_name(&outside, &server.selector()).await.unwrap();
    let server_ip = sample::pod_ip(&ctx, &outside, &server.selector())
        .await
        .unwrap();
    let client = sample::productpage();
    sample::deploy(&ctx, &ns, std::slice::from_ref(&client))
        .await
        .unwrap();
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let client_ip = sample::pod_ip(&ctx, &ns, &client.selector()).await.unwrap();
    ctx.log(format!(
        "client {ns}/{pod} ({client_ip}), server {outside}/{server_pod} ({server_ip}:443)"
    ));

    let http_cluster = format!("outbound|80||{HOST}");
    let https_cluster = format!("outbound|443||{HOST}");
    let url = format!("http://{HOST}/tls-origination");
    let get = || async {
        ctx.testapp_report(&ns, &pod, CLIENT, &["testapp", "get", "--body", &url])
            .await
    };

    // Registered, no DestinationRule: plain text to the server's 443, refused there.
    ctx.apply_istio(&ns, &service_entry(&server_ip))
        .await
        .unwrap();
    ctx.wait_cluster_endpoints(&ns, &pod, &http_cluster, 1)
        .await
        .unwrap();
    let c = cluster(&ctx, &ns, &pod, &http_cluster)
        .await
        .unwrap()
        .expect("the port-80 cluster");
    assert!(
        c.get("transportSocket").is_none() && c.get("transportSocketMatches").is_none(),
        "no TLS to a MESH_EXTERNAL host without a rule: {c}"
    );
    let plain = get().await;
    assert!(plain.is_err(), "plain text to 443 was served: {plain:?}");
    wait_handshake_failed(&ctx, &outside, &server_pod, SERVER, &client_ip, 0).await;
    ctx.log(format!(
        "without the rule: refused ({})",
        plain.unwrap_err()
    ));

    // The rule: the sidecar originates TLS on port 80, verifying the server with the Secret's CA.
    ctx.apply_istio(&ns, &destination_rule(CA_SECRET))
        .await
        .unwrap();
    let c = wait_tls_cluster(&ctx, &ns, &pod, &http_cluster, CA_SECRET).await;
    eprintln!("{http_cluster}: {c}");
    let https = cluster(&ctx, &ns, &pod, &https_cluster)
        .await
        .unwrap()
        .expect("the port-443 cluster");
    assert!(
        https.get("transportSocket").is_none(),
        "the rule sets port 80 only; 443 carries the app's own TLS: {https}"
    );
    let start = std::time::Instant::now();
    let report = poll(
        "plain HTTP to the host is served over TLS the sidecar originates",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async { get().await.map(Some) },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "served {:.1} s after the cluster had TLS: {report}",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(report["service"], SERVER, "{report}");
    assert_eq!(report["tls"]["sni"], HOST, "the rule's SNI: {report}");
    assert!(
        report["tls"]["client_cn"].is_null(),
        "SIMPLE presents no client certificate: {report}"
    );
    assert_eq!(
        report["headers"]["host"], HOST,
        "the app's request, as it sent it: {report}"
    );
    for _ in 0..3 {
        let r = get().await.expect("the client keeps being served");
        assert_eq!(r["tls"]["sni"], HOST, "{r}");
    }

    // Another CA: the sidecar holds it, and does not trust the server's certificate.
    let before = handshake_failures(&ctx, &outside, &server_pod, SERVER, &client_ip)
        .await
        .unwrap();
    ctx.apply_istio(&ns, &destination_rule(OTHER_CA_SECRET))
        .await
        .unwrap();
    wait_tls_cluster(&ctx, &ns, &pod, &http_cluster, OTHER_CA_SECRET).await;
    let refused = poll(
        "the server's certificate is refused under another CA",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            match get().await {
                Err(e) => Ok(Some(e)),
                Ok(r) => Err(format!("still served: {r}")),
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!("with another CA: refused ({refused})"));
    for _ in 0..3 {
        let r = get().await;
        assert!(r.is_err(), "served under another CA: {r:?}");
    }
    wait_handshake_failed(&ctx, &outside, &server_pod, SERVER, &client_ip, before).await;
    let secrets = ctx.proxy_config(&ns, &pod, &["secret"]).await.unwrap();
    eprintln!("$ rustmeshctl proxy-config secret {pod} -n {ns}\n{secrets}");
    assert!(
        secrets.contains(&format!("kubernetes://{OTHER_CA_SECRET}-cacert")),
        "the other CA was served to the sidecar (the refusal is its verdict, not a missing \
         secret):\n{secrets}"
    );

    ctx.delete_istio(&ns).await.unwrap();
    ctx.delete_namespace(&ns).await;
    ctx.delete_namespace(&outside).await;
}
