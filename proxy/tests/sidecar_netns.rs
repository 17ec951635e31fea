//! Proof, with real traffic between network-namespace "pods", that the sidecar (`proxy run`,
//! as uid 1337, behind the real `proxy istio-iptables` rules) does what Istio's does: dispatch
//! by original destination on 15001, delivery to the app on 15006, passthrough and blackhole,
//! half-close through two proxies, configuration swaps under traffic without a failed
//! connection, refusal of bad configurations while the old one serves, and SIGTERM drain.
//!
//! Apps, servers and clients are threads of this process inside the pods' namespaces (see
//! `support/sidecar.rs`). Every test skips (printing why) without root, `ip`, iptables or
//! `setpriv`, and fails instead with `RUSTMESH_REQUIRE_NETNS=1`. Each builds its own net.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::docs::{address, builtin_clusters, tcp_proxy, virtual_outbound};
use support::sidecar::{Client, Scratch, Sidecar, eventually};
use support::{As, ISTIO_INIT_ARGS, Net, Pod};

// ---- configuration documents, as the operator renders them --------------------------------

/// `virtualInbound`: the loop blackhole, `inbound|<port>||` for each declared port, and the
/// IPv4/IPv6 passthroughs.
fn virtual_inbound(ports: &[u16]) -> Value {
    let mut chains = vec![json!({"name": "virtualInbound-blackhole",
        "filterChainMatch": {"destinationPort": 15006}, "filters": tcp_proxy("BlackHoleCluster")})];
    for p in ports {
        chains.push(
            json!({"name": format!("0.0.0.0_{p}"), "filterChainMatch": {"destinationPort": p},
            "filters": tcp_proxy(&format!("inbound|{p}||"))}),
        );
    }
    chains.push(json!({"name": "virtualInbound", "filterChainMatch": {"prefixRanges": [
        {"addressPrefix": "0.0.0.0", "prefixLen": 0}]}, "filters": tcp_proxy("InboundPassthroughClusterIpv4")}));
    chains.push(json!({"name": "virtualInbound-ipv6", "filterChainMatch": {"prefixRanges": [
        {"addressPrefix": "::", "prefixLen": 0}]}, "filters": tcp_proxy("InboundPassthroughClusterIpv6")}));
    json!({"name": "virtualInbound", "address": address("0.0.0.0", 15006),
        "trafficDirection": "INBOUND", "useOriginalDst": true, "filterChains": chains})
}

/// A virtual (`bindToPort: false`) outbound listener `<ip>_<port>` proxying to `cluster`.
fn tcp_listener(ip: &str, port: u16, cluster: &str) -> Value {
    json!({"name": format!("{ip}_{port}"), "address": address(ip, port),
        "trafficDirection": "OUTBOUND", "bindToPort": false, "filterChains": [{"filters": tcp_proxy(cluster)}]})
}

/// An EDS cluster and its endpoints.
fn eds_cluster(name: &str, endpoints: &[SocketAddr]) -> (Value, Value) {
    let lb: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({"endpoint": {"address": address(&a.ip().to_string(), a.port())}}))
        .collect();
    (
        json!({"name": name, "type": "EDS", "connectTimeout": "5s", "lbPolicy": "LEAST_REQUEST",
            "edsClusterConfig": {"serviceName": name}}),
        json!({"clusterName": name, "endpoints": [{"lbEndpoints": lb}]}),
    )
}

/// `inbound|<port>||`: the app on 127.0.0.1:<port>.
fn inbound_cluster(port: u16) -> Value {
    let name = format!("inbound|{port}||");
    json!({"name": name, "type": "STATIC", "connectTimeout": "10s", "lbPolicy": "ROUND_ROBIN",
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": address("127.0.0.1", port)}}]}]}})
}

struct Doc {
    version: String,
    listeners: Vec<Value>,
    clusters: Vec<Value>,
    endpoints: Vec<Value>,
}

impl Doc {
    fn new(version: &str, catch_all: &str) -> Doc {
        Doc {
            version: version.into(),
            listeners: vec![virtual_outbound(catch_all), virtual_inbound(&[])],
            clusters: builtin_clusters(),
            endpoints: vec![],
        }
    }

    fn inbound_ports(mut self, ports: &[u16]) -> Doc {
        self.listeners[1] = virtual_inbound(ports);
        self.clusters
            .extend(ports.iter().map(|p| inbound_cluster(*p)));
        self
    }

    fn eds(mut self, name: &str, endpoints: &[SocketAddr]) -> Doc {
        let (c, e) = eds_cluster(name, endpoints);
        self.clusters.push(c);
        self.endpoints.push(e);
        self
    }

    fn listener(mut self, l: Value) -> Doc {
        self.listeners.push(l);
        self
    }

    fn json(&self) -> String {
        json!({"versionInfo": self.version, "listeners": self.listeners,
            "clusters": self.clusters, "endpoints": self.endpoints})
        .to_string()
    }
}

// ---- helpers --------------------------------------------------------------------------------

/// Applies Istio's capture rules to `pod` and starts its sidecar with `doc`; waits until ready.
fn sidecar(pod: &Pod, scratch: &Scratch, doc: &Doc, extra: &[&str]) -> Sidecar {
    sidecar_with_env(pod, scratch, doc, extra, &[])
}

fn sidecar_with_env(
    pod: &Pod,
    scratch: &Scratch,
    doc: &Doc,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Sidecar {
    let config = scratch.write(&format!("{}.json", pod.ns.name), &doc.json());
    pod.capture(ISTIO_INIT_ARGS);
    let s = pod.start_sidecar_with_env(scratch, &config, extra, env);
    wait_ready(pod, &s);
    s
}

fn wait_ready(pod: &Pod, s: &Sidecar) {
    eventually(pod, s, "/ready", "ready", |status, _| status == 200);
    let health = pod
        .http_get(SocketAddr::from(([127, 0, 0, 1], 15021)), "/healthz/ready")
        .unwrap();
    assert_eq!(health.0, 200, "15021 agrees with 15000");
}

fn config_version(pod: &Pod) -> String {
    let (status, body) = pod.admin_get("/config_dump").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["versionInfo"].as_str().unwrap_or_default().to_string()
}

fn stat(pod: &Pod, name: &str) -> Option<String> {
    let (_, body) = pod.admin_get("/stats").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
}

fn at(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

// ---- the tests ------------------------------------------------------------------------------

/// 15001 reads the original destination and hands the connection to `<ip>_<port>` first, then
/// `0.0.0.0_<port>`, else `virtualOutbound`'s own passthrough; the proxy's upstream
/// connections (uid 1337) are not captured again.
#[test]
fn outbound_connections_are_dispatched_by_original_destination() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b, c) = (net.pod(), net.pod(), net.pod());
    let b_7000 = b.serve("0.0.0.0:7000", "b-7000");
    let b_7001 = b.serve("0.0.0.0:7001", "b-7001");
    let c_7000 = c.serve("0.0.0.0:7000", "c-7000");
    let c_8000 = c.serve("0.0.0.0:8000", "c-8000");
    let b_ip = b.ip.to_string();
    // `<b>_7000` goes to b's 7001 (so we can tell it was this listener); any other
    // destination on 7000 goes to c.
    let doc = Doc::new("v1", "PassthroughCluster")
        .eds("outbound|7000||b.default.svc.cluster.local", &[b.at(7001)])
        .eds(
            "outbound|7000||any.default.svc.cluster.local",
            &[c.at(7000)],
        )
        .listener(tcp_listener(
            &b_ip,
            7000,
            "outbound|7000||b.default.svc.cluster.local",
        ))
        .listener(tcp_listener(
            "0.0.0.0",
            7000,
            "outbound|7000||any.default.svc.cluster.local",
        ));
    let scratch = Scratch::new();
    let _proxy = sidecar(&a, &scratch, &doc, &[]);

    assert_eq!(a.talk(b.at(7000), "exact").unwrap(), "b-7001 exact");
    assert_eq!(
        a.talk(at(net.nobody(), 7000), "wildcard").unwrap(),
        "c-7000 wildcard"
    );
    assert_eq!(
        a.talk(c.at(8000), "passthrough").unwrap(),
        "c-8000 passthrough"
    );
    assert!(b_7000.seen().is_empty(), "b:7000 itself is never reached");
    for (server, line) in [
        (&b_7001, "exact"),
        (&c_7000, "wildcard"),
        (&c_8000, "passthrough"),
    ] {
        let seen = server.saw(line).unwrap();
        assert_eq!(
            seen.peer.ip(),
            a.ip,
            "{}: the proxy connects from the pod's address",
            server.name()
        );
    }
    assert_eq!(
        stat(
            &a,
            "cluster.outbound|7000||b.default.svc.cluster.local.upstream_cx_total"
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        stat(&a, "listener.0.0.0.0_7000.downstream_cx_total").as_deref(),
        Some("1")
    );
    let (_, clusters) = a.admin_get("/clusters").unwrap();
    assert!(
        clusters.contains(&format!(
            "outbound|7000||b.default.svc.cluster.local::{}::cx_total::1\n",
            b.at(7001)
        )),
        "{clusters}"
    );
    let (_, prom) = a
        .http_get(
            SocketAddr::from(([127, 0, 0, 1], 15090)),
            "/stats/prometheus",
        )
        .unwrap();
    assert!(
        prom.contains(
            "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"client-v1\""
        ),
        "Istio's TCP metrics: {prom}"
    );
}

/// 15006 delivers inbound connections to the app: a declared port through `inbound|<port>||`
/// (the app sees 127.0.0.1), any other port through the passthrough from 127.0.0.6.
#[test]
fn inbound_connections_are_delivered_to_the_app() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    let app_7000 = b.serve("0.0.0.0:7000", "app-7000");
    let app_7001 = b.serve("0.0.0.0:7001", "app-7001");
    let scratch = Scratch::new();
    let _proxy = sidecar(
        &b,
        &scratch,
        &Doc::new("v1", "PassthroughCluster").inbound_ports(&[7000]),
        &[],
    );

    assert_eq!(a.talk(b.at(7000), "declared").unwrap(), "app-7000 declared");
    assert_eq!(
        a.talk(b.at(7001), "undeclared").unwrap(),
        "app-7001 undeclared"
    );
    assert_eq!(
        app_7000.saw("declared").unwrap().peer.ip().to_string(),
        "127.0.0.1"
    );
    assert_eq!(
        app_7001.saw("undeclared").unwrap().peer.ip().to_string(),
        "127.0.0.6"
    );
    assert_eq!(
        stat(&b, "listener.virtualInbound.downstream_cx_total").as_deref(),
        Some("2")
    );
}

/// TPROXY interception end to end: `istio-iptables -m TPROXY` and the sidecar with
/// `ISTIO_META_INTERCEPTION_MODE=TPROXY` (root, group 1337, as Istio's template runs it). The
/// transparent virtualInbound takes the connections to B:7000 and B:7001 and delivers them to
/// the app, declared port and passthrough alike; the proxy's own connections to the app are not
/// captured again.
#[test]
fn tproxy_inbound_connections_are_delivered_to_the_app() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    let app_7000 = b.serve("0.0.0.0:7000", "app-7000");
    let app_7001 = b.serve("0.0.0.0:7001", "app-7001");
    let scratch = Scratch::new();
    let doc = Doc::new("v1", "PassthroughCluster").inbound_ports(&[7000]);
    let config = scratch.write(&format!("{}.json", b.ns.name), &doc.json());
    let mut args = ISTIO_INIT_ARGS.to_vec();
    let m = args.iter().position(|f| *f == "-m").unwrap();
    args[m + 1] = "TPROXY";
    b.capture(&args);
    let proxy = b.start_sidecar_with_env(
        &scratch,
        &config,
        &[],
        &[("ISTIO_META_INTERCEPTION_MODE", "TPROXY")],
    );
    wait_ready(&b, &proxy);

    assert_eq!(a.talk(b.at(7000), "declared").unwrap(), "app-7000 declared");
    assert_eq!(
        a.talk(b.at(7001), "undeclared").unwrap(),
        "app-7001 undeclared"
    );
    // Through the ORIGINAL_DST passthrough the app sees the client's own address (Istio's
    // original_src); this document's declared port goes to a STATIC 127.0.0.1 endpoint (a
    // Sidecar `defaultEndpoint`), which keeps its own source.
    assert_eq!(app_7001.saw("undeclared").unwrap().peer.ip(), a.ip);
    assert!(app_7000.saw("declared").unwrap().peer.ip().is_loopback());
    assert_eq!(
        stat(&b, "listener.virtualInbound.downstream_cx_total").as_deref(),
        Some("2")
    );
    assert!(b.table("mangle", false).contains("ISTIO_TPROXY"));
}

/// Unknown destinations pass through under ALLOW_ANY and are refused under REGISTRY_ONLY;
/// REGISTRY_ONLY still serves the destinations it knows.
#[test]
fn allow_any_passes_through_and_registry_only_refuses() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (allow, registry_only, external) = (net.pod(), net.pod(), net.pod());
    let outside = external.serve("0.0.0.0:8000", "external");
    let known = external.serve("0.0.0.0:7000", "known");
    let scratch = Scratch::new();
    let _p1 = sidecar(&allow, &scratch, &Doc::new("v1", "PassthroughCluster"), &[]);
    let doc = Doc::new("v1", "BlackHoleCluster")
        .eds(
            "outbound|7000||known.default.svc.cluster.local",
            &[external.at(7000)],
        )
        .listener(tcp_listener(
            &external.ip.to_string(),
            7000,
            "outbound|7000||known.default.svc.cluster.local",
        ));
    let _p2 = sidecar(&registry_only, &scratch, &doc, &[]);

    assert_eq!(
        allow.talk(external.at(8000), "allowed").unwrap(),
        "external allowed"
    );
    let refused = registry_only.talk(external.at(8000), "blocked");
    assert!(
        refused.is_err(),
        "REGISTRY_ONLY let it through: {refused:?}"
    );
    assert!(outside.saw("blocked").is_none());
    assert_eq!(
        registry_only.talk(external.at(7000), "registered").unwrap(),
        "known registered"
    );
    assert!(known.saw("registered").is_some());
    assert_eq!(
        stat(
            &registry_only,
            "cluster.BlackHoleCluster.upstream_cx_none_healthy"
        )
        .as_deref(),
        Some("1")
    );
}

/// With the sidecar running, uid 1337's own connections and excluded outbound ports (`-o`)
/// bypass it: under REGISTRY_ONLY, a captured connection to an unknown place would be refused.
#[test]
fn proxy_uid_and_excluded_ports_bypass_the_sidecar() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, c) = (net.pod(), net.pod());
    let c_8000 = c.serve("0.0.0.0:8000", "c-8000");
    let c_9090 = c.serve("0.0.0.0:9090", "c-9090");
    let scratch = Scratch::new();
    let config = scratch.write("a.json", &Doc::new("v1", "BlackHoleCluster").json());
    let mut flags = ISTIO_INIT_ARGS.to_vec();
    flags.extend(["-o", "9090"]);
    a.capture(&flags);
    let proxy = a.start_sidecar(&scratch, &config, &[]);
    wait_ready(&a, &proxy);

    a.send_tcp(As::Proxy, c.at(8000), "from-uid-1337");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c_8000.saw("from-uid-1337").is_none() {
        assert!(
            Instant::now() < deadline,
            "uid 1337's connection never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        a.talk(c.at(9090), "excluded-port").unwrap(),
        "c-9090 excluded-port"
    );
    assert_eq!(c_9090.saw("excluded-port").unwrap().peer.ip(), a.ip);
    // The same app, another port: captured, and refused by the blackhole.
    assert!(a.talk(c.at(8000), "captured").is_err());
    assert!(c_8000.saw("captured").is_none());
    assert_eq!(
        stat(&a, "listener.virtualOutbound.downstream_cx_total").as_deref(),
        Some("1"),
        "only the captured connection reached the sidecar"
    );
}

/// A client half-closes; the server, two proxies away, sees the EOF, and its answer written
/// after that still comes back.
#[test]
fn half_close_crosses_two_proxies() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    let app = b.serve("0.0.0.0:7000", "b");
    let scratch = Scratch::new();
    let service = "outbound|7000||b.default.svc.cluster.local";
    let _pa = sidecar(
        &a,
        &scratch,
        &Doc::new("v1", "PassthroughCluster")
            .eds(service, &[b.at(7000)])
            .listener(tcp_listener("0.0.0.0", 7000, service)),
        &[],
    );
    let _pb = sidecar(
        &b,
        &scratch,
        &Doc::new("v1", "PassthroughCluster").inbound_ports(&[7000]),
        &[],
    );

    let dst = b.at(7000);
    let got = a.ns.enter(move || {
        let mut c = Client::connect(dst)?;
        let first = c.ask("hello")?;
        c.send(b"tail-data")?;
        c.shutdown_write()?;
        Ok::<_, std::io::Error>((first, c.read_to_end()?))
    });
    let (first, rest) = got.unwrap();
    assert_eq!(first, "b hello");
    assert_eq!(rest, "tail-databye 9\n");
    assert_eq!(
        app.saw("hello").unwrap().peer.ip().to_string(),
        "127.0.0.1",
        "through b's inbound|7000||"
    );
}

/// Rewriting the configuration while a client opens connections in a loop: every connection
/// succeeds, the route moves between two backends, and a connection opened before the swaps
/// keeps working on the backend it started with.
#[test]
fn config_swaps_under_traffic_lose_no_connection() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, c) = (net.pod(), net.pod());
    let _x = c.serve("0.0.0.0:7000", "X");
    let _y = c.serve("0.0.0.0:7001", "Y");
    let (x, y) = (
        "outbound|7000|x|svc.default.svc.cluster.local",
        "outbound|7000|y|svc.default.svc.cluster.local",
    );
    let doc = |version: u32| {
        let target = if version % 2 == 1 { x } else { y };
        Doc::new(&format!("v{version}"), "PassthroughCluster")
            .eds(x, &[c.at(7000)])
            .eds(y, &[c.at(7001)])
            .listener(tcp_listener("0.0.0.0", 7000, target))
    };
    let scratch = Scratch::new();
    let proxy = sidecar(&a, &scratch, &doc(1), &[]);
    let config_name = format!("{}.json", a.ns.name);
    let service = at(net.nobody(), 7000);

    // Opened on v1 (X), used again after the swaps.
    let mut long_lived = a.ns.enter(move || Client::connect(service)).unwrap();
    assert_eq!(long_lived.ask("first").unwrap(), "X first");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let client = a.ns.spawn({
        let (stop, done) = (stop.clone(), done.clone());
        move || {
            let (mut failures, mut seen_x, mut seen_y) = (Vec::new(), 0, 0);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0;
            while !(stop.load(Ordering::SeqCst) && n >= 300) && Instant::now() < deadline {
                n += 1;
                match Client::connect(service).and_then(|mut c| c.ask(&n.to_string())) {
                    Ok(answer) if answer == format!("X {n}") => seen_x += 1,
                    Ok(answer) if answer == format!("Y {n}") => seen_y += 1,
                    other => failures.push((n, format!("{other:?}"))),
                }
                done.store(n, Ordering::SeqCst);
            }
            (n, failures, seen_x, seen_y)
        }
    });
    for version in 2..=7 {
        // Let some connections run on the current version, then swap.
        let before = done.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::SeqCst) < before + 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        scratch.write(&config_name, &doc(version).json());
        let want = format!("v{version}");
        eventually(&a, &proxy, "/config_dump", "the swap", |status, body| {
            status == 200 && body.contains(&format!("\"versionInfo\": \"{want}\""))
        });
    }
    stop.store(true, Ordering::SeqCst);
    let (n, failures, seen_x, seen_y) = client.join().unwrap();
    assert!(failures.is_empty(), "failed connections: {failures:?}");
    assert!(n >= 300, "only {n} connections");
    assert!(seen_x > 0 && seen_y > 0, "X {seen_x}, Y {seen_y}");
    // Still the connection to X (its server echoes after the first line).
    assert_eq!(long_lived.ask("last").unwrap(), "last");
    assert_eq!(
        stat(&a, "rustmesh.config_reloads.applied").as_deref(),
        Some("7")
    );
    assert_eq!(
        stat(&a, "rustmesh.config_reloads.rejected").as_deref(),
        Some("0")
    );
}

/// Invalid JSON, then a route to a cluster that does not exist: both are refused with the
/// reason logged and counted, `/config_dump` keeps the old version, and traffic goes on.
#[test]
fn malformed_configs_are_refused_while_traffic_goes_on() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, c) = (net.pod(), net.pod());
    let _x = c.serve("0.0.0.0:7000", "X");
    let x = "outbound|7000||x.default.svc.cluster.local";
    let good = Doc::new("good", "PassthroughCluster")
        .eds(x, &[c.at(7000)])
        .listener(tcp_listener("0.0.0.0", 7000, x));
    let scratch = Scratch::new();
    let proxy = sidecar(&a, &scratch, &good, &[]);
    let config_name = format!("{}.json", a.ns.name);
    let service = at(net.nobody(), 7000);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = a.ns.spawn({
        let stop = stop.clone();
        move || {
            let mut failures = Vec::new();
            let mut n = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !(stop.load(Ordering::SeqCst) && n >= 50) && Instant::now() < deadline {
                n += 1;
                match Client::connect(service).and_then(|mut c| c.ask("ping")) {
                    Ok(a) if a == "X ping" => {}
                    other => failures.push(format!("{other:?}")),
                }
            }
            (n, failures)
        }
    });

    let dangling = Doc::new("dangling", "PassthroughCluster")
        .eds(x, &[c.at(7000)])
        .listener(tcp_listener(
            "0.0.0.0",
            7000,
            "outbound|7000||missing.default.svc.cluster.local",
        ));
    for (rejected, text) in [
        (
            1,
            "{\"versionInfo\": \"broken\", \"listeners\": [".to_string(),
        ),
        (2, dangling.json()),
    ] {
        scratch.write(&config_name, &text);
        eventually(&a, &proxy, "/stats", "the refusal", |_, body| {
            body.contains(&format!("rustmesh.config_reloads.rejected: {rejected}\n"))
        });
        assert_eq!(config_version(&a), "good");
        assert_eq!(a.talk(service, "still").unwrap(), "X still");
    }
    stop.store(true, Ordering::SeqCst);
    let (n, failures) = traffic.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {failures:?}",
        failures.len()
    );

    let log = proxy.log();
    assert!(
        log.contains("configuration refused, the previous one keeps serving")
            && log.contains("line 1")
            && log.contains(
                "listeners[2].filterChains[0].filters[0].typedConfig.cluster: cluster \"outbound|7000||missing.default.svc.cluster.local\" is not defined"
            ),
        "{log}"
    );
    let (_, prom) = a
        .http_get(
            SocketAddr::from(([127, 0, 0, 1], 15090)),
            "/stats/prometheus",
        )
        .unwrap();
    assert!(
        prom.contains("rustmesh_config_reloads_total{result=\"rejected\"} 2"),
        "{prom}"
    );
    assert!(prom.contains("rustmesh_config_rejected 1"), "{prom}");
    let (status, _) = a.admin_get("/ready").unwrap();
    assert_eq!(
        status, 200,
        "a refused update does not make the proxy unready"
    );
}

/// SIGTERM, as Istio's agent drains Envoy: readiness fails at once, but the capture listeners
/// keep serving for the whole termination drain duration (an app's own shutdown calls through
/// the sidecar succeed, on open and on new connections); at its end the sidecar stops accepting
/// and exits 0, closing what is still open.
#[test]
fn sigterm_keeps_serving_for_the_termination_drain_duration_then_exits_zero() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, c) = (net.pod(), net.pod());
    let _x = c.serve("0.0.0.0:7000", "X");
    let x = "outbound|7000||x.default.svc.cluster.local";
    let scratch = Scratch::new();
    let drain = Duration::from_secs(6);
    let mut proxy = sidecar(
        &a,
        &scratch,
        &Doc::new("v1", "PassthroughCluster")
            .eds(x, &[c.at(7000)])
            .listener(tcp_listener("0.0.0.0", 7000, x)),
        &["--termination-drain-duration", "6s"],
    );
    let service = at(net.nobody(), 7000);
    let mut open = a.ns.enter(move || Client::connect(service)).unwrap();
    assert_eq!(open.ask("before").unwrap(), "X before");

    let terminated = Instant::now();
    proxy.terminate();
    let health = SocketAddr::from(([127, 0, 0, 1], 15021));
    let deadline = Instant::now() + Duration::from_secs(5);
    while a
        .http_get(health, "/healthz/ready")
        .map(|r| r.0)
        .unwrap_or(0)
        != 503
    {
        assert!(
            Instant::now() < deadline,
            "readiness never failed: {}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The app shuts down too, calling out through the sidecar: a new connection is served.
    let mut late = a.ns.enter(move || Client::connect(service)).unwrap();
    assert_eq!(late.ask("shutdown call").unwrap(), "X shutdown call");
    assert_eq!(
        open.ask("during").unwrap(),
        "during",
        "the open connection still works"
    );
    assert!(
        proxy.running(),
        "exited before the drain duration: {}",
        proxy.log()
    );

    // At the end of the drain it exits, with both connections still open.
    let status = proxy.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    assert!(
        terminated.elapsed() >= drain,
        "exited {:?} after SIGTERM, before the {drain:?} drain ended",
        terminated.elapsed()
    );
    let log = proxy.log();
    assert!(log.contains("drain over: exiting"), "{log}");
    // Nothing listens any more: the redirected connection is refused.
    let refused = a.ns.enter(move || Client::connect(service));
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "still accepting after the exit: {:?}",
        refused.map(|_| ())
    );
    drop((open, late));
}

/// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true` (an environment variable, as Istio's
/// `proxyMetadata` sets it): after `MINIMUM_DRAIN_DURATION` the sidecar exits as soon as the
/// last connection closes, and not before, however long the termination drain duration says.
#[test]
fn exit_on_zero_active_connections_waits_for_the_last_connection() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, c) = (net.pod(), net.pod());
    let _x = c.serve("0.0.0.0:7000", "X");
    let x = "outbound|7000||x.default.svc.cluster.local";
    let scratch = Scratch::new();
    let mut proxy = sidecar_with_env(
        &a,
        &scratch,
        &Doc::new("v1", "PassthroughCluster")
            .eds(x, &[c.at(7000)])
            .listener(tcp_listener("0.0.0.0", 7000, x)),
        &["--termination-drain-duration", "1s"],
        &[
            ("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "true"),
            ("MINIMUM_DRAIN_DURATION", "1s"),
        ],
    );
    let service = at(net.nobody(), 7000);
    let mut open = a.ns.enter(move || Client::connect(service)).unwrap();
    assert_eq!(open.ask("before").unwrap(), "X before");
    proxy.terminate();
    // Past the minimum and the termination drain duration, the open connection holds it up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy
        .log()
        .contains("waiting for the active connections to end")
    {
        assert!(
            Instant::now() < deadline,
            "no check found the open connection: {}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        proxy.running(),
        "exited with a connection open: {}",
        proxy.log()
    );
    assert_eq!(open.ask("during").unwrap(), "during");
    drop(open);
    let status = proxy.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    let log = proxy.log();
    assert!(log.contains("drained: no connection open"), "{log}");
}

/// IPv6: outbound passthrough by the IPv6 original destination (`[::]:15001`), and inbound
/// passthrough to the app from `::6` (`InboundPassthroughClusterIpv6`).
#[test]
fn ipv6_outbound_and_inbound_passthrough() {
    if support::skip() {
        return;
    }
    if support::which("ip6tables-restore").is_none() {
        eprintln!("skipping: ip6tables-restore is not installed");
        return;
    }
    let mut net = Net::dual_stack();
    let (a, b, c) = (net.pod(), net.pod(), net.pod());
    let outside = c.serve("[::]:8000", "c-8000");
    let app = b.serve("[::]:7001", "b-7001");
    let scratch = Scratch::new();
    let _pa = sidecar(&a, &scratch, &Doc::new("v1", "PassthroughCluster"), &[]);
    let _pb = sidecar(&b, &scratch, &Doc::new("v1", "PassthroughCluster"), &[]);

    assert_eq!(a.talk(c.at6(8000), "over-v6").unwrap(), "c-8000 over-v6");
    assert_eq!(
        outside.saw("over-v6").unwrap().peer.ip(),
        std::net::IpAddr::V6(a.ip6.unwrap())
    );
    assert_eq!(a.talk(b.at6(7001), "to-b-v6").unwrap(), "b-7001 to-b-v6");
    assert_eq!(app.saw("to-b-v6").unwrap().peer.ip().to_string(), "::6");
}
