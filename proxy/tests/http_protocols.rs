//! Protocol handling of `serve_connection`: WebSocket upgrades, chunked bodies, gRPC-shaped
//! streaming over h2c with trailers, hop-by-hop headers, request limits (431), slowloris, bad
//! chunking (400) and invalid HTTP/2 frames, with real clients and upstreams on loopback.

mod http_common;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use http_common::*;
use hyper::body::Frame;
use rustmesh_proxy::body::boxed;
use rustmesh_proxy::http::HttpSettings;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn istio_retry() -> serde_json::Value {
    json!({ "retryOn": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "numRetries": 2, "retriableStatusCodes": [503], "retryPreviousHosts": true })
}

async fn proxy_to(up: &Upstream, h2: bool, settings: HttpSettings) -> Proxy {
    let rc = vhost(
        &["svc", "svc:9080"],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "c", "timeout": "0s", "retryPolicy": istio_retry() } }]),
    );
    let ups = if h2 {
        TestClusters::new().cluster_h2("c", &[up])
    } else {
        TestClusters::new().cluster("c", &[up])
    };
    start_proxy(
        rc,
        ups,
        Options {
            settings,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn websocket_upgrade_echoes() {
    let up = upstream("ws", Behavior::default()).await;
    let p = proxy_to(&up, false, HttpSettings::default()).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://svc:9080/ws", stream)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "world"] {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(msg.into()))
            .await
            .unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("echo:{msg}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn chunked_bodies_both_ways() {
    let up = upstream("u", Behavior::default()).await;
    let p = proxy_to(&up, false, HttpSettings::default()).await;
    let c = Clients::new();
    // Downstream chunked request (no length known), echoed back.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for part in ["alpha-", "beta-", "gamma"] {
            tx.send(Frame::data(Bytes::from_static(part.as_bytes())))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let r = send(
        &c.h1,
        request(p.addr, "svc", "/echo")
            .method("POST")
            .body(boxed(ChannelBody(rx)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.text(), "alpha-beta-gamma");
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.body, "alpha-beta-gamma");
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
    // Upstream chunked response, streamed down chunked.
    let r = get(&c, p.addr, "svc", "/chunked").await;
    assert_eq!(r.text(), "one,two,three");
    assert_eq!(r.headers["transfer-encoding"], "chunked");
}

#[tokio::test]
async fn grpc_streaming_with_trailers_over_h2c() {
    let up = upstream("grpc", Behavior::default()).await;
    let p = proxy_to(&up, true, HttpSettings::default()).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(4);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://svc:9080/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let msg = http_common::grpc_message;
    tx.send(Frame::data(msg("first"))).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("response headers while the request still streams")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    // The first message comes back before the second is sent: streaming both ways.
    let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(f.into_data().unwrap(), msg("first"));
    tx.send(Frame::data(msg("second"))).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("end in time")
        .unwrap();
    let trailers = rest.trailers().cloned().expect("grpc trailers");
    assert_eq!(rest.to_bytes(), msg("second"));
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echoed");
    // Metrics see a gRPC request with its status from the trailers.
    let text = p.metrics.encode();
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("request_protocol=\"grpc\""))
        .unwrap_or_else(|| panic!("no grpc sample in\n{text}"));
    assert!(line.contains("grpc_response_status=\"0\""), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let up = upstream("u", Behavior::default()).await;
    let p = proxy_to(&up, false, HttpSettings::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\n\
          X-End: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Keep-alive: a second request on the same connection.
    s.write_all(b"GET /b HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let seen = up.seen();
    let h = &seen[0].headers;
    for gone in ["connection", "x-hop", "keep-alive", "proxy-connection"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded: {h:?}");
    }
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-end"], "2");
    assert_eq!(seen.len(), 2);
}

/// Reads one HTTP/1.1 response with a content-length body.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// Reads until the peer closes (or `limit` passes); true when it closed.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (false, all),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, all),
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = upstream("u", Behavior::default()).await;
    let p = proxy_to(&up, false, HttpSettings::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let big = "a".repeat(70 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: svc\r\nX-Big: {big}\r\n\r\n");
    // The proxy may answer and close before reading everything; ignore write errors.
    let _ = s.write_all(req.as_bytes()).await;
    let (_, bytes) = closed_within(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(up.hits(), 0);
    // Under the limit the same kind of request passes.
    let c = Clients::new();
    let ok = send(
        &c.h1,
        request(p.addr, "svc", "/")
            .header("x-big", "a".repeat(30 * 1024))
            .body(empty_body())
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn slowloris_is_closed() {
    let up = upstream("u", Behavior::default()).await;
    let settings = HttpSettings {
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let p = proxy_to(&up, false, settings).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n")
        .await
        .unwrap();
    // Dribble a header line every 200 ms for up to 15 s; the proxy must hang up first.
    let mut closed = false;
    for i in 0..75 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // A 408 before closing is fine too.
                closed = closed_within(&mut s, Duration::from_secs(5)).await.0;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the connection stayed open");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn bad_chunking_is_400() {
    let up = upstream("u", Behavior::default()).await;
    let p = proxy_to(&up, false, HttpSettings::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, bytes) = closed_within(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

#[tokio::test]
async fn invalid_h2_frames_end_the_connection() {
    let up = upstream("u", Behavior::default()).await;
    let p = proxy_to(&up, true, HttpSettings::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // A SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR.
    s.write_all(&[0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let (closed, bytes) = closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "connection still open");
    // The server's frames: its SETTINGS, then a GOAWAY (type 7).
    let mut i = 0;
    let mut types = Vec::new();
    while i + 9 <= bytes.len() {
        let len = (usize::from(bytes[i]) << 16)
            | (usize::from(bytes[i + 1]) << 8)
            | usize::from(bytes[i + 2]);
        types.push(bytes[i + 3]);
        i += 9 + len;
    }
    assert!(types.contains(&7), "no GOAWAY among frame types {types:?}");
    // The proxy still serves other connections.
    assert_eq!(get(&Clients::new(), p.addr, "svc", "/").await.status, 200);
    let _: SocketAddr = p.addr;
}

/// An upstream and a proxy routing every request for `host` to it, whose HTTP connections
/// drain once the returned sender says `true` (`draining`: from the start).
async fn draining_proxy(
    host: &str,
    draining: bool,
) -> (Upstream, tokio::sync::watch::Sender<bool>, Proxy) {
    let up = upstream("u", Behavior::default()).await;
    let (tx, rx) = tokio::sync::watch::channel(draining);
    let rc = vhost(
        &[host],
        json!([{ "match": { "prefix": "/" }, "route": { "cluster": "c" } }]),
    );
    let p = start_proxy(
        rc,
        TestClusters::new().cluster("c", &[&up]),
        Options {
            drain: Some(rx),
            ..Default::default()
        },
    )
    .await;
    (up, tx, p)
}

/// A client sidecar's pool to `addr` (h2c or HTTP/1.1), connections kept `idle` unused.
fn pool_to(
    addr: SocketAddr,
    h2: bool,
    idle: Duration,
) -> rustmesh_proxy::pool::client::EndpointClient {
    let stats = rustmesh_proxy::stats::Metrics::default().cluster("client");
    let dialer = rustmesh_proxy::dial::ClusterDialer::new(
        "client".to_string(),
        Duration::from_secs(1),
        None,
        stats,
    );
    rustmesh_proxy::pool::client::EndpointClient::new(dialer, addr, None, h2, idle, None)
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_then_closes() {
    let (up, tx, p) = draining_proxy("svc", false).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /delay/500 HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    // Drain once the request is in flight at the upstream.
    while up.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(true).unwrap();
    let (closed, bytes) = closed_within(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(closed, "the connection ends after the in-flight answer");
}

/// A kept-alive HTTP/1.1 connection between two requests when the drain starts is not closed
/// under the client: its next request is answered, with `Connection: close`, and the
/// connection ends after that answer. One that stays idle is closed at the end of the drain
/// window (Envoy's connection manager `drain_timeout`).
#[tokio::test]
async fn an_idle_http1_connection_is_answered_once_more_when_draining_then_closed() {
    let (up, tx, p) = draining_proxy("svc", false).await;
    let request = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n";
    let (mut used, mut idle) = (
        TcpStream::connect(p.addr).await.unwrap(),
        TcpStream::connect(p.addr).await.unwrap(),
    );
    for s in [&mut used, &mut idle] {
        s.write_all(request).await.unwrap();
        let first = read_response(s).await.to_ascii_lowercase();
        assert!(first.starts_with("http/1.1 200"), "{first}");
        assert!(!first.contains("connection: close"), "{first}");
    }
    tx.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    used.write_all(request).await.unwrap();
    let (closed, bytes) = closed_within(&mut used, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(closed, "the connection ends after the answer");
    assert_eq!(up.hits(), 3);
    let (closed, bytes) = closed_within(&mut idle, Duration::from_secs(15)).await;
    assert!(closed && bytes.is_empty(), "{bytes:?}");
}

/// Envoy's drain manager during Istio's termination drain: a connection accepted while the
/// inbound side drains is still served, with `Connection: close`, then closed.
#[tokio::test]
async fn an_http1_connection_accepted_while_draining_is_served_once_then_closed() {
    let (up, _tx, p) = draining_proxy("svc", true).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let (closed, bytes) = closed_within(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(closed, "no keep-alive while draining");
    assert_eq!(up.hits(), 1);
}

/// The same over HTTP/2: the request is served, then GOAWAY ends the connection.
#[tokio::test]
async fn an_h2_connection_accepted_while_draining_is_served_then_goes_away() {
    let (up, _tx, p) = draining_proxy("svc", true).await;
    let s = TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let answer = send
        .send_request(
            hyper::Request::get("http://svc/")
                .body(empty_body())
                .unwrap(),
        )
        .await
        .expect("the first request on a draining connection is served");
    assert_eq!(answer.status(), 200);
    let _ = answer.into_body().collect().await;
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("GOAWAY ends the connection after its request")
        .unwrap()
        .unwrap();
    assert_eq!(up.hits(), 1);
}

/// The client sidecar's h2c pool sending without pause to a server sidecar that drains
/// (GOAWAY on its open connections; one request, then GOAWAY, on each new one): a stream the
/// server did not accept is a refused stream (retried by Istio's default policy, as Envoy does)
/// and the pool moves to a new connection; no request is lost to a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_refused_by_a_draining_server_are_retriable() {
    use rustmesh_proxy::pool::client::UpstreamError;
    let (_up, tx, p) = draining_proxy("*", false).await;
    let pool = pool_to(p.addr, true, Duration::from_secs(1));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (mut answered, mut refused, mut unanswered, mut other) = (0, 0, 0, Vec::new());
            for _ in 0..100 {
                let req = hyper::Request::get("http://svc/")
                    .body(empty_body())
                    .unwrap();
                // A rare request never answered while the server drains (about 1 run in 25
                // here, before this fix too; not understood yet, see the closing note of #17)
                // is counted apart: this test is about requests lost to resets.
                let Ok(sent) = tokio::time::timeout(Duration::from_secs(30), pool.send(req)).await
                else {
                    unanswered += 1;
                    continue;
                };
                match sent {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        answered += 1;
                    }
                    Ok(r) => other.push(format!("status {}", r.status())),
                    Err(UpstreamError::RefusedStream { .. }) => refused += 1,
                    Err(e) => other.push(format!("{e:?}")),
                }
            }
            (answered, refused, unanswered, other)
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    tx.send(true).unwrap();
    let (mut answered, mut refused, mut unanswered, mut other) = (0, 0, 0, Vec::new());
    for t in tasks {
        let (a, r, u, o) = t.await.unwrap();
        answered += a;
        refused += r;
        unanswered += u;
        other.extend(o);
    }
    assert!(
        other.is_empty(),
        "{} lost: {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    assert_eq!(answered + refused + unanswered, 800);
    assert!(unanswered <= 2, "{unanswered} never answered");
    // Refused streams are the exception: the pool leaves a connection going away at once.
    assert!(refused < 100, "{refused} refused");
}

/// The same with the client sidecar's HTTP/1.1 pool, the protocol between sidecars by
/// default: a connection between two requests is not closed under a request the client may
/// already have sent (Envoy's connection manager `drain_timeout`); answers carry
/// `Connection: close`, so the pool leaves each connection after its answer, and no request is
/// lost to a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_to_a_draining_server_are_not_lost_to_resets() {
    use rustmesh_proxy::pool::client::UpstreamError;
    let (_up, tx, p) = draining_proxy("*", false).await;
    let pool = pool_to(p.addr, false, Duration::from_secs(60));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (mut answered, mut refused, mut lost) = (0, 0, Vec::new());
            for _ in 0..150 {
                let req = hyper::Request::get("http://svc/")
                    .body(empty_body())
                    .unwrap();
                match pool.send(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        answered += 1;
                    }
                    Ok(r) => lost.push(format!("status {}", r.status())),
                    // Never sent: retried by Istio's default policy.
                    Err(UpstreamError::RefusedStream { .. }) => refused += 1,
                    Err(e) => lost.push(format!("{e:?}")),
                }
            }
            (answered, refused, lost)
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    tx.send(true).unwrap();
    let (mut answered, mut refused, mut lost) = (0, 0, Vec::new());
    for t in tasks {
        let (a, r, l) = t.await.unwrap();
        answered += a;
        refused += r;
        lost.extend(l);
    }
    assert!(
        lost.is_empty(),
        "{} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(answered + refused, 1200);
}
