//! Shared by the integration tests: running the real `rustmeshctl`, the fixtures, and a tiny
//! HTTP server standing in for a proxy's admin API or for the Kubernetes API server.
#![allow(dead_code)]

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustmesh_ctl::admin::Clusters;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// Runs `rustmeshctl` with `args`, away from any real cluster (`KUBECONFIG` points nowhere
/// unless the test gives `--kubeconfig`).
pub fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rustmeshctl"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent/rustmeshctl-test-kubeconfig")
        .env("HOME", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run rustmeshctl")
}

/// Stdout of a run that must succeed.
pub fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "rustmeshctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// Stderr of a run that must fail, without its trailing newline.
pub fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "rustmeshctl should have failed, printed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "exit code");
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    String::from_utf8(out.stderr.clone())
        .expect("utf-8 errors")
        .trim_end()
        .to_string()
}

/// `productpage` is the proxy model's own fixture (`xds/tests/fixtures`); the others are ours.
pub fn fixture(name: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match name {
        "productpage" => here.join("../xds/tests/fixtures/productpage.json"),
        other => here.join("tests/fixtures").join(format!("{other}.json")),
    }
}

pub fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).expect("read fixture")
}

/// An answer: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }
}

/// A running fake server; every request's `METHOD path?query` is recorded.
pub struct Server {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Serves HTTP/1.1 on 127.0.0.1 (a free port) from a background thread, answering each request
/// with `handler(method, path_and_query)`.
pub fn serve<F>(handler: F) -> Server
where
    F: Fn(&str, &str) -> Reply + Send + Sync + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("address");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let target = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let method = req.method().to_string();
                        log.lock().unwrap().push(format!("{method} {target}"));
                        let reply = handler(&method, &target);
                        async move {
                            hyper::Response::builder()
                                .status(reply.status)
                                .header("content-type", reply.content_type)
                                .body(Full::new(Bytes::from(reply.body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    Server { addr, requests }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

/// Collapses runs of spaces, for comparisons that ignore alignment.
pub fn squash(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The contract's `GET /config_dump`: the document; `endpoints` only with `include_eds`;
/// `mask=a,b` keeps those top-level fields (and `versionInfo`), 400 for an unknown one.
pub fn config_dump(document: &str, query: &str) -> Reply {
    let mut doc: Value = serde_json::from_str(document).unwrap();
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let obj = doc.as_object_mut().unwrap();
    if !params.iter().any(|(k, _)| *k == "include_eds") {
        obj.remove("endpoints");
    }
    if let Some((_, mask)) = params.iter().find(|(k, _)| *k == "mask") {
        let keep: Vec<&str> = mask.split(',').collect();
        let fields = ["listeners", "routes", "clusters", "endpoints", "dns"];
        if let Some(bad) = keep.iter().find(|k| !fields.contains(k)) {
            return Reply::text(400, format!("mask: unknown field {bad:?}\n"));
        }
        obj.retain(|k, _| k == "versionInfo" || keep.contains(&k.as_str()));
    }
    Reply::json(200, serde_json::to_string_pretty(&doc).unwrap())
}

/// Live health for the productpage sidecar: reviews v2's endpoint ejected by outlier detection,
/// reviews v3's endpoint reported unhealthy by the control plane.
pub fn live_clusters() -> String {
    let config = rustmesh_ctl::ProxyConfig::from_json(&fixture_text("productpage")).unwrap();
    let mut live = Clusters::from_config(&config);
    for c in &mut live.cluster_statuses {
        for h in &mut c.host_statuses {
            if c.name == "outbound|9080|v2|reviews.default.svc.cluster.local" {
                h.health_status.failed_outlier_check = true;
            }
            if c.name == "outbound|9080|v3|reviews.default.svc.cluster.local" {
                h.health_status.eds_health_status = "UNHEALTHY".into();
            }
        }
    }
    serde_json::to_string(&live).unwrap()
}

/// A proxy serving the productpage fixture.
pub fn productpage_proxy() -> Server {
    let document = fixture_text("productpage");
    let live = live_clusters();
    serve(move |method, target| {
        assert_eq!(method, "GET");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        match (path, query) {
            ("/config_dump", q) => config_dump(&document, q),
            ("/clusters", "format=json") => Reply::json(200, live.clone()),
            _ => Reply::text(404, "not found\n"),
        }
    })
}

/// A golden table (`tests/golden/<fixture>/<view>.txt`).
pub fn golden(fixture: &str, view: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(fixture)
            .join(format!("{view}.txt")),
    )
    .unwrap()
}

/// A kubeconfig whose current context points at `server_url`, namespace `default`.
pub fn kubeconfig(dir: &tempfile::TempDir, server_url: &str) -> String {
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {}
contexts:
- name: fake
  context:
    cluster: fake
    user: dev
    namespace: default
current-context: fake
users:
- name: dev
  user:
    token: dev-token
",
            server_url
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}
