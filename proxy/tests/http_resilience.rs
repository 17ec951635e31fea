//! Timeouts, faults, retries, per-try timeouts, previous-host avoidance and connection-pool
//! overflow, through `serve_connection` with real upstreams on loopback.

mod http_common;

use http_common::*;
use rustmesh_xds::cluster::Thresholds;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn route_timeout_gives_504() {
    let slow = upstream("slow", Behavior::default()).await;
    let rc = vhost(
        &["reviews"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "slow", "timeout": "0.5s" } }]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("slow", &[&slow]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let r = get(&c, p.addr, "reviews", "/delay/3000").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    // Without the delay the same route answers.
    assert_eq!(get(&c, p.addr, "reviews", "/").await.status, 200);
}

#[tokio::test]
async fn fault_delay_then_forward() {
    let v1 = upstream("v1", Behavior::default()).await;
    let rc = vhost(
        &["ratings"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "v1" },
                 "fault": { "delay": { "fixedDelay": "2s", "percentage": { "value": 100 } } } }]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("v1", &[&v1]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let start = Instant::now();
    let r = get(&c, p.addr, "ratings", "/").await;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "v1");
}

#[tokio::test]
async fn fault_abort_with_status_and_percentage() {
    let v1 = upstream("v1", Behavior::default()).await;
    let rc = vhost(
        &["ratings"],
        json!([
            { "match": { "prefix": "/all" }, "route": { "cluster": "v1" },
              "fault": { "abort": { "httpStatus": 418, "percentage": { "value": 100 } } } },
            { "match": { "prefix": "/grpc" }, "route": { "cluster": "v1" },
              "fault": { "abort": { "grpcStatus": 14, "percentage": { "value": 100 } } } },
            { "match": { "prefix": "/half" }, "route": { "cluster": "v1" },
              "fault": { "abort": { "httpStatus": 503, "percentage": { "value": 30 } } } }
        ]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("v1", &[&v1]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let r = get(&c, p.addr, "ratings", "/all").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (418, "fault filter abort")
    );
    assert_eq!(v1.hits(), 0, "aborted requests never reach the upstream");
    let g = send(
        &c.h1,
        request(p.addr, "ratings", "/grpc")
            .method("POST")
            .header("content-type", "application/grpc")
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.headers["grpc-status"], "14");
    let n = 500u32;
    let mut aborted = 0u32;
    for _ in 0..n {
        let r = get(&c, p.addr, "ratings", "/half").await;
        match r.status.as_u16() {
            503 => {
                assert_eq!(r.text(), "fault filter abort");
                aborted += 1;
            }
            200 => {}
            other => panic!("unexpected {other}"),
        }
    }
    let (mean, sigma) = (f64::from(n) * 0.3, (f64::from(n) * 0.3 * 0.7).sqrt());
    assert!(
        (f64::from(aborted) - mean).abs() <= 4.0 * sigma,
        "{aborted} of {n} aborted"
    );
    assert_eq!(v1.hits() as u32, n - aborted);
}

#[tokio::test]
async fn retries_recover_from_a_failing_endpoint() {
    let bad = upstream(
        "bad",
        Behavior {
            status: Some(503),
            ..Default::default()
        },
    )
    .await;
    let good = upstream("good", Behavior::default()).await;
    let rc = vhost(
        &["details"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "details", "retryPolicy": {
            "retryOn": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "numRetries": 2, "retriableStatusCodes": [503], "retryPreviousHosts": true } } }]),
    );
    let ups = TestClusters::new().cluster("details", &[&bad, &good]);
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    for i in 0..20 {
        let r = send(
            &c.h1,
            request(p.addr, "details", "/")
                .method("POST")
                .body(body(format!("payload-{i}")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.upstream(), "good");
        assert_eq!(
            r.json()["body_len"],
            format!("payload-{i}").len(),
            "the body is re-sent"
        );
    }
    assert!(
        bad.hits() >= 5,
        "round robin sent some first attempts to the bad host"
    );
    let retried: Vec<_> = good
        .seen()
        .into_iter()
        .filter(|s| s.headers["x-envoy-attempt-count"] == "2")
        .collect();
    assert_eq!(retried.len(), bad.hits());
    assert!(retried.iter().all(|s| s.body.starts_with(b"payload-")));
}

#[tokio::test]
async fn retry_limit_returns_the_last_answer() {
    let bad = upstream(
        "bad",
        Behavior {
            status: Some(503),
            ..Default::default()
        },
    )
    .await;
    let rc = vhost(
        &["details"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "details", "retryPolicy": {
            "retryOn": "5xx", "numRetries": 3 } } }]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("details", &[&bad]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let r = get(&c, p.addr, "details", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.upstream(), "bad");
    assert_eq!(bad.hits(), 4, "one attempt and three retries");
}

/// With a hash policy every attempt of a request lands on the same ring position: only the
/// previous-hosts predicate moves a retry off a failing host.
#[tokio::test]
async fn previous_host_avoidance() {
    let bad = upstream(
        "bad",
        Behavior {
            status: Some(503),
            ..Default::default()
        },
    )
    .await;
    let good = upstream("good", Behavior::default()).await;
    let route = |avoid: bool, prefix: &str| {
        json!({ "match": { "prefix": prefix }, "route": { "cluster": "c",
            "hashPolicy": [ { "headerName": "x-user" } ],
            "retryPolicy": { "retryOn": "5xx", "numRetries": 2, "retryPreviousHosts": avoid } } })
    };
    let rc = vhost(
        &["svc"],
        json!([route(true, "/avoid"), route(false, "/same")]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster_ring_hash("c", &[&bad, &good]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    // Find a user whose hash lands on the bad host.
    let mut user = None;
    for i in 0..64 {
        let before = bad.hits();
        let u = format!("user-{i}");
        let _ = send(
            &c.h1,
            request(p.addr, "svc", "/same")
                .header("x-user", &u)
                .body(empty_body())
                .unwrap(),
        )
        .await;
        if bad.hits() > before {
            user = Some(u);
            break;
        }
    }
    let user = user.expect("some user hashes to the bad host");
    let before = bad.hits();
    let same = send(
        &c.h1,
        request(p.addr, "svc", "/same")
            .header("x-user", &user)
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(
        same.status, 503,
        "without the predicate every retry hits the same bad host"
    );
    assert_eq!(bad.hits() - before, 3);
    let before = bad.hits();
    let avoid = send(
        &c.h1,
        request(p.addr, "svc", "/avoid")
            .header("x-user", &user)
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(avoid.status, 200);
    assert_eq!(avoid.upstream(), "good");
    assert_eq!(
        bad.hits() - before,
        1,
        "the retry avoided the host already tried"
    );
    // The retry went to the other host, which answered as the request's second attempt.
    let last = good.seen().pop().unwrap();
    assert_eq!(
        last.headers["x-envoy-attempt-count"], "2",
        "the retry excluded the first host"
    );
}

#[tokio::test]
async fn per_try_timeout_moves_on_to_another_host() {
    let slow = upstream(
        "slow",
        Behavior {
            delay: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    )
    .await;
    let fast = upstream("fast", Behavior::default()).await;
    let rc = vhost(
        &["reviews"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "c", "timeout": "10s", "retryPolicy": {
            "retryOn": "5xx", "numRetries": 2, "perTryTimeout": "1s", "retryPreviousHosts": true } } }]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("c", &[&slow, &fast]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    for _ in 0..4 {
        let r = get(&c, p.addr, "reviews", "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), "fast");
    }
    assert!(slow.hits() >= 1);
    // Per-try timeout without retries left: 504.
    let rc = vhost(
        &["reviews"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "c", "retryPolicy": {
            "retryOn": "connect-failure", "numRetries": 1, "perTryTimeout": "0.2s" } } }]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("c", &[&slow]),
        Options::default(),
    )
    .await;
    let r = get(&c, p.addr, "reviews", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (504, "upstream request timeout")
    );
}

#[tokio::test]
async fn connect_failures_are_retried_or_reported() {
    // A port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let good = upstream("good", Behavior::default()).await;
    let rc = vhost(
        &["svc"],
        json!([
            { "match": { "prefix": "/retry" }, "route": { "cluster": "mixed", "retryPolicy": {
                "retryOn": "connect-failure", "numRetries": 2, "retryPreviousHosts": true } } },
            { "match": { "prefix": "/dead" }, "route": { "cluster": "dead" } },
            { "match": { "prefix": "/empty" }, "route": { "cluster": "empty" } }
        ]),
    );
    // The closed port first in the mixed cluster.
    let ups = TestClusters::new()
        .cluster_addrs("dead", &[closed])
        .cluster_addrs("empty", &[])
        .cluster_addrs("mixed", &[closed, good.addr]);
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    for _ in 0..4 {
        assert_eq!(get(&c, p.addr, "svc", "/retry").await.upstream(), "good");
    }
    let r = get(&c, p.addr, "svc", "/dead").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("connection failure"), "{}", r.text());
    let r = get(&c, p.addr, "svc", "/empty").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (503, "no healthy upstream")
    );
}

#[tokio::test]
async fn connection_pool_overflow_is_503_overloaded() {
    let slow = upstream(
        "slow",
        Behavior {
            delay: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    )
    .await;
    let rc = vhost(
        &["svc"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "c" } }]),
    );
    let ups = TestClusters::new().cluster_limited(
        "c",
        &[&slow],
        Thresholds {
            max_connections: Some(1),
            max_pending_requests: Some(1),
            max_requests: Some(100),
            max_retries: None,
        },
    );
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let c = c.clone();
        let addr = p.addr;
        tasks.push(tokio::spawn(async move { get(&c, addr, "svc", "/").await }));
    }
    let mut ok = 0;
    let mut overloaded = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers["x-envoy-overloaded"], "true");
                overloaded += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        ok >= 1 && overloaded >= 1,
        "ok {ok}, overloaded {overloaded}"
    );
    assert_eq!(ok + overloaded, 5);
    assert_eq!(
        slow.hits(),
        ok,
        "overflowed requests never reached the upstream"
    );
}

#[tokio::test]
async fn endpoint_clients_pool_connections_through_the_cluster_managers_dialer() {
    use std::sync::atomic::Ordering;
    let v1 = upstream("v1", Behavior::default()).await;
    let ups = TestClusters::new().cluster("c", &[&v1]);
    let rc = vhost(
        &["svc"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "c" } }]),
    );
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    for _ in 0..5 {
        assert_eq!(get(&c, p.addr, "svc", "/").await.upstream(), "v1");
    }
    // The cluster's dialer counts every connection it opens, for the cluster and the endpoint.
    let cluster = p.clusters.get("c").unwrap();
    assert_eq!(
        cluster.stats.cx_total.get(),
        1,
        "one pooled upstream connection"
    );
    assert_eq!(
        cluster.endpoints[0].stats.cx_total.load(Ordering::Relaxed),
        1,
        "one pooled upstream connection to the endpoint"
    );
}

/// `connectionPool.http.maxRetries` (Envoy's circuit breaker `max_retries`): with the cluster's
/// retries used up, a retry is not attempted, the answer in hand goes back, and
/// `upstream_rq_retry_overflow` counts it; within the budget retries happen as before.
#[tokio::test]
async fn max_retries_overflow_skips_the_retry() {
    let bad = upstream(
        "bad",
        Behavior {
            status: Some(503),
            ..Default::default()
        },
    )
    .await;
    let rc = vhost(
        &["svc"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "c", "retryPolicy": {
            "retryOn": "5xx", "numRetries": 3 } } }]),
    );
    let limits = |max_retries| Thresholds {
        max_connections: Some(100),
        max_pending_requests: Some(100),
        max_requests: Some(100),
        max_retries: Some(max_retries),
    };
    let p = start_proxy(
        rc.clone(),
        TestClusters::new().cluster_limited("c", &[&bad], limits(0)),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let r = get(&c, p.addr, "svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(bad.hits(), 1, "no retry over maxRetries 0");
    let overflow = &p.clusters.get("c").unwrap().stats.rq_retry_overflow;
    assert_eq!(overflow.get(), 1);

    let p = start_proxy(
        rc,
        TestClusters::new().cluster_limited("c", &[&bad], limits(1)),
        Options::default(),
    )
    .await;
    let r = get(&c, p.addr, "svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        bad.hits(),
        1 + 4,
        "one retry at a time is within maxRetries 1"
    );
    assert_eq!(
        p.clusters.get("c").unwrap().stats.rq_retry_overflow.get(),
        0
    );
}
