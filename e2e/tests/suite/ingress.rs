//! Scenario 16 (issue #20): Istio's bookinfo ingress flow through the install's
//! `istio-ingressgateway` (the chart's `ingressGateway`, the proxy run as a router). A Gateway
//! selecting `istio: ingressgateway` (port 80, HTTP, one host) and a VirtualService bound to it
//! route requests from a client outside the mesh (a pod without a sidecar) through the
//! gateway's Service: `/productpage` to productpage, `/reviews` to reviews. Another host gets
//! 404 from the gateway; the gateway's listener and route table are named as Istio names them
//! (the Service maps port 80 to the pods' 8080: `0.0.0.0_8080`, `http.8080`); a VirtualService
//! bound only to the gateway is not applied to the namespace's sidecars.

use rustmesh_e2e::sample::{self, EXTERNAL_PORT};
use rustmesh_e2e::{Ctx, MESH_NAMESPACE, Report, poll, setup};
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
