//! Scenario 15 (issue #21, observability): a real Prometheus server (Debian's, started by the
//! test on the node, `rustmesh_e2e::prometheus`) scrapes the sidecars where the injector's
//! `prometheus.io/*` annotations point (15020 `/stats/prometheus`), while productpage calls
//! reviews v1 for a while; then the queries behind Kiali's graph and Istio's dashboards must
//! answer as they do with Istio:
//!
//! - Kiali's graph edge, `sum(rate(istio_requests_total{reporter=...}[1m])) by
//!   (source_workload, destination_workload, response_code)`, from both reporters;
//! - the dashboards' latency panel: `istio_request_duration_milliseconds_bucket` for the edge,
//!   and a `histogram_quantile` over it;
//! - every label of Istio's standard metrics ("Istio Standard Metrics") on
//!   `istio_requests_total` with its real value from each side: workloads, apps, versions,
//!   canonical services and revisions, clusters, SPIFFE principals (auto mTLS),
//!   `destination_service*`, `connection_security_policy` (`mutual_tls` at the destination,
//!   `unknown` at the source, as Istio documents).
//!
//! The peer's labels (`source_*` at the destination, `destination_*` at the source) come from
//! Istio's peer metadata exchange; all checks run and the failures are reported together.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;
use rustmesh_e2e::prometheus::{Labels, Prometheus, Series, Target, format_labels, format_series};
use rustmesh_e2e::sample::{self, HTTP_PORT};
use rustmesh_e2e::setup;
use std::time::{Duration, Instant};

/// How long traffic flows while Prometheus scrapes (several scrapes: `rate` needs two).
const TRAFFIC: Duration = Duration::from_secs(20);

/// The mesh's cluster name as the injector gave it to a pod's sidecar (`ISTIO_META_CLUSTER_ID`,
/// Istio's default `Kubernetes`): what `source_cluster` / `destination_cluster` must read.
fn cluster_id(pod: &Pod) -> String {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.name == "istio-proxy")
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == "ISTIO_META_CLUSTER_ID")
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| "Kubernetes".into())
}

fn get<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map(String::as_str).unwrap_or("")
}

/// Kiali's graph query for one reporter.
fn kiali_edges(reporter: &str) -> String {
    format!(
        "sum(rate(istio_requests_total{{reporter=\"{reporter}\"}}[1m])) \
         by (source_workload, destination_workload, response_code)"
    )
}

#[tokio::test]
async fn s15_prometheus_scrapes_the_sidecars_for_kiali_and_the_dashboards() {
    let Some(ctx) = setup("s15_telemetry").await else {
        return;
    };
    assert!(
        Prometheus::available(),
        "{} is missing: run scripts/install-deps.sh as root (Debian's prometheus)",
        rustmesh_e2e::prometheus::PROMETHEUS_BIN
    );
    let ns = ctx.fresh_namespace("e2e-telemetry", true).await.unwrap();
    let (client, server) = (sample::productpage(), sample::reviews("v1"));
    sample::deploy(&ctx, &ns, &[client.clone(), server.clone()])
        .await
        .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let server_pod = ctx.pod_name(&ns, &server.selector()).await.unwrap();
    ctx.wait_endpoints(&ns, &client_pod, "reviews", &ns, HTTP_PORT, 1)
        .await
        .unwrap();

    // Prometheus on the node, pointed at the namespace's pods as Istio's job would find them.
    let prom = Prometheus::start().await.unwrap();
    ctx.log(format!(
        "prometheus {} ready in {:.2} s (scrape every {:?})",
        prom.url(),
        prom.startup().as_secs_f64(),
        prom.scrape_interval()
    ));
    let pods: Vec<Pod> = ctx
        .pods(&ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let targets: Vec<Target> = pods.iter().filter_map(Target::from_pod).collect();
    assert_eq!(
        targets.len(),
        2,
        "both injected pods carry the injector's prometheus.io annotations (scrape, port, \
         path): {targets:?}\nannotations: {:?}",
        pods.iter()
            .map(|p| (p.name_any(), p.annotations().clone()))
            .collect::<Vec<_>>()
    );
    for t in &targets {
        assert!(
            t.address.ends_with(":15020") && t.path == "/stats/prometheus",
            "the sidecar's merged metrics on the status port: {t:?}"
        );
    }
    prom.set_targets(&targets).unwrap();
    let start = Instant::now();
    prom.wait_targets_up(2, Duration::from_secs(60))
        .await
        .unwrap();
    ctx.log(format!(
        "both sidecars scraped (up) {:.1} s after set_targets",
        start.elapsed().as_secs_f64()
    ));

    // Traffic productpage → reviews for a while, so that several scrapes see it grow.
    let ip = ctx.cluster_ip(&ns, "reviews").await.unwrap();
    let url = format!("http://{ip}:{HTTP_PORT}/reviews/0");
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < TRAFFIC {
        let s = ctx
            .http_load(&ns, &client_pod, &client.app, &url, 40, 2, &[])
            .await
            .unwrap();
        assert_eq!(s.status(200), s.requests, "productpage → reviews: {s:?}");
        sent += s.requests;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ctx.log(format!(
        "{sent} requests in {:.1} s",
        start.elapsed().as_secs_f64()
    ));

    // Both sidecars' counters have reached Prometheus, as rates (whatever their labels).
    let any = "sum(rate(istio_requests_total[1m])) by (reporter)";
    let start = Instant::now();
    prom.wait_for(
        any,
        |r| {
            ["source", "destination"].iter().all(|rep| {
                r.iter()
                    .any(|(l, v)| get(l, "reporter") == *rep && *v > 0.0)
            })
        },
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("no istio_requests_total rate from both reporters: {e}"));
    ctx.log(format!(
        "rates of both reporters queryable {:.1} s after the traffic",
        start.elapsed().as_secs_f64()
    ));

    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        ctx.log(format!("{} {what}", if ok { "PASS" } else { "FAIL" }));
        if !ok {
            failures.push(what);
        }
    };
    let query = |q: String| {
        let prom = &prom;
        async move {
            let r = prom.query(&q).await.unwrap();
            (q, r)
        }
    };
    let is_edge = |l: &Labels| {
        get(l, "source_workload") == "productpage-v1"
            && get(l, "destination_workload") == "reviews-v1"
    };

    // Kiali's graph: the edge productpage-v1 → reviews-v1, 200, from each reporter.
    for reporter in ["destination", "source"] {
        let (q, r) = query(kiali_edges(reporter)).await;
        let ok = r
            .iter()
            .any(|(l, v)| is_edge(l) && get(l, "response_code") == "200" && *v > 0.0);
        check(
            ok,
            format!(
                "Kiali's graph edge from reporter=\"{reporter}\": `{q}` has \
                 {{source_workload=\"productpage-v1\", destination_workload=\"reviews-v1\", \
                 response_code=\"200\"}} with a rate > 0; it returned:\n{}",
                format_series(&r)
            ),
        );
    }

    // Istio's dashboards' latency panel: the edge's buckets, and a quantile from them.
    let (q, r) = query(
        "sum(rate(istio_request_duration_milliseconds_bucket{reporter=\"destination\"}[1m])) \
         by (source_workload, destination_workload, le)"
            .into(),
    )
    .await;
    let buckets: Series = r.iter().filter(|(l, _)| is_edge(l)).cloned().collect();
    let inf = buckets
        .iter()
        .any(|(l, v)| get(l, "le") == "+Inf" && *v > 0.0);
    check(
        buckets.len() > 1 && inf,
        format!(
            "the latency histogram for the edge: `{q}` has productpage-v1 → reviews-v1 buckets \
             (le=\"+Inf\" with a rate > 0); it returned:\n{}",
            format_series(&r)
        ),
    );
    let (q, r) = query(
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{\
         reporter=\"destination\",source_workload=\"productpage-v1\",\
         destination_workload=\"reviews-v1\"}[1m])) by (le))"
            .into(),
    )
    .await;
    check(
        r.len() == 1 && r[0].1.is_finite() && r[0].1 >= 0.0,
        format!(
            "the dashboards' P99 for the edge: `{q}` is one finite value; it returned:\n{}",
            format_series(&r)
        ),
    );

    // Every standard label, with its real value, on each side's series of the edge.
    let by_pod = |name: &str| pods.iter().find(|p| p.name_any() == name).unwrap();
    let (client_cluster, server_cluster) = (
        cluster_id(by_pod(&client_pod)),
        cluster_id(by_pod(&server_pod)),
    );
    let spiffe = format!("spiffe://cluster.local/ns/{ns}/sa/default");
    let service = format!("reviews.{ns}.svc.cluster.local");
    for (reporter, reporter_pod, policy) in [
        ("destination", &server_pod, "mutual_tls"),
        ("source", &client_pod, "unknown"),
    ] {
        let want: Vec<(&str, &str)> = vec![
            ("source_workload", "productpage-v1"),
            ("source_workload_namespace", ns.as_str()),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("source_canonical_service", "productpage"),
            ("source_canonical_revision", "v1"),
            ("source_cluster", client_cluster.as_str()),
            ("source_principal", spiffe.as_str()),
            ("destination_workload", "reviews-v1"),
            ("destination_workload_namespace", ns.as_str()),
            ("destination_app", "reviews"),
            ("destination_version", "v1"),
            ("destination_canonical_service", "reviews"),
            ("destination_canonical_revision", "v1"),
            ("destination_cluster", server_cluster.as_str()),
            ("destination_principal", spiffe.as_str()),
            ("destination_service", service.as_str()),
            ("destination_service_name", "reviews"),
            ("destination_service_namespace", ns.as_str()),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("response_flags", "-"),
            ("connection_security_policy", policy),
        ];
        // The reporting sidecar's own series (by the target label `pod`), for the 200s.
        let (q, r) = query(format!(
            "istio_requests_total{{reporter=\"{reporter}\",namespace=\"{ns}\",\
             pod=\"{reporter_pod}\",response_code=\"200\"}}"
        ))
        .await;
        if r.is_empty() {
            check(
                false,
                format!("`{q}` has the edge's series from {reporter_pod}; it returned none"),
            );
            continue;
        }
        for (labels, _) in &r {
            let wrong: Vec<String> = want
                .iter()
                .filter(|(k, v)| labels.get(*k).map(String::as_str) != Some(*v))
                .map(|(k, v)| match labels.get(*k) {
                    Some(got) => format!("{k}={got:?} (want {v:?})"),
                    None => format!("{k} missing (want {v:?})"),
                })
                .collect();
            check(
                wrong.is_empty(),
                format!(
                    "Istio's standard labels on `{q}` (reported by {reporter_pod}): {}\n  series: {}",
                    if wrong.is_empty() {
                        "all as Istio gives them".to_string()
                    } else {
                        wrong.join(", ")
                    },
                    format_labels(labels)
                ),
            );
        }
    }

    assert!(
        failures.is_empty(),
        "{} of the telemetry checks failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    drop(prom);
    ctx.delete_namespace(&ns).await;
}

/// Istio's access logs (meshConfig `accessLogFile: /dev/stdout`, the operator's
/// `ACCESS_LOG_FILE`): each sidecar writes Istio's default TEXT line per request, and a faulted
/// request's line shows why, with Envoy's response flags and details (`FI`, `DI`), on the client's
/// side; the server's sidecar logs its inbound requests with the `inbound|` cluster.
#[tokio::test]
async fn s15_access_logs_show_the_response_flags_of_faulted_requests() {
    let Some(ctx) = setup("s15_access_log").await else {
        return;
    };
    crate::with_restore(
        async {
            ctx.set_operator_env("ACCESS_LOG_FILE", "/dev/stdout")
                .await
                .unwrap();
            access_logs(&ctx).await;
        },
        async {
            ctx.set_operator_env("ACCESS_LOG_FILE", "").await.unwrap();
        },
    )
    .await;
}

async fn access_logs(ctx: &rustmesh_e2e::Ctx) {
    let ns = ctx.fresh_namespace("e2e-accesslog", true).await.unwrap();
    let client = sample::productpage();
    sample::deploy(ctx, &ns, &[client.clone(), sample::reviews("v1")])
        .await
        .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let server_pod = ctx
        .pod_name(&ns, &sample::reviews("v1").selector())
        .await
        .unwrap();
    ctx.apply_istio(
        &ns,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /fault}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 0.01s, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"#,
    )
    .await
    .unwrap();
    let base = format!("http://reviews:{HTTP_PORT}");
    // The rule is in force once /fault answers 503 (the operator's write reached the sidecar).
    rustmesh_e2e::poll(
        "the fault rule in the client's sidecar",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let s = ctx
                .http_load(
                    &ns,
                    &client_pod,
                    &client.app,
                    &format!("{base}/fault"),
                    1,
                    1,
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            if s.status(503) == 1 {
                Ok(Some(()))
            } else {
                Err(format!("{:?}", s.statuses))
            }
        },
    )
    .await
    .unwrap();
    for path in ["/delay", "/ok"] {
        let s = ctx
            .http_load(
                &ns,
                &client_pod,
                &client.app,
                &format!("{base}{path}"),
                1,
                1,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(s.status(200), 1, "{path}: {s:?}");
    }
    let pods: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let logs = |pod: String| {
        let pods = pods.clone();
        async move {
            let params = kube::api::LogParams {
                container: Some("istio-proxy".into()),
                ..Default::default()
            };
            pods.logs(&pod, &params).await.unwrap()
        }
    };
    // A line is written when its response ends, and the sidecar flushes its log every second:
    // poll both logs until the lines are there.
    let (mut client_log, mut server_log) = (String::new(), String::new());
    for _ in 0..30 {
        client_log = logs(client_pod.clone()).await;
        server_log = logs(server_pod.clone()).await;
        if ["/fault", "/delay", "/ok"]
            .iter()
            .all(|p| client_log.contains(&format!("\"GET {p} HTTP/1.1\"")))
            && server_log.contains("\"GET /ok HTTP/1.1\"")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let line = |log: &str, needle: &str| -> String {
        log.lines()
            .rev()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no access log line with {needle} in:\n{log}"))
            .to_string()
    };
    let fault = line(&client_log, "\"GET /fault HTTP/1.1\"");
    ctx.log(format!("client sidecar: {fault}"));
    assert!(fault.contains(" 503 FI fault_filter_abort "), "{fault}");
    assert!(
        fault.starts_with('['),
        "Istio's TEXT format starts with the time: {fault}"
    );
    let delay = line(&client_log, "\"GET /delay HTTP/1.1\"");
    assert!(delay.contains(" 200 DI via_upstream "), "{delay}");
    assert!(
        delay.contains(&format!(
            " outbound|{HTTP_PORT}||reviews.{ns}.svc.cluster.local "
        )),
        "the upstream cluster: {delay}"
    );
    let ok = line(&client_log, "\"GET /ok HTTP/1.1\"");
    assert!(ok.contains(" 200 - via_upstream "), "{ok}");
    // The server's sidecar logged the requests that reached it (not the aborted one).
    let inbound = line(&server_log, "\"GET /ok HTTP/1.1\"");
    ctx.log(format!("server sidecar: {inbound}"));
    assert!(
        inbound.contains(&format!(" inbound|{HTTP_PORT}|| ")),
        "{inbound}"
    );
    // The aborted request never left the client's sidecar: its id is not in the server's log
    // (the polls before the rule was in force did reach the server).
    let aborted_id = fault
        .split('"')
        .find(|f| f.len() == 36 && f.matches('-').count() == 4)
        .unwrap_or_else(|| panic!("no x-request-id in {fault}"));
    assert!(
        !server_log.contains(aborted_id),
        "the aborted request {aborted_id} reached the server:\n{server_log}"
    );
    ctx.delete_namespace(&ns).await;
}
