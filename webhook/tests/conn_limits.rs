//! Item 3 of issue 17, the webhook's half: its ports cap and time out connections, so idle
//! clients cannot use up its descriptors nor keep `/healthz` from answering for long. Real
//! TCP sockets to the real webhook; no timing assertions beyond generous bounds.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use rustmesh_webhook::{Args, Webhook};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(extra: &[&str]) -> (Webhook, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "image: registry.local/proxy:1\nnativeSidecars: \"false\"\n",
    )
    .unwrap();
    let mut argv = vec![
        "webhook".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        "--ops-listen=127.0.0.1:0".to_owned(),
        format!("--settings-file={}", settings.display()),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let webhook = Webhook::start(Args::try_parse_from(argv).unwrap())
        .await
        .unwrap();
    (webhook, dir)
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("an answer")
}

/// Whether the server closes `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    v
}

#[tokio::test]
async fn the_ops_port_closes_connections_over_its_cap_and_idle_ones_and_keeps_answering() {
    let (webhook, _dir) = start(&[]).await;
    let ops = webhook.ops_addr.unwrap();
    let cap = rustmesh_webhook::server::OPS_LIMITS.max_connections;
    let extra = 16;
    let mut conns = idle_connections(ops, cap + extra).await;

    // The connections over the cap are closed as they are accepted, long before any timeout.
    let mut closed_at_once = 0;
    for c in conns.iter_mut().rev().take(extra) {
        if closed_within(c, Duration::from_secs(3)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once > 0,
        "no connection over the cap was closed at accept"
    );

    // The idle ones are closed by the server too (5 s without a request head).
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(60)).await,
            "idle connection {i} still open"
        );
    }
    drop(conns);

    // A fresh connection is answered, and the refusals were counted.
    let health = get(ops, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = get(ops, "/metrics").await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"rustmesh_webhook_connections_refused_total{port="ops"} "#))
        .unwrap_or_else(|| panic!("no refusal counter in\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(refused >= closed_at_once, "{refused} < {closed_at_once}");
    webhook.shutdown().await;
}

#[tokio::test]
async fn the_https_port_caps_connections_by_flag_and_closes_one_that_never_handshakes() {
    let (webhook, _dir) = start(&["--max-connections=4"]).await;
    let https = webhook.local_addr;
    let mut conns = idle_connections(https, 4).await;
    // Let the four be admitted before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(https).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(5)).await,
        "the fifth connection was not closed at accept"
    );
    // None of the four sends a ClientHello: closed after the handshake timeout (10 s).
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(60)).await,
            "connection {i} without a handshake still open"
        );
    }
    let metrics = get(webhook.ops_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains(r#"rustmesh_webhook_connections_refused_total{port="https"} 1"#),
        "{metrics}"
    );
    webhook.shutdown().await;
}

#[test]
fn the_max_connections_flag_and_its_env() {
    let args = Args::try_parse_from(["webhook"]).unwrap();
    assert_eq!(
        args.max_connections,
        rustmesh_webhook::server::DEFAULT_MAX_CONNECTIONS
    );
    assert!(Args::try_parse_from(["webhook", "--max-connections=0"]).is_err());
}
