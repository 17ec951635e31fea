//! `rustmeshctl --admin-url` against the real sidecar: `rustmesh_proxy::sidecar::serve` runs in
//! this process (on free loopback ports, DNS proxy off) with the seeds' configurations, and the
//! real `rustmeshctl` binary prints every table from its admin API. The tables must be the golden
//! ones that the file-based tests check, so the admin API serves what the contract in
//! `ctl/README.md` says; live state (endpoint health from outlier detection) shows up too, and
//! `secret` reads the real `/certs` (empty: no mesh CA here).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use rustmesh_proxy::sidecar::{RunArgs, serve};
use support::{ctl, fixture, golden, stdout};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running sidecar; its runtime (and the sidecar) stop when this is dropped.
struct Sidecar {
    admin: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Sidecar {
    fn url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

fn start(config: &Path) -> Sidecar {
    let args = RunArgs {
        config: Some(config.to_path_buf()),
        outbound_port: free_port(),
        inbound_port: free_port(),
        admin_port: free_port(),
        health_port: free_port(),
        prometheus_port: free_port(),
        dns_port: 0,
        status: rustmesh_proxy::status::StatusArgs {
            status_port: free_port(),
            ..Default::default()
        },
        ..RunArgs::default()
    };
    let admin = SocketAddr::from(([127, 0, 0, 1], args.admin_port));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(async move {
        if let Err(e) = serve(args).await {
            panic!("the sidecar failed: {e}");
        }
    });
    // Ready = configuration loaded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(&["pc", "listeners", "--admin-url", &format!("http://{admin}")]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar never served its configuration: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sidecar {
        admin,
        _runtime: runtime,
    }
}

#[test]
fn every_table_from_the_real_proxy_matches_the_golden_one() {
    for name in ["productpage", "seed004-nginx", "seed004-test"] {
        let proxy = start(&fixture(name));
        for view in ["listeners", "routes", "clusters", "endpoints", "all"] {
            let out = stdout(&ctl(&["pc", view, "--admin-url", &proxy.url()]));
            assert_eq!(out, golden(name, view), "{name}: proxy-config {view}");
        }
        // Without a mesh CA the sidecar holds no certificate: istioctl's sentence.
        let out = stdout(&ctl(&["pc", "secret", "--admin-url", &proxy.url()]));
        assert_eq!(
            out, "No active or warming secrets found.\n",
            "{name}: secret"
        );
        // config-dump is the document the proxy serves, as JSON.
        let dump = stdout(&ctl(&["pc", "config-dump", "--admin-url", &proxy.url()]));
        let dumped: serde_json::Value = serde_json::from_str(&dump).unwrap();
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
        assert_eq!(dumped["versionInfo"], file["versionInfo"], "{name}");
        assert_eq!(
            dumped["listeners"].as_array().map(Vec::len),
            file["listeners"].as_array().map(Vec::len),
            "{name}"
        );
    }
}

/// `proxy-config log` against the real admin API, with the process's log control installed as
/// the proxy binary installs it: the listing, one component set (istioctl's
/// `--level http:debug,warning`), and an unknown logger refused by the sidecar, naming it.
/// `/server_info`, which `proxy-status` reads, reports the `versionInfo` serving.
#[test]
fn log_levels_and_server_info_from_the_real_proxy() {
    rustmesh_proxy::logging::init_with("info", std::io::sink, false);
    let proxy = start(&fixture("productpage"));
    let url = proxy.url();
    let out = stdout(&ctl(&["pc", "log", "--admin-url", &url]));
    assert!(out.starts_with("active loggers:\n"), "{out}");
    assert!(out.contains("\n  http: info\n"), "{out}");
    let out = stdout(&ctl(&[
        "pc",
        "log",
        "--admin-url",
        &url,
        "--level",
        "http:debug,warning",
    ]));
    assert!(out.contains("\n  http: debug\n"), "{out}");
    assert!(out.contains("\n  dns: warning\n"), "{out}");
    let e = support::failure(&ctl(&[
        "pc",
        "log",
        "--admin-url",
        &url,
        "--level",
        "htp:debug",
    ]));
    assert!(
        e.contains("answered 400 to POST /logging?htp=debug")
            && e.contains("unknown logger \"htp\""),
        "{e}"
    );
    // The bad request changed nothing.
    let out = stdout(&ctl(&["pc", "log", "--admin-url", &url]));
    assert!(out.contains("\n  http: debug\n"), "{out}");

    let info =
        rustmesh_ctl::status::ServerInfo::from_json("test", &get(proxy.admin, "/server_info"))
            .unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("productpage")).unwrap()).unwrap();
    assert_eq!(info.config_version.as_deref(), file["versionInfo"].as_str());
    assert_eq!(info.state, "LIVE");
}

/// The body of `GET path`, over a plain socket.
fn get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}
