//! Istio's metrics and the access log count exactly what was sent through `serve_connection`.

mod http_common;

use http_common::*;
use rustmesh_proxy::metrics::{DestinationService, Destinations, Peers, Reporter, WorkloadInfo};
use rustmesh_xds::access_log::Encoding;
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
            access_log: Some(access_log(Encoding::Json)),
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
            access_log: Some(access_log(Encoding::Text)),
            ..Default::default()
        },
    )
    .await;
    let c = Clients::new();
    assert_eq!(get(&c, p.addr, "svc", "/timeout").await.status, 504);
    assert_eq!(get(&c, p.addr, "svc", "/empty").await.status, 503);
    // Istio's default TEXT access log: the flags and Envoy's details of each refusal.
    let mut lines = Vec::new();
    eventually(|| {
        lines = p.log.lock().unwrap().clone();
        lines.len() == 2
    })
    .await;
    let timeout = lines.iter().find(|l| l.contains("/timeout")).unwrap();
    assert!(
        timeout.contains("\"GET /timeout HTTP/1.1\" 504 UT response_timeout "),
        "{timeout}"
    );
    assert!(
        timeout.contains(" outbound|") || timeout.contains(" slow "),
        "{timeout}"
    );
    let empty = lines.iter().find(|l| l.contains("/empty")).unwrap();
    assert!(
        empty.contains("\"GET /empty HTTP/1.1\" 503 UH no_healthy_upstream "),
        "{empty}"
    );
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

/// Istio's default TEXT access log line, field by field, and the response flags the sidecar
/// sets: `FI`, `DI`, `URX`, `UF`, `NR` (Istio's "access logs show why a request failed").
#[tokio::test]
async fn text_access_log_lines_are_istios_with_the_response_flags() {
    let ok = upstream("ok", Behavior::default()).await;
    let failing = upstream(
        "failing",
        Behavior {
            status: Some(503),
            ..Default::default()
        },
    )
    .await;
    // A port nobody listens on: bound, then closed.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let rc = vhost(
        &["svc"],
        json!([
            { "name": "fault", "match": { "prefix": "/fault" }, "route": { "cluster": "ok" },
              "fault": { "abort": { "httpStatus": 418, "percentage": { "value": 100 } } } },
            { "match": { "prefix": "/delay" }, "route": { "cluster": "ok" },
              "fault": { "delay": { "fixedDelay": "0.01s", "percentage": { "value": 100 } } } },
            { "match": { "prefix": "/retry" }, "route": { "cluster": "failing",
              "retryPolicy": { "retryOn": "5xx", "numRetries": 1 } } },
            { "match": { "prefix": "/refused" }, "route": { "cluster": "refused" } },
            { "match": { "prefix": "/" }, "route": { "cluster": "ok" } }
        ]),
    );
    let ups = TestClusters::new()
        .cluster("ok", &[&ok])
        .cluster("failing", &[&failing])
        .cluster_addrs("refused", &[refused]);
    let p = start_proxy(
        rc,
        ups,
        Options {
            access_log: Some(access_log(Encoding::Text)),
            ..Default::default()
        },
    )
    .await;
    let c = Clients::new();
    let r = send(
        &c.h1,
        request(p.addr, "svc", "/ok?x=1")
            .header("user-agent", "curl/8")
            .header("x-request-id", "req-1")
            .header("x-forwarded-for", "10.0.0.9")
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    for (path, status) in [
        ("/fault", 418),
        ("/delay", 200),
        ("/retry", 503),
        ("/refused", 503),
    ] {
        assert_eq!(get(&c, p.addr, "svc", path).await.status, status, "{path}");
    }
    assert_eq!(get(&c, p.addr, "elsewhere", "/").await.status, 404);
    let mut lines = Vec::new();
    eventually(|| {
        lines = p.log.lock().unwrap().clone();
        lines.len() == 6
    })
    .await;
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let line = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {lines:#?}"))
            .clone()
    };
    // [start] "METHOD PATH PROTOCOL" CODE FLAGS DETAILS TERMINATION "FAILURE" RX TX DURATION
    // SERVICE-TIME "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM" CLUSTER UP-LOCAL DOWN-LOCAL
    // DOWN-REMOTE SNI ROUTE
    let first = line("/ok?x=1");
    assert!(first.starts_with('[') && first.contains("Z] "), "{first}");
    let after_start = first.split_once("] ").unwrap().1;
    let fields: Vec<&str> = after_start.split(' ').collect();
    assert_eq!(&fields[..3], ["\"GET", "/ok?x=1", "HTTP/1.1\""], "{first}");
    assert_eq!(&fields[3..7], ["200", "-", "via_upstream", "-"], "{first}");
    assert!(
        after_start.contains(&format!(
            "\"10.0.0.9\" \"curl/8\" \"req-1\" \"svc\" \"{}\" ok {} ",
            ok.addr,
            ok.seen()[0].peer
        )),
        "{first}"
    );
    assert!(line("/fault").contains(" 418 FI fault_filter_abort "));
    assert!(line("/delay").contains(" 200 DI via_upstream "));
    assert!(line("/retry").contains(" 503 URX via_upstream "));
    let refused_line = line("/refused");
    assert!(refused_line.contains(" 503 UF "), "{refused_line}");
    assert!(line("\"elsewhere\"").contains(" 404 NR route_not_found "));
}

/// `%TRAILER(...)%` reads the response's trailers, as Envoy's: a gRPC answer's `grpc-status` and
/// `grpc-message` are logged; a trailer the answer lacks prints `-`, as does one of an answer
/// without trailers.
#[tokio::test]
async fn access_logs_read_the_response_trailers() {
    let up = upstream("grpc", Behavior::default()).await;
    let rc = vhost(
        // HTTP/2 sends the URI's authority (the proxy's address): any host.
        &["*"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "grpc" } }]),
    );
    let log = rustmesh_xds::access_log::AccessLog {
        filter: None,
        format: Some(
            "%REQ(:PATH)% %TRAILER(GRPC-STATUS)% %TRAILER(GRPC-MESSAGE):4% %TRAILER(X-NONE)%\n"
                .into(),
        ),
        ..access_log(Encoding::Text)
    };
    let p = start_proxy(
        rc,
        TestClusters::new().cluster_h2("grpc", &[&up]),
        Options {
            access_log: Some(log),
            ..Default::default()
        },
    )
    .await;
    let c = Clients::new();
    let r = send(
        &c.h2,
        request(p.addr, "svc", "/helloworld.Greeter/SayHello")
            .method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body(grpc_message("hi")))
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.trailers.as_ref().map(|t| t["grpc-message"].clone()),
        Some("echoed".parse().unwrap()),
        "{} {:?} {:?}",
        r.status,
        r.headers,
        r.body
    );
    assert_eq!(get(&c, p.addr, "svc", "/plain").await.status, 200);
    let mut lines = Vec::new();
    eventually(|| {
        lines = p.log.lock().unwrap().clone();
        lines.len() == 2
    })
    .await;
    assert!(
        lines.contains(&"/helloworld.Greeter/SayHello 0 echo -".to_string()),
        "{lines:#?}"
    );
    assert!(lines.contains(&"/plain - - -".to_string()), "{lines:#?}");
}

#[tokio::test]
async fn the_access_log_names_the_upstream_connections_local_address() {
    // Envoy's %UPSTREAM_LOCAL_ADDRESS%: the address the upstream saw the request come from,
    // over an HTTP/1.1 pool and an h2c one.
    let h1 = upstream("h1", Behavior::default()).await;
    let h2 = upstream(
        "h2",
        Behavior {
            http2: true,
            ..Default::default()
        },
    )
    .await;
    let rc = vhost(
        &["svc"],
        json!([
            { "match": { "prefix": "/h1" }, "route": { "cluster": "h1" } },
            { "match": { "prefix": "/h2" }, "route": { "cluster": "h2" } }
        ]),
    );
    let ups = TestClusters::new()
        .cluster("h1", &[&h1])
        .cluster_h2("h2", &[&h2]);
    let p = start_proxy(
        rc,
        ups,
        Options {
            access_log: Some(access_log(Encoding::Json)),
            ..Default::default()
        },
    )
    .await;
    let c = Clients::new();
    assert_eq!(get(&c, p.addr, "svc", "/h1").await.status, 200);
    assert_eq!(get(&c, p.addr, "svc", "/h2").await.status, 200);
    eventually(|| p.log.lock().unwrap().len() == 2).await;
    let log = p.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:#?}");
    for (line, up) in log.iter().zip([&h1, &h2]) {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let seen_from = up.seen()[0].peer.to_string();
        assert_eq!(line["upstream_local_address"], seen_from, "{line}");
        assert_eq!(line["upstream_host"], up.addr.to_string(), "{line}");
    }
}
