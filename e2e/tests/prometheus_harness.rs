//! Proves the suite's Prometheus harness (`rustmesh_e2e::prometheus`) without a cluster: the
//! real `/usr/bin/prometheus` is started, pointed through its `file_sd_configs` file at a tiny
//! HTTP server this test runs (serving an `istio_requests_total` counter that grows with every
//! scrape and an `istio_request_duration_milliseconds` histogram, in Prometheus text), and
//! queried with Kiali's graph query. Then the targets are changed without a restart, and the
//! server is gone once the handle is dropped, or once the thread that started it ends (a test
//! process killed outright leaves no server behind).
//!
//! Skips with a printed reason when `/usr/bin/prometheus` is missing (`scripts/install-deps.sh`
//! as root installs Debian's), unless `RUSTMESH_E2E=1`: then it fails instead.

use rustmesh_e2e::prometheus::{Prometheus, Series, Target, format_series};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether the test can run; panics when it must and cannot.
fn prometheus_or_skip(test: &str) -> bool {
    if Prometheus::available() {
        return true;
    }
    let why = format!(
        "{} is missing (scripts/install-deps.sh as root installs Debian's prometheus)",
        rustmesh_e2e::prometheus::PROMETHEUS_BIN
    );
    if rustmesh_e2e::required() {
        panic!("{test}: RUSTMESH_E2E=1 but {why}");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// A sidecar's `/stats/prometheus` stand-in: every GET answers the exposition with the scrape
/// count as the counter's value. Returns its address and the scrape counter.
async fn fake_sidecar(workload: &'static str) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let scrapes = Arc::new(AtomicU64::new(0));
    let counter = scrapes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let path_ok = String::from_utf8_lossy(&head).starts_with("GET /stats/prometheus ");
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let (status, body) = if path_ok {
                    ("200 OK", exposition(workload, n))
                } else {
                    ("404 Not Found", "not here\n".to_string())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, scrapes)
}

fn exposition(workload: &str, n: u64) -> String {
    let labels = format!(
        "reporter=\"destination\",source_workload=\"productpage-v1\",source_workload_namespace=\"e2e-harness\",\
         destination_workload=\"{workload}\",destination_workload_namespace=\"e2e-harness\",\
         destination_service=\"reviews.e2e-harness.svc.cluster.local\",request_protocol=\"http\",\
         response_code=\"200\",connection_security_policy=\"mutual_tls\""
    );
    let mut text = format!(
        "# HELP istio_requests_total Total requests.\n\
         # TYPE istio_requests_total counter\n\
         istio_requests_total{{{labels}}} {}\n\
         # HELP istio_request_duration_milliseconds Request duration.\n\
         # TYPE istio_request_duration_milliseconds histogram\n",
        10 * n
    );
    for le in ["0.5", "1", "5", "10", "+Inf"] {
        let count = if le == "0.5" { 0 } else { 10 * n };
        text += &format!(
            "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
        );
    }
    text += &format!(
        "istio_request_duration_milliseconds_sum{{{labels}}} {}\n",
        7 * n
    );
    text += &format!(
        "istio_request_duration_milliseconds_count{{{labels}}} {}\n",
        10 * n
    );
    text
}

fn has(series: &Series, pairs: &[(&str, &str)]) -> bool {
    series.iter().any(|(l, _)| {
        pairs
            .iter()
            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

#[tokio::test]
async fn prometheus_scrapes_a_target_and_answers_kialis_query() {
    if !prometheus_or_skip("prometheus_harness") {
        return;
    }
    let (addr, scrapes) = fake_sidecar("reviews-v1").await;
    let started = Instant::now();
    let prom = Prometheus::start_with(Duration::from_secs(1))
        .await
        .unwrap();
    eprintln!(
        "prometheus {} (pid {}) ready in {:.2} s",
        prom.url(),
        prom.pid(),
        prom.startup().as_secs_f64()
    );
    let target = Target::new(&addr, "/stats/prometheus")
        .label("namespace", "e2e-harness")
        .label("pod", "reviews-v1-fake");
    prom.set_targets(&[target]).unwrap();
    let targets = prom
        .wait_targets_up(1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        targets[0].scrape_url,
        format!("http://{addr}/stats/prometheus")
    );

    // The raw series, with the target labels Istio's job gives.
    let raw = prom
        .wait_for(
            "istio_requests_total",
            |r| !r.is_empty(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let first_scrape = started.elapsed();
    eprintln!(
        "first sample queryable {:.2} s after start:\n{}",
        first_scrape.as_secs_f64(),
        format_series(&raw)
    );
    assert!(
        has(
            &raw,
            &[
                ("namespace", "e2e-harness"),
                ("pod", "reviews-v1-fake"),
                ("job", "kubernetes-pods"),
                ("instance", addr.as_str()),
                ("reporter", "destination"),
                ("source_workload", "productpage-v1"),
                ("destination_workload", "reviews-v1"),
                ("response_code", "200"),
            ]
        ),
        "istio_requests_total with the target and Istio labels:\n{}",
        format_series(&raw)
    );

    // Kiali's graph edge: a rate needs two scrapes within the window.
    let kiali = "sum(rate(istio_requests_total{reporter=\"destination\"}[1m])) \
                 by (source_workload, destination_workload, response_code)";
    let edge = prom
        .wait_for(
            kiali,
            |r| {
                r.iter().any(|(l, v)| {
                    l.get("source_workload").map(String::as_str) == Some("productpage-v1")
                        && l.get("destination_workload").map(String::as_str) == Some("reviews-v1")
                        && l.get("response_code").map(String::as_str) == Some("200")
                        && *v > 0.0
                })
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    eprintln!(
        "`{kiali}` after {:.2} s:\n{}",
        started.elapsed().as_secs_f64(),
        format_series(&edge)
    );
    assert_eq!(edge.len(), 1, "{}", format_series(&edge));
    for (labels, _) in &edge {
        assert_eq!(labels.len(), 3, "grouped by three labels only: {labels:?}");
    }

    // The dashboards' latency panel: the buckets, and a quantile from them.
    let p50 = prom
        .query(
            "histogram_quantile(0.5, sum(rate(istio_request_duration_milliseconds_bucket\
             {reporter=\"destination\"}[1m])) by (le))",
        )
        .await
        .unwrap();
    assert_eq!(p50.len(), 1, "{}", format_series(&p50));
    assert!(
        p50[0].1 > 0.5 && p50[0].1 <= 1.0,
        "every request is in the (0.5, 1] bucket: {}",
        format_series(&p50)
    );
    let scalar = prom.query("scalar(vector(3))").await.unwrap();
    assert_eq!(scalar, vec![(Default::default(), 3.0)]);
    let err = prom.query("sum(").await.unwrap_err().to_string();
    assert!(
        err.contains("bad_data"),
        "a PromQL error is reported: {err}"
    );

    // New targets without a restart: another "pod", the first one gone.
    let (addr2, _) = fake_sidecar("reviews-v2").await;
    let switched = Instant::now();
    prom.set_targets(&[Target::new(&addr2, "/stats/prometheus")
        .label("namespace", "e2e-harness")
        .label("pod", "reviews-v2-fake")])
        .unwrap();
    let up = prom
        .wait_for(
            "up{pod=\"reviews-v2-fake\"} == 1",
            |r| r.len() == 1,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    eprintln!(
        "new target scraped {:.2} s after set_targets: {}",
        switched.elapsed().as_secs_f64(),
        format_series(&up)
    );
    prom.wait_targets_up(1, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(scrapes.load(Ordering::SeqCst) >= 2);

    // Dropping the handle kills the server and removes its directory.
    let (pid, dir) = (prom.pid(), prom.dir().to_path_buf());
    drop(prom);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "prometheus (pid {pid}) still runs after drop"
    );
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[tokio::test]
async fn prometheus_wait_for_names_a_target_that_is_down() {
    if !prometheus_or_skip("prometheus_harness_timeout") {
        return;
    }
    let prom = Prometheus::start_with(Duration::from_secs(1))
        .await
        .unwrap();
    // Nothing listens on port 1: the target is down (once Prometheus's discovery has handed
    // it to the scrape manager: it passes updates on every 5 s), and the time-out says so.
    prom.set_targets(&[Target::new("127.0.0.1:1", "/stats/prometheus").label("pod", "nobody")])
        .unwrap();
    let start = Instant::now();
    loop {
        let targets = prom.targets().await.unwrap();
        if targets.len() == 1 && targets[0].health == "down" {
            eprintln!(
                "target down {:.2} s after set_targets: {}",
                start.elapsed().as_secs_f64(),
                targets[0].last_error
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the target is listed and down: {targets:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let err = prom
        .wait_for(
            "istio_requests_total",
            |r| !r.is_empty(),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("istio_requests_total"), "{err}");
    assert!(err.contains("(no series)"), "{err}");
    assert!(
        err.contains("http://127.0.0.1:1/stats/prometheus down")
            && err.contains("connection refused"),
        "the targets' health and last error are part of the message: {err}"
    );
}

/// A test process killed outright runs no `Drop`: the server must not outlive it. Started on a
/// thread that then ends without dropping the handle (as if killed), the server is killed by
/// its parent-death signal (`setpriv --pdeathsig KILL`).
#[test]
fn prometheus_dies_with_the_thread_that_started_it() {
    if !prometheus_or_skip("prometheus_harness_pdeathsig") {
        return;
    }
    let (pid, dir) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let prom = rt.block_on(Prometheus::start()).unwrap();
        let out = (prom.pid(), prom.dir().to_path_buf());
        std::mem::forget(prom);
        out
    })
    .join()
    .unwrap();
    // Dead means gone, or a zombie nobody reaps (the forgotten handle was its only waiter).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with(|c| c != 'Z')))
            .unwrap_or(false)
    };
    let start = Instant::now();
    while alive() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !alive(),
        "prometheus (pid {pid}) outlived the thread that started it"
    );
    eprintln!(
        "killed {:.2} s after its thread ended",
        start.elapsed().as_secs_f64()
    );
}
