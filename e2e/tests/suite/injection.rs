//! Scenario 1: `kubectl label namespace NS istio-injection=enabled`, then new pods have
//! `istio-init` and `istio-proxy`; a pod that opts out and a pod of an unlabelled namespace have
//! neither. The injected pod's capture step ran (istio-init exited 0), its sidecar serves a
//! configuration, and `rustmeshctl proxy-config listeners` shows Istio's listener table.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use rustmesh_e2e::sample::{self, App};
use rustmesh_e2e::setup;

#[tokio::test]
async fn s1_injection_follows_the_namespace_label_and_the_opt_out() {
    let Some(ctx) = setup("s1_injection").await else {
        return;
    };
    // Created unlabelled, then labelled the way users do it.
    let ns = ctx.fresh_namespace("e2e-inject", false).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"labels": {"istio-injection": "enabled"}}}),
            ),
        )
        .await
        .unwrap();
    let plain_ns = ctx.fresh_namespace("e2e-plain", false).await.unwrap();

    let meshed = sample::productpage();
    let opted_out = App {
        inject: Some(false),
        ..App::http("optout", "v1")
    };
    let unlabelled = App::http("plain", "v1");
    sample::deploy(&ctx, &ns, &[meshed.clone(), opted_out.clone()])
        .await
        .unwrap();
    sample::deploy(&ctx, &plain_ns, std::slice::from_ref(&unlabelled))
        .await
        .unwrap();

    let pod = &ctx.pods_with(&ns, &meshed.selector()).await.unwrap()[0];
    let (init, containers) = sample::container_names(pod);
    ctx.log(format!(
        "{ns}/{}: init containers {init:?}, containers {containers:?}",
        pod.metadata.name.as_deref().unwrap_or_default()
    ));
    assert_eq!(init, ["istio-init"], "the injected pod's init containers");
    assert!(
        containers.contains(&"istio-proxy".to_string())
            && containers.contains(&"productpage".to_string()),
        "the injected pod's containers: {containers:?}"
    );
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let status = annotations
        .get("sidecar.istio.io/status")
        .expect("sidecar.istio.io/status annotation on the injected pod");
    assert!(
        status.contains("istio-proxy"),
        "status annotation: {status}"
    );
    // The capture step ran and succeeded; the sidecar became ready (deploy waited for 2/2).
    let init_status = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.clone())
        .unwrap_or_default();
    let exit = init_status
        .iter()
        .find(|c| c.name == "istio-init")
        .and_then(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code));
    assert_eq!(exit, Some(0), "istio-init's exit code");

    for (ns, app) in [(&ns, &opted_out), (&plain_ns, &unlabelled)] {
        let pod = &ctx.pods_with(ns, &app.selector()).await.unwrap()[0];
        let (init, containers) = sample::container_names(pod);
        ctx.log(format!(
            "{ns}/{}: init {init:?}, containers {containers:?}",
            app.app
        ));
        assert!(
            init.is_empty(),
            "{ns}/{}: init containers {init:?}",
            app.app
        );
        assert_eq!(
            containers,
            std::slice::from_ref(&app.app),
            "{ns}/{} containers",
            app.app
        );
        assert!(
            !pod.metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .contains_key("sidecar.istio.io/status"),
            "{ns}/{} carries an injection status",
            app.app
        );
    }

    // What the sidecar serves, as `rustmeshctl proxy-config listeners` prints it (issue #8).
    let name = pod.metadata.name.clone().unwrap();
    let table = ctx.proxy_config(&ns, &name, &["listeners"]).await.unwrap();
    eprintln!("$ rustmeshctl proxy-config listeners {name} -n {ns}\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("0.0.0.0")
            && l.contains("15001")
            && l.contains("PassthroughCluster")),
        "virtualOutbound (0.0.0.0 15001 ... PassthroughCluster) in:\n{table}"
    );
    assert!(
        lines.iter().any(|l| l.contains("15006")
            && l.contains("Addr: *:9080")
            && l.contains("inbound|9080||")),
        "virtualInbound's chain for the app's port 9080 in:\n{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("0.0.0.0") && l.contains(" 9080 ") && l.contains("Route: 9080")),
        "the outbound HTTP listener 0.0.0.0 9080 Route: 9080 in:\n{table}"
    );

    ctx.delete_namespace(&ns).await;
    ctx.delete_namespace(&plain_ns).await;
}

/// Issue #18: a pod opting in with `sidecar.istio.io/inject: "true"` in a namespace without the
/// injection label is injected (as Istio's injector does), and the operator writes that
/// namespace's configuration too, so its sidecar becomes ready and routes: a second opted-in
/// pod is reached through both sidecars (the app sees the sidecar's 127.0.0.6). The server pod's
/// `prometheus.io/*` point at 15020, whose `/stats/prometheus` counts the request.
#[tokio::test]
async fn s1_pods_opting_in_in_an_unlabelled_namespace_get_a_configured_sidecar() {
    let Some(ctx) = setup("s1_opt_in").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-optin", false).await.unwrap();
    let client = App {
        inject: Some(true),
        ..sample::productpage()
    };
    let server = App {
        inject: Some(true),
        ..sample::details()
    };
    // `deploy` waits for every pod to be Ready: the sidecar is ready only once configured.
    sample::deploy(&ctx, &ns, &[client.clone(), server.clone()])
        .await
        .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let pod = ctx
        .pods_with(&ns, &client.selector())
        .await
        .unwrap()
        .remove(0);
    let containers: Vec<String> = pod
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(
        containers.contains(&"istio-proxy".to_string()),
        "{containers:?}"
    );
    ctx.wait_endpoints(&ns, &client_pod, "details", &ns, sample::HTTP_PORT, 1)
        .await
        .unwrap();
    let url = format!("http://details:{}/opted-in", sample::HTTP_PORT);
    let report = ctx
        .http_get(&ns, &client_pod, &client.app, &url, &[])
        .await
        .unwrap();
    assert_eq!(report.service, "details");
    assert!(
        report.peer.starts_with("127.0.0.6:"),
        "through the server's sidecar: {}",
        report.peer
    );

    // Istio's metrics merging: Prometheus is pointed at the sidecar's 15020, which answers the
    // sidecar's metrics (the request just served among them).
    let server_pod = ctx
        .pods_with(&ns, &server.selector())
        .await
        .unwrap()
        .remove(0);
    let annotations = server_pod.metadata.annotations.clone().unwrap_or_default();
    for (key, want) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "15020"),
        ("prometheus.io/path", "/stats/prometheus"),
    ] {
        assert_eq!(
            annotations.get(key).map(String::as_str),
            Some(want),
            "{key} in {annotations:?}"
        );
    }
    let name = server_pod.metadata.name.unwrap();
    let merged = ctx
        .pod_port_get(&ns, &name, 15020, "/stats/prometheus")
        .await
        .unwrap();
    assert!(
        merged
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")),
        "15020/stats/prometheus of {name}:\n{merged}"
    );
    ctx.delete_namespace(&ns).await;
}
