//! Scenario 19 (issue #20): Istio's egress gateway task, with a gateway the user makes
//! themselves. A Deployment `istio-egressgateway` (its own namespace, pods labelled
//! `istio: egressgateway` and `sidecar.istio.io/inject: "true"`, the annotation
//! `inject.istio.io/templates: gateway` and a container `istio-proxy` with `image: auto`, as
//! Istio's gateway chart makes them) is completed by the injector into a router; its Service
//! maps port 80 to the pods' 8080. A ServiceEntry registers the external server (a pod outside
//! the mesh, `external.e2e.test`, resolution STATIC at its address); a Gateway on the egress
//! gateway (port 80, that host) and a VirtualService bound to `mesh` and to it send a meshed
//! client's requests for the host to the egress gateway, and the gateway's to the external
//! server. The external server sees the request come from the egress gateway's pod, not the
//! client's; the gateway's listener and route table are named as Istio's (`0.0.0.0_8080`,
//! `http.8080`). Without the VirtualService the client's sidecar sends the request straight
//! to the server.
//!
//! Then Istio's mutual TLS between the sidecar and the egress gateway: the Gateway's server on
//! 443 is `ISTIO_MUTUAL` (the gateway presents its workload certificate and requires the
//! client's, both from the mesh CA), a DestinationRule gives the sidecar's cluster for the
//! gateway's port 443 `ISTIO_MUTUAL` with `sni` the external host (the server's host, which
//! picks its filter chain), and the VirtualService sends the client's requests there. The
//! request still reaches the external server from the gateway's pod, and the gateway's
//! listener `0.0.0.0_8443` terminates mutual TLS; with the DestinationRule gone the sidecar
//! speaks plain HTTP to port 443 and the gateway serves nothing.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustmesh_api::DestinationRule;
use rustmesh_e2e::sample::{self, EXTERNAL_PORT};
use rustmesh_e2e::{Ctx, MANAGER, poll, setup};
use serde_json::json;
use std::time::Duration;

const HOST: &str = "external.e2e.test";

/// The egress gateway as a user makes it with Istio's gateway injection template.
async fn deploy_egress_gateway(ctx: &Ctx, ns: &str) -> String {
    let labels = json!({"app": "istio-egressgateway", "version": "v1", "istio": "egressgateway",
                        "sidecar.istio.io/inject": "true"});
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "istio-egressgateway-v1", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "istio-egressgateway", "version": "v1"}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"inject.istio.io/templates": "gateway",
                                    "sidecar.istio.io/proxyCPU": "10m",
                                    "sidecar.istio.io/proxyMemory": "32Mi"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "istio-proxy",
                        "image": "auto",
                        "ports": [{"name": "http2", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "https", "containerPort": 8443, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                    }],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "istio-egressgateway", "namespace": ns},
        "spec": {
            "selector": {"istio": "egressgateway"},
            "ports": [{"name": "http2", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                      {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}],
        },
    });
    let pp = PatchParams::apply(MANAGER).force();
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch("istio-egressgateway-v1", &pp, &Patch::Apply(deployment))
        .await
        .unwrap();
    Api::<Service>::namespaced(ctx.client.clone(), ns)
        .patch("istio-egressgateway", &pp, &Patch::Apply(service))
        .await
        .unwrap();
    let app = sample::App {
        service_ports: vec![],
        http: vec![],
        ..sample::App::http("istio-egressgateway", "v1")
    };
    let pods = sample::wait_ready(ctx, ns, &app).await.unwrap();
    pods[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the gateway's IP")
}

fn entry(ext_ip: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external
spec:
  hosts: ["{HOST}"]
  ports:
  - {{number: {EXTERNAL_PORT}, name: http, protocol: HTTP}}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: "{ext_ip}"
"#
    )
}

fn through_the_gateway(gateway_ns: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: egress-gateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["{HOST}"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: external-through-egress-gateway
spec:
  hosts: ["{HOST}"]
  gateways: [egress-gateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: {EXTERNAL_PORT}}}]
    route:
    - destination: {{host: istio-egressgateway.{gateway_ns}.svc.cluster.local, port: {{number: 80}}}}
  - match: [{{gateways: [egress-gateway], port: 80}}]
    route:
    - destination: {{host: "{HOST}", port: {{number: {EXTERNAL_PORT}}}}}
"#
    )
}

/// Istio's egress gateway with mutual TLS from the sidecars: an `ISTIO_MUTUAL` HTTPS server on
/// 443 for the host, the sidecars' cluster for the gateway's 443 `ISTIO_MUTUAL` with `sni` the
/// host, the mesh's requests to it and the gateway's to the server.
fn mutual_through_the_gateway(gateway_ns: &str) -> String {
    let gateway = format!("istio-egressgateway.{gateway_ns}.svc.cluster.local");
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: egress-gateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-external
spec:
  host: {gateway}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: ISTIO_MUTUAL, sni: "{HOST}"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: external-through-egress-gateway
spec:
  hosts: ["{HOST}"]
  gateways: [egress-gateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: {EXTERNAL_PORT}}}]
    route:
    - destination: {{host: {gateway}, port: {{number: 443}}}}
  - match: [{{gateways: [egress-gateway], port: 443}}]
    route:
    - destination: {{host: "{HOST}", port: {{number: {EXTERNAL_PORT}}}}}
"#
    )
}

#[tokio::test]
async fn s19_an_egress_gateway_made_with_the_gateway_template_carries_a_service_entry_host() {
    let Some(ctx) = setup("s19_egress_gateway").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-egw", true).await.unwrap();
    let gateway_ns = ctx.fresh_namespace("e2e-egw-gateway", false).await.unwrap();
    let outside = ctx
        .fresh_namespace("e2e-egw-external", false)
        .await
        .unwrap();
    let client = sample::productpage();
    sample::deploy(&ctx, &ns, std::slice::from_ref(&client))
        .await
        .unwrap();
    sample::deploy(&ctx, &outside, &[sample::external()])
        .await
        .unwrap();
    let ext_ip = sample::pod_ip(&ctx, &outside, "app=external")
        .await
        .unwrap();
    let gateway_ip = deploy_egress_gateway(&ctx, &gateway_ns).await;
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let client_ip = sample::pod_ip(&ctx, &ns, &client.selector()).await.unwrap();
    let url = format!("http://{ext_ip}:{EXTERNAL_PORT}/egress");
    let host = format!("Host: {HOST}");
    ctx.log(format!(
        "client {ns}/{pod} ({client_ip}), egress gateway {gateway_ns} ({gateway_ip}), \
         external server {ext_ip}"
    ));
    // The injector made the pod a router: the gateway template, no capture.
    let gateway_pod = ctx
        .pod_name(&gateway_ns, "istio=egressgateway")
        .await
        .unwrap();

    // Registered, no VirtualService: the client's sidecar goes straight to the server.
    ctx.apply_istio(&ns, &entry(&ext_ip)).await.unwrap();
    let from = |want: String, what: &'static str| {
        let (ctx, ns, pod, url, host) = (&ctx, &ns, &pod, &url, &host);
        async move {
            poll(
                what,
                Duration::from_secs(180),
                Duration::from_millis(500),
                || {
                    let want = want.clone();
                    async move {
                        let r = ctx
                            .http_get(ns, pod, "productpage", url, &[host.as_str()])
                            .await
                            .map_err(|e| e.to_string())?;
                        let peer_ip = r.peer.rsplit_once(':').map(|(ip, _)| ip.to_string());
                        if r.service == "external" && peer_ip.as_deref() == Some(want.as_str()) {
                            Ok(Some(r))
                        } else {
                            Err(format!("answered by {} from {}", r.service, r.peer))
                        }
                    }
                },
            )
            .await
            .unwrap()
        }
    };
    from(
        client_ip.clone(),
        "the ServiceEntry host is reached straight from the client's pod",
    )
    .await;

    // Through the egress gateway.
    ctx.apply_istio(&ns, &through_the_gateway(&gateway_ns))
        .await
        .unwrap();
    let r = from(
        gateway_ip.clone(),
        "the ServiceEntry host is reached through the egress gateway",
    )
    .await;
    assert_eq!(
        r.headers.get("host").map(String::as_str),
        Some(HOST),
        "{r:?}"
    );
    let listeners = ctx
        .proxy_config(&gateway_ns, &gateway_pod, &["listeners", "-o", "json"])
        .await
        .unwrap();
    assert!(listeners.contains("\"0.0.0.0_8080\""), "{listeners}");
    let routes = ctx
        .proxy_config(&gateway_ns, &gateway_pod, &["routes", "-o", "json"])
        .await
        .unwrap();
    assert!(
        routes.contains("http.8080") && routes.contains(HOST),
        "{routes}"
    );
    let clusters = ctx
        .proxy_config(&gateway_ns, &gateway_pod, &["clusters", "-o", "json"])
        .await
        .unwrap();
    assert!(
        clusters.contains(&format!("outbound|{EXTERNAL_PORT}||{HOST}")),
        "{clusters}"
    );

    // Mutual TLS from the sidecar to the egress gateway (ISTIO_MUTUAL both ends).
    ctx.apply_istio(&ns, &mutual_through_the_gateway(&gateway_ns))
        .await
        .unwrap();
    let listeners = poll(
        "the gateway's 0.0.0.0_8443 terminating ISTIO_MUTUAL",
        Duration::from_secs(120),
        Duration::from_millis(1000),
        || async {
            let l = ctx
                .proxy_config(&gateway_ns, &gateway_pod, &["listeners", "-o", "json"])
                .await
                .map_err(|e| e.to_string())?;
            if l.contains("\"0.0.0.0_8443\"") && l.contains("ROOTCA") {
                Ok(Some(l))
            } else {
                Err("no 0.0.0.0_8443 with the mesh root yet".to_string())
            }
        },
    )
    .await
    .unwrap();
    assert!(
        listeners.contains(HOST),
        "the chain's server name: {listeners}"
    );
    let r = from(
        gateway_ip.clone(),
        "the ServiceEntry host is reached through the egress gateway over mutual TLS",
    )
    .await;
    assert_eq!(
        r.headers.get("host").map(String::as_str),
        Some(HOST),
        "{r:?}"
    );
    // The sidecar's cluster to the gateway's 443 speaks ISTIO_MUTUAL with the host as SNI.
    let client_clusters = ctx
        .proxy_config(&ns, &pod, &["clusters", "-o", "json"])
        .await
        .unwrap();
    let gateway_cluster =
        format!("outbound|443||istio-egressgateway.{gateway_ns}.svc.cluster.local");
    assert!(
        client_clusters.contains(&gateway_cluster),
        "{gateway_cluster} in {client_clusters}"
    );
    // Without the DestinationRule the sidecar sends plain HTTP to 443, which the gateway's
    // mutual TLS chain does not serve: the request fails.
    Api::<DestinationRule>::namespaced(ctx.client.clone(), &ns)
        .delete("egressgateway-for-external", &DeleteParams::default())
        .await
        .unwrap();
    poll(
        "plain text to the ISTIO_MUTUAL server is refused",
        Duration::from_secs(120),
        Duration::from_millis(1000),
        || async {
            match ctx
                .http_get(&ns, &pod, "productpage", &url, &[host.as_str()])
                .await
            {
                Ok(r) if r.service == "external" => Err(format!("still served from {}", r.peer)),
                _ => Ok(Some(())),
            }
        },
    )
    .await
    .unwrap();

    ctx.delete_istio(&ns).await.unwrap();
    ctx.delete_namespace(&ns).await;
    ctx.delete_namespace(&gateway_ns).await;
    ctx.delete_namespace(&outside).await;
}
