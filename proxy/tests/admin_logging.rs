//! The admin API's `/logging` and `/server_info` over real HTTP against the real admin server,
//! with the process's subscriber installed as the proxy binary installs it
//! (`rustmesh_proxy::logging::init_with`), so a level set through `/logging` is seen to change
//! which events are written.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustmesh_proxy::admin::{AdminState, Endpoints, Server};
use rustmesh_proxy::drain;
use rustmesh_proxy::snapshot::Store;
use rustmesh_proxy::stats::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// What the subscriber wrote.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Written {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Written {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn serve(endpoints: Endpoints) -> SocketAddr {
    let (signal, _watch) = drain::channel();
    let state = Arc::new(AdminState {
        store: Arc::new(Store::new()),
        metrics: Metrics::default(),
        prometheus: Arc::new(rustmesh_proxy::metrics::Metrics::new()),
        draining: signal.flag(),
        quit: Arc::new(Notify::new()),
        bound: vec![],
        router: None,
        identity: None,
    });
    std::mem::forget(signal);
    let server = Server::bind("admin", "127.0.0.1:0".parse().unwrap(), endpoints, state).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run());
    addr
}

fn line<'a>(listing: &'a str, name: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} not in {listing}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_lists_sets_one_component_and_refuses_unknown_names() {
    let written = Written::default();
    let w = written.clone();
    rustmesh_proxy::logging::init_with("info", move || w.clone(), false);
    let admin = serve(Endpoints::Admin);

    let (status, listing) = request(admin, "GET", "/logging").await;
    assert_eq!(status, 200);
    assert!(listing.starts_with("active loggers:\n"), "{listing}");
    assert_eq!(line(&listing, "http"), "http: info");
    assert_eq!(request(admin, "POST", "/logging").await.1, listing);

    tracing::debug!(target: "rustmesh_proxy::http::route", "before-the-change");
    let (status, listing) = request(admin, "POST", "/logging?http=debug").await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(line(&listing, "http"), "http: debug");
    assert_eq!(
        line(&listing, "router"),
        "router: debug",
        "router is inside http"
    );
    assert_eq!(line(&listing, "dns"), "dns: info");
    tracing::debug!(target: "rustmesh_proxy::http::route", "after-the-change");
    tracing::debug!(target: "rustmesh_proxy::dns", "dns-stays-at-info");
    let text = written.text();
    assert!(!text.contains("before-the-change"), "{text}");
    assert!(text.contains("after-the-change"), "{text}");
    assert!(!text.contains("dns-stays-at-info"), "{text}");

    // A module path names a component too; Envoy's `paths` sets several.
    let (status, listing) = request(
        admin,
        "POST",
        "/logging?paths=rustmesh_proxy::dns:trace,upstream:warning",
    )
    .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(line(&listing, "dns"), "dns: trace");
    assert_eq!(line(&listing, "upstream"), "upstream: warning");

    // Unknown level or logger: 400 naming it, and nothing changes.
    let (status, body) = request(admin, "POST", "/logging?level=verbose").await;
    assert_eq!(status, 400);
    assert!(body.contains("\"verbose\""), "{body}");
    let (status, body) = request(admin, "POST", "/logging?http=info&htp=debug").await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown logger \"htp\""), "{body}");
    let (_, now) = request(admin, "GET", "/logging").await;
    assert_eq!(
        line(&now, "http"),
        "http: debug",
        "the good half was not applied"
    );

    // GET never changes anything.
    assert_eq!(request(admin, "GET", "/logging?level=off").await.0, 405);
    assert_eq!(
        line(&request(admin, "GET", "/logging").await.1, "http"),
        "http: debug"
    );

    // Everything at once; critical is error.
    let (status, listing) = request(admin, "POST", "/logging?level=critical").await;
    assert_eq!(status, 200);
    for l in listing.lines().skip(1) {
        assert!(l.ends_with(": error"), "{l}");
    }
    tracing::warn!(target: "rustmesh_proxy::http", "warning-now-hidden");
    assert!(!written.text().contains("warning-now-hidden"));

    // Only the admin port has it.
    let health = serve(Endpoints::Health);
    assert_eq!(request(health, "GET", "/logging").await.0, 404);
    assert_eq!(request(health, "POST", "/logging?level=debug").await.0, 405);

    let (status, info) = request(admin, "GET", "/server_info").await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "PRE_INITIALIZING");
    assert_eq!(info["configVersion"], serde_json::Value::Null);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}
