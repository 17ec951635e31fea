//! `testapp get` over TLS against a real TLS server (`server::serve_https`), as the e2e suite's
//! curl-like calls to an ingress gateway do: the URL names the host, `--connect-to` says where TCP
//! goes, `--cacert` what to trust, `--cert`/`--key` the client certificate for mutual TLS.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustmesh_testapp::{client, server, tls};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// The name the gateway's certificate carries (Istio's secure ingress task).
const HOST: &str = "httpbin.example.com";

/// A private CA and PEM certificates it signs.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(cn: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) in PEM.
    fn leaf(&self, cn: &str, dns: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client_cert(&self, cn: &str) -> (String, String) {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn identity() -> Arc<server::Identity> {
    Arc::new(server::Identity {
        service: "httpbin".into(),
        version: "v1".into(),
        pod: "httpbin-0".into(),
        ..Default::default()
    })
}

/// A TLS server for [`HOST`] signed by `pki`; with `client_ca`, mutual TLS; with `alpn`, only
/// those protocols.
async fn start_https(pki: &Pki, client_ca: Option<&str>, alpn: Option<&[&[u8]]>) -> SocketAddr {
    let (cert, key) = pki.leaf("httpbin", &[HOST], ExtendedKeyUsagePurpose::ServerAuth);
    let mut config = tls::server_config(
        cert.as_bytes(),
        key.as_bytes(),
        client_ca.map(str::as_bytes),
    )
    .unwrap();
    if let Some(alpn) = alpn {
        let mut c = rustls::ServerConfig::clone(&config);
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config = Arc::new(c);
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(server::serve_https(l, identity(), config));
    addr
}

/// `--cacert` (the PEM of `ca`), `--cert`/`--key`, `--connect-to addr`.
fn options(ca: &str, cert: Option<&(String, String)>, addr: SocketAddr) -> client::Options {
    let config = tls::client_config(
        ca.as_bytes(),
        cert.map(|(c, k)| (c.as_bytes(), k.as_bytes())),
    )
    .unwrap();
    client::Options {
        h2c: false,
        connect_to: Some(client::parse_connect_to(&addr.to_string()).unwrap()),
        tls: Some(config),
    }
}

/// The URL a client outside would use: the gateway's name and port.
fn url(host: &str, addr: SocketAddr, path: &str) -> String {
    format!("https://{host}:{}{path}", addr.port())
}

fn host_header() -> Vec<(String, String)> {
    vec![("Host".to_string(), HOST.to_string())]
}

fn report(body: &[u8]) -> server::Report {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn https_goes_to_the_connect_to_address_with_the_urls_host_as_sni_and_speaks_alpns_pick() {
    let pki = Pki::new("example.com CA");
    let addr = start_https(&pki, None, None).await;
    let opts = options(&pki.ca_pem, None, addr);

    let (status, body) = client::fetch_with(&url(HOST, addr, "/status/418"), &host_header(), &opts)
        .await
        .unwrap();
    assert_eq!(status, 418);
    let r = report(&body);
    assert_eq!(
        (r.service.as_str(), r.path.as_str()),
        ("httpbin", "/status/418")
    );
    let tls = r.tls.expect("a TLS report");
    assert_eq!(tls.sni.as_deref(), Some(HOST), "SNI is the URL's host");
    assert_eq!(tls.alpn.as_deref(), Some("h2"), "the server prefers h2");
    assert_eq!(tls.client_cn, None);
    assert_eq!(r.protocol, "HTTP/2.0", "h2 picked by ALPN is spoken");
    assert!(r.headers["host"].starts_with(HOST), "{:?}", r.headers);

    // The load client: every request answered over the one address.
    let s = client::run_with(&url(HOST, addr, "/"), 6, 2, host_header(), &opts).await;
    assert_eq!((s.requests, s.errors), (6, 0), "{s:?}");
    assert_eq!(s.statuses.get(&200), Some(&6));
    assert_eq!(s.backends.get("httpbin/v1"), Some(&6));
    assert_eq!(s.first_error, None);

    // --h2c over TLS: HTTP/2 by ALPN alone.
    let h2 = client::Options {
        h2c: true,
        ..opts.clone()
    };
    let (status, body) = client::fetch_with(&url(HOST, addr, "/"), &[], &h2)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let r = report(&body);
    assert_eq!(r.protocol, "HTTP/2.0");
    assert_eq!(r.tls.unwrap().alpn.as_deref(), Some("h2"));

    // A server that speaks only HTTP/1.1 gets HTTP/1.1; --h2c then fails, saying why (rustls
    // refuses an ALPN offer without a protocol of its own; a lax server that ignored it would
    // be refused by the client: "did not pick h2").
    let h1_only = start_https(&pki, None, Some(&[b"http/1.1"])).await;
    let opts = options(&pki.ca_pem, None, h1_only);
    let (status, body) = client::fetch_with(&url(HOST, h1_only, "/"), &[], &opts)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let r = report(&body);
    assert_eq!(r.protocol, "HTTP/1.1");
    assert_eq!(r.tls.unwrap().alpn.as_deref(), Some("http/1.1"));
    let h2 = client::Options { h2c: true, ..opts };
    let err = client::fetch_with(&url(HOST, h1_only, "/"), &[], &h2)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
}

#[tokio::test]
async fn verification_is_real_an_unknown_ca_or_another_name_fails_the_request() {
    let pki = Pki::new("example.com CA");
    let addr = start_https(&pki, None, None).await;

    // Trusting another CA only.
    let stranger = Pki::new("another CA");
    let opts = options(&stranger.ca_pem, None, addr);
    let err = client::fetch_with(&url(HOST, addr, "/"), &host_header(), &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        err.contains("TLS handshake with httpbin.example.com"),
        "{err}"
    );
    let s = client::run_with(&url(HOST, addr, "/"), 3, 1, host_header(), &opts).await;
    assert_eq!((s.requests, s.errors), (3, 3), "{s:?}");
    assert!(s.statuses.is_empty(), "{s:?}");
    assert!(
        s.first_error
            .as_deref()
            .unwrap_or("")
            .contains("UnknownIssuer"),
        "{s:?}"
    );

    // The right CA, but the URL names a host the certificate does not.
    let opts = options(&pki.ca_pem, None, addr);
    let err = client::fetch_with(&url("bookinfo.example.com", addr, "/"), &[], &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not valid for name \"bookinfo.example.com\""),
        "{err}"
    );

    // No CA at all: an https request fails, naming the flag.
    let no_ca = client::Options { tls: None, ..opts };
    let err = client::fetch_with(&url(HOST, addr, "/"), &[], &no_ca)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--cacert"), "{err}");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_reports_the_one_presented() {
    let pki = Pki::new("example.com CA");
    let addr = start_https(&pki, Some(&pki.ca_pem), None).await;

    let opts = options(&pki.ca_pem, None, addr);
    let err = client::fetch_with(&url(HOST, addr, "/"), &host_header(), &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("CertificateRequired"), "{err}");
    let s = client::run_with(&url(HOST, addr, "/"), 3, 1, host_header(), &opts).await;
    assert_eq!((s.requests, s.errors), (3, 3), "{s:?}");

    let cert = pki.client_cert("curl-client");
    let opts = options(&pki.ca_pem, Some(&cert), addr);
    let (status, body) = client::fetch_with(&url(HOST, addr, "/status/418"), &host_header(), &opts)
        .await
        .unwrap();
    assert_eq!(status, 418);
    let tls = report(&body).tls.expect("a TLS report");
    assert_eq!(tls.client_cn.as_deref(), Some("curl-client"));
    assert_eq!(tls.sni.as_deref(), Some(HOST));
    let s = client::run_with(&url(HOST, addr, "/"), 4, 2, host_header(), &opts).await;
    assert_eq!((s.errors, s.statuses.get(&200)), (0, Some(&4)), "{s:?}");

    // A certificate of a CA the server does not trust is refused too.
    let stranger = Pki::new("another CA").client_cert("stranger");
    let opts = options(&pki.ca_pem, Some(&stranger), addr);
    let err = client::fetch_with(&url(HOST, addr, "/"), &[], &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("alert"), "{err}");
}

#[tokio::test]
async fn connect_to_works_for_plain_http_keeping_the_urls_host() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(server::serve_http(l, identity()));
    let opts = client::Options {
        connect_to: Some(client::parse_connect_to(&addr.to_string()).unwrap()),
        ..Default::default()
    };
    // The name does not resolve: only --connect-to gets the request anywhere.
    let url = "http://httpbin.invalid:8000/headers";
    let (status, body) = client::fetch_with(url, &[], &opts).await.unwrap();
    assert_eq!(status, 200);
    let r = report(&body);
    assert_eq!(r.headers["host"], "httpbin.invalid:8000");
    assert_eq!(r.path, "/headers");
    assert!(r.tls.is_none());
    let s = client::run_with(url, 5, 2, vec![], &opts).await;
    assert_eq!((s.errors, s.backends.get("httpbin/v1")), (0, Some(&5)));
    // And h2c.
    let h2c = client::Options { h2c: true, ..opts };
    let (_, body) = client::fetch_with(url, &[], &h2c).await.unwrap();
    assert_eq!(report(&body).protocol, "HTTP/2.0");
}

/// PEM files for the command line, in a directory of this test's own.
struct Files(PathBuf);

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("testapp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `testapp ARGS...`: (success, stdout, stderr). Blocking, so off the runtime's threads.
async fn testapp(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_testapp"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_command_line_like_curl_to_a_secure_gateway() {
    let pki = Pki::new("example.com CA");
    let files = Files::new("https-cli");
    let ca = files.write("example.com.crt", &pki.ca_pem);
    let stranger_ca = files.write("other.crt", &Pki::new("another CA").ca_pem);
    let (cert, key) = pki.client_cert("client.example.com");
    let (cert, key) = (
        files.write("client.crt", &cert),
        files.write("client.key", &key),
    );

    let addr = start_https(&pki, None, None).await;
    let to = addr.to_string();
    let u = url(HOST, addr, "/status/418");
    let host = format!("Host:{HOST}");

    // curl -HHost:... --resolve ... --cacert ... https://httpbin.example.com:PORT/status/418
    let get = |extra: &[&str]| {
        let mut a = args(&["get", &u, "-H", &host, "--connect-to", &to]);
        a.extend(args(extra));
        a
    };
    let (ok, out, err) = testapp(get(&["--cacert", &ca, "--body"])).await;
    assert!(
        !ok,
        "418 fails the command, as a status >= 400 does: {out} {err}"
    );
    let r: server::Report = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r.tls.unwrap().sni.as_deref(), Some(HOST));
    assert!(err.contains("status 418"), "{err}");

    // The summary counts a refused handshake as an error; the command still succeeds.
    let (ok, out, err) = testapp(get(&["--cacert", &stranger_ca, "-n", "2"])).await;
    assert!(ok, "{err}");
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (s["requests"].as_u64(), s["errors"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert!(
        s["first_error"].as_str().unwrap().contains("UnknownIssuer"),
        "{s}"
    );

    // One request with --body: the TLS reason is the command's failure.
    let (ok, _, err) = testapp(get(&["--cacert", &stranger_ca, "--body"])).await;
    assert!(!ok);
    assert!(err.contains("UnknownIssuer"), "{err}");

    // https without --cacert, or --cert without --key: refused up front, naming the flag.
    let (ok, _, err) = testapp(get(&["--body"])).await;
    assert!(!ok && err.contains("--cacert"), "{err}");
    let (ok, _, err) = testapp(get(&["--cacert", &ca, "--cert", &cert])).await;
    assert!(!ok && err.contains("--key"), "{err}");
    let missing = Path::new(&ca).with_file_name("missing.crt");
    let (ok, _, err) = testapp(get(&["--cacert", missing.to_str().unwrap()])).await;
    assert!(!ok && err.contains("missing.crt"), "{err}");

    // Mutual TLS: without a client certificate the command fails with the server's alert;
    // with --cert and --key the server names the client.
    let mtls = start_https(&pki, Some(&pki.ca_pem), None).await;
    let (to, u) = (mtls.to_string(), url(HOST, mtls, "/"));
    let get = |extra: &[&str]| {
        let mut a = args(&["get", "--body", &u, "-H", &host, "--connect-to", &to]);
        a.extend(args(extra));
        a
    };
    let (ok, _, err) = testapp(get(&["--cacert", &ca])).await;
    assert!(!ok && err.contains("CertificateRequired"), "{err}");
    let (ok, out, err) = testapp(get(&["--cacert", &ca, "--cert", &cert, "--key", &key])).await;
    assert!(ok, "{err}");
    let r: server::Report = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        r.tls.unwrap().client_cn.as_deref(),
        Some("client.example.com")
    );
}
