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
