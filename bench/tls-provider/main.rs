//! Mutual TLS 1.3 handshakes and bulk encryption per CPU second, rustls with ring vs aws-lc-rs,
//! ECDSA P-256 certificates, in memory (no sockets): which provider the mesh should use.
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore, ServerConnection};

fn certs() -> (CertificateDer<'static>, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["bench.local".to_string()]).unwrap();
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    (
        ca_cert.der().clone(),
        leaf.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

macro_rules! transfer {
    ($from:expr, $to:expr) => {{
        let mut buf = Vec::new();
        while $from.wants_write() {
            $from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            $to.read_tls(&mut rd).unwrap();
            $to.process_new_packets().unwrap();
        }
    }};
}

fn main() {
    let (root, leaf, key) = certs();
    for (name, provider) in [
        ("ring", rustls::crypto::ring::default_provider()),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()),
    ] {
        let provider = Arc::new(provider);
        let mut roots = RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.clone(), root.clone()], key.clone_key())
            .unwrap();
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let server = Arc::new(server);
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(vec![leaf.clone(), root.clone()], key.clone_key())
            .unwrap();
        client.resumption = rustls::client::Resumption::disabled();
        let client = Arc::new(client);
        let name_ = ServerName::try_from("bench.local").unwrap();
        let handshake = || {
            let mut c = ClientConnection::new(client.clone(), name_.clone()).unwrap();
            let mut s = ServerConnection::new(server.clone()).unwrap();
            while c.is_handshaking() || s.is_handshaking() {
                transfer!(c, s);
                transfer!(s, c);
            }
            (c, s)
        };
        // Warm up, then full handshakes (both sides' CPU) for ~3 s.
        for _ in 0..200 {
            handshake();
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < 3.0 {
            handshake();
            n += 1;
        }
        let hs = n as f64 / start.elapsed().as_secs_f64();
        // Bulk: encrypt on one side, decrypt on the other, 16 KiB writes.
        let (mut c, mut s) = handshake();
        let chunk = vec![7u8; 16 * 1024];
        let start = Instant::now();
        let mut bytes = 0u64;
        let mut sink = vec![0u8; 64 * 1024];
        while start.elapsed().as_secs_f64() < 3.0 {
            use std::io::{Read, Write};
            c.writer().write_all(&chunk).unwrap();
            transfer!(c, s);
            let mut got = 0;
            while got < chunk.len() {
                got += s.reader().read(&mut sink).unwrap();
            }
            bytes += chunk.len() as u64;
        }
        let mbps = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
        println!("{name}: {hs:.0} mutual TLS 1.3 handshakes/s (client+server, one core), {mbps:.0} MB/s bulk (encrypt+decrypt, one core), suite {:?}", c.negotiated_cipher_suite().map(|s| s.suite()));
    }
}
