//! A gateway's TLS (Istio's secure ingress: a `Gateway` server with `tls.mode` `SIMPLE` or
//! `MUTUAL` and a `credentialName`), on loopback: the router's bound listener has one filter
//! chain per server, matched by SNI (`serverNames`, `transportProtocol: tls`), each terminating
//! TLS with a Kubernetes Secret's certificate (`rustmesh_xds::tls::gateway_termination`, the
//! shape the operator renders) and routing the request to a real HTTP upstream. The Secrets are
//! served by the real mesh CA (the operator's, gRPC and TLS on loopback; a table stands in for
//! the API server's Secrets and SubjectAccessReview); the clients are real rustls clients.
//!
//! What is proved:
//! - `SIMPLE`: a client trusting the Secret's CA gets the upstream's answer (HTTP/1.1, or
//!   HTTP/2 by ALPN), and the certificate presented is the Secret's; two servers on one listener are picked by SNI
//!   (exact and `*.` wildcard) and present their own certificates; a ClientHello naming no
//!   server and plain text are refused and counted;
//! - `MUTUAL`: a client without a certificate, or with one of another CA, is refused (counted
//!   as a TLS refusal); one whose certificate the Secret's CA issued is served, until the
//!   Secret's revocation list (`ca.crl`) revokes it, while another client is still served;
//! - a credential the CA does not serve (no such Secret, or a gateway whose account may not
//!   read Secrets) fails the handshake: the client gets nothing at all, not a byte;
//! - a rotated Secret is presented by the next handshakes;
//! - the real `proxy run --type router` with `CA_ADDR` fetches the credential from the CA as
//!   a sidecar does, and never logs the key.

mod ca_common;
mod http_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ca_common::Secrets;
use http_body_util::{BodyExt, Empty};
use http_common::{Behavior, TestClusters, Upstream, upstream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use rustmesh_operator::ca::service::{Ca, CaMetrics};
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::drain;
use rustmesh_proxy::http::handler::ConnectionManager;
use rustmesh_proxy::listener::Shared;
use rustmesh_proxy::listener::bound::{BindStatus, Router};
use rustmesh_proxy::metrics::{Metrics as IstioMetrics, WorkloadInfo};
use rustmesh_proxy::snapshot::{Snapshot, Store};
use rustmesh_proxy::stats::{Metrics, Refusal};
use rustmesh_testkit::pki::TestCa;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::tls::{ClientCerts, GatewayCert, gateway_termination};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway's namespace and service account (Istio's ingress gateway).
const NS: &str = "istio-system";
const SA: &str = "istio-ingressgateway";
/// How long anything may take before the test fails (a guard, not an expectation).
const PATIENCE: Duration = Duration::from_secs(20);

// ---- the Secrets' CAs ---------------------------------------------------------------------------

/// A private CA, as a user makes one for a gateway's certificate.
struct Pki(TestCa);

/// A certificate chain and key, as PEM and as rustls takes them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }

    fn rustls(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.der()],
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
        )
    }
}

impl Pki {
    fn new(cn: &str) -> Pki {
        Pki(TestCa::new(cn))
    }

    /// A leaf with common name `cn` for DNS names `names`.
    fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        let (cert_pem, key_pem) = self.0.issue(cn, names);
        Leaf { cert_pem, key_pem }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.0.pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }
}

// ---- the gateway's configuration ---------------------------------------------------------------

/// One `Gateway` server's filter chain as the operator renders it: `serverNames` the server's
/// hosts, TLS with `credential` (`MUTUAL` when `mutual`), then the HTTP connection manager with
/// route table `https.<name>`.
fn server_chain(name: &str, hosts: &[&str], credential: &str, mutual: bool) -> Value {
    json!({
        "name": name,
        "filterChainMatch": {"serverNames": hosts, "transportProtocol": "tls"},
        "transportSocket": {"name": "envoy.transport_sockets.tls",
            "typedConfig": gateway_termination(GatewayCert::Credential(credential), if mutual { ClientCerts::Required } else { ClientCerts::Ignored })},
        "filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {"statPrefix": format!("outbound_{name}"),
                "rds": {"routeConfigName": format!("https.{name}")}}}],
    })
}

/// Route table `https.<name>`: everything to `cluster`.
fn route_table(name: &str, cluster: &str) -> Value {
    json!({"name": format!("https.{name}"), "virtualHosts": [{"name": name, "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]})
}

/// The gateway's configuration: one listener on `port` with the servers
/// `httpbin.example.com` (SIMPLE, `httpbin-credential`), `*.bookinfo.example` (SIMPLE,
/// `bookinfo-credential`), `mutual.example.com` (MUTUAL, `mutual-credential`) and
/// `missing.example.com` (SIMPLE, `missing-credential`, which has no Secret).
fn gateway_doc(port: u16, httpbin: &Upstream, bookinfo: &Upstream) -> Value {
    let clusters = serde_json::to_value(
        TestClusters::new()
            .cluster("httpbin", &[httpbin])
            .cluster("bookinfo", &[bookinfo])
            .config(),
    )
    .unwrap()["clusters"]
        .clone();
    json!({
        "listeners": [{
            "name": listener_name(port),
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
            "trafficDirection": "OUTBOUND",
            "filterChains": [
                server_chain("httpbin", &["httpbin.example.com"], "httpbin-credential", false),
                server_chain("bookinfo", &["*.bookinfo.example"], "bookinfo-credential", false),
                server_chain("mutual", &["mutual.example.com"], "mutual-credential", true),
                server_chain("missing", &["missing.example.com"], "missing-credential", false),
            ],
        }],
        "routes": [
            route_table("httpbin", "httpbin"),
            route_table("bookinfo", "bookinfo"),
            route_table("mutual", "httpbin"),
            route_table("missing", "httpbin"),
        ],
        "clusters": clusters,
    })
}

fn listener_name(port: u16) -> String {
    format!("127.0.0.1_{port}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- the world: CA, Secrets, upstreams ---------------------------------------------------------

struct World {
    secrets: Secrets,
    /// Issues `httpbin.example.com`'s and `mutual.example.com`'s certificates.
    httpbin_ca: Pki,
    /// Issues `*.bookinfo.example`'s.
    bookinfo_ca: Pki,
    /// Issues the clients' certificates `mutual-credential` trusts.
    clients_ca: Pki,
    httpbin_leaf: Leaf,
    bookinfo_leaf: Leaf,
    /// Secret `mutual-credential`'s keys and values.
    mutual_files: [(&'static str, String); 3],
    ca_addr: SocketAddr,
    authority: Arc<rustmesh_operator::ca::authority::Authority>,
    _stop_ca: tokio::sync::oneshot::Sender<()>,
    httpbin: Upstream,
    bookinfo: Upstream,
}

impl World {
    /// The CA with the gateway's Secrets (its account may read them; `nosy`'s may not), and the
    /// upstreams.
    async fn new() -> World {
        let (httpbin_ca, bookinfo_ca, clients_ca) = (
            Pki::new("httpbin root"),
            Pki::new("bookinfo root"),
            Pki::new("clients root"),
        );
        let httpbin_leaf = httpbin_ca.leaf("httpbin", &["httpbin.example.com"]);
        let bookinfo_leaf = bookinfo_ca.leaf("bookinfo", &["*.bookinfo.example"]);
        let mutual_leaf = httpbin_ca.leaf("mutual", &["mutual.example.com"]);
        let mutual_files = [
            ("tls.crt", mutual_leaf.cert_pem),
            ("tls.key", mutual_leaf.key_pem),
            ("ca.crt", clients_ca.0.pem.clone()),
        ];
        let secrets = Secrets::default();
        // A TLS Secret, a generic one (Istio's `cert`/`key`), and one with its clients' CA.
        secrets.put(
            NS,
            "httpbin-credential",
            &[
                ("tls.crt", &httpbin_leaf.cert_pem),
                ("tls.key", &httpbin_leaf.key_pem),
            ],
        );
        secrets.put(
            NS,
            "bookinfo-credential",
            &[
                ("cert", &bookinfo_leaf.cert_pem),
                ("key", &bookinfo_leaf.key_pem),
            ],
        );
        secrets.put(
            NS,
            "mutual-credential",
            &mutual_files.each_ref().map(|(k, v)| (*k, v.as_str())),
        );
        let gateway = ca_common::id(NS, SA);
        secrets.allow(&gateway);
        let authority = ca_common::authority();
        let tokens = ca_common::Tokens(BTreeMap::from([
            ("gateway".to_string(), gateway),
            ("nosy".to_string(), ca_common::id(NS, "nosy")),
        ]));
        let ca = Ca::new(authority.clone(), tokens, CaMetrics::default())
            .with_credentials(Arc::new(secrets.clone()));
        let (ca_addr, stop_ca) = ca_common::serve(ca, "127.0.0.1:0").await;
        World {
            secrets,
            httpbin_ca,
            bookinfo_ca,
            clients_ca,
            httpbin_leaf,
            bookinfo_leaf,
            mutual_files,
            ca_addr,
            authority,
            _stop_ca: stop_ca,
            httpbin: upstream("httpbin", Behavior::default()).await,
            bookinfo: upstream("bookinfo", Behavior::default()).await,
        }
    }

    /// The certificate store of a proxy whose CA token is `token` (files in `dir`), asking the
    /// CA again for a credential after 200 ms.
    fn store(&self, dir: &std::path::Path, token: &str) -> Arc<rustmesh_proxy::identity::Store> {
        ca_common::files(dir, token, self.authority.root_bundle());
        let store = Arc::new(rustmesh_proxy::identity::Store::default());
        let client = ca_common::client(self.ca_addr, dir, Duration::from_secs(3600));
        store.credentials().set_client(client);
        store.credentials().set_refresh(Duration::from_millis(200));
        store
    }
}

// ---- the gateway, in process ---------------------------------------------------------------------

/// A router (the listeners of `bound.rs`, bound as the configuration asks) serving `doc`.
struct Gateway {
    addr: SocketAddr,
    metrics: Metrics,
    _drain: drain::Signal,
}

impl Gateway {
    async fn start(doc: Value, identity: Arc<rustmesh_proxy::identity::Store>) -> Gateway {
        let metrics = Metrics::default();
        let istio = Arc::new(IstioMetrics::new());
        let workload = Arc::new(WorkloadInfo {
            name: SA.to_string(),
            namespace: NS.to_string(),
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
            router: true,
        });
        let config = ProxyConfig::from_json(&doc.to_string()).expect("a valid configuration");
        let snapshot = Snapshot::compile(config, &clusters, &metrics, &http).expect("compiles");
        clusters.commit(&snapshot.clusters);
        let addr = snapshot.bound[0].address;
        shared.store.swap(Arc::new(snapshot));
        let (signal, watch) = drain::channel();
        let status = BindStatus::default();
        tokio::spawn(Router::new(shared, status.clone()).run(watch));
        let deadline = Instant::now() + PATIENCE;
        while !status.get().iter().any(|l| !l.local.is_empty()) {
            assert!(Instant::now() < deadline, "never bound: {:?}", status.get());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Gateway {
            addr,
            metrics,
            _drain: signal,
        }
    }

    fn refused(&self, why: Refusal) -> u64 {
        self.metrics
            .refused_count(&listener_name(self.addr.port()), why)
    }

    /// Waits until the refusals for `why` reach `n`.
    async fn wait_refused(&self, why: Refusal, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.refused(why) < n {
            assert!(
                Instant::now() < deadline,
                "{why:?} refusals: {} of {n}",
                self.refused(why)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---- the clients ---------------------------------------------------------------------------------

/// What a client got through the gateway.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The upstream that answered (its `x-upstream`).
    upstream: String,
    /// The leaf certificate the gateway presented.
    presented: CertificateDer<'static>,
}

fn client_config(
    roots: rustls::RootCertStore,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// `GET /` to `https://<sni>` through the gateway at `addr`, trusting `roots`, presenting
/// `client` if given. Any failure (handshake, request) is the error.
async fn https_get(
    addr: SocketAddr,
    sni: &str,
    roots: rustls::RootCertStore,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Answer, String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(client_config(roots, client));
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server certificate")?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header("host", sni)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let upstream = resp
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let _ = resp.into_body().collect().await;
        Ok(Answer {
            status,
            upstream,
            presented,
        })
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// `GET /` over HTTP/2 to `https://<sni>` (offering only ALPN `h2`): the ALPN the gateway
/// selected, the status and the upstream that answered.
async fn https_get_h2(
    addr: SocketAddr,
    sni: &str,
    roots: rustls::RootCertStore,
) -> (Vec<u8>, u16, String) {
    let mut config = Arc::unwrap_or_clone(client_config(roots, None));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://{sni}/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("an answer")
        .unwrap();
    let upstream = resp
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (alpn, resp.status().as_u16(), upstream)
}

/// Sends a real ClientHello for `sni` on a raw connection and returns the first bytes the
/// gateway answers with (empty: it closed without a word).
async fn answer_to_client_hello(addr: SocketAddr, sni: &str) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        client_config(rustls::RootCertStore::empty(), None),
        ServerName::try_from(sni.to_string()).unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("an answer or a close")
        .unwrap_or(0);
    buf.truncate(n);
    buf
}

/// What the gateway answers to plain-text HTTP before it closes.
async fn plain_http(addr: SocketAddr, host: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("closed");
    got
}

// ---- the tests -----------------------------------------------------------------------------------

#[tokio::test]
async fn simple_presents_each_servers_secret_picked_by_sni() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        gateway_doc(free_port(), &world.httpbin, &world.bookinfo),
        world.store(dir.path(), "gateway"),
    )
    .await;

    // The Secret's certificate, verified against its CA, and the upstream's answer.
    let a = https_get(
        gw.addr,
        "httpbin.example.com",
        world.httpbin_ca.roots(),
        None,
    )
    .await
    .unwrap();
    assert_eq!((a.status, a.upstream.as_str()), (200, "httpbin"));
    assert_eq!(a.presented, world.httpbin_leaf.der());
    // Istio's gateway ALPN: a client offering h2 speaks HTTP/2 to the gateway.
    assert_eq!(
        https_get_h2(gw.addr, "httpbin.example.com", world.httpbin_ca.roots()).await,
        (b"h2".to_vec(), 200, "httpbin".to_string())
    );

    // Another server of the same listener, by a wildcard: its own Secret (generic keys).
    let b = https_get(
        gw.addr,
        "reviews.bookinfo.example",
        world.bookinfo_ca.roots(),
        None,
    )
    .await
    .unwrap();
    assert_eq!((b.status, b.upstream.as_str()), (200, "bookinfo"));
    assert_eq!(b.presented, world.bookinfo_leaf.der());
    // So a client trusting only httpbin's CA refuses bookinfo's certificate.
    let e = https_get(
        gw.addr,
        "reviews.bookinfo.example",
        world.httpbin_ca.roots(),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.contains("handshake"), "{e}");
    assert_eq!(world.bookinfo.hits(), 1);

    // A ClientHello naming no server, and plain text, match no chain: refused, counted.
    let before = gw.refused(Refusal::NoFilterChain);
    assert_eq!(
        answer_to_client_hello(gw.addr, "other.example.org").await,
        b""
    );
    gw.wait_refused(Refusal::NoFilterChain, before + 1).await;
    assert_eq!(plain_http(gw.addr, "httpbin.example.com").await, b"");
    gw.wait_refused(Refusal::NoFilterChain, before + 2).await;
    assert_eq!(world.httpbin.hits(), 2);
}

#[tokio::test]
async fn mutual_requires_a_client_certificate_of_the_secrets_ca() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        gateway_doc(free_port(), &world.httpbin, &world.bookinfo),
        world.store(dir.path(), "gateway"),
    )
    .await;
    let sni = "mutual.example.com";

    // No client certificate: refused (TLS 1.3 lets the client finish first; its request fails).
    let e = https_get(gw.addr, sni, world.httpbin_ca.roots(), None)
        .await
        .unwrap_err();
    gw.wait_refused(Refusal::TlsHandshake, 1).await;
    // A certificate of another CA: refused too.
    let stranger = world.bookinfo_ca.leaf("stranger", &[]);
    let e2 = https_get(
        gw.addr,
        sni,
        world.httpbin_ca.roots(),
        Some(stranger.rustls()),
    )
    .await
    .unwrap_err();
    gw.wait_refused(Refusal::TlsHandshake, 2).await;
    assert_eq!(world.httpbin.hits(), 0, "refused: {e}; {e2}");

    // A certificate the Secret's CA issued: served.
    let client = world.clients_ca.leaf("curl", &[]);
    let a = https_get(
        gw.addr,
        sni,
        world.httpbin_ca.roots(),
        Some(client.rustls()),
    )
    .await
    .unwrap();
    assert_eq!((a.status, a.upstream.as_str()), (200, "httpbin"));
    assert_eq!(world.httpbin.hits(), 1);

    // The Secret gains a revocation list (`ca.crl`) revoking that client: refused from the
    // next handshakes on (the gateway fetches the Secret again every 200 ms here), while
    // another client of the same CA is still served.
    let other = world.clients_ca.leaf("wget", &[]);
    let revoking = world.clients_ca.0.revoke(&[&client.cert_pem]);
    let mut revoked = world
        .mutual_files
        .each_ref()
        .map(|(k, v)| (*k, v.as_str()))
        .to_vec();
    revoked.push(("ca.crl", &revoking));
    world.secrets.put(NS, "mutual-credential", &revoked);
    let deadline = Instant::now() + PATIENCE;
    let e = loop {
        match https_get(
            gw.addr,
            sni,
            world.httpbin_ca.roots(),
            Some(client.rustls()),
        )
        .await
        {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("the Secret's revocation list was never used"),
        }
    };
    // (TLS 1.3: the client's handshake is done before the server's alert; its request fails.)
    gw.wait_refused(Refusal::TlsHandshake, 3).await;
    let hits = world.httpbin.hits();
    let b = https_get(gw.addr, sni, world.httpbin_ca.roots(), Some(other.rustls()))
        .await
        .unwrap_or_else(|o| panic!("another client is served ({e}): {o}"));
    assert_eq!((b.status, world.httpbin.hits()), (200, hits + 1));
}

#[tokio::test]
async fn a_credential_the_ca_does_not_serve_refuses_the_handshake_without_a_byte() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gw = Gateway::start(
        gateway_doc(port, &world.httpbin, &world.bookinfo),
        world.store(dir.path(), "gateway"),
    )
    .await;

    // A server whose chain works answers a ClientHello with a TLS handshake record...
    let served = answer_to_client_hello(gw.addr, "httpbin.example.com").await;
    assert_eq!(served.first(), Some(&0x16), "{served:?}");
    // ...one whose Secret does not exist gets nothing: no certificate, no plain text.
    assert_eq!(
        answer_to_client_hello(gw.addr, "missing.example.com").await,
        b""
    );
    gw.wait_refused(Refusal::TlsHandshake, 1).await;
    let e = https_get(
        gw.addr,
        "missing.example.com",
        world.httpbin_ca.roots(),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.contains("handshake"), "{e}");
    gw.wait_refused(Refusal::TlsHandshake, 2).await;

    // A gateway whose account may not read the Secrets gets none of them: every handshake
    // fails the same way.
    let nosy_dir = tempfile::tempdir().unwrap();
    let nosy = Gateway::start(
        gateway_doc(free_port(), &world.httpbin, &world.bookinfo),
        world.store(nosy_dir.path(), "nosy"),
    )
    .await;
    assert_eq!(
        answer_to_client_hello(nosy.addr, "httpbin.example.com").await,
        b""
    );
    nosy.wait_refused(Refusal::TlsHandshake, 1).await;
    assert_eq!(world.httpbin.hits(), 0);
}

#[tokio::test]
async fn a_rotated_secret_is_presented_by_the_next_handshakes() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        gateway_doc(free_port(), &world.httpbin, &world.bookinfo),
        world.store(dir.path(), "gateway"),
    )
    .await;
    let sni = "httpbin.example.com";
    let first = https_get(gw.addr, sni, world.httpbin_ca.roots(), None)
        .await
        .unwrap();
    assert_eq!(first.presented, world.httpbin_leaf.der());

    let renewed = world.httpbin_ca.leaf("httpbin-2", &[sni]);
    world.secrets.put(
        NS,
        "httpbin-credential",
        &[
            ("tls.crt", &renewed.cert_pem),
            ("tls.key", &renewed.key_pem),
        ],
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let a = https_get(gw.addr, sni, world.httpbin_ca.roots(), None)
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        if a.presented == renewed.der() {
            break;
        }
        assert_eq!(a.presented, world.httpbin_leaf.der());
        assert!(
            Instant::now() < deadline,
            "the rotated Secret was never presented"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real `proxy run --type router`, killed on drop.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_program_with_ca_addr_serves_a_gateway_credential() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    ca_common::files(dir.path(), "gateway", world.authority.root_bundle());
    let port = free_port();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        gateway_doc(port, &world.httpbin, &world.bookinfo).to_string(),
    )
    .unwrap();
    let log = dir.path().join("router.log");
    let _router = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["run", "--type", "router", "--config"])
            .arg(&config)
            .args(["--ca-addr", &format!("localhost:{}", world.ca_addr.port())])
            .arg("--ca-token")
            .arg(dir.path().join("token"))
            .arg("--ca-root-cert")
            .arg(dir.path().join("root-cert.pem"))
            .args(["--admin-port", &free_port().to_string()])
            .args(["--health-port", &free_port().to_string()])
            .args(["--prometheus-port", &free_port().to_string()])
            .args(["--dns-port", "0", "--status-port", "0"])
            .env("POD_NAMESPACE", NS)
            .env("SERVICE_ACCOUNT", SA)
            .env("RUST_LOG", "info")
            .env_remove("PROXY_CONFIGMAP")
            .env_remove("ISTIO_META_ROUTER_MODE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the proxy"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        match https_get(addr, "httpbin.example.com", world.httpbin_ca.roots(), None).await {
            Ok(a) => break a,
            Err(e) => assert!(
                Instant::now() < deadline,
                "never served: {e}\nlog:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((answer.status, answer.upstream.as_str()), (200, "httpbin"));
    assert_eq!(answer.presented, world.httpbin_leaf.der());
    // The missing Secret's server is refused, naming the credential in the log; no key is.
    assert_eq!(
        answer_to_client_hello(addr, "missing.example.com").await,
        b""
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("kubernetes://missing-credential") {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            let key_body = world.httpbin_leaf.key_pem.lines().nth(1).unwrap();
            assert!(!text.contains(key_body), "the key was logged");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refusal never named the credential:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
