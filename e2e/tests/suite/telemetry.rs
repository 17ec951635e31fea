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
//!
//! The same scenario also covers Istio's access logs (the faulted requests' response flags) and
//! distributed tracing: a real collector (`testapp collector`, Zipkin's API) in a namespace
//! without injection, the mesh's `extensionProviders` pointing at its Service, and one request
//! through two hops (productpage → reviews → ratings, the app forwarding the tracing headers)
//! read back as one trace of the four sidecars' spans.

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

/// The operator's tracing settings this scenario changes, with the operator's own defaults
/// (used to restore a variable that was not set at all).
const TRACING_ENV: [(&str, &str); 4] = [
    ("EXTENSION_PROVIDERS", ""),
    ("DEFAULT_TRACING_PROVIDERS", ""),
    ("ENABLE_TRACING", "true"),
    ("PILOT_TRACE_SAMPLING", "1.0"),
];

/// How long the sidecars may take to trace a request after the operator's restart (each
/// attempt is one request, then its spans are awaited for [`SPANS_WAIT`]).
const TRACING_DEADLINE: Duration = Duration::from_secs(60);
/// How long one request's spans may take to reach the collector (batches leave every second).
const SPANS_WAIT: Duration = Duration::from_secs(8);

/// A Zipkin v2 span as the collector's query API returns it (the fields checked here).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: String,
    id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    local_endpoint: Option<ZipkinEndpoint>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinEndpoint {
    #[serde(default)]
    service_name: Option<String>,
}

impl ZipkinSpan {
    fn service(&self) -> &str {
        self.local_endpoint
            .as_ref()
            .and_then(|e| e.service_name.as_deref())
            .unwrap_or("")
    }
    fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("")
    }
    fn tag(&self, name: &str) -> &str {
        self.tags.get(name).map(String::as_str).unwrap_or("")
    }
}

/// One line per span, for failure messages.
fn span_table(spans: &[ZipkinSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {} {:<28} trace {} id {} parent {:<16} {:?} status {} upstream_cluster {} guid {}",
                s.kind(),
                s.service(),
                s.trace_id,
                s.id,
                s.parent_id.as_deref().unwrap_or("-"),
                s.name.as_deref().unwrap_or(""),
                s.tag("http.status_code"),
                s.tag("upstream_cluster"),
                s.tag("guid:x-request-id"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// GET from the collector's Zipkin port (port-forward to its pod): the body, or why not.
async fn zipkin_get(
    ctx: &rustmesh_e2e::Ctx,
    ns: &str,
    pod: &str,
    path: &str,
) -> Result<String, String> {
    match ctx
        .pod_port_answer(ns, pod, sample::ZIPKIN_PORT, path)
        .await
    {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(format!("GET {path}: {status} {body}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Istio's distributed tracing with a real collector (`testapp collector`, Zipkin's API): the
/// mesh told to trace every request to it (the operator's `EXTENSION_PROVIDERS` with a
/// `zipkin` provider at the collector Service's FQDN, `DEFAULT_TRACING_PROVIDERS=zipkin`,
/// `PILOT_TRACE_SAMPLING=100`), productpage calls reviews, which calls ratings forwarding the
/// tracing headers as bookinfo's apps do: one trace of four spans, each sidecar's, chained
/// client → server → client → server, with Istio's names, service names and tags.
#[tokio::test]
async fn s15_a_two_hop_request_is_one_trace_with_spans_from_every_sidecar() {
    let Some(ctx) = setup("s15_tracing").await else {
        return;
    };
    let started = Instant::now();
    // The collector, outside the mesh (no injection), as Istio's Zipkin addon would run.
    let cns = ctx
        .fresh_namespace("e2e-tracing-collector", false)
        .await
        .unwrap();
    let collector = sample::zipkin_collector();
    let providers = serde_json::json!([{
        "name": "zipkin",
        "zipkin": {
            "service": format!("{}.{cns}.svc.cluster.local", collector.app),
            "port": sample::ZIPKIN_PORT,
        },
    }])
    .to_string();
    // Put back what the install had (the chart's values), whatever happens.
    let mut previous: Vec<(&str, String)> = Vec::new();
    for (name, default) in TRACING_ENV {
        let value = ctx.operator_env(name).await.unwrap();
        previous.push((name, value.unwrap_or_else(|| default.to_string())));
    }
    crate::with_restore(
        async {
            // The operator's restart and the collector's start overlap.
            let tracing = [
                ("EXTENSION_PROVIDERS", providers.as_str()),
                ("DEFAULT_TRACING_PROVIDERS", "zipkin"),
                ("ENABLE_TRACING", "true"),
                ("PILOT_TRACE_SAMPLING", "100"),
            ];
            let (deployed, set) = tokio::join!(
                sample::deploy(&ctx, &cns, std::slice::from_ref(&collector)),
                ctx.set_operator_envs(&tracing),
            );
            deployed.unwrap();
            set.unwrap();
            two_hop_trace(&ctx, &cns, &collector).await;
        },
        async {
            let vars: Vec<(&str, &str)> = previous.iter().map(|(n, v)| (*n, v.as_str())).collect();
            ctx.set_operator_envs(&vars).await.unwrap();
        },
    )
    .await;
    ctx.delete_namespace(&cns).await;
    ctx.log(format!(
        "the tracing scenario took {}",
        crate::secs(started.elapsed())
    ));
}

/// What the collector holds and what each sidecar's span exporter did (its `/stats` counters
/// and its log lines about tracing), for a time-out's message.
async fn diagnose(
    ctx: &rustmesh_e2e::Ctx,
    ns: &str,
    pods: &[Pod],
    cns: &str,
    collector_pod: &str,
    collector: &sample::App,
) -> String {
    let services = zipkin_get(ctx, cns, collector_pod, "/api/v2/services").await;
    let traces = zipkin_get(ctx, cns, collector_pod, "/api/v2/traces?limit=20").await;
    let ip = ctx
        .cluster_ip(cns, &collector.app)
        .await
        .unwrap_or_else(|e| e.to_string());
    let mut out = format!(
        "the provider the sidecars report to: {}.{cns}.svc.cluster.local:{} (the Service's \
         ClusterIP {ip}; the sidecars' own connections are not captured, so they resolve and \
         reach it themselves)\ncollector's services: {services:?}\ncollector's traces: \
         {traces:?}\nsidecars' span exporters (/stats tracing.*):",
        collector.app,
        sample::ZIPKIN_PORT
    );
    let mut logs = String::from("\nsidecars' log lines about tracing:");
    for p in pods {
        let name = p.name_any();
        let stats = ctx
            .pod_port_get(ns, &name, 15000, "/stats")
            .await
            .map(|t| {
                t.lines()
                    .filter(|l| l.starts_with("tracing."))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|e| e.to_string());
        out.push_str(&format!("\n  {name}: {stats}"));
        let params = kube::api::LogParams {
            container: Some("istio-proxy".into()),
            ..Default::default()
        };
        let log = ctx
            .pods(ns)
            .logs(&name, &params)
            .await
            .unwrap_or_else(|e| e.to_string());
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("::trace"))
            .take(10)
            .collect();
        logs.push_str(&format!("\n  {name}: {}", lines.join("\n    ")));
    }
    out + &logs
}

async fn two_hop_trace(ctx: &rustmesh_e2e::Ctx, cns: &str, collector: &sample::App) {
    // The apps start after the operator's restart: their sidecars trace from their first
    // request (a connection opened before tracing reached a sidecar would stay untraced).
    let ns = ctx.fresh_namespace("e2e-tracing", true).await.unwrap();
    let (client, reviews, ratings) = (
        sample::productpage(),
        sample::reviews("v1"),
        sample::ratings(),
    );
    sample::deploy(
        ctx,
        &ns,
        &[client.clone(), reviews.clone(), ratings.clone()],
    )
    .await
    .unwrap();
    let collector_pod = ctx.pod_name(cns, &collector.selector()).await.unwrap();
    let mut pods = Vec::new();
    for app in [&client, &reviews, &ratings] {
        let pod = ctx
            .pods_with(&ns, &app.selector())
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap();
        pods.push(pod);
    }
    let pod_name = |i: usize| pods[i].name_any();
    ctx.wait_endpoints(&ns, &pod_name(0), "reviews", &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    ctx.wait_endpoints(&ns, &pod_name(1), "ratings", &ns, HTTP_PORT, 1)
        .await
        .unwrap();

    // One request productpage → reviews → ratings (reviews forwards the tracing headers), until
    // its four spans are at the collector: the first requests may come before the sidecars
    // have the tracing configuration.
    let url =
        format!("http://reviews:{HTTP_PORT}/trace?upstream=http://ratings:{HTTP_PORT}/ratings/0");
    let start = Instant::now();
    let mut last = String::from("no request yet");
    let mut attempts = 0;
    let (report, trace) = 'found: loop {
        if start.elapsed() > TRACING_DEADLINE {
            panic!(
                "no request's four spans reached the collector within {} ({attempts} \
                 requests); last: {last}\n{}",
                crate::secs(TRACING_DEADLINE),
                diagnose(ctx, &ns, &pods, cns, &collector_pod, collector).await
            );
        }
        attempts += 1;
        let report = ctx
            .http_get(&ns, &pod_name(0), &client.app, &url, &[])
            .await
            .unwrap();
        let Some(trace_id) = report.headers.get("x-b3-traceid").cloned() else {
            last = format!(
                "reviews' app saw no x-b3-traceid (the sidecars do not trace yet); its headers: {:?}",
                report.headers
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let path = format!("/api/v2/trace/{trace_id}");
        let waited = Instant::now();
        loop {
            match zipkin_get(ctx, cns, &collector_pod, &path).await {
                Ok(body) => match serde_json::from_str::<Vec<ZipkinSpan>>(&body) {
                    Ok(spans) if spans.len() >= 4 => break 'found (report, spans),
                    Ok(spans) => {
                        last = format!(
                            "trace {trace_id}: {} span(s) at the collector:\n{}",
                            spans.len(),
                            span_table(&spans)
                        )
                    }
                    Err(e) => last = format!("GET {path}: not Zipkin spans ({e}): {body}"),
                },
                // 404 until the trace's first span arrives
                Err(e) => last = format!("trace {trace_id}: {e}"),
            }
            if waited.elapsed() > SPANS_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    ctx.log(format!(
        "a trace of {} spans at the collector {} after the first request ({attempts} request(s)):\n{}",
        trace.len(),
        crate::secs(start.elapsed()),
        span_table(&trace)
    ));

    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        ctx.log(format!("{} {what}", if ok { "PASS" } else { "FAIL" }));
        if !ok {
            failures.push(what);
        }
    };
    // What the apps saw: reviews got the request and reached ratings.
    let upstream = report.upstream.as_deref();
    check(
        upstream.is_some_and(|u| u.service == "ratings") && report.upstream_error.is_none(),
        format!(
            "reviews called ratings: upstream {:?}, error {:?}",
            upstream.map(|u| &u.service),
            report.upstream_error
        ),
    );
    let request_id = report
        .headers
        .get("x-request-id")
        .cloned()
        .unwrap_or_default();
    let trace_id = report.headers["x-b3-traceid"].to_ascii_lowercase();

    // The four spans, by side and service.
    let fqdn = |svc: &str| format!("{svc}.{ns}.svc.cluster.local");
    let expected = [
        ("CLIENT", &client.app, "reviews"),
        ("SERVER", &reviews.app, "reviews"),
        ("CLIENT", &reviews.app, "ratings"),
        ("SERVER", &ratings.app, "ratings"),
    ];
    check(
        trace.len() == 4,
        format!(
            "the trace has exactly 4 spans, one per sidecar on the way: {} spans",
            trace.len()
        ),
    );
    let mut found: Vec<Option<&ZipkinSpan>> = Vec::new();
    for (kind, app, _) in &expected {
        let service = format!("{app}.{ns}");
        let matching: Vec<&ZipkinSpan> = trace
            .iter()
            .filter(|s| s.kind() == *kind && s.service() == service)
            .collect();
        check(
            matching.len() == 1,
            format!(
                "one {kind} span with localEndpoint.serviceName {service:?} (Istio's \
                 <canonical service>.<namespace>): {} found",
                matching.len()
            ),
        );
        found.push(matching.first().copied());
    }
    for (i, ((kind, app, dest), span)) in expected.iter().zip(&found).enumerate() {
        let Some(s) = span else { continue };
        let who = format!("{kind} span of {app}'s sidecar ({})", s.id);
        let name = format!("{}:{HTTP_PORT}/*", fqdn(dest));
        check(
            s.trace_id.eq_ignore_ascii_case(&trace_id),
            format!(
                "{who}: traceId {} is the trace id the reviews app received ({trace_id})",
                s.trace_id
            ),
        );
        check(
            s.name.as_deref() == Some(name.as_str()),
            format!(
                "{who}: named {:?} (Istio's route decorator {name:?})",
                s.name
            ),
        );
        let parent = match i {
            0 => None,
            _ => found[i - 1].map(|p| p.id.as_str()),
        };
        if i == 0 {
            check(
                s.parent_id.is_none(),
                format!(
                    "{who}: the root (the client app sent no trace context), parentId {:?}",
                    s.parent_id
                ),
            );
        } else if let Some(parent) = parent {
            let why = match i {
                1 => "the caller's CLIENT span (B3 from productpage's sidecar)",
                2 => "reviews' SERVER span (the app forwarded the headers)",
                _ => "reviews' CLIENT span (B3 from reviews' sidecar)",
            };
            check(
                s.parent_id.as_deref() == Some(parent),
                format!("{who}: parentId {:?} is {why}, {parent}", s.parent_id),
            );
        }
        for (tag, want) in [
            ("http.status_code", "200".to_string()),
            ("guid:x-request-id", request_id.clone()),
            ("istio.canonical_service", app.to_string()),
            ("istio.namespace", ns.clone()),
            ("component", "proxy".to_string()),
        ] {
            check(
                s.tag(tag) == want,
                format!("{who}: tag {tag} = {:?} (want {want:?})", s.tag(tag)),
            );
        }
        let cluster = s.tag("upstream_cluster");
        let cluster_ok = match *kind {
            "CLIENT" => cluster == format!("outbound|{HTTP_PORT}||{}", fqdn(dest)),
            _ => cluster.starts_with(&format!("inbound|{HTTP_PORT}")),
        };
        check(
            cluster_ok,
            format!(
                "{who}: tag upstream_cluster = {cluster:?} (want {})",
                match *kind {
                    "CLIENT" => format!("outbound|{HTTP_PORT}||{}", fqdn(dest)),
                    _ => format!("inbound|{HTTP_PORT}..."),
                }
            ),
        );
        let path = if *dest == "reviews" {
            "/trace?upstream="
        } else {
            "/ratings/0"
        };
        check(
            s.tag("http.url").contains(path),
            format!("{who}: tag http.url {:?} has {path:?}", s.tag("http.url")),
        );
        let pod = &pods[match i {
            0 => 0,
            1 | 2 => 1,
            _ => 2,
        }];
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let node = format!(
            "sidecar~{ip}~{}.{ns}~{ns}.svc.cluster.local",
            pod.name_any()
        );
        check(
            s.tag("node_id") == node,
            format!(
                "{who}: tag node_id = {:?} (want {node:?})",
                s.tag("node_id")
            ),
        );
    }
    // The apps saw the spans' contexts: the sidecar in front of each gave it its SERVER span,
    // in B3 only (a Zipkin provider's format, as Envoy's Zipkin tracer writes; the client sent
    // no traceparent, so none is made up).
    if let Some(server) = found[1] {
        check(
            report.headers.get("x-b3-spanid") == Some(&server.id)
                && !report.headers.contains_key("traceparent"),
            format!(
                "reviews' app received its sidecar's SERVER span {} as x-b3-spanid, and no \
                 traceparent: {:?} / {:?}",
                server.id,
                report.headers.get("x-b3-spanid"),
                report.headers.get("traceparent")
            ),
        );
    }
    if let (Some(server), Some(u)) = (found[3], upstream) {
        check(
            u.headers.get("x-b3-spanid") == Some(&server.id)
                && u.headers.get("x-request-id") == Some(&request_id),
            format!(
                "ratings' app received its sidecar's SERVER span {} and the same x-request-id: \
                 {:?} / {:?}",
                server.id,
                u.headers.get("x-b3-spanid"),
                u.headers.get("x-request-id")
            ),
        );
    }
    let mut ids: Vec<&str> = trace.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    check(
        ids.len() == trace.len(),
        format!(
            "every span has an id of its own (Istio's shared_span_context: false): {} ids for \
             {} spans",
            ids.len(),
            trace.len()
        ),
    );
    // No span of this request went into another trace.
    let all = zipkin_get(ctx, cns, &collector_pod, "/api/v2/traces?limit=1000")
        .await
        .unwrap();
    let all: Vec<Vec<ZipkinSpan>> = serde_json::from_str(&all).unwrap();
    let elsewhere: Vec<ZipkinSpan> = all
        .into_iter()
        .flatten()
        .filter(|s| s.tag("guid:x-request-id") == request_id)
        .filter(|s| !s.trace_id.eq_ignore_ascii_case(&trace_id))
        .collect();
    check(
        elsewhere.is_empty(),
        format!(
            "no span of request {request_id} is in another trace:\n{}",
            span_table(&elsewhere)
        ),
    );

    assert!(
        failures.is_empty(),
        "{} of the tracing checks failed:\n\n{}\n\nthe trace as the collector returned it:\n{}\n\n\
         reviews' app saw the headers {:?}",
        failures.len(),
        failures.join("\n\n"),
        span_table(&trace),
        report.headers
    );
    ctx.delete_namespace(&ns).await;
}

/// Istio's Telemetry API (`telemetry.istio.io/v1`, its "Telemetry API" task): a
/// namespace-wide Telemetry turns the built-in `envoy` access log provider on for every
/// sidecar of the namespace (no `accessLogFile` in the mesh), then a workload Telemetry turns
/// it off for reviews alone, while productpage keeps logging; a Telemetry naming a provider the
/// mesh does not have is refused (`Accepted=False`) naming the field.
#[tokio::test]
async fn s15_the_telemetry_api_turns_access_logs_on_for_a_namespace_and_off_for_one_workload() {
    let Some(ctx) = setup("s15_telemetry_api").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-telemetry", true).await.unwrap();
    let client = sample::productpage();
    let server = sample::reviews("v1");
    sample::deploy(&ctx, &ns, &[client.clone(), server.clone()])
        .await
        .unwrap();
    let client_pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let server_pod = ctx.pod_name(&ns, &server.selector()).await.unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let logs = |pod: &str| {
        let (pods, pod) = (pods.clone(), pod.to_string());
        async move {
            let params = kube::api::LogParams {
                container: Some("istio-proxy".into()),
                ..Default::default()
            };
            pods.logs(&pod, &params).await.unwrap_or_default()
        }
    };
    // One request with a path of its own; then whether each side logged it (lines are written
    // when the response ends and flushed every second).
    let seq = std::sync::atomic::AtomicU32::new(0);
    let probe = || async {
        let path = format!(
            "/telemetry-{}",
            seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let s = ctx
            .http_load(
                &ns,
                &client_pod,
                &client.app,
                &format!("http://reviews:{HTTP_PORT}{path}"),
                1,
                1,
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        if s.status(200) != 1 {
            return Err(format!("{path}: {:?}", s.statuses));
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let needle = format!("\"GET {path} HTTP/1.1\"");
        Ok::<_, String>((
            logs(&client_pod).await.contains(&needle),
            logs(&server_pod).await.contains(&needle),
        ))
    };
    ctx.apply_istio(
        &ns,
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: namespace-logs
spec:
  accessLogging:
  - providers:
    - name: envoy
"#,
    )
    .await
    .unwrap();
    rustmesh_e2e::poll(
        "both sidecars log (namespace-wide Telemetry)",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            match probe().await? {
                (true, true) => Ok(Some(())),
                other => {
                    let server_log = logs(&server_pod).await;
                    let tail: Vec<&str> = server_log.lines().rev().take(15).collect();
                    Err(format!(
                        "(client, server) logged: {other:?}; the server sidecar's last lines: {tail:#?}"
                    ))
                }
            }
        },
    )
    .await
    .unwrap();
    ctx.apply_istio(
        &ns,
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: reviews-quiet
spec:
  selector:
    matchLabels:
      app: reviews
  accessLogging:
  - disabled: true
"#,
    )
    .await
    .unwrap();
    rustmesh_e2e::poll(
        "only productpage logs (workload Telemetry for reviews)",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            match probe().await? {
                (true, false) => Ok(Some(())),
                other => Err(format!("(client, server) logged: {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    // A provider the mesh does not define is refused, naming the field.
    ctx.apply_istio(
        &ns,
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: unknown-provider
spec:
  selector:
    matchLabels:
      app: ratings
  tracing:
  - providers:
    - name: jaeger
"#,
    )
    .await
    .unwrap();
    let telemetries: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &kube::api::ApiResource {
            group: "telemetry.istio.io".into(),
            version: "v1".into(),
            api_version: "telemetry.istio.io/v1".into(),
            kind: "Telemetry".into(),
            plural: "telemetries".into(),
        },
    );
    let cond = rustmesh_e2e::poll(
        "unknown-provider Accepted=False",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let o = telemetries
                .get("unknown-provider")
                .await
                .map_err(|e| e.to_string())?;
            let status = o.data.get("status").cloned().unwrap_or_default();
            let cond = status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted"))
                .cloned()
                .unwrap_or_default();
            if cond["status"] == "False" {
                Ok(Some(cond))
            } else {
                Err(format!("status {status}"))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!("unknown-provider: {cond}"));
    let message = cond["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.tracing[0].providers[0].name") && message.contains("jaeger"),
        "{cond}"
    );
    ctx.delete_namespace(&ns).await;
}
