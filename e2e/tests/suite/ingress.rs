//! Scenario 16 (issue #20): Istio's bookinfo ingress flow through the install's
//! `istio-ingressgateway` (the chart's `ingressGateway`, the proxy run as a router). A Gateway
//! selecting `istio: ingressgateway` (port 80, HTTP, one host) and a VirtualService bound to it
//! route requests from a client outside the mesh (a pod without a sidecar) through the
//! gateway's Service: `/productpage` to productpage, `/reviews` to reviews. Another host gets
//! 404 from the gateway; the gateway's listener and route table are named as Istio names them
//! (the Service maps port 80 to the pods' 8080: `0.0.0.0_8080`, `http.8080`); a VirtualService
//! bound only to the gateway is not applied to the namespace's sidecars.
//!
//! Scenario 17 (issue #20): Istio's secure ingress task through the same gateway. Two HTTPS
//! servers on port 443 (the Service's 443 → the pods' 8443), told apart by SNI: `a.e2e.test`
//! with `tls.mode: SIMPLE` and Secret `e2e-ingress-a`, `b.e2e.test` with `MUTUAL` and Secret
//! `e2e-ingress-b` (each its own private CA; Secrets in the gateway's namespace, as Istio
//! requires). From outside the mesh, `testapp get https://<host>/productpage --connect-to
//! <gateway>:443 --cacert ...` (curl's `--resolve --cacert`) is answered by productpage when
//! the client trusts that host's CA, and fails when it trusts only the other's (each SNI gets
//! its own certificate); `b` refuses a client without a certificate and serves one whose
//! certificate its CA issued. The listener is `0.0.0.0_8443`, the route tables are named as
//! Istio's (`https.443.<port name>.<gateway>.<namespace>`), and `rustmeshctl proxy-config
//! secret` lists both credentials on the gateway.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustmesh_e2e::pki::{Pki, put_secret};
use rustmesh_e2e::sample::{self, EXTERNAL_PORT};
use rustmesh_e2e::{Ctx, MANAGER, MESH_NAMESPACE, Report, TESTAPP_IMAGE, poll, setup};
use serde_json::{Value, json};
use std::time::Duration;

const HOST: &str = "bookinfo.e2e.test";

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bookinfo.e2e.test"]
"#;

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts: ["bookinfo.e2e.test"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
  - match: [{uri: {exact: /productpage}}]
    route: [{destination: {host: productpage, port: {number: 9080}}}]
"#;

/// One GET through the gateway's Service from the client outside the mesh.
async fn through_gateway(
    ctx: &Ctx,
    client: (&str, &str),
    url: &str,
    host: &str,
) -> Result<Report, String> {
    ctx.http_get(
        client.0,
        client.1,
        "external",
        url,
        &[&format!("Host: {host}")],
    )
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn s16_ingress_gateway_routes_bookinfo_from_outside_the_mesh() {
    let Some(ctx) = setup("s16_ingress").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-ingress", true).await.unwrap();
    let outside = ctx
        .fresh_namespace("e2e-ingress-client", false)
        .await
        .unwrap();
    let productpage = sample::productpage();
    sample::deploy(&ctx, &ns, &[productpage.clone(), sample::reviews("v1")])
        .await
        .unwrap();
    // The client: testapp in a pod without a sidecar, in a namespace without injection.
    let client_app = sample::external();
    sample::deploy(&ctx, &outside, std::slice::from_ref(&client_app))
        .await
        .unwrap();
    let client_pod = ctx
        .pod_name(&outside, &client_app.selector())
        .await
        .unwrap();
    let client = (outside.as_str(), client_pod.as_str());
    let gateway_ip = ctx
        .cluster_ip(MESH_NAMESPACE, "istio-ingressgateway")
        .await
        .unwrap();
    let gateway = format!("http://{gateway_ip}:80");
    ctx.log(format!(
        "client {outside}/{client_pod} (port {EXTERNAL_PORT}, no sidecar) -> {gateway}"
    ));

    ctx.apply_istio(&ns, GATEWAY).await.unwrap();
    ctx.apply_istio(&ns, ROUTES).await.unwrap();
    let page = format!("{gateway}/productpage");
    let r = poll(
        "the ingress gateway routes /productpage to productpage",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let r = through_gateway(&ctx, client, &page, HOST).await?;
            if r.service == "productpage" {
                Ok(Some(r))
            } else {
                Err(format!("answered by {r:?}"))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!("/productpage through the gateway: {}", r.pod));
    let r = through_gateway(&ctx, client, &format!("{gateway}/reviews/1"), HOST)
        .await
        .unwrap();
    assert_eq!(r.service, "reviews", "{r:?}");

    // A host no Gateway server names: the gateway answers 404 (Envoy's NR) itself.
    let s = ctx
        .http_load(
            client.0,
            client.1,
            "external",
            &page,
            3,
            1,
            &["Host: other.e2e.test"],
        )
        .await
        .unwrap();
    assert_eq!(s.status(404), 3, "{s:?}");

    // Named as Istio's gateway: the listener on the Service's targetPort, its route table.
    let gateway_pod = ctx
        .pod_name(MESH_NAMESPACE, "istio=ingressgateway")
        .await
        .unwrap();
    let listeners = ctx
        .proxy_config(MESH_NAMESPACE, &gateway_pod, &["listeners", "-o", "json"])
        .await
        .unwrap();
    assert!(listeners.contains("\"0.0.0.0_8080\""), "{listeners}");
    assert!(!listeners.contains("virtualOutbound"), "{listeners}");
    let table = ctx
        .proxy_config(MESH_NAMESPACE, &gateway_pod, &["listeners"])
        .await
        .unwrap();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.contains("Route: http.8080"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row.get(..2), Some(&["0.0.0.0", "8080"][..]), "{table}");
    let routes = ctx
        .proxy_config(MESH_NAMESPACE, &gateway_pod, &["routes"])
        .await
        .unwrap();
    assert!(
        routes.contains("http.8080") && routes.contains(HOST),
        "{routes}"
    );

    // Bound only to the gateway: the namespace's sidecars do not get it.
    let sidecar = ctx.pod_name(&ns, &productpage.selector()).await.unwrap();
    let sidecar_routes = ctx.proxy_config(&ns, &sidecar, &["routes"]).await.unwrap();
    assert!(!sidecar_routes.contains(HOST), "{sidecar_routes}");

    ctx.delete_istio(&ns).await.unwrap();
    ctx.delete_namespace(&ns).await;
    ctx.delete_namespace(&outside).await;
}

/// The secure ingress Gateway: two HTTPS servers on 443, by SNI.
const SECURE_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: secure-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: e2e-ingress-a}
    hosts: ["a.e2e.test"]
  - port: {number: 443, name: https-b, protocol: HTTPS}
    tls: {mode: MUTUAL, credentialName: e2e-ingress-b}
    hosts: ["b.e2e.test"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: secure
spec:
  hosts: ["a.e2e.test", "b.e2e.test"]
  gateways: [secure-gateway]
  http:
  - route: [{destination: {host: productpage, port: {number: 9080}}}]
"#;

/// Where the client pod mounts its Secret (the two CAs, its certificate and key).
const CLIENT_TLS: &str = "/etc/client-tls";

/// The client outside the mesh: testapp (no sidecar) with Secret `client-tls` mounted.
async fn deploy_tls_client(ctx: &Ctx, ns: &str) -> String {
    let labels = json!({"app": "tls-client", "version": "v1", "sidecar.istio.io/inject": "false"});
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tls-client-v1", "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "tls-client", "version": "v1"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "tls-client",
                        "image": TESTAPP_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["serve", "--http", EXTERNAL_PORT.to_string(),
                                 "--service", "tls-client", "--version", "v1"],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        "volumeMounts": [{"name": "tls", "mountPath": CLIENT_TLS, "readOnly": true}],
                    }],
                    "volumes": [{"name": "tls", "secret": {"secretName": "client-tls"}}],
                },
            },
        },
    });
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch(
            "tls-client-v1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(deployment),
        )
        .await
        .unwrap();
    let app = sample::App {
        inject: Some(false),
        service_ports: vec![],
        http: vec![EXTERNAL_PORT],
        ..sample::App::http("tls-client", "v1")
    };
    sample::wait_ready(ctx, ns, &app).await.unwrap();
    ctx.pod_name(ns, &app.selector()).await.unwrap()
}

/// `testapp get --body https://<host>/productpage --connect-to <gateway> --cacert <ca>` (and
/// the client certificate with `client_cert`) in the client: the backend's report, or why it
/// failed.
async fn https_get(
    ctx: &Ctx,
    client: (&str, &str),
    gateway: &str,
    host: &str,
    ca: &str,
    client_cert: bool,
) -> Result<Value, String> {
    let url = format!("https://{host}/productpage");
    let cacert = format!("{CLIENT_TLS}/{ca}");
    let (cert, key) = (
        format!("{CLIENT_TLS}/tls.crt"),
        format!("{CLIENT_TLS}/tls.key"),
    );
    let mut cmd = vec![
        "testapp",
        "get",
        "--body",
        &url,
        "--connect-to",
        gateway,
        "--cacert",
        &cacert,
    ];
    if client_cert {
        cmd.extend(["--cert", &cert, "--key", &key]);
    }
    ctx.testapp_report(client.0, client.1, "tls-client", &cmd)
        .await
}

/// Polls [`https_get`] until productpage answers (the gateway may not have its configuration
/// or the credential yet); the name of the pod that answered.
async fn until_productpage(
    ctx: &Ctx,
    client: (&str, &str),
    gateway: &str,
    host: &str,
    ca: &str,
    client_cert: bool,
    within: Duration,
) -> String {
    let r = poll(
        &format!("{host} over TLS through the gateway reaches productpage"),
        within,
        Duration::from_millis(1000),
        || async {
            let r = https_get(ctx, client, gateway, host, ca, client_cert).await?;
            if r["service"] == "productpage" {
                Ok(Some(r))
            } else {
                Err(format!("answered by {r}"))
            }
        },
    )
    .await
    .unwrap();
    r["pod"].to_string()
}

#[tokio::test]
async fn s17_ingress_gateway_terminates_tls_by_sni_with_credential_name() {
    let Some(ctx) = setup("s17_secure_ingress").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-secure", true).await.unwrap();
    let outside = ctx
        .fresh_namespace("e2e-secure-client", false)
        .await
        .unwrap();
    sample::deploy(&ctx, &ns, &[sample::productpage()])
        .await
        .unwrap();
    // Each host its own CA; b's client certificate issued by b's CA.
    let a = Pki::new(
        "e2e ingress CA a",
        "a.e2e.test",
        vec!["a.e2e.test".into()],
        "unused",
    );
    let b = Pki::new(
        "e2e ingress CA b",
        "b.e2e.test",
        vec!["b.e2e.test".into()],
        "e2e-ingress-client",
    );
    put_secret(
        &ctx,
        MESH_NAMESPACE,
        "e2e-ingress-a",
        "kubernetes.io/tls",
        &[("tls.crt", &a.server.0), ("tls.key", &a.server.1)],
    )
    .await;
    put_secret(
        &ctx,
        MESH_NAMESPACE,
        "e2e-ingress-b",
        "kubernetes.io/tls",
        &[
            ("tls.crt", &b.server.0),
            ("tls.key", &b.server.1),
            ("ca.crt", &b.ca),
        ],
    )
    .await;
    put_secret(
        &ctx,
        &outside,
        "client-tls",
        "Opaque",
        &[
            ("ca-a.crt", &a.ca),
            ("ca-b.crt", &b.ca),
            ("tls.crt", &b.client.0),
            ("tls.key", &b.client.1),
        ],
    )
    .await;
    let client_pod = deploy_tls_client(&ctx, &outside).await;
    let client = (outside.as_str(), client_pod.as_str());
    let gateway = format!(
        "{}:443",
        ctx.cluster_ip(MESH_NAMESPACE, "istio-ingressgateway")
            .await
            .unwrap()
    );
    ctx.log(format!(
        "client {outside}/{client_pod} (no sidecar) -> https {gateway}"
    ));
    ctx.apply_istio(&ns, SECURE_GATEWAY).await.unwrap();

    // SIMPLE: the client trusting a's CA reaches productpage through a.e2e.test.
    let pod = until_productpage(
        &ctx,
        client,
        &gateway,
        "a.e2e.test",
        "ca-a.crt",
        false,
        Duration::from_secs(180),
    )
    .await;
    ctx.log(format!("a.e2e.test: {pod}"));
    // The certificate for a.e2e.test is a's: a client trusting only b's CA refuses it.
    let err = https_get(&ctx, client, &gateway, "a.e2e.test", "ca-b.crt", false)
        .await
        .expect_err("a's certificate is not trusted by b's CA");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // MUTUAL: b's certificate is b's, and a client certificate is required.
    let pod = until_productpage(
        &ctx,
        client,
        &gateway,
        "b.e2e.test",
        "ca-b.crt",
        true,
        Duration::from_secs(60),
    )
    .await;
    ctx.log(format!("b.e2e.test with a client certificate: {pod}"));
    let err = https_get(&ctx, client, &gateway, "b.e2e.test", "ca-b.crt", false)
        .await
        .expect_err("b requires a client certificate");
    // The alert, or (a server closing at once may lose it) the reset that carried it.
    assert!(
        err.contains("CertificateRequired") || err.contains("reset"),
        "{err}"
    );

    // Named as Istio's: the listener on 8443, one route table per server.
    let gateway_pod = ctx
        .pod_name(MESH_NAMESPACE, "istio=ingressgateway")
        .await
        .unwrap();
    let listeners = ctx
        .proxy_config(MESH_NAMESPACE, &gateway_pod, &["listeners", "-o", "json"])
        .await
        .unwrap();
    assert!(listeners.contains("\"0.0.0.0_8443\""), "{listeners}");
    let routes = ctx
        .proxy_config(MESH_NAMESPACE, &gateway_pod, &["routes"])
        .await
        .unwrap();
    for table in [
        format!("https.443.https-a.secure-gateway.{ns}"),
        format!("https.443.https-b.secure-gateway.{ns}"),
    ] {
        assert!(routes.contains(&table), "{table} in {routes}");
    }
    // The gateway holds both credentials (in memory), as `istioctl proxy-config secret` shows.
    let secrets = ctx
        .proxy_config(MESH_NAMESPACE, &gateway_pod, &["secret"])
        .await
        .unwrap();
    for sds in ["kubernetes://e2e-ingress-a", "kubernetes://e2e-ingress-b"] {
        assert!(secrets.contains(sds), "{sds} in\n{secrets}");
    }

    ctx.delete_istio(&ns).await.unwrap();
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), MESH_NAMESPACE);
    for name in ["e2e-ingress-a", "e2e-ingress-b"] {
        let _ = secrets.delete(name, &DeleteParams::default()).await;
    }
    ctx.delete_namespace(&ns).await;
    ctx.delete_namespace(&outside).await;
}
