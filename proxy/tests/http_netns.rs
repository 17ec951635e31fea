//! Proof, with real HTTP between network-namespace "pods" behind the real capture rules, that
//! the sidecar's HTTP path does what Istio's does: the client's sidecar (15001 → `0.0.0.0_9080`
//! → route table `9080`) picks subsets by weight and header, the server's sidecar (15006 →
//! `inbound|9080||`) delivers to the app; h2c keeps HTTP/2 across both hops; timeouts, fault
//! delay and abort, retries and outlier detection act on real failing servers; Istio's metrics
//! come out on 15090 with reporter `source` and `destination`; the DNS proxy answers the
//! configuration's names to captured queries.
//!
//! Servers are the `http_common` upstreams (hyper) run on threads inside the pods' namespaces;
//! clients are hyper clients on a thread in the client pod, as root, so their connections are
//! captured like an app's. Every test skips (printing why) without root, `ip`, iptables or
//! `setpriv`, and fails instead with `RUSTMESH_REQUIRE_NETNS=1`. No timing is asserted beyond
//! generous bounds that tell "waited for the timeout" from "waited for the slow server".

mod http_common;
mod support;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_common::{Behavior, Clients, Upstream, empty_body, get, request, send, upstream_on};
use serde_json::{Value, json};
use support::docs::{address, builtin_clusters, tcp_proxy, virtual_outbound};
use support::sidecar::{Scratch, Sidecar, eventually};
use support::{ISTIO_INIT_ARGS, Net, Pod};

/// The "ClusterIP" of the services in these tests: nothing has it; only capture gets there.
const VIP: &str = "10.96.0.50";
const PORT: u16 = 9080;

// ---- servers and clients in pods ------------------------------------------------------------

/// An HTTP upstream serving on `0.0.0.0:<port>` inside a pod, stopped on drop.
struct PodServer {
    up: Upstream,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PodServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_http(pod: &Pod, port: u16, name: &str, behavior: Behavior) -> PodServer {
    let (tx, rx) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let name = name.to_string();
    let thread = pod.ns.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .unwrap();
            tx.send(upstream_on(l, &name, behavior)).unwrap();
            let _ = stopped.await;
        });
    });
    let up = rx.recv().expect("server started");
    PodServer {
        up,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// Runs `f` (async) on a thread in `pod`'s namespace, as root: its connections are captured.
fn in_pod<T, F>(pod: &Pod, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    pod.ns.enter(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

fn vip() -> SocketAddr {
    format!("{VIP}:{PORT}").parse().unwrap()
}

// ---- configuration documents, as the operator renders them --------------------------------

/// `0.0.0.0_9080` (outbound): HTTP (sniffed) to route table `9080`, else passthrough.
fn outbound_http_listener() -> Value {
    json!({"name": format!("0.0.0.0_{PORT}"), "address": address("0.0.0.0", PORT),
        "trafficDirection": "OUTBOUND", "bindToPort": false,
        "filterChains": [{"filterChainMatch": {"transportProtocol": "raw_buffer", "applicationProtocols": ["http/1.1", "h2c"]},
            "filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typedConfig": {"statPrefix": format!("outbound_0.0.0.0_{PORT}"), "rds": {"routeConfigName": PORT.to_string()}}}]}],
        "defaultFilterChain": {"name": "PassthroughFilterChain", "filters": tcp_proxy("PassthroughCluster")},
        "listenerFiltersTimeout": "0.1s"})
}

/// `virtualInbound` with Istio's three chains for 9080 (HTTP, raw TCP, TLS) and the passthrough.
/// (Only the loop blackhole and the passthrough when not `app_port`.)
fn virtual_inbound(app_port: bool) -> Value {
    let inbound = format!("inbound|{PORT}||");
    let mut l = json!({"name": "virtualInbound", "address": address("0.0.0.0", 15006),
        "trafficDirection": "INBOUND", "useOriginalDst": true, "filterChains": [
        {"name": "virtualInbound-blackhole", "filterChainMatch": {"destinationPort": 15006}, "filters": tcp_proxy("BlackHoleCluster")},
        {"name": format!("0.0.0.0_{PORT}"), "filterChainMatch": {"destinationPort": PORT, "transportProtocol": "raw_buffer", "applicationProtocols": ["http/1.1", "h2c"]},
         "filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "statPrefix": format!("inbound_0.0.0.0_{PORT}"),
            "routeConfig": {"name": inbound, "virtualHosts": [{"name": format!("inbound|http|{PORT}"), "domains": ["*"],
                "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": inbound, "timeout": "0s"}}]}]}}}]},
        {"name": format!("0.0.0.0_{PORT}"), "filterChainMatch": {"destinationPort": PORT, "transportProtocol": "raw_buffer"}, "filters": tcp_proxy(&inbound)},
        {"name": "virtualInbound", "filterChainMatch": {"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
         "filters": tcp_proxy("InboundPassthroughClusterIpv4")},
    ]});
    if !app_port {
        let chains = l["filterChains"].as_array_mut().unwrap();
        chains.retain(|c| !c["name"].as_str().unwrap().starts_with("0.0.0.0_"));
    }
    l
}

fn fqdn(service: &str) -> String {
    format!("{service}.default.svc.cluster.local")
}

/// `outbound|9080|<subset>|<service>...` with its endpoints and Istio's metadata; `extra` is
/// merged into the cluster (outlierDetection, circuitBreakers...).
fn subset_cluster(
    service: &str,
    subset: &str,
    endpoints: &[SocketAddr],
    extra: Value,
) -> (Value, Value) {
    let name = format!("outbound|{PORT}|{subset}|{}", fqdn(service));
    let mut c = json!({"name": name, "type": "EDS", "connectTimeout": "2s", "lbPolicy": "ROUND_ROBIN",
        "edsClusterConfig": {"serviceName": name},
        "metadata": {"services": [{"host": fqdn(service), "name": service, "namespace": "default"}], "subset": subset}});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    let lb: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({"endpoint": {"address": address(&a.ip().to_string(), a.port())}}))
        .collect();
    (
        c,
        json!({"clusterName": name, "endpoints": [{"lbEndpoints": lb}]}),
    )
}

/// Every domain form of `service` plus the VIP, as Istio writes them.
fn domains(service: &str) -> Vec<String> {
    let mut v = Vec::new();
    for host in [
        fqdn(service),
        service.to_string(),
        format!("{service}.default.svc.cluster"),
        format!("{service}.default.svc"),
        format!("{service}.default"),
        VIP.to_string(),
    ] {
        v.push(format!("{host}:{PORT}"));
        v.push(host);
    }
    v
}

/// The client pod's document: the outbound HTTP listener and route table `9080` with
/// `vhosts`, `clusters`/`endpoints` added, `dns` entries.
fn client_doc(vhosts: Vec<Value>, clusters: Vec<(Value, Value)>, dns: Value) -> String {
    let mut all_vhosts = vhosts;
    all_vhosts.push(json!({"name": "allow_any", "domains": ["*"],
        "routes": [{"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]}));
    let mut cs = builtin_clusters();
    let mut eps = Vec::new();
    for (c, e) in clusters {
        cs.push(c);
        eps.push(e);
    }
    json!({"versionInfo": "client-1",
        "listeners": [virtual_outbound("PassthroughCluster"), virtual_inbound(false), outbound_http_listener()],
        "routes": [{"name": PORT.to_string(), "virtualHosts": all_vhosts}],
        "clusters": cs, "endpoints": eps, "dns": dns})
    .to_string()
}

/// A server pod's document: `virtualInbound` delivering 9080 to the app.
fn server_doc() -> String {
    let inbound = format!("inbound|{PORT}||");
    let mut cs = builtin_clusters();
    cs.push(json!({"name": inbound, "type": "STATIC", "connectTimeout": "10s",
        "loadAssignment": {"clusterName": inbound, "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": address("127.0.0.1", PORT)}}]}]},
        "metadata": {"services": [{"host": fqdn("reviews"), "name": "reviews", "namespace": "default"}]}}));
    json!({"versionInfo": "server-1", "listeners": [virtual_outbound("PassthroughCluster"), virtual_inbound(true)],
        "clusters": cs})
    .to_string()
}

fn start_sidecar(pod: &Pod, scratch: &Scratch, doc: &str) -> Sidecar {
    start_sidecar_with(pod, scratch, doc, &[])
}

fn start_sidecar_with(pod: &Pod, scratch: &Scratch, doc: &str, flags: &[&str]) -> Sidecar {
    let config = scratch.write(&format!("{}.json", pod.ns.name), doc);
    pod.capture(ISTIO_INIT_ARGS);
    let s = pod.start_sidecar(scratch, &config, flags);
    eventually(pod, &s, "/ready", "ready", |status, _| status == 200);
    s
}

fn prometheus(pod: &Pod) -> String {
    let (status, body) = pod
        .http_get(
            SocketAddr::from(([127, 0, 0, 1], 15090)),
            "/stats/prometheus",
        )
        .unwrap();
    assert_eq!(status, 200);
    body
}

/// The sum of the samples of `metric` whose labels include all of `labels` (`None`: no such
/// series).
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// GET `path` on `host` through the capture, `n` times, one connection reused (keep-alive);
/// `headers` added to each. Returns (status, x-upstream) per request.
fn get_many(
    pod: &Pod,
    host: &str,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<(u16, String)> {
    let (host, path) = (host.to_string(), path.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    in_pod(pod, move || async move {
        let c = Clients::new();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut b = request(vip(), &host, &path);
            for (k, v) in &headers {
                b = b.header(k, v);
            }
            let a = send(&c.h1, b.body(empty_body()).unwrap()).await;
            out.push((a.status.as_u16(), a.upstream()));
        }
        out
    })
}

fn count(answers: &[(u16, String)], upstream: &str) -> usize {
    answers
        .iter()
        .filter(|(s, u)| *s == 200 && u == upstream)
        .count()
}

// ---- the tests ------------------------------------------------------------------------------

/// TPROXY, as Istio's `original_src` filter does it: the server pod's sidecar (root with group
/// 1337, transparent virtualInbound) opens its connection to the app from the client's own
/// address, so the app sees the real client, on the HTTP path (requests from two clients each
/// arriving from their own address, on pools of their own) and on the TCP path.
#[test]
fn tproxy_inbound_requests_reach_the_app_from_the_clients_own_address() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (c1, c2, server) = (net.pod(), net.pod(), net.pod());
    let scratch = Scratch::new();
    let app = serve_http(&server, PORT, "reviews", Behavior::default());
    // The inbound cluster as the operator renders it: ORIGINAL_DST from 127.0.0.6, which the
    // original source replaces under TPROXY.
    let inbound = format!("inbound|{PORT}||");
    let mut cs = builtin_clusters();
    cs.push(json!({"name": inbound, "type": "ORIGINAL_DST", "connectTimeout": "10s",
        "lbPolicy": "CLUSTER_PROVIDED",
        "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}},
        "metadata": {"services": [{"host": fqdn("reviews"), "name": "reviews", "namespace": "default"}]}}));
    let doc = json!({"versionInfo": "server-1", "listeners": [virtual_outbound("PassthroughCluster"), virtual_inbound(true)],
        "clusters": cs})
    .to_string();
    let config = scratch.write(&format!("{}.json", server.ns.name), &doc);
    let mut args = ISTIO_INIT_ARGS.to_vec();
    let m = args.iter().position(|f| *f == "-m").unwrap();
    args[m + 1] = "TPROXY";
    server.capture(&args);
    let sidecar = server.start_sidecar_with_env(
        &scratch,
        &config,
        &[],
        &[("ISTIO_META_INTERCEPTION_MODE", "TPROXY")],
    );
    eventually(&server, &sidecar, "/ready", "ready", |status, _| {
        status == 200
    });

    let to = SocketAddr::new(server.ip.into(), PORT);
    for (client, n) in [(&c1, 3), (&c2, 2), (&c1, 1)] {
        let answers = in_pod(client, move || async move {
            let c = Clients::new();
            let mut out = Vec::new();
            for _ in 0..n {
                let a = get(&c, to, "reviews:9080", "/r").await;
                out.push(a.status.as_u16());
            }
            out
        });
        assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    }
    let peers: Vec<_> = app.up.seen().iter().map(|s| s.peer.ip()).collect();
    let (ip1, ip2): (std::net::IpAddr, std::net::IpAddr) = (c1.ip.into(), c2.ip.into());
    assert_eq!(
        peers,
        [ip1, ip1, ip1, ip2, ip2, ip1],
        "each request from its own client"
    );
    // Raw TCP on an undeclared port (InboundPassthroughClusterIpv4, the TCP proxy).
    let echo = server.serve("0.0.0.0:7001", "app-7001");
    assert_eq!(c2.talk(server.at(7001), "tcp").unwrap(), "app-7001 tcp");
    assert_eq!(echo.saw("tcp").unwrap().peer.ip(), ip2);
}

/// productpage → reviews v1/v2 through two sidecars each way: a 90/10 VirtualService split
/// measured over 1000 requests, `end-user: jason` to v2, h2c end to end, the inbound sidecar
/// delivering to the app, and Istio's request metrics on both sides.
#[test]
fn weighted_subsets_and_header_routes_through_two_sidecars() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (client, s1, s2) = (net.pod(), net.pod(), net.pod());
    let scratch = Scratch::new();
    let v1 = serve_http(&s1, PORT, "reviews-v1", Behavior::default());
    let v2 = serve_http(&s2, PORT, "reviews-v2", Behavior::default());
    // The server sidecars serve from one thread (`--concurrency 1`), the client's from one per core.
    let _sc1 = start_sidecar_with(&s1, &scratch, &server_doc(), &["--concurrency", "1"]);
    let _sc2 = start_sidecar_with(&s2, &scratch, &server_doc(), &["--concurrency", "1"]);
    let c1 = format!("outbound|{PORT}|v1|{}", fqdn("reviews"));
    let c2 = format!("outbound|{PORT}|v2|{}", fqdn("reviews"));
    let vhost = json!({"name": format!("{}:{PORT}", fqdn("reviews")), "domains": domains("reviews"), "routes": [
        {"name": "jason", "match": {"prefix": "/", "headers": [{"name": "end-user", "stringMatch": {"exact": "jason"}}]},
         "route": {"cluster": c2, "timeout": "0s"}},
        {"name": "split", "match": {"prefix": "/"}, "route": {"weightedClusters": {"clusters": [
            {"name": c1, "weight": 90}, {"name": c2, "weight": 10}]}, "timeout": "0s"}},
    ]});
    let doc = client_doc(
        vec![vhost],
        vec![
            subset_cluster(
                "reviews",
                "v1",
                &[SocketAddr::new(s1.ip.into(), PORT)],
                json!({}),
            ),
            subset_cluster(
                "reviews",
                "v2",
                &[SocketAddr::new(s2.ip.into(), PORT)],
                json!({}),
            ),
        ],
        json!([]),
    );
    let sidecar = start_sidecar(&client, &scratch, &doc);

    let answers = get_many(&client, "reviews:9080", "/reviews/1", 1000, &[]);
    let (n1, n2) = (count(&answers, "reviews-v1"), count(&answers, "reviews-v2"));
    println!("90/10 split over 1000 requests: v1 {n1}, v2 {n2}");
    assert_eq!(
        n1 + n2,
        1000,
        "every request answered 200 by v1 or v2: {:?}",
        &answers[..5]
    );
    // Binomial(1000, 0.1): sd ≈ 9.5; ±5 sd.
    assert!(
        (52..=148).contains(&n2),
        "v2 got {n2} of 1000 (expected ~100)"
    );
    assert_eq!(
        v1.up.hits() + v2.up.hits(),
        1000,
        "the apps saw every request"
    );

    let jason = get_many(
        &client,
        "reviews.default.svc.cluster.local:9080",
        "/",
        20,
        &[("end-user", "jason")],
    );
    assert_eq!(
        count(&jason, "reviews-v2"),
        20,
        "end-user: jason always goes to v2: {jason:?}"
    );

    // The app got the request from its own sidecar (inbound), with the mesh's headers.
    let seen = v2.up.seen().pop().expect("v2 saw requests");
    assert_eq!(
        seen.headers["host"],
        "reviews.default.svc.cluster.local:9080"
    );
    assert!(
        seen.headers.contains_key("x-request-id"),
        "{:?}",
        seen.headers
    );

    // h2c with prior knowledge, end to end.
    let (status, version) = in_pod(&client, || async {
        let c = Clients::new();
        let a = send(
            &c.h2,
            request(vip(), "reviews:9080", "/h2")
                .body(empty_body())
                .unwrap(),
        )
        .await;
        (
            a.status.as_u16(),
            a.json()["version"].as_str().unwrap_or_default().to_string(),
        )
    });
    assert_eq!(
        (status, version.as_str()),
        (200, "HTTP/2.0"),
        "h2c stays HTTP/2 over both hops"
    );

    // Istio's metrics: the client's sidecar reports as source, the servers' as destination.
    let client_metrics = prometheus(&client);
    let to_v1 = sample(
        &client_metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", "reviews.default.svc.cluster.local"),
            ("response_code", "200"),
        ],
    );
    assert!(
        to_v1.is_some_and(|v| v >= 1000.0),
        "client-side istio_requests_total: {to_v1:?}\n{}",
        client_metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let server_metrics = prometheus(&s2);
    let at_v2 = sample(
        &server_metrics,
        "istio_requests_total",
        &[("reporter", "destination"), ("response_code", "200")],
    );
    assert!(
        at_v2.is_some_and(|v| v >= 20.0),
        "server-side istio_requests_total: {at_v2:?}"
    );
    // Pools: 1000 keep-alive requests did not open 1000 upstream connections.
    let (_, clusters) = client.admin_get("/clusters").unwrap();
    let cx_total: u64 = clusters
        .lines()
        .filter(|l| {
            l.starts_with(&c1)
                && l.ends_with(|c: char| c.is_ascii_digit())
                && l.contains("::cx_total::")
        })
        .filter_map(|l| l.rsplit("::").next()?.parse::<u64>().ok())
        .sum();
    assert!(
        (1..50).contains(&cx_total),
        "upstream connections to v1: {cx_total}\n{clusters}"
    );
    drop(sidecar);
}

/// Timeouts, fault injection, retries and outlier detection against real slow and failing
/// servers, through the client's sidecar.
#[test]
fn timeouts_faults_retries_and_outlier_detection() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (client, good, bad) = (net.pod(), net.pod(), net.pod());
    let scratch = Scratch::new();
    let _good = serve_http(&good, PORT, "good", Behavior::default());
    let bad_server = serve_http(
        &bad,
        PORT,
        "bad",
        Behavior {
            status: Some(503),
            ..Default::default()
        },
    );
    let g = SocketAddr::new(good.ip.into(), PORT);
    let b = SocketAddr::new(bad.ip.into(), PORT);
    let route = |service: &str, extra: Value| {
        let cluster = format!("outbound|{PORT}||{}", fqdn(service));
        let mut r = json!({"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}});
        for (k, v) in extra.as_object().unwrap() {
            if k == "fault" {
                r["fault"] = v.clone();
            } else {
                r["route"][k] = v.clone();
            }
        }
        json!({"name": format!("{}:{PORT}", fqdn(service)), "domains": [service, format!("{service}:{PORT}")], "routes": [r]})
    };
    let vhosts = vec![
        route("slow", json!({"timeout": "0.5s"})),
        route(
            "delayed",
            json!({"fault": {"delay": {"fixedDelay": "2s", "percentage": {"value": 100}}}}),
        ),
        route(
            "aborted",
            json!({"fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}}),
        ),
        route(
            "flaky",
            json!({"retryPolicy": {"retryOn": "5xx", "numRetries": 2, "retryPreviousHosts": true}}),
        ),
        route("ejecting", json!({})),
    ];
    let plain = |svc: &str, eps: &[SocketAddr], extra: Value| {
        let (mut c, mut e) = subset_cluster(svc, "", eps, extra);
        let name = format!("outbound|{PORT}||{}", fqdn(svc));
        c["name"] = json!(name);
        c["edsClusterConfig"]["serviceName"] = json!(name);
        e["clusterName"] = json!(name);
        (c, e)
    };
    let outlier = json!({"outlierDetection": {"consecutive5xx": 3, "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 100}});
    let doc = client_doc(
        vhosts,
        vec![
            plain("slow", &[g], json!({})),
            plain("delayed", &[g], json!({})),
            plain("aborted", &[g], json!({})),
            plain("flaky", &[g, b], json!({})),
            plain("ejecting", &[g, b], outlier),
        ],
        json!([]),
    );
    let _sidecar = start_sidecar(&client, &scratch, &doc);

    // Timeout 0.5 s on a server that takes 2 s: 504 after about 0.5 s.
    let t = Instant::now();
    let a = get_many(&client, "slow:9080", "/delay/2000", 1, &[]);
    let took = t.elapsed();
    assert_eq!(a[0].0, 504, "{a:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1800),
        "504 after {took:?}"
    );

    // Fault delay 2 s, then the real answer.
    let t = Instant::now();
    let a = get_many(&client, "delayed:9080", "/", 1, &[]);
    let took = t.elapsed();
    assert_eq!(a[0], (200, "good".to_string()));
    assert!(
        took >= Duration::from_millis(1900),
        "answered after {took:?}"
    );

    // Fault abort: the sidecar answers, the app never sees it.
    let before = _good.up.hits();
    let a = get_many(&client, "aborted:9080", "/", 5, &[]);
    assert!(a.iter().all(|(s, _)| *s == 418), "{a:?}");
    assert_eq!(
        _good.up.hits(),
        before,
        "aborted requests never reached the app"
    );

    // Retries (5xx, previous hosts avoided) mask the failing endpoint.
    let a = get_many(&client, "flaky:9080", "/", 40, &[]);
    assert_eq!(
        count(&a, "good"),
        40,
        "every request ends at the good endpoint: {a:?}"
    );
    assert!(
        bad_server.up.hits() > 0,
        "round robin did send some first attempts to the bad one"
    );

    // Outlier detection: after 3 consecutive 5xx the bad endpoint is ejected for 30 s.
    let bad_before = bad_server.up.hits();
    let a = get_many(&client, "ejecting:9080", "/", 60, &[]);
    let failures = a.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(
        failures,
        bad_server.up.hits() - bad_before,
        "every 503 came from the bad endpoint"
    );
    assert!(
        failures == 3,
        "exactly consecutive5xx failures before the ejection, got {failures}: {a:?}"
    );
    assert!(
        a[a.len() - 20..]
            .iter()
            .all(|x| *x == (200, "good".to_string())),
        "{a:?}"
    );
    let (_, clusters) = client.admin_get("/clusters").unwrap();
    let ejecting = format!("outbound|{PORT}||{}", fqdn("ejecting"));
    assert!(
        clusters.contains(&format!(
            "{ejecting}::{b}::health_flags::/failed_outlier_check"
        )),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("{ejecting}::{g}::health_flags::healthy")),
        "{clusters}"
    );
    let stats = prometheus(&client);
    assert_eq!(
        sample(
            &stats,
            "envoy_cluster_outlier_detection_ejections_enforced_total",
            &[("cluster_name", &ejecting)]
        ),
        Some(1.0)
    );
}

/// The DNS proxy answers a captured query (UDP to the pod's nameserver on port 53) for a name
/// of the configuration's `dns` table, without any resolver behind it.
#[test]
fn dns_proxy_answers_mesh_names_to_captured_queries() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let client = net.pod();
    // The capture sends DNS for the pod's nameserver to the DNS proxy, as Istio's does.
    client.resolv_conf("nameserver 10.96.0.10\n");
    let scratch = Scratch::new();
    let dns = json!([{"name": fqdn("reviews"), "aliases": ["reviews", "reviews.default"], "addresses": [VIP]}]);
    let _sidecar = start_sidecar(&client, &scratch, &client_doc(vec![], vec![], dns));
    for name in [
        "reviews.default.svc.cluster.local.",
        "reviews.",
        "REVIEWS.default.",
    ] {
        // Nobody has this resolver address: only the capture rules get the query answered.
        assert_eq!(client.resolve_a("10.96.0.10", name), [VIP], "{name}");
    }
}

/// The two-sidecar path of the first test, for protocols: a gRPC bidirectional stream (h2c,
/// trailers, each message echoed before the next is sent), a WebSocket upgrade echoing
/// messages, and the HTTP limits set by flags (431 for a head over `--max-request-headers-kb`).
#[test]
fn grpc_streams_websockets_and_limits_through_two_sidecars() {
    use futures::{SinkExt, StreamExt};
    use http_body_util::BodyExt;
    use http_common::ChannelBody;
    use hyper::body::Frame;
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (client, server) = (net.pod(), net.pod());
    let scratch = Scratch::new();
    let up = serve_http(&server, PORT, "reviews-v1", Behavior::default());
    // One thread (`--concurrency 1`): upgrades and streams on the single-threaded runtime too.
    let _server_sidecar =
        start_sidecar_with(&server, &scratch, &server_doc(), &["--concurrency", "1"]);
    let cluster = format!("outbound|{PORT}||{}", fqdn("reviews"));
    let vhost = json!({"name": format!("{}:{PORT}", fqdn("reviews")), "domains": domains("reviews"), "routes": [
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]});
    let (mut c, mut e) = subset_cluster(
        "reviews",
        "",
        &[SocketAddr::new(server.ip.into(), PORT)],
        json!({}),
    );
    c["name"] = json!(cluster);
    c["edsClusterConfig"]["serviceName"] = json!(cluster);
    e["clusterName"] = json!(cluster);
    let _client_sidecar = start_sidecar_with(
        &client,
        &scratch,
        &client_doc(vec![vhost], vec![(c, e)], json!([])),
        &["--max-request-headers-kb", "4"],
    );

    // gRPC: a bidirectional stream through both sidecars.
    let (first, second, trailers) = in_pod(&client, || async {
        let stream = tokio::net::TcpStream::connect(vip()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://reviews:{PORT}/helloworld.Greeter/SayHello"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(rustmesh_proxy::body::boxed(ChannelBody(rx)))
            .unwrap();
        let msg = http_common::grpc_message;
        tx.send(Frame::data(msg("first"))).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("response headers while the request still streams")
            .unwrap();
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first echo before the second message is sent")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        tx.send(Frame::data(msg("second"))).await.unwrap();
        drop(tx);
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the stream ends")
            .unwrap();
        let trailers = rest.trailers().cloned().expect("grpc trailers");
        (
            first == msg("first"),
            rest.to_bytes() == msg("second"),
            trailers["grpc-status"].to_str().unwrap().to_string(),
        )
    });
    assert!(first && second, "both messages echoed in order");
    assert_eq!(trailers, "0", "grpc-status from the app's trailers");

    // WebSocket: the upgrade crosses both sidecars, then messages flow both ways.
    let echoes = in_pod(&client, || async {
        let stream = tokio::net::TcpStream::connect(vip()).await.unwrap();
        let (mut ws, resp) =
            tokio_tungstenite::client_async(format!("ws://reviews:{PORT}/ws"), stream)
                .await
                .expect("websocket handshake through two sidecars");
        assert_eq!(resp.status(), 101);
        let mut echoes = Vec::new();
        for m in ["hello", "mesh"] {
            ws.send(tokio_tungstenite::tungstenite::Message::Text(m.into()))
                .await
                .unwrap();
            let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("echo in time")
                .unwrap()
                .unwrap();
            echoes.push(back.into_text().unwrap().to_string());
        }
        echoes
    });
    assert_eq!(echoes, ["echo:hello", "echo:mesh"]);

    // Limits from flags: a 6 KiB header is over --max-request-headers-kb 4.
    let hits = up.up.hits();
    let big = "x".repeat(6 * 1024);
    let a = get_many(&client, "reviews:9080", "/", 1, &[("x-big", &big)]);
    assert_eq!(a[0].0, 431, "{a:?}");
    let small = "x".repeat(2 * 1024);
    let a = get_many(&client, "reviews:9080", "/", 1, &[("x-big", &small)]);
    assert_eq!(a[0], (200, "reviews-v1".to_string()));
    assert_eq!(
        up.up.hits(),
        hits + 1,
        "the refused request never reached the app"
    );
}

/// A server-first protocol (the server greets, as MySQL does) on a port whose listener has an
/// HTTP chain: the client sends nothing, so the sniffer gives up after
/// `listenerFiltersTimeout` and the connection falls back to the TCP default chain: the
/// greeting arrives and bytes flow both ways.
#[test]
fn server_first_protocols_fall_back_to_tcp() {
    use std::io::{BufRead, BufReader, Write};
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (client, server) = (net.pod(), net.pod());
    let scratch = Scratch::new();
    const DB: u16 = 3306;
    let listener = server
        .ns
        .enter(|| std::net::TcpListener::bind(("0.0.0.0", DB)))
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                conn.write_all(b"HELLO from the database\n").unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let _ = conn.write_all(format!("echo:{line}").as_bytes());
                    line.clear();
                }
            });
        }
    });
    let cluster = format!("outbound|{DB}||{}", fqdn("db"));
    let mut doc: Value = serde_json::from_str(&client_doc(vec![], vec![], json!([]))).unwrap();
    let mut l = outbound_http_listener();
    l["name"] = json!(format!("0.0.0.0_{DB}"));
    l["address"] = address("0.0.0.0", DB);
    l["defaultFilterChain"] = json!({"name": "tcp", "filters": tcp_proxy(&cluster)});
    doc["listeners"].as_array_mut().unwrap().push(l);
    doc["clusters"].as_array_mut().unwrap().push(json!({"name": cluster, "type": "STATIC",
        "connectTimeout": "2s", "loadAssignment": {"clusterName": cluster, "endpoints": [{"lbEndpoints": [
        {"endpoint": {"address": address(&server.ip.to_string(), DB)}}]}]}}));
    let _sidecar = start_sidecar(&client, &scratch, &doc.to_string());
    let (greeting, echo) = client.ns.enter(move || {
        let s = std::net::TcpStream::connect((VIP, DB)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut greeting = String::new();
        r.read_line(&mut greeting).unwrap();
        (&s).write_all(b"SELECT 1\n").unwrap();
        let mut echo = String::new();
        r.read_line(&mut echo).unwrap();
        (greeting, echo)
    });
    assert_eq!(greeting, "HELLO from the database\n");
    assert_eq!(echo, "echo:SELECT 1\n");
}
