//! The status port (`rustmesh_proxy::status`) against real apps started here: an HTTP server
//! (healthy, unhealthy, redirecting, silent), an HTTPS one with a self-signed certificate, a TCP
//! listener, and gRPC health servers; each probe goes through a real socket to the status
//! server, as the kubelet's would.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustmesh_proxy::drain;
use rustmesh_proxy::status::{
    HEALTH_CHECK, HealthCheckRequest, HealthCheckResponse, StatusArgs, StatusServer,
};
use rustmesh_xds::probe::AppProbers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

type Seen = Arc<Mutex<Vec<(String, http::HeaderMap, SocketAddr)>>>;

/// An HTTP/1.1 app: `/ok` 204, `/sick` 503, `/moved` 302, `/slow` 204 after 1.5 s, `/silent`
/// never answers; records
/// each request's path, headers and peer.
async fn http_app(tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, Seen) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let record = record.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let record = record.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        record
                            .lock()
                            .unwrap()
                            .push((path.clone(), req.headers().clone(), peer));
                        let status = match path.as_str() {
                            "/ok" => StatusCode::NO_CONTENT,
                            "/moved" => StatusCode::FOUND,
                            "/slow" => {
                                tokio::time::sleep(Duration::from_millis(1500)).await;
                                StatusCode::NO_CONTENT
                            }
                            "/silent" => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                StatusCode::OK
                            }
                            _ => StatusCode::SERVICE_UNAVAILABLE,
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"body")));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), service).await;
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A gRPC health server answering every `Check` with `status`, recording the service asked.
async fn grpc_app(status: i32) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = asked.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            assert_eq!(req.uri().path(), HEALTH_CHECK);
                            let check =
                                tower::service_fn(move |r: tonic::Request<HealthCheckRequest>| {
                                    record.lock().unwrap().push(r.into_inner().service);
                                    async move {
                                        Ok::<_, tonic::Status>(tonic::Response::new(
                                            HealthCheckResponse { status },
                                        ))
                                    }
                                });
                            let mut grpc =
                                tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                            Ok::<_, Infallible>(grpc.unary(check, req).await)
                        }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (port, asked)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// The status server with `probers` (JSON), probing 127.0.0.1; its address and drain signal.
fn status_server(probers: serde_json::Value) -> (SocketAddr, drain::Signal) {
    let probers = AppProbers::parse(&probers.to_string()).unwrap();
    let server = StatusServer::new(SocketAddr::new(LOCALHOST, 0), probers, LOCALHOST).unwrap();
    let addr = server.local_addrs()[0];
    let (signal, watch) = drain::channel();
    tokio::spawn(server.run(watch));
    (addr, signal)
}

/// The status of `GET path` on the status server, as the kubelet asks (with its headers).
async fn probe(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[tokio::test]
async fn http_probes_pass_on_the_apps_answer() {
    let (app, seen) = http_app(None).await;
    let down = closed_port();
    let (status, _drain) = status_server(serde_json::json!({
        "/app-health/web/readyz": {"httpGet": {"path": "/ok", "port": app,
            "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 5},
        "/app-health/web/livez": {"httpGet": {"path": "sick", "port": app}},
        "/app-health/web/startupz": {"httpGet": {"path": "/moved", "port": app}},
        "/app-health/slow/readyz": {"httpGet": {"path": "/silent", "port": app}, "timeoutSeconds": 1},
        "/app-health/gone/readyz": {"httpGet": {"path": "/ok", "port": down}},
    }));
    assert_eq!(
        probe(status, "/app-health/web/readyz").await,
        204,
        "2xx as the app said"
    );
    assert_eq!(
        probe(status, "/app-health/web/livez").await,
        503,
        "the app's failure"
    );
    assert_eq!(
        probe(status, "/app-health/web/startupz").await,
        200,
        "a redirect is a success"
    );
    assert_eq!(
        probe(status, "/app-health/slow/readyz").await,
        500,
        "no answer in 1 s"
    );
    assert_eq!(
        probe(status, "/app-health/gone/readyz").await,
        500,
        "app down"
    );
    assert_eq!(probe(status, "/app-health/nobody/readyz").await, 404);
    assert_eq!(probe(status, "/metrics").await, 404);

    let seen = seen.lock().unwrap();
    let (path, headers, peer) = &seen[0];
    assert_eq!(path, "/ok");
    assert_eq!(headers["x-probe"], "1", "the probe's own header");
    assert_eq!(
        headers["user-agent"], "kube-probe/1.20",
        "the kubelet's header passed on"
    );
    assert_eq!(headers["host"], format!("127.0.0.1:{app}").as_str());
    assert!(
        !headers.contains_key("connection"),
        "hop-by-hop headers stay"
    );
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        "from the inbound passthrough source, which the capture rules let through"
    );
    assert_eq!(seen[1].0, "/sick", "a path without / gets one");
}

#[tokio::test]
async fn lifecycle_hooks_run_against_the_app_with_a_longer_default_time_out() {
    let (app, seen) = http_app(None).await;
    let (status, _drain) = status_server(serde_json::json!({
        "/app-lifecycle/web/prestopz": {"httpGet": {"path": "/slow", "port": app}},
        "/app-lifecycle/web/poststartz": {"tcpSocket": {"port": closed_port()}},
        "/app-lifecycle/db/prestopz": {"tcpSocket": {"port": app}},
        "/app-health/web/readyz": {"httpGet": {"path": "/slow", "port": app}},
    }));
    assert_eq!(
        probe(status, "/app-lifecycle/web/prestopz").await,
        204,
        "a hook without a time-out waits longer than a probe's 1 s"
    );
    assert_eq!(
        probe(status, "/app-health/web/readyz").await,
        500,
        "a probe without one gives up after 1 s"
    );
    assert_eq!(probe(status, "/app-lifecycle/db/prestopz").await, 200);
    assert_eq!(
        probe(status, "/app-lifecycle/web/poststartz").await,
        500,
        "app down"
    );
    assert_eq!(probe(status, "/app-lifecycle/nobody/prestopz").await, 404);
    assert_eq!(seen.lock().unwrap()[0].0, "/slow");
}

#[tokio::test]
async fn https_probes_do_not_verify_the_apps_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["app.invalid".to_owned()]).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .unwrap();
    let (app, seen) = http_app(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let (status, _drain) = status_server(serde_json::json!({
        "/app-health/web/readyz": {"httpGet": {"path": "/ok", "port": app, "scheme": "HTTPS"}},
        "/app-health/web/livez": {"httpGet": {"path": "/sick", "port": app, "scheme": "HTTPS"}},
        "/app-health/plain/livez": {"httpGet": {"path": "/ok", "port": app}},
    }));
    assert_eq!(probe(status, "/app-health/web/readyz").await, 204);
    assert_eq!(probe(status, "/app-health/web/livez").await, 503);
    assert_eq!(
        probe(status, "/app-health/plain/livez").await,
        500,
        "HTTP to a TLS port"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn tcp_probes_connect_to_the_app() {
    let app = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = app.local_addr().unwrap().port();
    let (status, _drain) = status_server(serde_json::json!({
        "/app-health/db/livez": {"tcpSocket": {"port": port}},
        "/app-health/db/readyz": {"tcpSocket": {"port": closed_port()}},
        "/app-health/db/startupz": {"tcpSocket": {"port": port, "host": "127.0.0.1"}},
    }));
    assert_eq!(probe(status, "/app-health/db/livez").await, 200);
    let (_, peer) = app.accept().await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)));
    assert_eq!(probe(status, "/app-health/db/readyz").await, 500);
    assert_eq!(probe(status, "/app-health/db/startupz").await, 200);
}

#[tokio::test]
async fn grpc_probes_ask_the_health_service() {
    let (serving, asked) = grpc_app(1).await;
    let (not_serving, _) = grpc_app(2).await;
    let (http_only, _) = http_app(None).await;
    let (status, _drain) = status_server(serde_json::json!({
        "/app-health/rpc/readyz": {"grpc": {"port": serving, "service": "orders"}},
        "/app-health/rpc/livez": {"grpc": {"port": serving}},
        "/app-health/rpc/startupz": {"grpc": {"port": not_serving}},
        "/app-health/web/readyz": {"grpc": {"port": http_only}},
        "/app-health/gone/readyz": {"grpc": {"port": closed_port()}},
    }));
    assert_eq!(probe(status, "/app-health/rpc/readyz").await, 200);
    assert_eq!(probe(status, "/app-health/rpc/livez").await, 200);
    assert_eq!(asked.lock().unwrap().as_slice(), ["orders", ""]);
    assert_eq!(
        probe(status, "/app-health/rpc/startupz").await,
        500,
        "NOT_SERVING"
    );
    assert_eq!(
        probe(status, "/app-health/web/readyz").await,
        500,
        "not a gRPC server"
    );
    assert_eq!(
        probe(status, "/app-health/gone/readyz").await,
        500,
        "app down"
    );
}

#[tokio::test]
async fn the_end_of_the_drain_closes_the_port() {
    let app = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = app.local_addr().unwrap().port();
    let (status, drain) = status_server(serde_json::json!({
        "/app-health/db/livez": {"tcpSocket": {"port": port}},
    }));
    assert_eq!(probe(status, "/app-health/db/livez").await, 200);
    drain.start();
    assert_eq!(
        probe(status, "/app-health/db/livez").await,
        200,
        "kubelet's probes keep working while the sidecar drains"
    );
    drain.close();
    tokio::time::timeout(Duration::from_secs(20), drain.drained())
        .await
        .expect("the status server lets the drain finish");
    assert!(
        TcpStream::connect(status).await.is_err(),
        "no longer accepting"
    );
}

#[test]
fn a_bad_prometheus_annotations_value_stops_the_start_naming_the_variable() {
    let args = |json: &str| StatusArgs {
        status_port: 15020,
        app_probers: None,
        pod_ip: None,
        prometheus_annotations: Some(json.to_owned()),
    };
    for bad in [r#"{"port":"15020"}"#, r#"{"port":"x"}"#, "nope"] {
        let e = args(bad).bind().err().unwrap().to_string();
        assert!(e.contains("ISTIO_PROMETHEUS_ANNOTATIONS"), "{bad}: {e}");
    }
}

#[test]
fn a_bad_app_probers_value_stops_the_start_naming_the_key() {
    let args = |probers: &str| StatusArgs {
        status_port: 0,
        app_probers: Some(probers.to_owned()),
        pod_ip: None,
        prometheus_annotations: None,
    };
    let e = args(r#"{"/app-health/web/readyz": {"httpGet": {"port": "http"}}}"#)
        .bind()
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("ISTIO_KUBE_APP_PROBERS") && e.contains("/app-health/web/readyz"),
        "{e}"
    );
    let e = args("{").bind().err().unwrap().to_string();
    assert!(e.contains("ISTIO_KUBE_APP_PROBERS"), "{e}");
    let bad_ip = StatusArgs {
        pod_ip: Some("10.0.0".into()),
        ..args("")
    };
    assert!(
        bad_ip
            .bind()
            .err()
            .unwrap()
            .to_string()
            .contains("INSTANCE_IP")
    );
    let none = StatusArgs {
        pod_ip: Some("".into()),
        ..args("")
    };
    assert_eq!(none.destination().unwrap(), LOCALHOST);
    assert!(none.bind().unwrap().is_none(), "--status-port 0: off");
}
