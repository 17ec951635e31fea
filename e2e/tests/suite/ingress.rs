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
//! certificate its CA issued; pinned (`verifyCertificateHash`) to another certificate, b
//! refuses that client, and pinned to the client's, serves it again. The listener is
//! `0.0.0.0_8443`, the route tables are named as
//! Istio's (`https.443.<port name>.<gateway>.<namespace>`), and `rustmeshctl proxy-config
//! secret` lists both credentials on the gateway.
//!
//! Scenario 18 (issue #20): Istio's ingress SNI passthrough task. An HTTPS server inside the
//! mesh (`tls-backend`, testapp `--https` with its own certificate for `c.e2e.test` from a
//! private CA, behind Service port 443 `https`) is reached from outside the mesh through the
//! gateway's 443 with a Gateway server in `tls.mode: PASSTHROUGH` and a VirtualService `tls`
//! route by SNI: the client verifies the backend's own certificate (the gateway holds no key
//! for it: the TLS passed unopened), the backend saw the client's SNI, and the gateway's
//! listener has the SNI chain to `outbound|443||tls-backend...`. The same VirtualService,
//! bound to `mesh` too, routes a meshed client's TLS by SNI: a connection to the `decoy`
//! Service (no endpoints) with SNI `c.e2e.test` reaches the backend, while another SNI goes
//! to the decoy and fails.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
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

/// The TLS client: testapp with Secret `client-tls` mounted, outside the mesh (no sidecar)
/// unless `meshed`.
async fn deploy_tls_client(ctx: &Ctx, ns: &str, meshed: bool) -> String {
    let labels = json!({"app": "tls-client", "version": "v1",
                        "sidecar.istio.io/inject": meshed.to_string()});
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
        inject: Some(meshed),
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
    https_get_path(ctx, client, gateway, host, "productpage", ca, client_cert).await
}

/// [`https_get`] of `https://<host>/<path>`.
async fn https_get_path(
    ctx: &Ctx,
    client: (&str, &str),
    gateway: &str,
    host: &str,
    path: &str,
    ca: &str,
    client_cert: bool,
) -> Result<Value, String> {
    let url = format!("https://{host}/{path}");
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

/// The hex SHA-256 digest of a PEM certificate, colons between bytes (as `openssl x509
/// -fingerprint -sha256` prints it): a `verifyCertificateHash` entry.
fn certificate_hash(pem: &str) -> String {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("a PEM certificate");
    ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
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
    let client_pod = deploy_tls_client(&ctx, &outside, false).await;
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

    // Client pinning: b pinned (verifyCertificateHash) to another certificate refuses the
    // client whose certificate b's CA issued; pinned to the client's, serves it again.
    let pinned = |hash: String| {
        SECURE_GATEWAY.replace(
            "tls: {mode: MUTUAL, credentialName: e2e-ingress-b}",
            &format!(
                "tls: {{mode: MUTUAL, credentialName: e2e-ingress-b, \
                 verifyCertificateHash: ['{hash}']}}"
            ),
        )
    };
    ctx.apply_istio(&ns, &pinned(certificate_hash(&b.server.0)))
        .await
        .unwrap();
    let err = poll(
        "b pinned to another certificate refuses the client",
        Duration::from_secs(60),
        Duration::from_millis(1000),
        || async {
            match https_get(&ctx, client, &gateway, "b.e2e.test", "ca-b.crt", true).await {
                Ok(r) => Err(format!("still answered by {r}")),
                Err(e) => Ok(Some(e)),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        err.contains("CertificateUnknown") || err.contains("reset"),
        "{err}"
    );
    ctx.apply_istio(&ns, &pinned(certificate_hash(&b.client.0)))
        .await
        .unwrap();
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
    ctx.log(format!(
        "b.e2e.test pinned to the client's certificate: {pod}"
    ));

    // Revocation: the Secret gains `ca.crl`, b's CA revoking the client's certificate. The
    // gateway fetches the Secret again (every 60 s) and refuses that client from then on.
    put_secret(
        &ctx,
        MESH_NAMESPACE,
        "e2e-ingress-b",
        "kubernetes.io/tls",
        &[
            ("tls.crt", &b.server.0),
            ("tls.key", &b.server.1),
            ("ca.crt", &b.ca),
            ("ca.crl", &b.authority.revoke(&[&b.client.0])),
        ],
    )
    .await;
    let err = poll(
        "the Secret's revocation list refuses the client",
        Duration::from_secs(150),
        Duration::from_millis(2000),
        || async {
            match https_get(&ctx, client, &gateway, "b.e2e.test", "ca-b.crt", true).await {
                Ok(r) => Err(format!("still answered by {r}")),
                Err(e) => Ok(Some(e)),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        err.contains("CertificateRevoked") || err.contains("reset"),
        "{err}"
    );
    ctx.log(format!("b.e2e.test with the client revoked: {err}"));

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

/// The passthrough Gateway and the VirtualService routing `c.e2e.test` by SNI to the backend,
/// on the gateway and on the sidecars (`mesh`); `decoy` is its host for the sidecars.
fn passthrough_config(ns: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: passthrough-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 443, name: https-c, protocol: HTTPS}}
    tls: {{mode: PASSTHROUGH}}
    hosts: ["c.e2e.test"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: c
spec:
  hosts: ["c.e2e.test", "decoy.{ns}.svc.cluster.local"]
  gateways: [passthrough-gateway, mesh]
  tls:
  - match:
    - port: 443
      sniHosts: ["c.e2e.test"]
    route:
    - destination: {{host: tls-backend, port: {{number: 443}}}}
"#
    )
}

/// The HTTPS backend inside the mesh: `testapp serve --https 8443` with Secret `tls-backend`
/// (its certificate and key), behind Service `tls-backend` port 443 (`https`) → 8443; and the
/// Service `decoy` (port 443 `https`, selecting no pod).
async fn deploy_tls_backend(ctx: &Ctx, ns: &str) -> String {
    let labels = json!({"app": "tls-backend", "version": "v1"});
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tls-backend-v1", "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"sidecar.istio.io/proxyCPU": "10m", "sidecar.istio.io/proxyMemory": "32Mi"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "tls-backend",
                        "image": TESTAPP_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["serve", "--https", "8443",
                                 "--tls-cert", "/etc/tls/tls.crt", "--tls-key", "/etc/tls/tls.key",
                                 "--service", "tls-backend", "--version", "v1"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "https", "containerPort": 8443, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        "volumeMounts": [{"name": "tls", "mountPath": "/etc/tls", "readOnly": true}],
                    }],
                    "volumes": [{"name": "tls", "secret": {"secretName": "tls-backend"}}],
                },
            },
        },
    });
    let pp = PatchParams::apply(MANAGER).force();
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch("tls-backend-v1", &pp, &Patch::Apply(deployment))
        .await
        .unwrap();
    for (name, selector) in [("tls-backend", "tls-backend"), ("decoy", "nothing")] {
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "selector": {"app": selector},
                "ports": [{"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}],
            },
        });
        Api::<Service>::namespaced(ctx.client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(service))
            .await
            .unwrap();
    }
    let app = sample::App {
        service_ports: vec![],
        http: vec![],
        ..sample::App::http("tls-backend", "v1")
    };
    sample::wait_ready(ctx, ns, &app).await.unwrap();
    ctx.pod_name(ns, &app.selector()).await.unwrap()
}

/// Polls until `https://c.e2e.test/` through `via` (the gateway, or the decoy's address) is
/// answered by the backend with the client's SNI; the backend's report.
async fn until_backend(ctx: &Ctx, client: (&str, &str), via: &str, what: &str) -> Value {
    poll(
        what,
        Duration::from_secs(180),
        Duration::from_millis(1000),
        || async {
            let r = https_get_path(
                ctx,
                client,
                via,
                "c.e2e.test",
                "passthrough",
                "ca-c.crt",
                false,
            )
            .await?;
            if r["service"] == "tls-backend" {
                Ok(Some(r))
            } else {
                Err(format!("answered by {r}"))
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn s18_tls_passthrough_by_sni_reaches_an_https_server_in_the_mesh() {
    let Some(ctx) = setup("s18_sni_passthrough").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-passthrough", true).await.unwrap();
    let outside = ctx
        .fresh_namespace("e2e-passthrough-client", false)
        .await
        .unwrap();
    let c = Pki::new(
        "e2e passthrough CA c",
        "c.e2e.test",
        vec!["c.e2e.test".into()],
        "unused",
    );
    put_secret(
        &ctx,
        &ns,
        "tls-backend",
        "kubernetes.io/tls",
        &[("tls.crt", &c.server.0), ("tls.key", &c.server.1)],
    )
    .await;
    for client_ns in [&ns, &outside] {
        put_secret(
            &ctx,
            client_ns,
            "client-tls",
            "Opaque",
            &[
                ("ca-c.crt", &c.ca),
                ("tls.crt", &c.client.0),
                ("tls.key", &c.client.1),
            ],
        )
        .await;
    }
    let backend = deploy_tls_backend(&ctx, &ns).await;
    let outside_pod = deploy_tls_client(&ctx, &outside, false).await;
    let meshed_pod = deploy_tls_client(&ctx, &ns, true).await;
    let gateway = format!(
        "{}:443",
        ctx.cluster_ip(MESH_NAMESPACE, "istio-ingressgateway")
            .await
            .unwrap()
    );
    let decoy = format!("{}:443", ctx.cluster_ip(&ns, "decoy").await.unwrap());
    ctx.log(format!(
        "backend {ns}/{backend}; clients {outside}/{outside_pod} (outside), {ns}/{meshed_pod} \
         (meshed); gateway {gateway}, decoy {decoy}"
    ));
    ctx.apply_istio(&ns, &passthrough_config(&ns))
        .await
        .unwrap();

    // Through the gateway: the client verifies the backend's own certificate (c's CA, which
    // the gateway has no key for) and the backend sees the client's SNI.
    let r = until_backend(
        &ctx,
        (&outside, &outside_pod),
        &gateway,
        "c.e2e.test through the gateway reaches the backend, TLS unopened",
    )
    .await;
    assert_eq!(r["tls"]["sni"], "c.e2e.test", "{r}");
    assert_eq!(r["path"], "/passthrough", "{r}");
    ctx.log(format!("through the gateway: {}", r["pod"]));

    // The gateway's listener: a chain for the SNI to the backend's cluster, nothing opened.
    let gateway_pod = ctx
        .pod_name(MESH_NAMESPACE, "istio=ingressgateway")
        .await
        .unwrap();
    let listeners: Value = serde_json::from_str(
        &ctx.proxy_config(MESH_NAMESPACE, &gateway_pod, &["listeners", "-o", "json"])
            .await
            .unwrap(),
    )
    .unwrap();
    let backend_cluster = format!("outbound|443||tls-backend.{ns}.svc.cluster.local");
    let chain = listeners
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["name"] == "0.0.0.0_8443")
        .flat_map(|l| l["filterChains"].as_array().cloned().unwrap_or_default())
        .find(|fc| fc["filterChainMatch"]["serverNames"] == json!(["c.e2e.test"]))
        .unwrap_or_else(|| panic!("no SNI chain for c.e2e.test in {listeners}"));
    assert!(chain.get("transportSocket").is_none(), "{chain}");
    assert!(chain.to_string().contains(&backend_cluster), "{chain}");

    // On a sidecar: SNI c.e2e.test to the decoy's address goes to the backend ...
    let r = until_backend(
        &ctx,
        (&ns, &meshed_pod),
        &decoy,
        "a meshed client's SNI c.e2e.test to the decoy is routed to the backend",
    )
    .await;
    assert_eq!(r["tls"]["sni"], "c.e2e.test", "{r}");
    // ... another name goes to the decoy itself, which has no endpoint.
    let err = ctx
        .testapp_report(
            &ns,
            &meshed_pod,
            "tls-client",
            &[
                "testapp",
                "get",
                "--body",
                "https://other.e2e.test/",
                "--connect-to",
                &decoy,
                "--cacert",
                &format!("{CLIENT_TLS}/ca-c.crt"),
            ],
        )
        .await
        .expect_err("another SNI goes to the decoy, which has no endpoint");
    ctx.log(format!("other SNI to the decoy: {err}"));

    ctx.delete_istio(&ns).await.unwrap();
    ctx.delete_namespace(&ns).await;
    ctx.delete_namespace(&outside).await;
}
