//! Scenario 6: TCP through the mesh (client sidecar → `<clusterIP>_9000` listener → server
//! sidecar → app), and inbound capture: the server's sidecar counts the connections it took on
//! 15006 (`reporter="destination"`), and an HTTP app sees its requests arrive from the sidecar
//! (peer 127.0.0.1) although the client dialled the pod's IP.

use rustmesh_e2e::sample::{self, App, HTTP_PORT, TCP_PORT};
use rustmesh_e2e::setup;

const OPENED: &str = "istio_tcp_connections_opened_total";

#[tokio::test]
async fn s6_tcp_through_the_mesh_and_inbound_capture() {
    let Some(ctx) = setup("s6_tcp").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-tcp", true).await.unwrap();
    let (client, echo) = (sample::productpage(), sample::tcp_echo());
    sample::deploy(&ctx, &ns, &[client.clone(), echo.clone()])
        .await
        .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let echo_pod = ctx.pod_name(&ns, &echo.selector()).await.unwrap();
    let ip = ctx.cluster_ip(&ns, "tcp-echo").await.unwrap();
    let addr = format!("{ip}:{TCP_PORT}");

    // The client's sidecar has the TCP listener for the service, as Istio names it.
    let table = ctx
        .proxy_config(&ns, &client_pod, &["listeners", "--port", "9000"])
        .await
        .unwrap();
    eprintln!("$ rustmeshctl proxy-config listeners {client_pod} -n {ns} --port 9000\n{table}");
    let cluster = format!("outbound|{TCP_PORT}||tcp-echo.{ns}.svc.cluster.local");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&ip) && l.contains(&cluster)),
        "listener {ip} {TCP_PORT} → {cluster} in:\n{table}"
    );

    ctx.wait_endpoints(&ns, &client_pod, "tcp-echo", &ns, TCP_PORT, 1)
        .await
        .unwrap();
    let before = ctx
        .sidecar_metric(&ns, &echo_pod, OPENED, &["reporter=\"destination\""])
        .await
        .unwrap();
    let n = 5;
    for i in 0..n {
        let text = format!("hello-mesh-{i}");
        let answer = ctx
            .tcp_send(&ns, &client_pod, &client.app, &addr, &text)
            .await
            .unwrap();
        assert_eq!(answer.as_deref(), Ok(text.as_str()), "echo through {addr}");
    }
    let after = ctx
        .sidecar_metric(&ns, &echo_pod, OPENED, &["reporter=\"destination\""])
        .await
        .unwrap();
    ctx.log(format!(
        "{OPENED}{{reporter=\"destination\"}} on {echo_pod}: {before:.0} -> {after:.0}"
    ));
    assert!(
        after - before >= n as f64,
        "the server's sidecar took {n} connections on 15006: counter went {before} -> {after}"
    );
    let source = ctx
        .sidecar_metric(&ns, &client_pod, OPENED, &["reporter=\"source\""])
        .await
        .unwrap();
    assert!(
        source >= n as f64,
        "the client's sidecar counted {n} outbound connections: {source}"
    );
    ctx.delete_namespace(&ns).await;
}

#[tokio::test]
async fn s6_http_app_sees_requests_arrive_through_the_sidecar() {
    let Some(ctx) = setup("s6_http_inbound").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-inbound", true).await.unwrap();
    let (client, server) = (sample::productpage(), sample::details());
    sample::deploy(&ctx, &ns, &[client.clone(), server.clone()])
        .await
        .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let server_ip = sample::pod_ip(&ctx, &ns, &server.selector()).await.unwrap();
    // The pod's own IP, not the Service: still captured on both sides.
    let url = format!("http://{server_ip}:{HTTP_PORT}/inbound");
    let report = ctx
        .http_get(&ns, &client_pod, &client.app, &url, &[])
        .await
        .unwrap();
    ctx.log(format!(
        "{url} answered by {}/{} ({}), peer {} local {}",
        report.service, report.version, report.pod, report.peer, report.local
    ));
    assert_eq!(report.service, "details");
    // Without capture the app would see the client pod's IP; through 15006 the sidecar connects
    // to the app from 127.0.0.6 (Istio 1.10+ forwarding to the pod address, and passthrough).
    assert!(
        report.peer.starts_with("127.0.0."),
        "the app saw the request from {} (want a loopback address: the sidecar)",
        report.peer
    );
    ctx.delete_namespace(&ns).await;
}

/// Istio 1.10+ inbound forwarding: the sidecar delivers to the pod's own address (from
/// 127.0.0.6), as the network would without a mesh. An app bound only to its pod IP is
/// reachable through the mesh; an app bound only to 127.0.0.1 on a service port stays private
/// (the request fails; before Istio 1.10, and in rustmesh before this, it was exposed). Under
/// `interceptionMode: TPROXY` the app sees the calling pod's own address instead of 127.0.0.6.
#[tokio::test]
async fn s6_inbound_goes_to_the_pod_address_so_pod_ip_apps_work_and_localhost_stays_private() {
    let Some(ctx) = setup("s6_pod_ip").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-podip", true).await.unwrap();
    let client = sample::productpage();
    let mut pod_ip_app = sample::details();
    pod_ip_app.extra_args = vec!["--bind".into(), "$(POD_IP)".into()];
    let mut local_app = sample::ratings();
    local_app.extra_args = vec!["--bind".into(), "127.0.0.1".into()];
    // TPROXY: the sidecar connects to the app from the client's own address.
    let mut tproxy_app = sample::reviews("v1");
    tproxy_app
        .annotations
        .insert("sidecar.istio.io/interceptionMode".into(), "TPROXY".into());
    sample::deploy(
        &ctx,
        &ns,
        &[
            client.clone(),
            pod_ip_app.clone(),
            local_app.clone(),
            tproxy_app.clone(),
        ],
    )
    .await
    .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    for svc in ["details", "ratings", "reviews"] {
        ctx.wait_endpoints(&ns, &client_pod, svc, &ns, HTTP_PORT, 1)
            .await
            .unwrap();
    }

    let url = format!("http://details:{HTTP_PORT}/bound-to-pod-ip");
    let report = ctx
        .http_get(&ns, &client_pod, &client.app, &url, &[])
        .await
        .unwrap();
    ctx.log(format!(
        "{url}: answered by {} (peer {})",
        report.service, report.peer
    ));
    assert_eq!(report.service, "details");
    assert!(
        report.peer.starts_with("127.0.0.6:"),
        "the sidecar connects from 127.0.0.6, not {}",
        report.peer
    );

    let client_ip = ctx
        .pods(&ns)
        .get(&client_pod)
        .await
        .unwrap()
        .status
        .and_then(|s| s.pod_ip)
        .expect("the client pod has an address");
    let url = format!("http://reviews:{HTTP_PORT}/tproxy");
    let report = ctx
        .http_get(&ns, &client_pod, &client.app, &url, &[])
        .await
        .unwrap();
    ctx.log(format!(
        "{url}: answered by {} (peer {}; client {client_ip})",
        report.service, report.peer
    ));
    assert_eq!(report.service, "reviews");
    assert!(
        report.peer.starts_with(&format!("{client_ip}:")),
        "under TPROXY the app sees the client {client_ip}, not {}",
        report.peer
    );

    let url = format!("http://ratings:{HTTP_PORT}/bound-to-localhost");
    let s = ctx
        .http_load(&ns, &client_pod, &client.app, &url, 3, 1, &[])
        .await
        .unwrap();
    ctx.log(format!("{url}: {s:?}"));
    assert_eq!(
        s.status(200),
        0,
        "an app bound to 127.0.0.1 is private: {s:?}"
    );
    assert_eq!(s.status(503), 3, "the sidecar cannot reach it: {s:?}");
    ctx.delete_namespace(&ns).await;
}

/// Scenario 22 (#20): a VirtualService `tcp` rule matching `sourceLabels`, as Istio reads it:
/// it applies to connections from the pods carrying the labels (ratings here), whose sidecars
/// send them to the canary; every other pod's sidecar (productpage) takes the next rule, to
/// the service itself. Both sidecars read the same document; each keeps the chain its pod's
/// labels allow. Counted by the servers' sidecars.
#[tokio::test]
async fn s22_a_tcp_route_with_source_labels_applies_to_the_pods_carrying_them() {
    use rustmesh_e2e::poll;
    use std::time::Duration;
    let Some(ctx) = setup("s22_source_labels").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-srclabels", true).await.unwrap();
    let (labelled, other) = (sample::ratings(), sample::productpage());
    let echo = sample::tcp_echo();
    let canary = App {
        app: "tcp-echo-canary".into(),
        ..sample::tcp_echo()
    };
    sample::deploy(
        &ctx,
        &ns,
        &[
            labelled.clone(),
            other.clone(),
            echo.clone(),
            canary.clone(),
        ],
    )
    .await
    .unwrap();
    ctx.apply_istio(
        &ns,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - match:
    - sourceLabels: {app: ratings}
    route:
    - destination: {host: tcp-echo-canary, port: {number: 9000}}
  - route:
    - destination: {host: tcp-echo}
"#,
    )
    .await
    .unwrap();
    let labelled_pod = ctx.pod_name(&ns, &labelled.selector()).await.unwrap();
    let other_pod = ctx.pod_name(&ns, &other.selector()).await.unwrap();
    let echo_pod = ctx.pod_name(&ns, &echo.selector()).await.unwrap();
    let canary_pod = ctx.pod_name(&ns, &canary.selector()).await.unwrap();
    for client in [&labelled_pod, &other_pod] {
        for svc in ["tcp-echo", "tcp-echo-canary"] {
            ctx.wait_endpoints(&ns, client, svc, &ns, TCP_PORT, 1)
                .await
                .unwrap();
        }
    }
    let addr = format!(
        "{}:{TCP_PORT}",
        ctx.cluster_ip(&ns, "tcp-echo").await.unwrap()
    );
    let opened = |pod: String| {
        let (ctx, ns) = (&ctx, &ns);
        async move {
            ctx.sidecar_metric(ns, &pod, OPENED, &["reporter=\"destination\""])
                .await
                .unwrap()
        }
    };
    let send = |pod: String, container: String, text: String| {
        let (ctx, ns, addr) = (&ctx, &ns, &addr);
        async move {
            let answer = ctx
                .tcp_send(ns, &pod, &container, addr, &text)
                .await
                .unwrap();
            assert_eq!(answer.as_deref(), Ok(text.as_str()), "echo through {addr}");
        }
    };

    // The rule reaches ratings' sidecar: its connections arrive at the canary.
    let canary_before = opened(canary_pod.clone()).await;
    let (send_ref, opened_ref, labelled_ref, canary_ref) =
        (&send, &opened, &labelled_pod, &canary_pod);
    let app = labelled.app.clone();
    let app_ref = &app;
    poll(
        "ratings' connections to tcp-echo arriving at the canary",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async move {
            send_ref(labelled_ref.clone(), app_ref.clone(), "probe".into()).await;
            let now = opened_ref(canary_ref.clone()).await;
            if now > canary_before {
                Ok(Some(now))
            } else {
                Err(format!("the canary took {now} connections"))
            }
        },
    )
    .await
    .unwrap();

    // Then, counted: ratings' connections go to the canary, productpage's to tcp-echo.
    let n = 4;
    let (echo_before, canary_before) = (
        opened(echo_pod.clone()).await,
        opened(canary_pod.clone()).await,
    );
    for i in 0..n {
        send(
            labelled_pod.clone(),
            labelled.app.clone(),
            format!("from-ratings-{i}"),
        )
        .await;
        send(
            other_pod.clone(),
            other.app.clone(),
            format!("from-productpage-{i}"),
        )
        .await;
    }
    let (echo_after, canary_after) = (
        opened(echo_pod.clone()).await,
        opened(canary_pod.clone()).await,
    );
    ctx.log(format!(
        "{n} connections from each client: tcp-echo took {:.0}, the canary {:.0}",
        echo_after - echo_before,
        canary_after - canary_before
    ));
    assert_eq!(echo_after - echo_before, f64::from(n), "productpage's only");
    assert_eq!(canary_after - canary_before, f64::from(n), "ratings' only");
    ctx.delete_namespace(&ns).await;
}
