//! `proxy run --type router` (a gateway, Istio's `pilot-agent proxy router`) as a program on
//! loopback: no capture listener; the configuration's own listeners (`bindToPort`) are bound,
//! routed by Host to two real HTTP upstreams; a new configuration binds its new listener live
//! and the removed one stops accepting; the gateway's AuthorizationPolicy is enforced; a port
//! already in use is reported (log, metric, admin `/listeners`) while the other listeners
//! serve, and bound once the next configuration comes after the port is free. A route to a
//! STRICT_DNS cluster reaches the upstream at the address the resolvers of `--resolv-conf`
//! (a DNS server of the test's own) answer for the cluster's name. Nothing here needs root.

mod dns_common;
mod http_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_common::{Behavior, TestClusters, Upstream, upstream};
use serde_json::{Value, json};

/// How long anything may take before the test fails (a guard, not an expectation).
const PATIENCE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway listener on 127.0.0.1:`port`, as the control plane renders a `Gateway` server:
/// an HTTP connection manager with the route table `http.<port>`.
fn gateway_listener(port: u16) -> Value {
    json!({
        "name": format!("127.0.0.1_{port}"),
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {
                "statPrefix": format!("outbound_127.0.0.1_{port}"),
                "rds": {"routeConfigName": format!("http.{port}")}
            }
        }]}]
    })
}

/// Hosts `a.example.com` → cluster `a`, `b.example.com` → cluster `b`.
fn route_table(port: u16) -> Value {
    let vhost = |host: &str, cluster: &str| {
        json!({"name": format!("{host}:{port}"), "domains": [host, format!("{host}:{port}")],
               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]})
    };
    json!({"name": format!("http.{port}"),
           "virtualHosts": [vhost("a.example.com", "a"), vhost("b.example.com", "b")]})
}

/// A configuration with gateway listeners on `ports` (and, like a sidecar scope given to a
/// router, a listener that must never be bound: `bindToPort: false`).
fn config(version: &str, ports: &[u16], clusters: &Value) -> String {
    let mut listeners: Vec<Value> = ports.iter().map(|p| gateway_listener(*p)).collect();
    listeners.push(json!({
        "name": "0.0.0.0_9080", "bindToPort": false, "trafficDirection": "OUTBOUND",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 9080}},
        "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
            "typedConfig": {"statPrefix": "a", "cluster": "a"}}]}]
    }));
    json!({
        "versionInfo": version,
        "listeners": listeners,
        "routes": ports.iter().map(|p| route_table(*p)).collect::<Vec<_>>(),
        "clusters": clusters,
        // An AuthorizationPolicy for the gateway: Istio applies it on the gateway's listeners.
        "authorization": {"policies": [{"name": "istio-system/deny-private", "action": "DENY",
            "rules": [{"to": [{"paths": ["/private"]}]}]}]},
    })
    .to_string()
}

/// Writes `text` to `path` atomically (aside, then rename), as kubelet swaps ConfigMap files.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `GET path` with `Host: host` on 127.0.0.1:`port`: status, head and body.
fn get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {out:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

/// Which upstream answered a request for `host` through the gateway on `port`.
fn upstream_of(port: u16, host: &str) -> String {
    let (status, head, _) = get(port, host, "/").unwrap();
    assert_eq!(status, 200, "{host}: {head}");
    head.lines()
        .find_map(|l| l.strip_prefix("x-upstream: "))
        .unwrap_or_default()
        .to_string()
}

/// The real `proxy run --type router`, killed on drop.
struct Router {
    child: Child,
    admin: u16,
    prometheus: u16,
    log: PathBuf,
}

impl Router {
    fn start(dir: &Path, config: &Path) -> Router {
        Self::start_with(dir, config, &[])
    }

    fn start_with(dir: &Path, config: &Path, extra: &[&str]) -> Router {
        let log = dir.join("router.log");
        let (admin, prometheus) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["run", "--type", "router", "--config"])
            .arg(config)
            .args(["--config-poll-interval", "100ms"])
            .args(extra)
            .args(["--admin-port", &admin.to_string()])
            .args(["--health-port", &free_port().to_string()])
            .args(["--prometheus-port", &prometheus.to_string()])
            .args(["--dns-port", "0", "--status-port", "0"])
            .env("RUST_LOG", "info")
            .env_remove("ISTIO_META_ROUTER_MODE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the proxy");
        Router {
            child,
            admin,
            prometheus,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn admin(&self, path: &str) -> Option<String> {
        let (status, _, body) = get(self.admin, "admin", path).ok()?;
        (status == 200).then_some(body)
    }

    /// Waits until `/listeners?format=json` satisfies `ok`, and returns it.
    fn wait_listeners(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = self
                .admin("/listeners?format=json")
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                && ok(&v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never; /listeners: {:?}\nlog:\n{}",
                self.admin("/listeners?format=json"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listener statuses named `name`.
fn statuses<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    v["listenerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == name)
        .collect()
}

fn bound_on(v: &Value, port: u16) -> bool {
    statuses(v, &format!("127.0.0.1_{port}")).iter().any(|s| {
        s["localAddress"]["socketAddress"]["portValue"] == port && s.get("error").is_none()
    })
}

#[test]
fn a_router_binds_its_listeners_routes_by_host_and_follows_the_configuration() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b): (Upstream, Upstream) = rt.block_on(async {
        (
            upstream("a", Behavior::default()).await,
            upstream("b", Behavior::default()).await,
        )
    });
    let clusters = serde_json::to_value(
        TestClusters::new()
            .cluster("a", &[&a])
            .cluster("b", &[&b])
            .config(),
    )
    .unwrap()["clusters"]
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let (first, second) = (free_port(), free_port());
    write_config(&path, &config("v1", &[first], &clusters));
    let mut router = Router::start(dir.path(), &path);

    // The gateway listener is bound; no capture listener, no bindToPort: false listener.
    let listeners = router.wait_listeners("the first listener bound", |v| bound_on(v, first));
    assert!(
        statuses(&listeners, "virtualOutbound").is_empty()
            && statuses(&listeners, "virtualInbound").is_empty(),
        "{listeners}"
    );
    assert!(
        !router
            .log()
            .lines()
            .any(|l| l.contains("listener bound") && l.contains("0.0.0.0_9080")),
        "a bindToPort: false listener is never bound:\n{}",
        router.log()
    );

    // Routed by Host to the right upstream; an unknown host is 404 (NR).
    assert_eq!(upstream_of(first, "a.example.com"), "a");
    assert_eq!(upstream_of(first, "b.example.com"), "b");
    assert_eq!(upstream_of(first, "a.example.com"), "a");
    let (status, head, _) = get(first, "nobody.example.com", "/").unwrap();
    assert_eq!(status, 404, "{head}");
    // The gateway's AuthorizationPolicy is enforced before any upstream is asked.
    let (status, head, body) = get(first, "a.example.com", "/private").unwrap();
    assert_eq!(status, 403, "{head}");
    assert_eq!(body, "RBAC: access denied");
    let (hits_a, hits_b) = (a.hits(), b.hits());
    assert_eq!((hits_a, hits_b), (2, 1));

    // A new configuration moves the gateway to another port: the new one is bound live, the
    // removed one stops accepting.
    write_config(&path, &config("v2", &[second], &clusters));
    router.wait_listeners("the second listener bound", |v| {
        bound_on(v, second) && !bound_on(v, first)
    });
    assert_eq!(upstream_of(second, "b.example.com"), "b");
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", first)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the removed listener still accepts:\n{}",
            router.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A port already in use: reported naming the listener and address, counted, shown in
    // /listeners; the other listener serves.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    write_config(&path, &config("v3", &[second, busy], &clusters));
    let name = format!("127.0.0.1_{busy}");
    let v = router.wait_listeners("the busy port reported", |v| {
        statuses(v, &name).iter().any(|s| s.get("error").is_some())
    });
    let error = statuses(&v, &name)[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&name) && error.contains(&format!("127.0.0.1:{busy}")),
        "{error}"
    );
    assert!(bound_on(&v, second), "{v}");
    assert_eq!(upstream_of(second, "a.example.com"), "a");
    let log = router.log();
    assert!(
        log.contains(&name) && log.contains("could not listen on"),
        "{log}"
    );
    let (_, _, metrics) = get(router.prometheus, "x", "/stats/prometheus").unwrap();
    assert!(
        metrics.contains(&format!(
            "rustmesh_listener_bind_failures_total{{listener=\"{name}\"}} "
        )),
        "{metrics}"
    );
    assert!(
        router.child.try_wait().unwrap().is_none(),
        "the router runs"
    );

    // Once the port is free, the next configuration binds it.
    drop(taken);
    write_config(&path, &config("v4", &[second, busy], &clusters));
    router.wait_listeners("the freed port bound", |v| {
        bound_on(v, busy) && bound_on(v, second)
    });
    assert_eq!(upstream_of(busy, "b.example.com"), "b");
    assert_eq!(upstream_of(second, "a.example.com"), "a");
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from `s`: the lowercased head.
fn read_response(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("closed before a response"));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    Ok(head)
}

/// As Istio's agent drains all of a router's listeners (not only inbound ones): after SIGTERM
/// an idle HTTP connection is closed, a new one is still accepted and served one request with
/// `connection: close`.
#[test]
fn on_sigterm_a_routers_http_connections_close_after_their_request() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(upstream("a", Behavior::default()));
    let clusters = serde_json::to_value(
        TestClusters::new()
            .cluster("a", &[&a])
            .cluster("b", &[&a])
            .config(),
    )
    .unwrap()["clusters"]
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let port = free_port();
    write_config(&path, &config("v1", &[port], &clusters));
    let router = Router::start_with(dir.path(), &path, &["--drain-timeout", "10s"]);
    router.wait_listeners("bound", |v| bound_on(v, port));

    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(idle, "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").unwrap();
    let head = read_response(&mut idle).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    let pid = nix::unistd::Pid::from_raw(router.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut rest = [0u8; 16];
    match idle.read(&mut rest) {
        Ok(0) => {}
        Ok(n) => panic!("{n} unexpected bytes on the idle connection"),
        Err(e) => panic!("the idle connection was not closed on SIGTERM: {e}"),
    }

    // Draining: still accepting, one request per connection.
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(fresh, "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").unwrap();
    let head = read_response(&mut fresh).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
}

#[test]
fn a_route_to_a_strict_dns_cluster_reaches_the_address_the_resolver_answers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b, dns) = rt.block_on(async {
        (
            upstream("a", Behavior::default()).await,
            upstream("b", Behavior::default()).await,
            dns_common::TestDns::start().await,
        )
    });
    // Cluster `a` lists a name only the test's DNS server knows; `b` an address.
    let clusters = serde_json::to_value(
        TestClusters::new()
            .cluster_dns("a", &[("a.upstream.test", a.addr.port())])
            .cluster("b", &[&b])
            .config(),
    )
    .unwrap()["clusters"]
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let resolv = dns.resolv_conf(dir.path());
    let path = dir.path().join("config.json");
    let port = free_port();
    write_config(&path, &config("v1", &[port], &clusters));
    let router = Router::start_with(
        dir.path(),
        &path,
        &["--resolv-conf", resolv.to_str().unwrap()],
    );
    router.wait_listeners("the listener bound", |v| bound_on(v, port));
    assert_eq!(upstream_of(port, "b.example.com"), "b");

    // Not answered yet: no upstream, at once (503); answered: the request reaches `a`.
    let (status, head, _) = get(port, "a.example.com", "/").unwrap();
    assert_eq!(status, 503, "{head}");
    dns.set("a.upstream.test", &[&a.addr.ip().to_string()]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, head, _) = get(port, "a.example.com", "/").unwrap();
        if status == 200 {
            assert!(head.contains("x-upstream: a"), "{head}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never routed to the answered address: {head}\nlog:\n{}",
            router.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.hits(), 1);
    // The server's answer changes to an address nobody listens on: the cluster follows it.
    dns.set("a.upstream.test", &["127.0.0.254"]);
    let deadline = Instant::now() + PATIENCE;
    while get(port, "a.example.com", "/").unwrap().0 == 200 {
        assert!(Instant::now() < deadline, "the new answer was never used");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(rt);
}

#[test]
fn an_unknown_proxy_type_is_refused_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["run", "--type", "ingress"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--type"), "{stderr}");
}
