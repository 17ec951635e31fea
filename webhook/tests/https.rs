//! The real server on 127.0.0.1:<ephemeral>, over HTTPS, with a client that trusts only the
//! webhook's generated CA (or, for the mounted mode, the test's own CA).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustmesh_webhook::tls::Authority;
use rustmesh_webhook::{Args, Webhook};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SERVICE_NAME: &str = "rustmesh-webhook.rustmesh-system.svc";

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A settings file naming the image (which has no built-in default), unique per call.
fn default_settings_file() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "rustmesh-webhook-https-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(
        &path,
        "image: registry.local/rustmesh/proxy:test\nnativeSidecars: \"false\"\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

async fn start(extra: &[&str]) -> Webhook {
    let mut argv = vec!["webhook", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(extra);
    let file;
    if !extra.contains(&"--settings-file") {
        file = default_settings_file();
        argv.extend_from_slice(&["--settings-file", &file]);
    }
    Webhook::start(Args::try_parse_from(argv).unwrap())
        .await
        .expect("webhook starts without a cluster")
}

fn client_config(ca_pem: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    name: &str,
    alpn: &[u8],
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(client_config(ca_pem, alpn));
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// An HTTP/1.1 connection over TLS; keeps the connection for several requests.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    leaf: Vec<u8>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, ca_pem: &str) -> Client {
        let tls = tls_connect(addr, ca_pem, SERVICE_NAME, b"http/1.1")
            .await
            .expect("TLS handshake with the webhook's CA");
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender, leaf }
    }

    async fn send(&mut self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", SERVICE_NAME)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self.sender.send_request(req).await.expect("a response");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }
}

fn apply_patch(review: &[u8], response: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(review).unwrap();
    let response: Value = serde_json::from_slice(response).unwrap();
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[tokio::test]
async fn injects_over_https_with_the_generated_ca() {
    let webhook = start(&["--ops-listen", "127.0.0.1:0"]).await;
    let ca = webhook.ca_pem.clone().expect("generated CA");
    let mut client = Client::connect(webhook.local_addr, &ca).await;

    let review = fixture_bytes("deployment-pod");
    let (status, body) = client.send("POST", "/inject", review.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let pod = apply_patch(&review, &body);
    assert_eq!(pod["spec"]["containers"][0]["name"], "istio-proxy");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "istio-init");

    // v1beta1 is answered as v1beta1 on the same connection.
    let (status, body) = client
        .send("POST", "/inject", fixture_bytes("v1beta1"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(
        doc["response"]["uid"],
        "b1e5c7a0-0000-4000-8000-00000000beta"
    );

    // Opted out: allowed, no patch.
    let (status, body) = client
        .send("POST", "/inject", fixture_bytes("opt-out-label"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["response"]["allowed"], true);
    assert!(doc["response"].get("patch").is_none());

    // Invalid traffic annotations: refused, as Istio's injector refuses them (HTTP 200, the
    // review says `allowed: false`).
    let (status, body) = client
        .send("POST", "/inject", fixture_bytes("bad-traffic-annotations"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["response"]["allowed"], false, "{doc}");
    assert_eq!(doc["response"]["status"]["code"], 400);
    let message = doc["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("5 errors occurred:\n\t* invalid value"),
        "{message}"
    );

    // Health, readiness, metrics.
    assert_eq!(
        client.send("GET", "/healthz", vec![]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        client.send("GET", "/readyz", vec![]).await.0,
        StatusCode::OK
    );
    let (status, metrics) = client.send("GET", "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(r#"rustmesh_webhook_reviews_total{result="injected"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"rustmesh_webhook_reviews_total{result="skipped"} 1"#));
    assert!(metrics.contains(r#"rustmesh_webhook_reviews_total{result="refused"} 1"#));
    assert!(metrics.contains("rustmesh_webhook_review_duration_seconds_count 4"));

    // The plain ops listener serves the same health and metrics, but not /inject.
    let ops = webhook.ops_addr.expect("ops listener");
    let plain = plain_get(ops, "/metrics").await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(plain.contains("rustmesh_webhook_reviews_total"));
    assert!(plain_get(ops, "/inject").await.starts_with("HTTP/1.1 404"));

    webhook.shutdown().await;
}

async fn plain_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bad_input_gets_400_413_or_a_warning() {
    let webhook = start(&["--max-body-bytes", "1048576"]).await;
    let ca = webhook.ca_pem.clone().unwrap();
    let mut client = Client::connect(webhook.local_addr, &ca).await;

    for (body, expected) in [
        (b"this is not json".to_vec(), StatusCode::BAD_REQUEST),
        (b"{\"kind\": \"Pod\"}".to_vec(), StatusCode::BAD_REQUEST),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{}}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (vec![b' '; 2 * 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let (status, text) = client.send("POST", "/inject", body).await;
        assert_eq!(status, expected, "{}", String::from_utf8_lossy(&text));
        // A new connection after a 413: the server may close this one.
        client = Client::connect(webhook.local_addr, &ca).await;
    }

    // A review whose pod can't be read: allowed with a warning.
    let (status, body) = client
        .send("POST", "/inject", fixture_bytes("unparsable-pod"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["response"]["allowed"], true);
    assert!(
        doc["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("spec.containers")
    );

    // Wrong method and path.
    assert_eq!(
        client.send("GET", "/inject", vec![]).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        client.send("GET", "/nope", vec![]).await.0,
        StatusCode::NOT_FOUND
    );

    let (_, metrics) = client.send("GET", "/metrics", vec![]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(r#"rustmesh_webhook_reviews_total{result="bad_request"} 4"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"rustmesh_webhook_reviews_total{result="too_large"} 1"#));
    assert!(metrics.contains(r#"rustmesh_webhook_reviews_total{result="invalid"} 1"#));
    webhook.shutdown().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_not_a_hang() {
    let webhook = start(&["--request-timeout-secs", "1"]).await;
    let ca = webhook.ca_pem.clone().unwrap();
    let mut tls = tls_connect(webhook.local_addr, &ca, SERVICE_NAME, b"http/1.1")
        .await
        .unwrap();
    tls.write_all(
        b"POST /inject HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"kind\"",
    )
    .await
    .unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    // Generous bound: this is about getting an answer at all, not about speed.
    let n = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut buf))
        .await
        .expect("the server answers a stalled body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    webhook.shutdown().await;
}

#[tokio::test]
async fn only_the_service_names_and_only_with_its_ca() {
    let webhook = start(&["--extra-san", "localhost"]).await;
    let ca = webhook.ca_pem.clone().unwrap();
    for name in [
        "rustmesh-webhook.rustmesh-system.svc",
        "rustmesh-webhook.rustmesh-system.svc.cluster.local",
        "localhost",
    ] {
        tls_connect(webhook.local_addr, &ca, name, b"http/1.1")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(
        tls_connect(webhook.local_addr, &ca, "evil.example.com", b"http/1.1")
            .await
            .is_err()
    );
    let stranger = Authority::generate(SystemTime::now()).unwrap();
    assert!(
        tls_connect(
            webhook.local_addr,
            stranger.ca_pem(),
            SERVICE_NAME,
            b"http/1.1"
        )
        .await
        .is_err(),
        "a client trusting another CA must refuse the webhook"
    );
    webhook.shutdown().await;
}

#[tokio::test]
async fn http2_is_served() {
    let webhook = start(&[]).await;
    let ca = webhook.ca_pem.clone().unwrap();
    let tls = tls_connect(webhook.local_addr, &ca, SERVICE_NAME, b"h2")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let review = fixture_bytes("bare-pod");
    let req = Request::builder()
        .method("POST")
        .uri(format!("https://{SERVICE_NAME}/inject"))
        .body(Full::new(Bytes::from(review.clone())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let pod = apply_patch(&review, &body);
    assert_eq!(pod["spec"]["containers"][0]["name"], "istio-proxy");
    webhook.shutdown().await;
}

#[tokio::test]
async fn certificate_renewal_keeps_open_connections_and_serves_new_ones() {
    let webhook = start(&[]).await;
    let ca = webhook.ca_pem.clone().unwrap();
    let review = fixture_bytes("bare-pod");

    let mut old = Client::connect(webhook.local_addr, &ca).await;
    assert_eq!(
        old.send("POST", "/inject", review.clone()).await.0,
        StatusCode::OK
    );
    assert_eq!(old.leaf, webhook.served_chain()[0]);

    webhook.renew_certificate().unwrap();
    let new_leaf = webhook.served_chain()[0].clone();
    assert_ne!(new_leaf, old.leaf, "a new certificate is served");

    // The connection made before renewal still works...
    assert_eq!(
        old.send("POST", "/inject", review.clone()).await.0,
        StatusCode::OK
    );
    // ...and a new one gets the new certificate, trusted through the same CA.
    let mut fresh = Client::connect(webhook.local_addr, &ca).await;
    assert_eq!(fresh.leaf, new_leaf);
    assert_eq!(
        fresh.send("POST", "/inject", review).await.0,
        StatusCode::OK
    );
    webhook.shutdown().await;
}

/// Mounted-Secret mode: serves the files, and serves new files after they change.
#[tokio::test]
async fn mounted_certificate_is_served_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let crt = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let names = vec![SERVICE_NAME.to_owned()];

    let write = |ca: &Authority| {
        let (cert_pem, key_pem) = issue_pem(ca, &names);
        std::fs::write(&crt, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
    };
    let first = Authority::generate(SystemTime::now()).unwrap();
    write(&first);
    let webhook = start(&[
        "--tls-cert-file",
        crt.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-reload-interval-secs",
        "1",
        "--webhook-config",
        "ignored-without-a-generated-ca",
    ])
    .await;
    assert!(webhook.ca_pem.is_none());
    let mut client = Client::connect(webhook.local_addr, first.ca_pem()).await;
    assert_eq!(
        client
            .send("POST", "/inject", fixture_bytes("bare-pod"))
            .await
            .0,
        StatusCode::OK
    );

    // The Secret is updated (cert-manager renewal): a new CA's certificate.
    let second = Authority::generate(SystemTime::now()).unwrap();
    write(&second);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tls_connect(
            webhook.local_addr,
            second.ca_pem(),
            SERVICE_NAME,
            b"http/1.1",
        )
        .await
        .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old connection is still served.
    assert_eq!(
        client.send("GET", "/healthz", vec![]).await.0,
        StatusCode::OK
    );

    // Garbage in the files: the current certificate stays.
    std::fs::write(&crt, "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tls_connect(
        webhook.local_addr,
        second.ca_pem(),
        SERVICE_NAME,
        b"http/1.1",
    )
    .await
    .expect("still served after a bad update");
    webhook.shutdown().await;
}

/// A leaf certificate and key (PEM) for `names`, issued by `ca`, through the library's own
/// issuing path (chain = leaf + CA, as a cert-manager Secret's `tls.crt` may hold).
fn issue_pem(ca: &Authority, names: &[String]) -> (String, String) {
    let issued = ca.issue(names, 30, SystemTime::now()).unwrap();
    (
        format!("{}{}", issued.cert_pem, ca.ca_pem()),
        issued.key_pem,
    )
}

#[tokio::test]
async fn mismatched_flags_and_bad_files_are_errors_that_name_them() {
    let err = Args::try_parse_from(["webhook", "--tls-cert-file", "/x/tls.crt"]).unwrap_err();
    assert!(err.to_string().contains("tls-key-file"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let crt = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&crt, "not a cert").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let args = Args::try_parse_from([
        "webhook",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        crt.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ])
    .unwrap();
    let err = Webhook::start(args).await.unwrap_err();
    assert!(err.to_string().contains("tls.crt"), "{err}");
}

#[tokio::test]
async fn settings_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rustmesh-sidecar-injector\ndata:\n  image: registry.local/proxy:7\n  nativeSidecars: \"false\"\n",
    )
    .unwrap();
    let webhook = start(&["--settings-file", settings.to_str().unwrap()]).await;
    let ca = webhook.ca_pem.clone().unwrap();
    let mut client = Client::connect(webhook.local_addr, &ca).await;
    let review = fixture_bytes("bare-pod");
    let (_, body) = client.send("POST", "/inject", review.clone()).await;
    let pod = apply_patch(&review, &body);
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "registry.local/proxy:7"
    );
    webhook.shutdown().await;
}

/// `POST /validate` over HTTPS (issue 17, item 6): an invalid VirtualService is denied naming
/// the field, a valid one allowed, a body that is no review gets 400, an oversized one 413.
#[tokio::test]
async fn validates_istio_objects_over_https() {
    let webhook = start(&["--max-body-bytes", "65536"]).await;
    let ca = webhook.ca_pem.clone().expect("generated CA");
    let mut client = Client::connect(webhook.local_addr, &ca).await;
    let review = |weights: [i64; 2]| {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "7a1c",
                "kind": {"group": "networking.istio.io", "version": "v1beta1", "kind": "VirtualService"},
                "resource": {"group": "networking.istio.io", "version": "v1beta1", "resource": "virtualservices"},
                "namespace": "shop", "name": "reviews", "operation": "UPDATE",
                "userInfo": {"username": "alice"},
                "object": {
                    "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                    "metadata": {"name": "reviews", "namespace": "shop"},
                    "spec": {"hosts": ["reviews"], "http": [{"route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights[0]},
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights[1]}]}]}
                },
            }
        }))
        .unwrap()
    };
    let (status, body) = client.send("POST", "/validate", review([60, 50])).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["response"]["uid"], "7a1c");
    assert_eq!(doc["response"]["allowed"], false);
    assert_eq!(
        doc["response"]["status"]["message"],
        "spec.http[0].route: weights of the destinations add up to 110, they must add up to 100"
    );
    let (status, body) = client.send("POST", "/validate", review([90, 10])).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["response"]["allowed"], true, "{doc}");

    let (status, _) = client.send("POST", "/validate", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = client.send("POST", "/validate", vec![b' '; 70_000]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut client = Client::connect(webhook.local_addr, &ca).await;
    let (_, metrics) = client.send("GET", "/metrics", vec![]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        r#"rustmesh_webhook_validations_total{result="denied"} 1"#,
        r#"rustmesh_webhook_validations_total{result="allowed"} 1"#,
        r#"rustmesh_webhook_validations_total{result="bad_request"} 1"#,
        r#"rustmesh_webhook_validations_total{result="too_large"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    webhook.shutdown().await;
}
