//! TLS origination to a server outside the mesh (a DestinationRule's `SIMPLE` / `MUTUAL`), on
//! loopback: the app sends plain HTTP (or TCP) to the sidecar's outbound listener, the sidecar
//! (the real listeners, clusters and pools) opens TLS to a real rustls server whose
//! certificates a test CA (rcgen) issued. The configuration is the shape the operator renders
//! (`render::clusters::upstream_tls`), with Istio's file secrets.
//!
//! What is proved, from Istio's documented behaviour of `ClientTLSSettings`:
//! - `SIMPLE` with `caCertificates`: TLS with the SNI asked, the server verified against the
//!   file; a server whose certificate does not name the SNI, or none of `subjectAltNames`, is
//!   refused; without `caCertificates` the system roots are used (a private CA is refused);
//!   `insecureSkipVerify` accepts any server;
//! - HTTP/2 to the server negotiates `h2` by ALPN; raw TCP works too;
//! - `MUTUAL` presents the client certificate of its files (a server requiring one accepts
//!   it, and refuses `SIMPLE`);
//! - a missing file fails the cluster's requests, naming nothing to the app but 503, without
//!   opening a connection to the server;
//! - `caCrl`: a server whose certificate the file's revocation list revokes is refused, one it
//!   does not revoke is served; a file that is no list fails the requests like a missing one;
//! - a `credentialName` (`kubernetes://<secret>`, `kubernetes://<secret>-cacert`) is served by
//!   the real mesh CA (the operator's, on loopback; a table stands in for the API server's
//!   Secrets and SubjectAccessReview) to a workload whose account may list Secrets, refused
//!   otherwise before any connection; a rotated Secret is used by the next connections, its
//!   revocation list (`ca.crl`) too; the last good copy keeps serving while the CA is down.

mod ca_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ca_common::Secrets;
use http_body_util::{BodyExt, Empty};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::drain;
use rustmesh_proxy::http::handler::ConnectionManager;
use rustmesh_proxy::listener::{Direction, Shared, VirtualListener};
use rustmesh_proxy::metrics::{Metrics as IstioMetrics, WorkloadInfo};
use rustmesh_proxy::snapshot::{Snapshot, Store};
use rustmesh_proxy::socket::{ClientAddr, FixedAddrs, OrigDstAddr};
use rustmesh_proxy::stats::Metrics;
use rustmesh_testkit::pki::TestCa;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::tls::{ClientCert, ServerRoots, external_upstream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VIP: &str = "10.96.7.7";
const HTTP_PORT: u16 = 443;
const TCP_PORT: u16 = 5432;
const NAME: &str = "ext.example.com";

// ---- a private CA and the files a user would give ------------------------------------------

/// The test CA, with its certificate in `ca.pem` of a directory of the test's.
struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Pki {
    fn new() -> Pki {
        let ca = TestCa::new("test root");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        Pki { dir, ca }
    }

    /// A leaf for `names` with common name `cn`: (chain PEM, key PEM).
    fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        self.ca.issue(cn, names)
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// Writes a client certificate and key, returning their paths.
    fn client_files(&self) -> (String, String) {
        let (cert, key) = self.leaf("payments-client", &[]);
        std::fs::write(self.dir.path().join("client.pem"), cert).unwrap();
        std::fs::write(self.dir.path().join("client-key.pem"), key).unwrap();
        (self.path("client.pem"), self.path("client-key.pem"))
    }
}

// ---- the server outside the mesh ------------------------------------------------------------

/// A TLS server (HTTP/1.1 and h2 after ALPN; raw TCP echo on `tcp`) that answers with what it
/// saw: `<version> sni=<sni> client=<client CN or ->`. Counts accepted TCP connections.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Its certificate, PEM.
    cert: String,
}

async fn tls_server(pki: &Pki, names: &[&str], require_client: bool, tcp: bool) -> Server {
    let (cert, key) = pki.leaf(names[0], names);
    let chain = cert.clone();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    if !tcp {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                let sni = conn.server_name().unwrap_or("-").to_string();
                let client = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| {
                        x509_parser::parse_x509_certificate(c.as_ref())
                            .ok()
                            .and_then(|(_, x)| {
                                x.subject()
                                    .iter_common_name()
                                    .next()
                                    .and_then(|cn| cn.as_str().ok().map(str::to_string))
                            })
                    })
                    .unwrap_or_else(|| "-".to_string());
                let seen = format!("sni={sni} client={client}");
                if tcp {
                    let kind = format!("{:?}", conn.handshake_kind());
                    let _ = tls.write_all(format!("tcp {seen}\n").as_bytes()).await;
                    let _ = tls
                        .write_all(format!("handshake {kind}\n").as_bytes())
                        .await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let body = format!("{:?} {seen}", req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    Server {
        addr,
        accepted,
        cert,
    }
}

// ---- the client sidecar ----------------------------------------------------------------------

fn address(ip: &str, port: u16) -> Value {
    json!({"socketAddress": {"address": ip, "portValue": port}})
}

/// Outbound `VIP:443` (HTTP, to `outbound|443||ext.example.com`) and `VIP:5432` (TCP) with
/// `tls` as each cluster's transport socket; `h2` makes the HTTP cluster speak HTTP/2.
fn client_doc(server: SocketAddr, tls: Value, h2: bool) -> Value {
    let cluster = |port: u16| format!("outbound|{port}||{NAME}");
    let def = |port: u16| {
        let mut c = json!({"name": cluster(port), "type": "STATIC", "connectTimeout": "5s",
            "loadAssignment": {"clusterName": cluster(port), "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": address("127.0.0.1", server.port())}}]}]},
            "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": tls.clone()}});
        if h2 && port == HTTP_PORT {
            c["upstreamProtocol"] = json!("HTTP2");
        }
        c
    };
    json!({
        "listeners": [
            {"name": "virtualOutbound", "address": address("0.0.0.0", 15001), "trafficDirection": "OUTBOUND",
             "useOriginalDst": true, "filterChains": [{"name": "catch-all", "filters": [{"name": "envoy.filters.network.tcp_proxy",
                "typedConfig": {"statPrefix": "BlackHoleCluster", "cluster": "BlackHoleCluster"}}]}]},
            {"name": format!("{VIP}_{HTTP_PORT}"), "address": address(VIP, HTTP_PORT), "trafficDirection": "OUTBOUND",
             "bindToPort": false, "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typedConfig": {"statPrefix": "outbound_443", "routeConfig": {"name": "443", "virtualHosts": [
                    {"name": NAME, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster(HTTP_PORT)}}]}]}}}]}]},
            {"name": format!("{VIP}_{TCP_PORT}"), "address": address(VIP, TCP_PORT), "trafficDirection": "OUTBOUND",
             "bindToPort": false, "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                "typedConfig": {"statPrefix": cluster(TCP_PORT), "cluster": cluster(TCP_PORT)}}]}]},
        ],
        "clusters": [
            {"name": "BlackHoleCluster", "type": "STATIC", "connectTimeout": "10s",
             "loadAssignment": {"clusterName": "BlackHoleCluster", "endpoints": []}},
            def(HTTP_PORT), def(TCP_PORT)],
    })
}

struct Sidecar {
    _drain: drain::Signal,
    http: SocketAddr,
    tcp: SocketAddr,
}

impl Sidecar {
    /// A sidecar with `doc`, and its outbound listener as the app's connections to `VIP:443`
    /// and `VIP:5432` reach it.
    fn new(doc: Value) -> Sidecar {
        Sidecar::with_identity(doc, Arc::new(rustmesh_proxy::identity::Store::default()))
    }

    /// [`Sidecar::new`] with the certificates and credentials of `identity`.
    fn with_identity(doc: Value, identity: Arc<rustmesh_proxy::identity::Store>) -> Sidecar {
        let metrics = Metrics::default();
        let istio = Arc::new(IstioMetrics::new());
        let workload = Arc::new(WorkloadInfo {
            name: "payments".to_string(),
            namespace: "shop".to_string(),
            labels: BTreeMap::new(),
            ..Default::default()
        });
        let http = Arc::new(ConnectionManager::new(istio.clone(), workload.clone()));
        let clusters = Arc::new(ClusterManager::with_identity(metrics.clone(), identity));
        let shared = Arc::new(Shared {
            store: Arc::new(Store::new()),
            metrics: metrics.clone(),
            istio,
            workload,
            identity: clusters.identity().clone(),
            http: http.clone(),
            original_source: false,
            router: false,
        });
        let config = ProxyConfig::from_json(&doc.to_string()).expect("a valid configuration");
        let snapshot = Snapshot::compile(config, &clusters, &metrics, &http).expect("compiles");
        clusters.commit(&snapshot.clusters);
        shared.store.swap(Arc::new(snapshot));
        let (signal, watch) = drain::channel();
        let listen = |port: u16| {
            let orig_dst: SocketAddr = format!("{VIP}:{port}").parse().unwrap();
            let l = VirtualListener::new(
                Direction::Outbound,
                "127.0.0.1:0".parse().unwrap(),
                shared.clone(),
            )
            .unwrap();
            let addr = l.local_addrs()[0];
            tokio::spawn(l.run_with(watch.clone(), move |s: &TcpStream| {
                Ok(FixedAddrs {
                    orig_dst: OrigDstAddr(orig_dst),
                    client: ClientAddr(s.peer_addr()?),
                })
            }));
            addr
        };
        Sidecar {
            http: listen(HTTP_PORT),
            tcp: listen(TCP_PORT),
            _drain: signal,
        }
    }

    /// A plain-text GET from the app: (status, body).
    async fn get(&self) -> (u16, String) {
        let tcp = TcpStream::connect(self.http).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header("host", NAME)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn simple(roots: ServerRoots, sans: &[&str]) -> Value {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    serde_json::to_value(external_upstream(NAME, &[], None, &roots, None, &sans)).unwrap()
}

fn ca_file(pki: &Pki) -> ServerRoots {
    ServerRoots::File(pki.path("ca.pem"))
}

// ---- the tests --------------------------------------------------------------------------------

#[tokio::test]
async fn simple_originates_tls_verified_against_the_given_roots_and_name() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[NAME], false, false).await;
    // The app speaks plain HTTP/1.1; the server sees TLS with the SNI asked.
    let sidecar = Sidecar::new(client_doc(server.addr, simple(ca_file(&pki), &[]), false));
    let (status, body) = sidecar.get().await;
    assert_eq!(
        (status, body.as_str()),
        (200, "HTTP/1.1 sni=ext.example.com client=-")
    );
    // The server's certificate is also checked against subjectAltNames when given.
    let named = Sidecar::new(client_doc(
        server.addr,
        simple(ca_file(&pki), &["other.example.com", NAME]),
        false,
    ));
    assert_eq!(named.get().await.0, 200);
    let wrong_san = Sidecar::new(client_doc(
        server.addr,
        simple(ca_file(&pki), &["other.example.com"]),
        false,
    ));
    assert_eq!(
        wrong_san.get().await.0,
        503,
        "a server naming none of subjectAltNames"
    );
    // A server whose certificate does not name the SNI is refused.
    let impostor = tls_server(&pki, &["impostor.example.com"], false, false).await;
    let refused = Sidecar::new(client_doc(impostor.addr, simple(ca_file(&pki), &[]), false));
    assert_eq!(refused.get().await.0, 503, "a certificate for another name");
    assert!(impostor.accepted.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn without_ca_certificates_the_system_roots_decide_and_insecure_skip_verify_does_not_verify()
{
    let pki = Pki::new();
    let server = tls_server(&pki, &[NAME], false, false).await;
    // A private CA is in no system bundle: refused.
    let system = Sidecar::new(client_doc(
        server.addr,
        simple(ServerRoots::System, &[]),
        false,
    ));
    assert_eq!(system.get().await.0, 503);
    assert!(
        server.accepted.load(Ordering::SeqCst) > 0,
        "the handshake was tried"
    );
    // insecureSkipVerify: no validation context, any server accepted.
    let insecure = Sidecar::new(client_doc(
        server.addr,
        simple(ServerRoots::SkipVerify, &[]),
        false,
    ));
    let (status, body) = insecure.get().await;
    assert_eq!(status, 200);
    assert!(body.ends_with("sni=ext.example.com client=-"), "{body}");
}

#[tokio::test]
async fn http2_negotiates_h2_and_raw_tcp_is_carried_too() {
    let pki = Pki::new();
    let http = tls_server(&pki, &[NAME], false, false).await;
    let sidecar = Sidecar::new(client_doc(http.addr, simple(ca_file(&pki), &[]), true));
    assert_eq!(
        sidecar.get().await,
        (200, "HTTP/2.0 sni=ext.example.com client=-".to_string())
    );
    let tcp = tls_server(&pki, &[NAME], false, true).await;
    let sidecar = Sidecar::new(client_doc(tcp.addr, simple(ca_file(&pki), &[]), false));
    assert_eq!(
        tcp_exchange(sidecar.tcp).await,
        "tcp sni=ext.example.com client=-\nhandshake Some(Full)\nping\n"
    );
}

/// One connection through the sidecar's TCP listener: sends `ping`, returns all it got.
async fn tcp_exchange(at: SocketAddr) -> String {
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(b"ping\n").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"ping\n") {
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn sessions_resume_unless_max_session_keys_is_zero() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[NAME], false, true).await;
    let kinds = |doc: Value| async move {
        let sidecar = Sidecar::new(doc);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let got = tcp_exchange(sidecar.tcp).await;
            kinds.push(got.lines().nth(1).unwrap().to_string());
        }
        kinds
    };
    // Default: the second and later connections resume from a TLS 1.3 ticket.
    assert_eq!(
        kinds(client_doc(server.addr, simple(ca_file(&pki), &[]), false)).await,
        [
            "handshake Some(Full)",
            "handshake Some(Resumed)",
            "handshake Some(Resumed)"
        ]
    );
    // Envoy's maxSessionKeys: 0: every handshake is a full one.
    let mut off = simple(ca_file(&pki), &[]);
    off["maxSessionKeys"] = json!(0);
    assert_eq!(
        kinds(client_doc(server.addr, off, false)).await,
        ["handshake Some(Full)"; 3]
    );
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_of_its_files() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[NAME], true, false).await;
    let (cert, key) = pki.client_files();
    let mutual = serde_json::to_value(external_upstream(
        NAME,
        &[],
        Some(ClientCert::Files {
            cert: &cert,
            key: &key,
        }),
        &ca_file(&pki),
        None,
        &[],
    ))
    .unwrap();
    let sidecar = Sidecar::new(client_doc(server.addr, mutual, false));
    let (status, body) = sidecar.get().await;
    assert_eq!(
        (status, body.as_str()),
        (200, "HTTP/1.1 sni=ext.example.com client=payments-client")
    );
    // The same server refuses SIMPLE (no client certificate).
    let simple = Sidecar::new(client_doc(server.addr, simple(ca_file(&pki), &[]), false));
    assert_eq!(simple.get().await.0, 503);
}

/// `caCrl`: the server's chain is checked against the revocation lists of the file. A server
/// whose certificate a list revokes is refused (503), one of the same CA it does not revoke
/// is served; a file that holds no list fails the requests, as a missing CA file does.
#[tokio::test]
async fn a_revocation_list_file_refuses_the_servers_it_revokes() {
    let pki = Pki::new();
    let revoked = tls_server(&pki, &[NAME], false, false).await;
    let valid = tls_server(&pki, &[NAME], false, false).await;
    std::fs::write(pki.path("revoked.crl"), pki.ca.revoke(&[&revoked.cert])).unwrap();
    std::fs::write(pki.path("not-a.crl"), &revoked.cert).unwrap();
    let with_crl = |crl: &str| {
        serde_json::to_value(external_upstream(
            NAME,
            &[],
            None,
            &ca_file(&pki),
            Some(&pki.path(crl)),
            &[],
        ))
        .unwrap()
    };
    let to_revoked = Sidecar::new(client_doc(revoked.addr, with_crl("revoked.crl"), false));
    assert_eq!(to_revoked.get().await.0, 503, "a revoked server");
    assert!(
        revoked.accepted.load(Ordering::SeqCst) > 0,
        "refused in TLS"
    );
    let to_valid = Sidecar::new(client_doc(valid.addr, with_crl("revoked.crl"), false));
    assert_eq!(
        to_valid.get().await,
        (200, "HTTP/1.1 sni=ext.example.com client=-".to_string())
    );
    let garbage = Sidecar::new(client_doc(valid.addr, with_crl("not-a.crl"), false));
    let before = valid.accepted.load(Ordering::SeqCst);
    assert_eq!(garbage.get().await.0, 503);
    assert_eq!(
        valid.accepted.load(Ordering::SeqCst),
        before,
        "no connection without the lists"
    );
}

#[tokio::test]
async fn a_missing_file_fails_the_requests_before_any_connection() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[NAME], false, false).await;
    let missing = pki.path("no-such-ca.pem");
    assert!(!Path::new(&missing).exists());
    let sidecar = Sidecar::new(client_doc(
        server.addr,
        simple(ServerRoots::File(missing), &[]),
        false,
    ));
    assert_eq!(sidecar.get().await.0, 503);
    assert_eq!(sidecar.get().await.0, 503);
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        0,
        "no connection to the server without its roots"
    );
}

// ---- credentialName: the Secret served by the mesh CA -----------------------------------------

#[tokio::test]
async fn a_credential_name_is_served_by_the_ca_to_a_workload_allowed_to_read_it() {
    use rustmesh_operator::ca::service::{Ca, CaMetrics};
    let pki = Pki::new();
    // A TCP server outside the mesh requiring a client certificate of the private CA.
    let server = tls_server(&pki, &[NAME], true, true).await;
    let secrets = Secrets::default();
    let ca_pem = std::fs::read_to_string(pki.path("ca.pem")).unwrap();
    let (cert, key) = pki.leaf("payments-client", &[]);
    secrets.put(
        "shop",
        "ext-client",
        &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca_pem)],
    );
    let payments = ca_common::id("shop", "payments");
    let nosy = ca_common::id("shop", "nosy");
    secrets.allow(&payments);
    let authority = ca_common::authority();
    let tokens = ca_common::Tokens(BTreeMap::from([
        ("payments".to_string(), payments.clone()),
        ("nosy".to_string(), nosy.clone()),
    ]));
    let ca = Ca::new(authority.clone(), tokens, CaMetrics::default())
        .with_credentials(Arc::new(secrets.clone()));
    let (ca_addr, stop_ca) = ca_common::serve(ca, "127.0.0.1:0").await;
    let identity = |token: &str| {
        let dir = tempfile::tempdir().unwrap();
        ca_common::files(dir.path(), token, authority.root_bundle());
        let store = Arc::new(rustmesh_proxy::identity::Store::default());
        let client = ca_common::client(ca_addr, dir.path(), std::time::Duration::from_secs(3600));
        store.credentials().set_client(client);
        (dir, store)
    };
    let doc = || {
        let tls = external_upstream(
            NAME,
            &[],
            Some(ClientCert::Credential("ext-client")),
            &ServerRoots::Credential("ext-client".into()),
            None,
            &[],
        );
        client_doc(server.addr, serde_json::to_value(tls).unwrap(), false)
    };

    // The account may list the Secrets of its namespace: MUTUAL with the Secret's certificate,
    // the server verified against its ca.crt.
    let (_files, store) = identity("payments");
    store
        .credentials()
        .set_refresh(std::time::Duration::from_millis(200));
    let sidecar = Sidecar::with_identity(doc(), store.clone());
    assert!(
        tcp_exchange(sidecar.tcp)
            .await
            .starts_with("tcp sni=ext.example.com client=payments-client\n")
    );

    // The admin's /certs (what `rustmeshctl proxy-config secret` reads) lists both resources.
    let certs = rustmesh_proxy::admin::certs_json(Some(&store), std::time::SystemTime::now());
    let paths: Vec<&str> = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|set| {
            let all = set["ca_cert"].as_array().unwrap().iter();
            all.chain(set["cert_chain"].as_array().unwrap())
        })
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["kubernetes://ext-client", "kubernetes://ext-client-cacert"]
    );
    assert!(!certs.to_string().contains("PRIVATE KEY"));

    // Another account of the namespace without that right gets nothing: the connection is
    // refused before the server is dialed.
    let before = server.accepted.load(Ordering::SeqCst);
    let (_nosy_files, nosy_store) = identity("nosy");
    let refused = Sidecar::with_identity(doc(), nosy_store);
    assert_eq!(closed_without_answer(refused.tcp).await, "");
    assert_eq!(server.accepted.load(Ordering::SeqCst), before);

    // A rotated Secret is used by the next connections.
    let (cert2, key2) = pki.leaf("payments-client-2", &[]);
    secrets.put(
        "shop",
        "ext-client",
        &[("tls.crt", &cert2), ("tls.key", &key2), ("ca.crt", &ca_pem)],
    );
    let mut rotated = false;
    for _ in 0..50 {
        if tcp_exchange(sidecar.tcp)
            .await
            .contains("client=payments-client-2\n")
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(rotated, "the rotated Secret was never used");

    // The Secret's revocation list (`ca.crl`) revoking the server's certificate: the next
    // connections are refused; without it again, served.
    let revoking = pki.ca.revoke(&[&server.cert]);
    secrets.put(
        "shop",
        "ext-client",
        &[
            ("tls.crt", &cert2),
            ("tls.key", &key2),
            ("ca.crt", &ca_pem),
            ("ca.crl", &revoking),
        ],
    );
    assert!(
        until(false, || reaches_server(sidecar.tcp)).await,
        "the Secret's revocation list was never used"
    );
    secrets.put(
        "shop",
        "ext-client",
        &[("tls.crt", &cert2), ("tls.key", &key2), ("ca.crt", &ca_pem)],
    );
    assert!(
        until(true, || reaches_server(sidecar.tcp)).await,
        "served again without the list"
    );

    // The CA goes away: the last good copy keeps serving past its refresh time.
    let _ = stop_ca.send(());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        tcp_exchange(sidecar.tcp)
            .await
            .contains("client=payments-client-2\n")
    );

    // Worse: the CA's address accepts connections and never answers (the sidecar's call waits
    // out its 10 s timeout). Refreshes run in the background: new connections are served from
    // the copy held at once, never held up by the CA.
    let blackhole = tokio::net::TcpListener::bind(ca_addr).await.unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            open.push(s);
        }
    });
    // Past the refresh interval and the retry pause of the last failure.
    tokio::time::sleep(
        rustmesh_proxy::identity::credential::RETRY + std::time::Duration::from_millis(500),
    )
    .await;
    for _ in 0..3 {
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(5), tcp_exchange(sidecar.tcp))
                .await
                .expect("a connection waited for the unreachable CA");
        assert!(answer.contains("client=payments-client-2\n"), "{answer}");
    }
    held.abort();
}

/// Whether a connection through the sidecar's TCP listener reaches the server (its first
/// bytes arrive).
async fn reaches_server(at: SocketAddr) -> bool {
    let mut s = TcpStream::connect(at).await.unwrap();
    let _ = s.write_all(b"ping\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
    matches!(read, Ok(Ok(n)) if n > 0)
}

/// Whether `check` gives `want` within 5 s (polled every 100 ms).
async fn until<F: std::future::Future<Output = bool>>(want: bool, check: impl Fn() -> F) -> bool {
    for _ in 0..50 {
        if check().await == want {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// What a connection through the sidecar's TCP listener gets before it closes.
async fn closed_without_answer(at: SocketAddr) -> String {
    let mut s = TcpStream::connect(at).await.unwrap();
    let _ = s.write_all(b"ping\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}
