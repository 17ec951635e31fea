//! Scenario 4: a 2 s fault delay on ratings (applied by the reviews pod's sidecar, the caller)
//! and a 0.5 s timeout on reviews (applied by the client's sidecar) give the client a 504 after
//! about half a second; and retries mask an endpoint that always fails.

use rustmesh_e2e::sample::{self, App, HTTP_PORT};
use rustmesh_e2e::{poll, setup};
use std::time::Duration;

const DELAY_AND_TIMEOUT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - fault:
      delay:
        fixedDelay: 2s
        percentage: {value: 100}
    route:
    - destination: {host: ratings}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - timeout: 0.5s
    route:
    - destination: {host: reviews}
"#;

#[tokio::test]
async fn s4_fault_delay_behind_a_route_timeout_gives_504() {
    let Some(ctx) = setup("s4_timeout").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-timeout", true).await.unwrap();
    let client = sample::productpage();
    sample::deploy(
        &ctx,
        &ns,
        &[client.clone(), sample::reviews("v1"), sample::ratings()],
    )
    .await
    .unwrap();
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let reviews = ctx.cluster_ip(&ns, "reviews").await.unwrap();
    let ratings = ctx.cluster_ip(&ns, "ratings").await.unwrap();
    // reviews calls ratings (through its own sidecar) and nests the answer.
    let url = format!("http://{reviews}:{HTTP_PORT}/?upstream=http://{ratings}:{HTTP_PORT}/");
    let reviews_pod = ctx.pod_name(&ns, "app=reviews").await.unwrap();
    ctx.wait_endpoints(&ns, &pod, "reviews", &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    ctx.wait_endpoints(&ns, &reviews_pod, "ratings", &ns, HTTP_PORT, 1)
        .await
        .unwrap();

    let report = ctx
        .http_get(&ns, &pod, "productpage", &url, &[])
        .await
        .unwrap();
    let nested = report.upstream.as_ref().map(|r| r.service.clone());
    assert_eq!(
        (report.service.as_str(), nested.as_deref()),
        ("reviews", Some("ratings")),
        "productpage -> reviews -> ratings before any rule: {report:?}"
    );

    ctx.apply_istio(&ns, DELAY_AND_TIMEOUT).await.unwrap();
    let s = poll(
        "a 504 from the reviews timeout",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async {
            let s = ctx
                .http_load(&ns, &pod, "productpage", &url, 1, 1, &[])
                .await
                .map_err(|e| e.to_string())?;
            if s.status(504) == 1 {
                Ok(Some(s))
            } else {
                Err(format!("{:?} errors {}", s.statuses, s.errors))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!("first 504: latency {:?}", s.latency_ms));
    let s = ctx
        .http_load(&ns, &pod, "productpage", &url, 5, 1, &[])
        .await
        .unwrap();
    ctx.log(format!(
        "5 requests: statuses {:?} latency {:?}",
        s.statuses, s.latency_ms
    ));
    assert_eq!(s.status(504), 5, "every request times out: {s:?}");
    // The timeout (0.5 s), not the delay (2 s), ended them. Generous bounds: not a benchmark.
    let max = s.latency_ms["max"];
    let p50 = s.latency_ms["p50"];
    assert!(p50 >= 400.0, "504 before the 0.5 s timeout: p50 {p50} ms");
    assert!(max < 1900.0, "504 only after the 2 s delay: max {max} ms");
    ctx.delete_namespace(&ns).await;
}

fn retries(attempts: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - retries:
      attempts: {attempts}
      retryOn: connect-failure,refused-stream,reset,503
    route:
    - destination: {{host: ratings}}
"#
    )
}

#[tokio::test]
async fn s4_retries_mask_a_failing_endpoint() {
    let Some(ctx) = setup("s4_retries").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-retries", true).await.unwrap();
    let client = sample::productpage();
    // A second ratings endpoint whose app listens on another port: its sidecar's inbound
    // connection to 127.0.0.1:9080 is refused, so every request it gets fails (503).
    let broken = App {
        version: "broken".into(),
        http: vec![HTTP_PORT + 1],
        ..sample::ratings()
    };
    sample::deploy(&ctx, &ns, &[client.clone(), sample::ratings(), broken])
        .await
        .unwrap();
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    let ratings = ctx.cluster_ip(&ns, "ratings").await.unwrap();
    let url = format!("http://{ratings}:{HTTP_PORT}/");
    ctx.wait_endpoints(&ns, &pod, "ratings", &ns, HTTP_PORT, 2)
        .await
        .unwrap();

    ctx.apply_istio(&ns, &retries(0)).await.unwrap();
    let without = poll(
        "failures without retries",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async {
            let s = ctx
                .http_load(&ns, &pod, "productpage", &url, 200, 4, &[])
                .await
                .map_err(|e| e.to_string())?;
            // Expected half; a third is far from what retries would leave.
            if s.failed() >= 60 {
                Ok(Some(s))
            } else {
                Err(format!("{:?} errors {}", s.statuses, s.errors))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "attempts 0: {:?} errors {}",
        without.statuses, without.errors
    ));

    ctx.apply_istio(&ns, &retries(3)).await.unwrap();
    let with = poll(
        "retries masking the broken endpoint",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async {
            let s = ctx
                .http_load(&ns, &pod, "productpage", &url, 200, 4, &[])
                .await
                .map_err(|e| e.to_string())?;
            if s.failed() <= 4 {
                Ok(Some(s))
            } else {
                Err(format!("{:?} errors {}", s.statuses, s.errors))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "attempts 3: {:?} errors {}",
        with.statuses, with.errors
    ));
    // Steady state: a larger run, every answer from the working endpoint.
    let s = ctx
        .http_load(&ns, &pod, "productpage", &url, 400, 4, &[])
        .await
        .unwrap();
    ctx.log(format!(
        "attempts 3, 400 requests: {:?} errors {} backends {:?}",
        s.statuses, s.errors, s.backends
    ));
    assert!(s.failed() <= 4, "retries leave at most 1% failed: {s:?}");
    assert_eq!(s.backend("ratings/broken"), 0, "{s:?}");
    ctx.delete_namespace(&ns).await;
}
