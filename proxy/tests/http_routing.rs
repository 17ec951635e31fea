//! Route features through `serve_connection` with real HTTP peers on loopback: virtual host and
//! route matching, sourceLabels, weights, redirects, rewrites, header changes, direct responses.

mod http_common;

use http_common::*;
use serde_json::json;
use std::collections::BTreeMap;

fn cluster(name: &str) -> serde_json::Value {
    json!({ "cluster": name, "timeout": "0s" })
}

#[tokio::test]
async fn matches_uri_headers_query_and_method_in_order() {
    let v1 = upstream("v1", Behavior::default()).await;
    let v2 = upstream("v2", Behavior::default()).await;
    let v3 = upstream("v3", Behavior::default()).await;
    let rc = vhost(
        &["reviews", "reviews:9080"],
        json!([
            { "name": "jason", "match": { "prefix": "/", "headers": [
                { "name": "end-user", "stringMatch": { "exact": "jason" } } ] },
              "route": cluster("v2") },
            { "name": "exact", "match": { "path": "/exact" }, "route": cluster("v3") },
            { "name": "regex", "match": { "safeRegex": { "regex": "/api/v[0-9]+/items" } }, "route": cluster("v3") },
            { "name": "ignore-case", "match": { "prefix": "/CaSe", "caseSensitive": false }, "route": cluster("v3") },
            { "name": "query", "match": { "prefix": "/q", "queryParameters": [
                { "name": "tier", "stringMatch": { "prefix": "gold" } } ] }, "route": cluster("v2") },
            { "name": "method", "match": { "prefix": "/m", "headers": [
                { "name": ":method", "stringMatch": { "exact": "POST" } } ] }, "route": cluster("v2") },
            { "name": "without", "match": { "prefix": "/w", "headers": [
                { "name": "x-debug", "presentMatch": true, "invertMatch": true } ] }, "route": cluster("v2") },
            { "name": "regex-header", "match": { "prefix": "/h", "headers": [
                { "name": "user-agent", "stringMatch": { "safeRegex": { "regex": ".*Firefox.*" } } } ] }, "route": cluster("v2") },
            { "name": "default", "match": { "prefix": "/" }, "route": cluster("v1") }
        ]),
    );
    let ups = TestClusters::new()
        .cluster("v1", &[&v1])
        .cluster("v2", &[&v2])
        .cluster("v3", &[&v3]);
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();

    assert_eq!(get(&c, p.addr, "reviews:9080", "/").await.upstream(), "v1");
    let jason = send(
        &c.h1,
        request(p.addr, "reviews", "/anything")
            .header("end-user", "jason")
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(jason.upstream(), "v2", "header match, first route wins");
    assert_eq!(get(&c, p.addr, "reviews", "/exact").await.upstream(), "v3");
    assert_eq!(
        get(&c, p.addr, "reviews", "/exact/more").await.upstream(),
        "v1"
    );
    assert_eq!(
        get(&c, p.addr, "reviews", "/api/v12/items")
            .await
            .upstream(),
        "v3"
    );
    assert_eq!(
        get(&c, p.addr, "reviews", "/api/v12/items/x")
            .await
            .upstream(),
        "v1",
        "regex must match the whole path"
    );
    assert_eq!(get(&c, p.addr, "reviews", "/case/x").await.upstream(), "v3");
    assert_eq!(
        get(&c, p.addr, "reviews", "/q?a=1&tier=gold-plus")
            .await
            .upstream(),
        "v2"
    );
    assert_eq!(
        get(&c, p.addr, "reviews", "/q?tier=silver")
            .await
            .upstream(),
        "v1"
    );
    assert_eq!(get(&c, p.addr, "reviews", "/m").await.upstream(), "v1");
    let post = send(
        &c.h1,
        request(p.addr, "reviews", "/m")
            .method("POST")
            .body(body("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(post.upstream(), "v2");
    assert_eq!(get(&c, p.addr, "reviews", "/w").await.upstream(), "v2");
    let debug = send(
        &c.h1,
        request(p.addr, "reviews", "/w")
            .header("x-debug", "1")
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(debug.upstream(), "v1");
    let ff = send(
        &c.h1,
        request(p.addr, "reviews", "/h")
            .header("user-agent", "Mozilla Firefox/1")
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(ff.upstream(), "v2");
    // No virtual host for the authority: 404 with flag NR.
    let nr = get(&c, p.addr, "ratings", "/").await;
    assert_eq!(nr.status, 404);
}

#[tokio::test]
async fn h2c_uses_the_authority() {
    let v1 = upstream("v1", Behavior::default()).await;
    let v2 = upstream("v2", Behavior::default()).await;
    let rc = routes(json!({
        "name": "9080",
        "virtualHosts": [
            { "name": "any", "domains": ["*"], "routes": [ { "match": { "prefix": "/" }, "route": cluster("v1") } ] },
            { "name": "reviews", "domains": ["reviews:9080"], "routes": [ { "match": { "prefix": "/" }, "route": cluster("v2") } ] }
        ]
    }));
    let ups = TestClusters::new()
        .cluster("v1", &[&v1])
        .cluster_h2("v2", &[&v2]);
    let p = start_proxy(rc, ups, Options::default()).await;
    // h2c downstream with an explicit :authority; h2c upstream for v2.
    let a = h2c_get(p.addr, "reviews:9080", "/x").await;
    assert_eq!(a.upstream(), "v2");
    assert_eq!(a.json()["version"], "HTTP/2.0");
    let a = h2c_get(p.addr, "details:9080", "/x").await;
    assert_eq!(a.upstream(), "v1");
    assert_eq!(a.json()["version"], "HTTP/1.1", "v1 is an HTTP/1.1 cluster");
}

/// An h2c request with an explicit `:authority`, over a raw hyper h2 connection.
async fn h2c_get(proxy: std::net::SocketAddr, authority: &str, path: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut send_req, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{authority}{path}"))
        .body(empty_body())
        .unwrap();
    let resp = send_req.send_request(req).await.unwrap();
    let (parts, b) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(b)
        .await
        .unwrap()
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        trailers: None,
    }
}

#[tokio::test]
async fn source_labels_select_routes_for_this_pod_only() {
    let v1 = upstream("v1", Behavior::default()).await;
    let v2 = upstream("v2", Behavior::default()).await;
    let rc = vhost(
        &["reviews"],
        json!([
            { "match": { "prefix": "/", "sourceLabels": { "app": "productpage", "version": "v2" } }, "route": cluster("v2") },
            { "match": { "prefix": "/" }, "route": cluster("v1") }
        ]),
    );
    let mk = || {
        TestClusters::new()
            .cluster("v1", &[&v1])
            .cluster("v2", &[&v2])
    };
    let c = Clients::new();
    // This pod is productpage v1: the first route is not for it.
    let p = start_proxy(rc.clone(), mk(), Options::default()).await;
    assert_eq!(get(&c, p.addr, "reviews", "/").await.upstream(), "v1");
    let labels: BTreeMap<String, String> =
        [("app", "productpage"), ("version", "v2"), ("extra", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let p2 = start_proxy(
        rc,
        mk(),
        Options {
            labels,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(get(&c, p2.addr, "reviews", "/").await.upstream(), "v2");
}

#[tokio::test]
async fn weighted_90_10_within_four_sigma() {
    let v1 = upstream("v1", Behavior::default()).await;
    let v2 = upstream("v2", Behavior::default()).await;
    let rc = vhost(
        &["publictest:9000"],
        json!([{ "match": { "prefix": "/" }, "route": { "weightedClusters": { "clusters": [
            { "name": "v1", "weight": 90 }, { "name": "v2", "weight": 10 } ] } } }]),
    );
    let ups = TestClusters::new()
        .cluster("v1", &[&v1])
        .cluster("v2", &[&v2]);
    let p = start_proxy(
        rc,
        ups,
        Options {
            seed: 7,
            ..Default::default()
        },
    )
    .await;
    let c = Clients::new();
    let n = 1000u32;
    let mut to_v2 = 0u32;
    for _ in 0..n {
        if get(&c, p.addr, "publictest:9000", "/").await.upstream() == "v2" {
            to_v2 += 1;
        }
    }
    // Binomial(n, 0.1): mean 100, sigma = sqrt(n p (1-p)) = 9.49; 4 sigma ≈ 38.
    let mean = f64::from(n) * 0.1;
    let sigma = (f64::from(n) * 0.1 * 0.9).sqrt();
    assert!(
        (f64::from(to_v2) - mean).abs() <= 4.0 * sigma,
        "{to_v2} of {n} went to v2"
    );
    assert_eq!(v1.hits() + v2.hits(), n as usize);
}

#[tokio::test]
async fn redirects_and_direct_responses() {
    let rc = vhost(
        &["shop", "shop:80"],
        json!([
            { "match": { "prefix": "/old" }, "redirect": { "pathRedirect": "/new", "hostRedirect": "store.example.com", "responseCode": 302 } },
            { "match": { "prefix": "/secure" }, "redirect": { "schemeRedirect": "https", "portRedirect": 8443, "responseCode": 308 } },
            { "match": { "prefix": "/health" }, "directResponse": { "status": 200, "body": "ok" } },
            { "match": { "prefix": "/" }, "directResponse": { "status": 502 } }
        ]),
    );
    let p = start_proxy(rc, TestClusters::new(), Options::default()).await;
    let c = Clients::new();
    let r = get(&c, p.addr, "shop", "/old?x=1").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "http://store.example.com/new?x=1");
    let r = get(&c, p.addr, "shop:80", "/secure/a").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://shop:8443/secure/a");
    let r = get(&c, p.addr, "shop", "/health").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    // Istio's block_all: a plain direct 502.
    assert_eq!(get(&c, p.addr, "shop", "/x").await.status, 502);
}

#[tokio::test]
async fn rewrites_uri_and_authority() {
    let v1 = upstream("v1", Behavior::default()).await;
    let rc = vhost(
        &["reviews"],
        json!([
            { "match": { "prefix": "/v1/api/" }, "route": { "cluster": "v1", "prefixRewrite": "/api/v2/", "hostRewriteLiteral": "internal.reviews" } },
            { "match": { "path": "/login" }, "route": { "cluster": "v1", "prefixRewrite": "/auth/login" } },
            { "match": { "prefix": "/r/" }, "route": { "cluster": "v1", "regexRewrite": {
                "pattern": { "regex": "^/r/([a-z]+)/([0-9]+)$" }, "substitution": "/items/\\2/\\1" } } },
            { "match": { "prefix": "/" }, "route": { "cluster": "v1" } }
        ]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("v1", &[&v1]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let r = get(&c, p.addr, "reviews", "/v1/api/books?id=3")
        .await
        .json();
    assert_eq!(r["uri"], "/api/v2/books?id=3");
    assert_eq!(r["headers"]["host"], "internal.reviews");
    let r = get(&c, p.addr, "reviews", "/login?next=/").await.json();
    assert_eq!(r["uri"], "/auth/login?next=/");
    assert_eq!(r["headers"]["host"], "reviews");
    let r = get(&c, p.addr, "reviews", "/r/books/42").await.json();
    assert_eq!(r["path"], "/items/42/books");
}

#[tokio::test]
async fn header_changes_both_ways_including_per_cluster() {
    let v1 = upstream("v1", Behavior::default()).await;
    let hv = |k: &str, v: &str, overwrite: bool| {
        json!({ "header": { "key": k, "value": v },
                "appendAction": if overwrite { "OVERWRITE_IF_EXISTS_OR_ADD" } else { "APPEND_IF_EXISTS_OR_ADD" } })
    };
    let rc = vhost(
        &["reviews"],
        json!([{
            "match": { "prefix": "/" },
            "route": { "weightedClusters": { "clusters": [ {
                "name": "v1", "weight": 100,
                "requestHeadersToAdd": [ hv("x-cluster", "v1", true) ],
                "responseHeadersToAdd": [ hv("x-cluster-resp", "v1", true) ]
            } ] } },
            "requestHeadersToAdd": [ hv("x-set", "route", true), hv("x-add", "route", false) ],
            "requestHeadersToRemove": [ "x-secret" ],
            "responseHeadersToAdd": [ hv("x-resp-set", "yes", true), hv("x-upstream", "proxy", false) ],
            "responseHeadersToRemove": [ "x-upstream-only" ]
        }]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("v1", &[&v1]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let r = send(
        &c.h1,
        request(p.addr, "reviews", "/")
            .header("x-set", "client")
            .header("x-add", "client")
            .header("x-secret", "s3cr3t")
            .body(empty_body())
            .unwrap(),
    )
    .await;
    let seen = v1.seen().pop().unwrap();
    assert_eq!(
        seen.headers.get_all("x-set").iter().collect::<Vec<_>>(),
        ["route"]
    );
    assert_eq!(
        seen.headers.get_all("x-add").iter().collect::<Vec<_>>(),
        ["client", "route"]
    );
    assert!(!seen.headers.contains_key("x-secret"));
    assert_eq!(seen.headers["x-cluster"], "v1");
    assert_eq!(r.headers["x-resp-set"], "yes");
    assert_eq!(
        r.headers.get_all("x-upstream").iter().collect::<Vec<_>>(),
        ["v1", "proxy"]
    );
    assert!(!r.headers.contains_key("x-upstream-only"));
    assert_eq!(r.headers["x-cluster-resp"], "v1");
    // Envoy's request headers: a generated request id, the attempt count.
    assert_eq!(seen.headers["x-envoy-attempt-count"], "1");
    assert_eq!(seen.headers["x-request-id"].len(), 36);
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn productpage_fixture_routes_by_host_with_and_without_port() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../xds/tests/fixtures/productpage.json"
    ))
    .unwrap();
    let cfg = rustmesh_xds::ProxyConfig::from_json(&text).unwrap();
    let rc = cfg.route("9080").unwrap().clone();
    let reviews = upstream("reviews", Behavior::default()).await;
    let ratings = upstream("ratings", Behavior::default()).await;
    let passthrough = upstream("passthrough", Behavior::default()).await;
    let ups = TestClusters::new()
        .cluster(
            "outbound|9080||reviews.default.svc.cluster.local",
            &[&reviews],
        )
        .cluster(
            "outbound|9080||ratings.default.svc.cluster.local",
            &[&ratings],
        )
        .cluster("PassthroughCluster", &[&passthrough]);
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    for host in [
        "reviews",
        "reviews:9080",
        "REVIEWS.default.svc.cluster.local:9080",
        "10.96.10.4:9080",
    ] {
        assert_eq!(
            get(&c, p.addr, host, "/").await.upstream(),
            "reviews",
            "{host}"
        );
    }
    assert_eq!(
        get(&c, p.addr, "ratings.default", "/").await.upstream(),
        "ratings"
    );
    // allow_any catches unknown hosts (and known hosts on another port).
    assert_eq!(
        get(&c, p.addr, "example.com", "/").await.upstream(),
        "passthrough"
    );
    assert_eq!(
        get(&c, p.addr, "reviews:9081", "/").await.upstream(),
        "passthrough"
    );
}

#[tokio::test]
async fn consistent_hash_keeps_users_on_one_endpoint_and_generates_cookies() {
    let a = upstream("a", Behavior::default()).await;
    let b = upstream("b", Behavior::default()).await;
    let c3 = upstream("c", Behavior::default()).await;
    let rc = vhost(
        &["reviews"],
        json!([
            { "match": { "prefix": "/cookie" }, "route": { "cluster": "ring",
                "hashPolicy": [ { "cookie": { "name": "sticky", "path": "/", "ttl": "3600s" } } ] } },
            { "match": { "prefix": "/" }, "route": { "cluster": "ring",
                "hashPolicy": [ { "headerName": "x-user" } ] } }
        ]),
    );
    let ups = TestClusters::new().cluster_ring_hash("ring", &[&a, &b, &c3]);
    let p = start_proxy(rc, ups, Options::default()).await;
    let c = Clients::new();
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..12 {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let r = send(
                &c.h1,
                request(p.addr, "reviews", "/")
                    .header("x-user", format!("user-{user}"))
                    .body(empty_body())
                    .unwrap(),
            )
            .await;
            seen.insert(r.upstream());
        }
        assert_eq!(seen.len(), 1, "user-{user} moved between {seen:?}");
        owners.extend(seen);
    }
    assert!(owners.len() >= 2, "12 users all hashed to {owners:?}");
    // No cookie sent: the proxy makes one up, and sending it back keeps the endpoint.
    let first = get(&c, p.addr, "reviews", "/cookie").await;
    let set = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("sticky=\"") && set.contains("Max-Age=3600; Path=/; HttpOnly"),
        "{set}"
    );
    let value = set.split(';').next().unwrap().to_string();
    for _ in 0..4 {
        let again = send(
            &c.h1,
            request(p.addr, "reviews", "/cookie")
                .header("cookie", value.as_str())
                .body(empty_body())
                .unwrap(),
        )
        .await;
        assert_eq!(again.upstream(), first.upstream());
        assert!(!again.headers.contains_key("set-cookie"));
    }
}

/// The `access-control-*` headers of an answer, by name.
fn cors_headers(h: &http::HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn cors_preflights_answered_here_and_allowed_origins_on_responses() {
    let v1 = upstream("v1", Behavior::default()).await;
    let rc = vhost(
        &["*"],
        json!([
            {
                "match": { "prefix": "/ignore" },
                "route": cluster("v1"),
                "cors": {
                    "allowOriginStringMatch": [ { "exact": "https://a.example.com" } ],
                    "allowMethods": "GET",
                    "forwardNotMatchingPreflights": false
                }
            },
            {
                "match": { "prefix": "/plain" },
                "route": cluster("v1"),
                "cors": { "allowOriginStringMatch": [ { "exact": "*" } ] }
            },
            {
                "match": { "prefix": "/" },
                "route": cluster("v1"),
                "cors": {
                    "allowOriginStringMatch": [
                        { "exact": "https://a.example.com" },
                        { "prefix": "https://b." },
                        { "safeRegex": { "regex": "https://[a-z]+\\.example\\.org" } }
                    ],
                    "allowMethods": "GET,POST",
                    "allowHeaders": "content-type,x-token",
                    "exposeHeaders": "x-trace",
                    "maxAge": "86400",
                    "allowCredentials": true
                }
            }
        ]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("v1", &[&v1]),
        Options::default(),
    )
    .await;
    let c = Clients::new();
    let preflight = |path: &str, origin: &str| {
        request(p.addr, "reviews", path)
            .method("OPTIONS")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(empty_body())
            .unwrap()
    };
    let actual = |method: &str, path: &str, origin: Option<&str>| {
        let mut b = request(p.addr, "reviews", path).method(method);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(empty_body()).unwrap()
    };

    // A preflight from each kind of allowed origin: answered here, exactly these headers.
    for origin in [
        "https://a.example.com",
        "https://b.anything",
        "https://api.example.org",
    ] {
        let r = send(&c.h1, preflight("/x", origin)).await;
        assert_eq!(r.status, 200, "{origin}");
        assert_eq!(
            cors_headers(&r.headers),
            expected(&[
                ("access-control-allow-origin", origin),
                ("access-control-allow-methods", "GET,POST"),
                ("access-control-allow-headers", "content-type,x-token"),
                ("access-control-max-age", "86400"),
                ("access-control-allow-credentials", "true"),
            ]),
            "{origin}"
        );
        assert!(!r.headers.contains_key("vary"), "Envoy adds no vary");
        assert!(r.body.is_empty());
    }
    assert_eq!(v1.hits(), 0, "allowed preflights never reach the app");
    // A regex must match the whole origin.
    let r = send(&c.h1, preflight("/x", "https://api.example.org.evil.com")).await;
    assert_eq!(
        v1.hits(),
        1,
        "an unmatched preflight is forwarded (FORWARD)"
    );
    assert_eq!(r.upstream(), "v1");
    assert_eq!(cors_headers(&r.headers), expected(&[]));
    let seen = v1.seen().pop().unwrap();
    assert_eq!(seen.method, "OPTIONS");

    // IGNORE: an unmatched preflight is answered here, with no CORS headers.
    let r = send(&c.h1, preflight("/ignore", "https://evil.com")).await;
    assert_eq!(r.status, 200);
    assert_eq!(cors_headers(&r.headers), expected(&[]));
    assert_eq!(r.upstream(), "");
    assert_eq!(v1.hits(), 1, "not forwarded");
    // ... and a matching one still gets its answer.
    let r = send(&c.h1, preflight("/ignore", "https://a.example.com")).await;
    assert_eq!(
        cors_headers(&r.headers),
        expected(&[
            ("access-control-allow-origin", "https://a.example.com"),
            ("access-control-allow-methods", "GET"),
        ])
    );
    assert_eq!(v1.hits(), 1);

    // An actual request from an allowed origin: forwarded, the response carries the origin,
    // the credentials and the exposed headers.
    let r = send(&c.h1, actual("GET", "/x", Some("https://b.example"))).await;
    assert_eq!((r.status.as_u16(), r.upstream().as_str()), (200, "v1"));
    assert_eq!(
        cors_headers(&r.headers),
        expected(&[
            ("access-control-allow-origin", "https://b.example"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-trace"),
        ])
    );
    assert_eq!(v1.hits(), 2);
    // OPTIONS without Access-Control-Request-Method is not a preflight: forwarded, decorated.
    let r = send(
        &c.h1,
        actual("OPTIONS", "/x", Some("https://a.example.com")),
    )
    .await;
    assert_eq!(r.upstream(), "v1");
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://a.example.com"
    );
    // Not allowed, or no Origin at all: untouched.
    let r = send(&c.h1, actual("GET", "/x", Some("https://evil.com"))).await;
    assert_eq!(r.upstream(), "v1");
    assert_eq!(cors_headers(&r.headers), expected(&[]));
    let r = send(&c.h1, actual("POST", "/x", None)).await;
    assert_eq!(r.upstream(), "v1");
    assert_eq!(cors_headers(&r.headers), expected(&[]));
    assert_eq!(v1.hits(), 5);

    // A matcher that accepts `*` allows any origin; without allowCredentials and exposeHeaders
    // only the origin is added.
    let r = send(&c.h1, actual("GET", "/plain", Some("https://z.test"))).await;
    assert_eq!(
        cors_headers(&r.headers),
        expected(&[("access-control-allow-origin", "https://z.test")])
    );
    let r = send(&c.h1, preflight("/plain", "https://z.test")).await;
    assert_eq!(
        cors_headers(&r.headers),
        expected(&[("access-control-allow-origin", "https://z.test")])
    );
    assert_eq!(v1.hits(), 6);

    // Over HTTP/2 (any authority: the virtual host is `*`) the same.
    let r = send(&c.h2, preflight("/x", "https://a.example.com")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://a.example.com"
    );
    assert_eq!(v1.hits(), 6);
}

#[tokio::test]
async fn a_cors_origin_regex_that_does_not_compile_refuses_the_table() {
    let rc = vhost(
        &["reviews"],
        json!([{
            "match": { "prefix": "/" },
            "route": cluster("v1"),
            "cors": { "allowOriginStringMatch": [ { "safeRegex": { "regex": "(" } } ] }
        }]),
    );
    let e = rustmesh_proxy::http::route::RouteTable::compile(&rc, &BTreeMap::new()).unwrap_err();
    assert_eq!(
        e.field,
        "virtualHosts[0].routes[0].cors.allowOriginStringMatch[0].safeRegex.regex"
    );
}
