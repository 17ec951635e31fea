//! The test peer over real sockets: what the proxy tests and the e2e suite rely on.

use rustmesh_testapp::{client, server, tcp};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(service: &str, version: &str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let id = Arc::new(server::Identity {
        service: service.into(),
        version: version.into(),
        pod: format!("{service}-{version}-0"),
        documents: [("/doc.json".to_string(), r#"{"keys":[]}"#.to_string())].into(),
    });
    tokio::spawn(server::serve_http(l, id));
    format!("http://{addr}")
}

fn report(body: &[u8]) -> server::Report {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn http1_and_h2c_answers_say_who_answered_and_echo_the_request() {
    let base = start("reviews", "v2").await;
    let (status, body) = client::fetch(
        &format!("{base}/reviews/1?x=1"),
        &[("end-user".into(), "jason".into())],
        false,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let r = report(&body);
    assert_eq!(
        (r.service.as_str(), r.version.as_str(), r.pod.as_str()),
        ("reviews", "v2", "reviews-v2-0")
    );
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.query.as_str()),
        ("GET", "/reviews/1", "x=1")
    );
    assert_eq!(r.protocol, "HTTP/1.1");
    assert_eq!(r.headers["end-user"], "jason");

    let (status, body) = client::fetch(&format!("{base}/"), &[], true).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(report(&body).protocol, "HTTP/2.0");
    // A fixed document (`serve --document`) is answered as written.
    let (status, body) = client::fetch(&format!("{base}/doc.json"), &[], false)
        .await
        .unwrap();
    assert_eq!((status, body.as_ref()), (200, br#"{"keys":[]}"#.as_ref()));
}

#[tokio::test]
async fn status_delay_and_upstream_chaining() {
    let base = start("ratings", "v1").await;
    let (status, body) = client::fetch(&format!("{base}/status/503"), &[], false)
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(report(&body).service, "ratings");

    let started = std::time::Instant::now();
    let (status, _) = client::fetch(&format!("{base}/delay/200"), &[], false)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));

    let front = start("reviews", "v3").await;
    let url = format!("{front}/?upstream={base}/ratings/0");
    let (status, body) = client::fetch(&url, &[("end-user".into(), "jason".into())], false)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let r = report(&body);
    let up = r.upstream.expect("upstream report");
    assert_eq!(
        (up.service.as_str(), up.path.as_str()),
        ("ratings", "/ratings/0")
    );
    assert_eq!(
        up.headers["end-user"], "jason",
        "end-user is forwarded like bookinfo does"
    );

    // An upstream that fails shows up as 502 with the reason.
    let (status, body) = client::fetch(
        &format!("{front}/?upstream=http://127.0.0.1:1/"),
        &[],
        false,
    )
    .await
    .unwrap();
    assert_eq!(status, 502);
    assert!(report(&body).upstream_error.is_some());
}

#[tokio::test]
async fn load_client_counts_backends_and_statuses() {
    let base = start("details", "v1").await;
    let s = client::run(&format!("{base}/"), 50, 4, vec![], false).await;
    assert_eq!(s.requests, 50);
    assert_eq!(s.backends.get("details/v1"), Some(&50));
    assert_eq!(s.statuses.get(&200), Some(&50));
    assert_eq!(s.errors, 0);
    assert!(s.latency_ms.contains_key("p99"));

    let s = client::run("http://127.0.0.1:1/", 3, 1, vec![], false).await;
    assert_eq!((s.requests, s.errors), (3, 3));
}

#[tokio::test]
async fn tcp_echo_half_close_and_server_first_banner() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(tcp::serve_echo(l));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello mesh").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"hello mesh");

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(tcp::serve_server_first(l, "220 ready\n".into()));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut banner = [0u8; 10];
    // Nothing was written by the client: the server speaks first.
    s.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"220 ready\n");
}
