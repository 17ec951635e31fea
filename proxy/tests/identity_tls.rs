//! Istio's mutual TLS between two sidecars, with certificates the real mesh CA issued through
//! the sidecar's own request path, over real TLS connections on loopback (rustls on both ends,
//! the configurations `rustmesh_proxy::identity::tls` builds).

mod ca_common;

use std::sync::Arc;

use ca_common::{authority, id, issue};
use rustmesh_proxy::identity::WorkloadCert;
use rustmesh_proxy::identity::tls::{client_config, peer_identity, server_config};
use rustmesh_proxy::transport::Purpose;
use rustmesh_xds::identity::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What each end saw: the peer's identity and the ALPN, or the error.
struct Outcome {
    client: Result<(Option<SpiffeId>, Option<Vec<u8>>), String>,
    server: Result<Option<SpiffeId>, String>,
}

async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Outcome {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match TlsAcceptor::from(server).accept(tcp).await {
            Ok(mut tls) => {
                let peer = peer_identity(tls.get_ref().1.peer_certificates());
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                tls.write_all(&buf).await.map_err(|e| e.to_string())?;
                tls.flush().await.map_err(|e| e.to_string())?;
                Ok(peer)
            }
            Err(e) => Err(e.to_string()),
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("outbound.mesh").unwrap();
    let client = match TlsConnector::from(client).connect(name, tcp).await {
        Ok(mut tls) => {
            let seen = (
                peer_identity(tls.get_ref().1.peer_certificates()),
                tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
            );
            // TLS 1.3: a client certificate the server refuses surfaces at the first read.
            let echoed = async {
                tls.write_all(b"ping").await?;
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            }
            .await;
            match echoed {
                Ok(buf) if &buf == b"ping" => Ok(seen),
                Ok(other) => Err(format!("echo {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    Outcome {
        client,
        server: serving.await.unwrap(),
    }
}

struct Mesh {
    reviews: WorkloadCert,
    ratings: WorkloadCert,
}

async fn mesh() -> Mesh {
    let root = authority();
    Mesh {
        reviews: issue(&root, &id("bookinfo", "reviews")).await,
        ratings: issue(&root, &id("bookinfo", "ratings")).await,
    }
}

#[tokio::test]
async fn both_sidecars_learn_who_the_other_is() {
    let m = mesh().await;
    let out = handshake(
        server_config(&m.ratings, &[b"h2", b"http/1.1"], true).unwrap(),
        client_config(
            &m.reviews,
            vec![id("bookinfo", "ratings")],
            Purpose::Http1.alpn(),
        )
        .unwrap(),
    )
    .await;
    let (server_seen, alpn) = out.client.unwrap();
    assert_eq!(server_seen, Some(id("bookinfo", "ratings")));
    // The client offers Istio's marker and the HTTP version; the server's chain selects HTTP.
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(out.server.unwrap(), Some(id("bookinfo", "reviews")));

    // No expected identities: any mesh identity is accepted (Istio without subjectAltNames).
    let out = handshake(
        server_config(&m.ratings, Purpose::Tcp.alpn(), true).unwrap(),
        client_config(&m.reviews, vec![], Purpose::Tcp.alpn()).unwrap(),
    )
    .await;
    assert!(out.client.is_ok(), "{:?}", out.client.err());
}

#[tokio::test]
async fn a_verified_chain_is_remembered_but_names_and_expiry_are_checked_every_time() {
    // One client configuration (one verifier, one cache of verified chains) expecting ratings.
    let m = mesh().await;
    let client = client_config(
        &m.reviews,
        vec![id("bookinfo", "ratings")],
        Purpose::Tcp.alpn(),
    )
    .unwrap();
    let ratings = server_config(&m.ratings, Purpose::Tcp.alpn(), true).unwrap();
    for _ in 0..3 {
        let out = handshake(ratings.clone(), client.clone()).await;
        assert!(out.client.is_ok() && out.server.is_ok(), "{:?}", out.client);
    }
    // Another server of the same mesh: its chain verifies, its name is still refused.
    let out = handshake(
        server_config(&m.reviews, Purpose::Tcp.alpn(), true).unwrap(),
        client.clone(),
    )
    .await;
    assert!(out.client.unwrap_err().contains("sa/reviews"));
    // The server remembered the client's chain; a client of another mesh is still refused.
    let stranger = issue(&authority(), &id("bookinfo", "reviews")).await;
    let out = handshake(
        ratings.clone(),
        client_config(&stranger, vec![], Purpose::Tcp.alpn()).unwrap(),
    )
    .await;
    assert!(out.server.is_err());
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused_by_name() {
    let m = mesh().await;
    let out = handshake(
        server_config(&m.ratings, Purpose::Tcp.alpn(), true).unwrap(),
        client_config(
            &m.reviews,
            vec![id("bookinfo", "details")],
            Purpose::Tcp.alpn(),
        )
        .unwrap(),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(
        err.contains("spiffe://cluster.local/ns/bookinfo/sa/ratings") && err.contains("sa/details"),
        "{err}"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn another_meshs_certificates_are_refused_both_ways() {
    let m = mesh().await;
    let stranger = issue(&authority(), &id("bookinfo", "reviews")).await;
    // A client from another root: the server refuses it.
    let out = handshake(
        server_config(&m.ratings, Purpose::Tcp.alpn(), true).unwrap(),
        client_config(&stranger, vec![], Purpose::Tcp.alpn()).unwrap(),
    )
    .await;
    assert!(out.client.is_err() && out.server.is_err());
    // A server from another root: the client refuses it.
    let out = handshake(
        server_config(&stranger, Purpose::Tcp.alpn(), true).unwrap(),
        client_config(&m.reviews, vec![], Purpose::Tcp.alpn()).unwrap(),
    )
    .await;
    let err = out.client.unwrap_err();
    // Both roots are `O=cluster.local`: webpki finds the name and the signature fails.
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let m = mesh().await;
    let mut roots = rustls::RootCertStore::empty();
    for r in &m.ratings.roots {
        roots.add(r.clone()).unwrap();
    }
    // A plain TLS client that trusts the mesh root but has no certificate of its own.
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_no_client_auth();
    let out = handshake(
        server_config(&m.ratings, Purpose::Tcp.alpn(), true).unwrap(),
        Arc::new(anonymous),
    )
    .await;
    assert!(out.client.is_err());
    let err = out.server.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// A client that accepts any server (so only the server's refusal is tested).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The handshake kinds of three connections in a row from an `Originate` to a `Terminate`
/// built from these contexts (the proxy's own transport layer both ends).
async fn handshake_kinds(
    m: Mesh,
    server: rustmesh_xds::tls::DownstreamTlsContext,
    client: rustmesh_xds::tls::UpstreamTlsContext,
) -> Vec<Option<rustls::HandshakeKind>> {
    use rustmesh_proxy::identity::Store;
    use rustmesh_proxy::transport::{Io, Originate, Terminate};
    let (server_certs, client_certs) = (Arc::new(Store::default()), Arc::new(Store::default()));
    server_certs.install(m.ratings);
    client_certs.install(m.reviews);
    let terminate = Arc::new(Terminate::new(&server, server_certs).unwrap());
    let originate = Originate::new(&client, client_certs).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let terminate = terminate.clone();
            tokio::spawn(async move {
                if let Ok(mut io) = terminate.accept(tcp).await {
                    // TLS 1.3 tickets go out with the server's first write.
                    let _ = io.write_all(b"ok").await;
                    let mut buf = [0u8; 1];
                    let _ = io.read(&mut buf).await;
                }
            });
        }
    });
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut io = originate.connect(tcp, Purpose::Tcp).await.unwrap();
        let mut buf = [0u8; 2];
        io.read_exact(&mut buf).await.unwrap();
        let Io::Client(tls) = &io else {
            panic!("not a client TLS stream")
        };
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    kinds
}

#[tokio::test]
async fn resumption_is_on_by_default_and_either_side_can_turn_it_off() {
    use rustls::HandshakeKind::{Full, Resumed};
    use rustmesh_xds::tls::{ALPN_ISTIO_TCP, istio_downstream, istio_upstream};
    let server = || istio_downstream(&ALPN_ISTIO_TCP);
    let client = || istio_upstream("outbound_.9000_._.ratings", &ALPN_ISTIO_TCP, &[]);
    assert_eq!(
        handshake_kinds(mesh().await, server(), client()).await,
        [Some(Full), Some(Resumed), Some(Resumed)]
    );
    // Envoy's disableStatefulSessionResumption on the server: no tickets, no cache.
    let mut no_cache = server();
    no_cache.disable_stateful_session_resumption = true;
    assert_eq!(
        handshake_kinds(mesh().await, no_cache, client()).await,
        [Some(Full); 3]
    );
    // Envoy's maxSessionKeys: 0 on the client: nothing kept to resume with.
    let mut no_keys = client();
    no_keys.max_session_keys = Some(0);
    assert_eq!(
        handshake_kinds(mesh().await, server(), no_keys).await,
        [Some(Full); 3]
    );
}
