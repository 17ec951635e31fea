//! The operator's key set client (`rustmesh_operator::jwks::http::HttpFetch`) against real
//! HTTP/1.1 and TLS servers started here: a key set served over http and https (a test CA the
//! client is told to trust), OpenID discovery end to end, redirects (followed; https to http
//! refused), an error status quoted, an answer over the size limit refused, a server that never
//! answers cut at the timeout, and a certificate the client does not trust refused.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustmesh_operator::jwks::http::HttpFetch;
use rustmesh_operator::jwks::{Fetch, MAX_BYTES, Source, fetch_source};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const JWKS: &str = r#"{"keys":[{"kty":"OKP","kid":"ed-1","crv":"Ed25519","x":"keUzBvdTiZZTD82uAWEeMoYR9Ng_7-qrTQZGX6rvDu4"}]}"#;
const T: Duration = Duration::from_secs(5);

/// What the test server answers for a path: status, headers, body.
type Route = fn(&str, SocketAddr) -> (StatusCode, Vec<(&'static str, String)>, Vec<u8>);

fn routes(path: &str, me: SocketAddr) -> (StatusCode, Vec<(&'static str, String)>, Vec<u8>) {
    match path {
        "/jwks" => (StatusCode::OK, vec![], JWKS.into()),
        "/.well-known/openid-configuration" => (
            StatusCode::OK,
            vec![],
            format!(r#"{{"issuer":"http://{me}","jwks_uri":"http://{me}/jwks"}}"#).into(),
        ),
        "/moved" => (
            StatusCode::FOUND,
            vec![("location", "/jwks".into())],
            Vec::new(),
        ),
        "/loop" => (
            StatusCode::FOUND,
            vec![("location", "/loop".into())],
            Vec::new(),
        ),
        "/to-http" => (
            StatusCode::MOVED_PERMANENTLY,
            vec![("location", "http://127.0.0.1:1/jwks".into())],
            Vec::new(),
        ),
        "/big" => (StatusCode::OK, vec![], vec![b' '; MAX_BYTES + 1]),
        "/down" => (
            StatusCode::SERVICE_UNAVAILABLE,
            vec![],
            "upstream connect error".into(),
        ),
        "/slow" => (StatusCode::OK, vec![("x-slow", "1".into())], Vec::new()),
        _ => (StatusCode::NOT_FOUND, vec![], "no such key set".into()),
    }
}

async fn answer(req: Request<Incoming>, me: SocketAddr, route: Route) -> Response<Full<Bytes>> {
    let (status, headers, body) = route(req.uri().path(), me);
    if headers.iter().any(|(k, _)| *k == "x-slow") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r.body(Full::new(Bytes::from(body))).unwrap()
}

/// A plain HTTP/1.1 server on a loopback port.
async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |req| async move {
                    Ok::<_, std::convert::Infallible>(answer(req, me, routes).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    me
}

/// An HTTPS server for `localhost` with a certificate of a CA made here; the CA's certificate.
async fn https_server() -> (SocketAddr, rustls::pki_types::CertificateDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| async move {
                    Ok::<_, std::convert::Infallible>(answer(req, me, routes).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (me, ca.der().clone())
}

fn trusting(ca: rustls::pki_types::CertificateDer<'static>) -> HttpFetch {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    HttpFetch::with_roots(roots)
}

#[tokio::test]
async fn a_key_set_over_http_and_by_openid_discovery() {
    let me = http_server().await;
    let fetch = HttpFetch::with_roots(rustls::RootCertStore::empty());
    let body = fetch.get(&format!("http://{me}/jwks"), T).await.unwrap();
    assert_eq!(body, JWKS.as_bytes());

    let source = Source::Discovery(format!("http://{me}/.well-known/openid-configuration"));
    let (uri, jwks) = fetch_source(&fetch, &source, T).await.unwrap();
    assert_eq!(uri, format!("http://{me}/jwks"));
    assert_eq!(jwks, JWKS);
}

#[tokio::test]
async fn a_key_set_over_https_from_a_trusted_ca_and_not_from_an_untrusted_one() {
    let (me, ca) = https_server().await;
    let url = format!("https://localhost:{}/jwks", me.port());
    let body = trusting(ca).get(&url, T).await.unwrap();
    assert_eq!(body, JWKS.as_bytes());

    let untrusting = HttpFetch::with_roots(rustls::RootCertStore::empty());
    let e = untrusting.get(&url, T).await.unwrap_err();
    assert!(e.contains("TLS handshake") && e.contains(&url), "{e}");
}

#[tokio::test]
async fn redirects_are_followed_a_few_times_and_never_from_https_to_http() {
    let me = http_server().await;
    let fetch = HttpFetch::with_roots(rustls::RootCertStore::empty());
    let body = fetch.get(&format!("http://{me}/moved"), T).await.unwrap();
    assert_eq!(body, JWKS.as_bytes());
    let e = fetch
        .get(&format!("http://{me}/loop"), T)
        .await
        .unwrap_err();
    assert!(e.contains("more than 5 redirects"), "{e}");

    let (tls_me, ca) = https_server().await;
    let e = trusting(ca)
        .get(&format!("https://localhost:{}/to-http", tls_me.port()), T)
        .await
        .unwrap_err();
    assert!(e.contains("from https to http"), "{e}");
}

#[tokio::test]
async fn an_error_status_is_quoted_and_an_oversized_or_slow_answer_refused() {
    let me = http_server().await;
    let fetch = HttpFetch::with_roots(rustls::RootCertStore::empty());
    let e = fetch
        .get(&format!("http://{me}/down"), T)
        .await
        .unwrap_err();
    assert!(
        e.contains("status 503") && e.contains("upstream connect error"),
        "{e}"
    );
    let e = fetch.get(&format!("http://{me}/big"), T).await.unwrap_err();
    assert!(e.contains("larger than") && e.contains("1 MiB"), "{e}");
    let e = fetch
        .get(&format!("http://{me}/slow"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.contains("no answer within"), "{e}");
    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let e = fetch
        .get(&format!("http://{closed}/jwks"), T)
        .await
        .unwrap_err();
    assert!(e.contains("connecting to"), "{e}");
    // A body that is not a key set: refused by fetch_source, naming the URL.
    let e = fetch_source(&fetch, &Source::Uri(format!("http://{me}/missing")), T)
        .await
        .unwrap_err();
    assert!(e.contains("status 404"), "{e}");
}
