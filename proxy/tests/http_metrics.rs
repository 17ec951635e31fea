//! Istio's metrics and the access log count exactly what was sent through `serve_connection`.

mod http_common;

use http_common::*;
use rustmesh_proxy::metrics::{DestinationService, Destinations, Peers, Reporter, WorkloadInfo};
use serde_json::json;
use std::time::Duration;

fn sample(text: &str, metric: &str, must_contain: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| must_contain.iter().all(|m| l.contains(m)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

async fn eventually(mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_and_bytes_are_counted_exactly() {
    let v1 = upstream("reviews-v1", Behavior::default()).await;
    let rc = vhost(
        &["reviews"],
        json!([
            { "match": { "prefix": "/fault" }, "route": { "cluster": "outbound|9080|v1|reviews.default.svc.cluster.local" },
              "fault": { "abort": { "httpStatus": 500, "percentage": { "value": 100 } } } },
            { "match": { "prefix": "/" }, "route": { "cluster": "outbound|9080|v1|reviews.default.svc.cluster.local" } }
        ]),
    );
    let mut dest = Destinations::default();
    let svc = DestinationService {
        host: "reviews.default.svc.cluster.local".into(),
        name: "reviews".into(),
        namespace: "default".into(),
        subset: Some("v1".into()),
    };
    dest.insert(
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        svc.clone(),
    );
    let ups =
        TestClusters::new().cluster("outbound|9080|v1|reviews.default.svc.cluster.local", &[&v1]);
    let p = start_proxy(
        rc,
        ups,
        Options {
            destinations: dest,
            access_log: true,
            ..Default::default()
        },
    )
    .await;
    let c = Clients::new();
    let mut response_bytes_200 = 0usize;
    for i in 0..3 {
        let r = send(
            &c.h1,
            request(p.addr, "reviews", "/ok")
                .method("POST")
                .header("user-agent", "metrics-test")
                .body(body(format!("0123456789-{i}")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        response_bytes_200 += r.body.len();
    }
    for _ in 0..2 {
        assert_eq!(get(&c, p.addr, "reviews", "/status/503").await.status, 503);
    }
    assert_eq!(get(&c, p.addr, "reviews", "/fault").await.status, 500);
    assert_eq!(get(&c, p.addr, "nobody", "/").await.status, 404);

    let own = WorkloadInfo {
        name: "productpage-v1".into(),
        namespace: "default".into(),
        labels: Options::default().labels,
        cluster: "Kubernetes".into(),
        pod: "productpage-v1-7dbc5495bd-9sm76".into(),
    };
    let peers = Peers {
        reporter: Reporter::Source,
        own: &own,
        service: Some(&svc),
        security_policy: "unknown",
        source_principal: None,
        destination_principal: None,
        peer: None,
    };
    let ok = peers.http_labels("http", 200, "", None);
    let unavailable = peers.http_labels("http", 503, "", None);
    let fault = peers.http_labels("http", 500, "FI", None);
    let no_route = Peers {
        service: None,
        ..peers.clone()
    }
    .http_labels("http", 404, "NR", None);
    eventually(|| p.metrics.requests_total(&no_route) == 1).await;
    assert_eq!(p.metrics.requests_total(&ok), 3);
    assert_eq!(p.metrics.requests_total(&unavailable), 2);
    assert_eq!(p.metrics.requests_total(&fault), 1);
    assert_eq!(p.metrics.requests_total(&no_route), 1);

    let text = p.metrics.encode();
    let ok_sel = [
        "response_code=\"200\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
    ];
    assert_eq!(
        sample(&text, "istio_request_bytes_sum", &ok_sel),
        Some(36.0),
        "3 bodies of 12 bytes"
    );
    assert_eq!(
        sample(&text, "istio_request_bytes_count", &ok_sel),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "istio_response_bytes_sum", &ok_sel),
        Some(response_bytes_200 as f64)
    );
    assert_eq!(
        sample(&text, "istio_request_duration_milliseconds_count", &ok_sel),
        Some(3.0)
    );
    for l in [
        "destination_version=\"v1\"",
        "source_app=\"productpage\"",
        "reporter=\"source\"",
        "request_protocol=\"http\"",
    ] {
        assert!(text.contains(l), "{l} missing");
    }

    // One JSON access-log line per request.
    let log = p.log.lock().unwrap().clone();
    assert_eq!(log.len(), 7, "{log:#?}");
    let first: serde_json::Value = serde_json::from_str(&log[0]).unwrap();
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/ok");
    assert_eq!(first["response_code"], 200);
    assert_eq!(first["response_flags"], "-");
    assert_eq!(first["bytes_received"], 12);
    assert_eq!(first["user_agent"], "metrics-test");
    assert_eq!(
        first["upstream_cluster"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(first["upstream_host"], v1.addr.to_string());
    assert_eq!(first["request_id"].as_str().unwrap().len(), 36);
    let last: serde_json::Value = serde_json::from_str(&log[6]).unwrap();
    assert_eq!(last["response_code"], 404);
    assert_eq!(last["response_flags"], "NR");
}

#[tokio::test]
async fn flags_for_timeouts_overflow_and_no_upstream() {
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
        json!([
            { "match": { "prefix": "/timeout" }, "route": { "cluster": "slow", "timeout": "0.2s" } },
            { "match": { "prefix": "/empty" }, "route": { "cluster": "empty" } }
        ]),
    );
    let ups = TestClusters::new()
        .cluster("slow", &[&slow])
        .cluster_addrs("empty", &[]);
    let p = start_proxy(
        rc,
        ups,
        Options {
            reporter: Reporter::Destination,
            ..Default::default()
        },
    )
    .await;
    let c = Clients::new();
    assert_eq!(get(&c, p.addr, "svc", "/timeout").await.status, 504);
    assert_eq!(get(&c, p.addr, "svc", "/empty").await.status, 503);
    let mut text = String::new();
    eventually(|| {
        text = p.metrics.encode();
        text.contains("response_flags=\"UH\"")
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &["response_code=\"504\"", "response_flags=\"UT\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &["response_code=\"503\"", "response_flags=\"UH\""]
        ),
        Some(1.0)
    );
    assert!(text.contains("reporter=\"destination\""));
    assert!(text.contains("destination_app=\"productpage\""));
    assert!(text.contains("connection_security_policy=\"none\""));
}
