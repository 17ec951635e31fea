//! `rustmeshctl --admin-url` against a running admin API: a small HTTP server here plays it,
//! following the contract in `ctl/README.md` ("Admin API contract") to the letter, so that every
//! error a user meets on this path can be provoked and its exact sentence checked
//! (`tests/real_proxy.rs` runs the same tables against the real sidecar).

mod support;

use serde_json::Value;
use support::{
    Reply, closed_port, config_dump, ctl, failure, fixture_text, golden, productpage_proxy, serve,
    squash, stdout,
};

#[test]
fn the_stub_follows_the_contract() {
    let get = |path: &str| {
        let reply = config_dump(&fixture_text("productpage"), path);
        serde_json::from_str::<Value>(&reply.body).unwrap()
    };
    assert!(get("").get("endpoints").is_none());
    assert!(get("include_eds").get("endpoints").is_some());
    let masked = get("mask=listeners,clusters");
    let mut keys: Vec<&String> = masked.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["clusters", "listeners", "versionInfo"]);
    let bad = config_dump(&fixture_text("productpage"), "mask=listners");
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (400, "mask: unknown field \"listners\"\n")
    );
}

#[test]
fn tables_over_the_admin_api_match_the_file() {
    let proxy = productpage_proxy();
    for view in ["listeners", "routes", "clusters"] {
        let out = stdout(&ctl(&["pc", view, "--admin-url", &proxy.url()]));
        assert_eq!(out, golden("productpage", view), "{view}");
    }
    // One request per run, exactly the documented one.
    assert_eq!(
        proxy.requests(),
        ["GET /config_dump?include_eds"; 3].map(String::from)
    );
}

#[test]
fn endpoints_show_the_live_health() {
    let proxy = productpage_proxy();
    let out = stdout(&ctl(&[
        "proxy-config",
        "endpoints",
        "--admin-url",
        &proxy.url(),
        "--cluster",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    ]));
    assert_eq!(
        out,
        "\
ENDPOINT             STATUS      OUTLIER CHECK     CLUSTER
10.244.0.33:9080     HEALTHY     FAILED            outbound|9080|v2|reviews.default.svc.cluster.local
"
    );
    let out = stdout(&ctl(&[
        "pc",
        "ep",
        "--admin-url",
        &proxy.url(),
        "--status",
        "unhealthy",
    ]));
    assert_eq!(
        out.lines().map(squash).collect::<Vec<_>>(),
        [
            "ENDPOINT STATUS OUTLIER CHECK CLUSTER",
            "10.244.0.34:9080 UNHEALTHY OK outbound|9080|v3|reviews.default.svc.cluster.local",
        ]
    );
    // `all` reads both documents over one connection and shows the live rows too.
    let all = stdout(&ctl(&["pc", "all", "--admin-url", &proxy.url()]));
    assert!(all.starts_with(&golden("productpage", "clusters")));
    assert!(
        all.lines().map(squash).any(|l| l
            == "10.244.0.33:9080 HEALTHY FAILED outbound|9080|v2|reviews.default.svc.cluster.local"),
        "{all}"
    );
    assert_eq!(
        proxy.requests(),
        [
            "GET /config_dump?include_eds",
            "GET /clusters?format=json",
            "GET /config_dump?include_eds",
            "GET /clusters?format=json",
            "GET /config_dump?include_eds",
            "GET /clusters?format=json",
        ]
    );
}

#[test]
fn a_path_prefix_in_the_url_is_kept() {
    let document = fixture_text("productpage");
    let proxy = serve(
        move |_, target| match target.strip_prefix("/mesh/productpage") {
            Some("/config_dump?include_eds") => config_dump(&document, "include_eds"),
            _ => Reply::text(404, "not found\n"),
        },
    );
    let url = format!("{}/mesh/productpage/", proxy.url());
    let out = stdout(&ctl(&["pc", "clusters", "--admin-url", &url]));
    assert_eq!(out, golden("productpage", "clusters"));
}

#[test]
fn a_proxy_without_configuration_is_not_ready() {
    let proxy = serve(|_, _| Reply::text(503, "no configuration loaded yet\n"));
    let err = failure(&ctl(&["pc", "listeners", "--admin-url", &proxy.url()]));
    assert_eq!(
        err,
        format!(
            "Error: the proxy at {} is not ready yet (its admin API answered 503 Service \
             Unavailable: no configuration loaded yet); try again in a few seconds",
            proxy.url()
        )
    );
}

#[test]
fn a_closed_port_is_unreachable() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let err = failure(&ctl(&["pc", "listeners", "--admin-url", &url]));
    assert_eq!(
        err,
        format!(
            "Error: cannot reach the proxy admin API at {url}: connection refused (is the proxy \
             running, and is this its admin port?)"
        )
    );
}

#[test]
fn a_silent_proxy_times_out() {
    // Bound and listening, never accepting: the connection opens, no answer comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let err = failure(&ctl(&[
        "pc",
        "clusters",
        "--admin-url",
        &url,
        "--timeout",
        "300ms",
    ]));
    assert_eq!(
        err,
        format!("Error: cannot reach the proxy admin API at {url}: no answer within 0.3s")
    );
}

#[test]
fn a_malformed_dump_names_the_field() {
    let bad =
        fixture_text("productpage").replacen("\"portValue\": 15001", "\"portValue\": \"15001\"", 1);
    let proxy = serve(move |_, _| Reply::json(200, bad.clone()));
    let err = failure(&ctl(&["pc", "listeners", "--admin-url", &proxy.url()]));
    assert_eq!(
        err,
        format!(
            "Error: the configuration from {} is not a valid proxy configuration: line 9, column 30: \
             listeners[0].address.socketAddress.portValue: invalid type: string \"15001\", expected u16",
            proxy.url()
        )
    );
    // Well-formed but inconsistent: the checker's field path.
    let dangling = fixture_text("productpage").replace(
        "\"routeConfigName\": \"9080\"",
        "\"routeConfigName\": \"9081\"",
    );
    let proxy = serve(move |_, _| Reply::json(200, dangling.clone()));
    let err = failure(&ctl(&["pc", "routes", "--admin-url", &proxy.url()]));
    assert_eq!(
        err,
        format!(
            "Error: the configuration from {} is not a valid proxy configuration: \
             listeners[2].filterChains[0].filters[0].typedConfig.rds.routeConfigName: route table \
             \"9081\" is not defined",
            proxy.url()
        )
    );
}

#[test]
fn a_proxy_without_the_clusters_route_says_so() {
    let document = fixture_text("productpage");
    let proxy = serve(move |_, target| match target {
        "/config_dump?include_eds" => config_dump(&document, "include_eds"),
        _ => Reply::text(404, "no such admin endpoint\n"),
    });
    let err = failure(&ctl(&["pc", "endpoints", "--admin-url", &proxy.url()]));
    assert_eq!(
        err,
        format!(
            "Error: the proxy admin API at {} answered 404 to GET /clusters?format=json: no such \
             admin endpoint",
            proxy.url()
        )
    );
    // The other views do not need it.
    stdout(&ctl(&["pc", "listeners", "--admin-url", &proxy.url()]));
}

#[test]
fn clusters_in_another_shape_are_refused() {
    let document = fixture_text("productpage");
    let proxy = serve(move |_, target| match target {
        "/config_dump?include_eds" => config_dump(&document, "include_eds"),
        _ => Reply::json(200, r#"{"clusterStatuses": {"name": "x"}}"#),
    });
    let err = failure(&ctl(&["pc", "endpoints", "--admin-url", &proxy.url()]));
    assert_eq!(
        err,
        format!(
            "Error: the endpoint health from {} is not in the documented /clusters?format=json \
             shape: invalid type: map, expected a sequence at line 1 column 20",
            proxy.url()
        )
    );
}

#[test]
fn sources_and_files() {
    assert_eq!(
        failure(&ctl(&["pc", "listeners"])),
        "Error: say which proxy to read: give a pod name, --admin-url URL or --file FILE"
    );
    assert_eq!(
        failure(&ctl(&[
            "pc",
            "listeners",
            "productpage",
            "--file",
            "x.json"
        ])),
        "Error: give only one of a pod name, --admin-url and --file"
    );
    assert_eq!(
        failure(&ctl(&["pc", "listeners", "--admin-url", "127.0.0.1:15000"])),
        "Error: --admin-url \"127.0.0.1:15000\" has no http:// scheme: write it as \
         http://HOST:PORT, e.g. http://127.0.0.1:15000"
    );
    assert_eq!(
        failure(&ctl(&[
            "pc",
            "listeners",
            "--file",
            "/nonexistent/dump.json"
        ])),
        "Error: cannot read /nonexistent/dump.json: No such file or directory (os error 2)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.json");
    std::fs::write(&path, "{\"listeners\": [], \"clustrs\": []}").unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(
        failure(&ctl(&["pc", "clusters", "-f", p])),
        format!(
            "Error: the configuration from {p} is not a valid proxy configuration: line 1, column \
             27: clustrs: unknown field `clustrs`, expected one of `versionInfo`, `listeners`, \
             `routes`, `clusters`, `endpoints`, `dns`, `peerAuthentication`, `authorization`, `requestAuthentication`, `telemetry`"
        )
    );
}
