//! Mirroring: copies go to the mirror cluster with `-shadow` appended to the authority, carry
//! the body, follow the percentage, and never delay the main response.

mod http_common;

use http_common::*;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

#[tokio::test]
async fn slow_mirror_never_delays_the_main_response() {
    let main = upstream("main", Behavior::default()).await;
    let shadow = upstream(
        "shadow",
        Behavior {
            delay: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    )
    .await;
    let rc = vhost(
        &["reviews:9080"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "main",
            "requestMirrorPolicies": [ { "cluster": "shadow" } ] } }]),
    );
    let ups = TestClusters::new()
        .cluster("main", &[&main])
        .cluster("shadow", &[&shadow]);
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    let r = send(
        &c.h1,
        request(p.addr, "reviews:9080", "/mirror-me?x=1")
            .method("POST")
            .body(body("hello mirror"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "main");
    // Ordering, not a stopwatch: the main answer is here while the mirror is still sleeping.
    assert_eq!(
        shadow.finished.load(Ordering::SeqCst),
        0,
        "the main response waited for the mirror"
    );
    assert!(
        wait_for(|| shadow.finished.load(Ordering::SeqCst) == 1).await,
        "the mirror never completed"
    );
    let copy = shadow.seen().pop().unwrap();
    assert_eq!(copy.headers["host"], "reviews-shadow:9080");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.uri, "/mirror-me?x=1");
    assert_eq!(copy.body, "hello mirror");
    let original = main.seen().pop().unwrap();
    assert_eq!(original.headers["host"], "reviews:9080");
    assert_eq!(original.body, "hello mirror");
}

#[tokio::test]
async fn mirror_percentage_and_failing_mirrors() {
    let main = upstream("main", Behavior::default()).await;
    let shadow = upstream("shadow", Behavior::default()).await;
    let rc = vhost(
        &["svc"],
        json!([
            { "match": { "prefix": "/some" }, "route": { "cluster": "main",
                "requestMirrorPolicies": [ { "cluster": "shadow", "percentage": { "value": 25 } } ] } },
            { "match": { "prefix": "/broken" }, "route": { "cluster": "main",
                "requestMirrorPolicies": [ { "cluster": "nowhere" }, { "cluster": "empty" } ] } }
        ]),
    );
    let ups = TestClusters::new()
        .cluster("main", &[&main])
        .cluster("shadow", &[&shadow])
        .cluster_addrs("empty", &[]);
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    let n = 400u32;
    for _ in 0..n {
        assert_eq!(get(&c, p.addr, "svc", "/some").await.status, 200);
    }
    // Every mirror is sent before the main request, so after all main answers only in-flight
    // copies remain; wait for them to land.
    let settle = || {
        let a = shadow.hits();
        std::thread::sleep(Duration::from_millis(300));
        a == shadow.hits()
    };
    while !settle() {}
    let mirrored = shadow.hits() as f64;
    let (mean, sigma) = (f64::from(n) * 0.25, (f64::from(n) * 0.25 * 0.75).sqrt());
    assert!(
        (mirrored - mean).abs() <= 4.0 * sigma,
        "{mirrored} of {n} mirrored"
    );
    // Mirrors to unknown or empty clusters change nothing for the client.
    let r = get(&c, p.addr, "svc", "/broken").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "main");
}
