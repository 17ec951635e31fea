//! Shared by the integration tests: running the real `rustmeshctl`, the fixtures, and a tiny
//! HTTP server standing in for a proxy's admin API or for the Kubernetes API server.
#![allow(dead_code)]

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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
