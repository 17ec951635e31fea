//! Proof, with the real capture rules (`proxy istio-iptables` with Istio's injected arguments)
//! in a network-namespace pod, that the status port's probes reach the app and are not
//! captured back into the sidecar: the "kubelet" (another pod) asks `GET <pod IP>:15020/
//! app-health/app/readyz`; the sidecar (uid 1337) probes the app at the pod's IP from the
//! inbound passthrough source 127.0.0.6, which `ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN`
//! lets through. The control: the same connection from uid 1337 without that source is sent
//! to 15006 by `ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo ... --uid-owner 1337 -j
//! ISTIO_IN_REDIRECT` (blackholed here), which is why the prober binds it.
//!
//! Skips (printing why) without root, `ip`, iptables or `setpriv`; run it under
//! `flock /tmp/rustmesh-netns.lock`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::docs::{address, builtin_clusters, tcp_proxy, virtual_outbound};
use support::sidecar::{Scratch, eventually};
use support::{As, ISTIO_INIT_ARGS, Net};

#[test]
fn probes_reach_the_app_at_the_pod_ip_past_the_capture_rules() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (pod, kubelet) = (net.pod(), net.pod());

    // The app: HTTP on the pod's IP, recording who connects.
    let app_addr = pod.at(9080);
    let listener = pod
        .ns
        .enter(move || TcpListener::bind(app_addr))
        .expect("bind the app");
    let peers: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if let Ok(peer) = stream.peer_addr() {
                seen.lock().unwrap().push(peer);
            }
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });

    // The sidecar's inbound side blackholes everything: a probe captured into 15006 fails.
    let doc = json!({
        "versionInfo": "v1",
        "listeners": [
            virtual_outbound("PassthroughCluster"),
            {"name": "virtualInbound", "address": address("0.0.0.0", 15006),
             "trafficDirection": "INBOUND", "useOriginalDst": true,
             "filterChains": [{"name": "virtualInbound-blackhole", "filters": tcp_proxy("BlackHoleCluster")}]},
        ],
        "clusters": builtin_clusters(),
        "endpoints": [],
    });
    let scratch = Scratch::new();
    let config = scratch.write("status.json", &doc.to_string());
    pod.capture(ISTIO_INIT_ARGS);
    let probers = json!({
        "/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 9080}, "timeoutSeconds": 5},
    })
    .to_string();
    let pod_ip = pod.ip.to_string();
    let sidecar = pod.start_sidecar(
        &scratch,
        &config,
        &["--pod-ip", &pod_ip, "--app-probers", &probers],
    );
    eventually(&pod, &sidecar, "/ready", "configured", |status, _| {
        status == 200
    });

    let (status, body) = kubelet
        .http_get(pod.at(15020), "/app-health/app/readyz")
        .unwrap();
    assert_eq!(status, 200, "{body}; the proxy's log:\n{}", sidecar.log());
    let peers_now = peers.lock().unwrap().clone();
    assert_eq!(
        peers_now
            .iter()
            .map(|p| p.ip().to_string())
            .collect::<Vec<_>>(),
        ["127.0.0.6"],
        "the app was probed once, from the passthrough source"
    );
    assert_eq!(
        kubelet
            .http_get(pod.at(15020), "/app-health/other/readyz")
            .unwrap()
            .0,
        404
    );

    let inbound = || {
        let (_, body) = pod.admin_get("/stats").unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix("listener.virtualInbound.downstream_cx_total: "))
            .map(str::to_owned)
    };
    assert_eq!(
        inbound().as_deref(),
        Some("0"),
        "the probe was not captured"
    );

    // The control: uid 1337 to the pod's IP from the default source is captured to 15006.
    let script = format!(
        "exec 3<>/dev/tcp/{pod_ip}/9080 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = pod.bash_as(As::Proxy, &script);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        !answer.contains("200 OK"),
        "uid 1337 reached the app directly at the pod's IP: {answer:?}"
    );
    assert_eq!(
        inbound().as_deref(),
        Some("1"),
        "the control connection went to 15006"
    );
    assert_eq!(peers.lock().unwrap().len(), 1, "and never reached the app");
}

/// A tiny HTTP server in `pod` on `addr`: every request gets `body` as Prometheus text.
fn serve_metrics(pod: &support::Pod, addr: SocketAddr, body: &'static str) {
    let listener = pod
        .ns
        .enter(move || TcpListener::bind(addr))
        .expect("bind the app's metrics port");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// Istio's agent endpoints on 15020: `/healthz/ready`; `/stats/prometheus` with the sidecar's
/// metrics and then the app's, scraped where `ISTIO_PROMETHEUS_ANNOTATIONS` says (the app's
/// port is only on localhost, as an app's metrics often are); `POST /drain` (localhost only)
/// makes the sidecar not ready but keeps it running; `POST /quitquitquit` (localhost only, as a
/// Job's last step calls it) ends it with status 0.
#[test]
fn the_status_port_serves_istios_agent_endpoints() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (pod, kubelet) = (net.pod(), net.pod());
    serve_metrics(
        &pod,
        SocketAddr::from(([127, 0, 0, 1], 9100)),
        "# TYPE app_requests_total counter\napp_requests_total 7\n",
    );
    let doc = json!({
        "versionInfo": "v1",
        "listeners": [virtual_outbound("PassthroughCluster")],
        "clusters": builtin_clusters(),
        "endpoints": [],
    });
    let scratch = Scratch::new();
    let config = scratch.write("agent.json", &doc.to_string());
    pod.capture(ISTIO_INIT_ARGS);
    let mut sidecar = pod.start_sidecar_with_env(
        &scratch,
        &config,
        &["--termination-drain-duration", "1s"],
        &[(
            "ISTIO_PROMETHEUS_ANNOTATIONS",
            r#"{"scrape":"true","path":"/metrics","port":"9100"}"#,
        )],
    );
    eventually(&pod, &sidecar, "/ready", "configured", |status, _| {
        status == 200
    });
    let status_port = pod.at(15020);

    let (status, body) = kubelet.http_get(status_port, "/healthz/ready").unwrap();
    assert_eq!((status, body.as_str()), (200, "LIVE\n"));

    let (status, merged) = kubelet.http_get(status_port, "/stats/prometheus").unwrap();
    assert_eq!(status, 200, "{merged}");
    let ours = merged
        .find("# TYPE rustmesh_config_reloads counter")
        .unwrap_or_else(|| panic!("the sidecar's metrics in:\n{merged}"));
    let app = merged
        .find("app_requests_total 7")
        .unwrap_or_else(|| panic!("the app's metrics in:\n{merged}\nlog:\n{}", sidecar.log()));
    assert!(ours < app, "the app's metrics come last");
    assert_eq!(kubelet.http_get(status_port, "/metrics").unwrap().0, 200);

    // From another pod: refused.
    for path in ["/quitquitquit", "/drain"] {
        let (status, _) = kubelet.http_request("POST", status_port, path).unwrap();
        assert_eq!(status, 403, "{path} from another pod");
    }
    let local = SocketAddr::from(([127, 0, 0, 1], 15020));
    assert_eq!(pod.http_request("GET", local, "/drain").unwrap().0, 405);
    assert_eq!(pod.http_request("POST", local, "/drain").unwrap().0, 200);
    assert_eq!(
        kubelet.http_get(status_port, "/healthz/ready").unwrap().0,
        503
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(sidecar.running(), "/drain does not exit");

    assert_eq!(
        pod.http_request("POST", local, "/quitquitquit").unwrap(),
        (200, "OK".to_string())
    );
    let exit = sidecar.wait_exit();
    assert!(exit.success(), "{exit:?}; log:\n{}", sidecar.log());
}
