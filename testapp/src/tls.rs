//! TLS for the HTTP server (`serve --https`): a certificate and key read from PEM files and,
//! given a client CA, mutual TLS (a client certificate is required and verified against that
//! CA). What the handshake settled (version, SNI, ALPN, the client certificate's common name)
//! is put in every answer's [`crate::server::TlsReport`], so a test sees what a sidecar
//! originated. rustls with the `ring` provider, as everywhere in the workspace.
//!
//! And TLS for the client (`get https://... --cacert [--cert --key]`, [`client_config`]): the
//! server is verified against the given CA certificates only (no system roots, as curl's
//! `--cacert` in a bare image), optionally presenting a client certificate.

use crate::Error;
use crate::server::TlsReport;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The ALPN the server accepts: HTTP/2 and HTTP/1.1 (a client offering neither, or nothing,
/// still gets either: the server tells them apart by the HTTP/2 preface).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn fail(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Every certificate of a PEM text (at least one).
pub fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(what, e))?;
    if certs.is_empty() {
        return Err(fail(what, "no CERTIFICATE in the PEM text"));
    }
    Ok(certs)
}

/// The private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| fail(what, e))
}

/// The server side: presents `cert_pem` (leaf first) with `key_pem`; with `client_ca_pem`,
/// requires a client certificate that chains to one of its certificates.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let chain = certificates(cert_pem, "server certificate")?;
    let key = private_key(key_pem, "server key")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("protocol versions", e))?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(pem, "client CA")? {
                roots.add(cert).map_err(|e| fail("client CA", e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .map_err(|e| fail("client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| fail("server certificate and key", e))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read(p: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(p).map_err(|e| fail(&p.display().to_string(), format!("cannot read: {e}")))
}

/// [`server_config`] from files.
pub fn load_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let client_ca = client_ca.map(read).transpose()?;
    server_config(&read(cert)?, &read(key)?, client_ca.as_deref())
}

/// The client side: trusts only the certificates of `ca_pem` (a server whose chain does not
/// lead to one of them, or whose certificate does not name the server name, fails the
/// handshake); with `client` (certificate chain leaf first, key), presents that certificate to a
/// server that asks for one (mutual TLS). No ALPN: the HTTP client sets what it offers.
pub fn client_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let client = match client {
        Some((cert, key)) => Some((
            certificates(cert, "client certificate")?,
            private_key(key, "client key")?,
        )),
        None => None,
    };
    build_client_config(certificates(ca_pem, "CA certificates")?, client)
}

/// [`client_config`] from files (`get --cacert FILE [--cert FILE --key FILE]`); an error names
/// the file at fault.
pub fn load_client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let name = |p: &Path| p.display().to_string();
    let roots = certificates(&read(ca)?, &name(ca))?;
    let client = match client {
        Some((cert, key)) => Some((
            certificates(&read(cert)?, &name(cert))?,
            private_key(&read(key)?, &name(key))?,
        )),
        None => None,
    };
    build_client_config(roots, client)
}

fn build_client_config(
    roots: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert).map_err(|e| fail("CA certificates", e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("protocol versions", e))?
        .with_root_certificates(store);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| fail("client certificate and key", e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The first common name (CN) of a DER certificate's subject, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// What a finished handshake settled.
pub fn report(conn: &rustls::ServerConnection) -> TlsReport {
    TlsReport {
        version: conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        sni: conn.server_name().map(str::to_string),
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        client_cn: conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{self, Identity, Report};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const HOST: &str = "tls-server.test.svc.cluster.local";

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
    }

    async fn start(client_ca: Option<&str>, pki: &Pki) -> std::net::SocketAddr {
        let (cert, key) = pki.leaf("tls-server", &[HOST], ExtendedKeyUsagePurpose::ServerAuth);
        let config = server_config(
            cert.as_bytes(),
            key.as_bytes(),
            client_ca.map(str::as_bytes),
        )
        .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let id = Arc::new(Identity {
            service: "tls-server".into(),
            version: "v1".into(),
            pod: "tls-server-0".into(),
            ..Default::default()
        });
        tokio::spawn(server::serve_https(l, id, config));
        addr
    }

    fn client(pki: &Pki, cert: Option<(String, String)>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates(pki.ca_pem.as_bytes(), "CA").unwrap() {
            roots.add(c).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    certificates(cert.as_bytes(), "client").unwrap(),
                    private_key(key.as_bytes(), "client").unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// One HTTP/1.1 GET over TLS: the status and body, or what failed.
    async fn get(
        addr: std::net::SocketAddr,
        connector: tokio_rustls::TlsConnector,
    ) -> Result<(u16, Report), String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(HOST).unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let req = format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tls.read_to_end(&mut got),
        )
        .await
        .map_err(|_| "no answer within 10 s".to_string())?;
        // Connection: close and no close_notify from hyper is fine once the answer is whole.
        if let Err(e) = read
            && got.is_empty()
        {
            return Err(format!("read: {e}"));
        }
        let text = String::from_utf8_lossy(&got);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let report = serde_json::from_str(body).map_err(|e| format!("{e}: {body:?}"))?;
        Ok((status, report))
    }

    #[tokio::test]
    async fn mutual_tls_reports_the_client_certificate_and_refuses_a_client_without_one() {
        let pki = Pki::new("testapp test CA");
        let addr = start(Some(&pki.ca_pem), &pki).await;

        let cert = pki.leaf("loopback-client", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let (status, report) = get(addr, client(&pki, Some(cert))).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            (report.service.as_str(), report.path.as_str()),
            ("tls-server", "/hello")
        );
        assert_eq!(report.protocol, "HTTP/1.1");
        let tls = report.tls.expect("a TLS report");
        assert_eq!(tls.client_cn.as_deref(), Some("loopback-client"));
        assert_eq!(tls.sni.as_deref(), Some(HOST));
        assert_eq!(tls.alpn.as_deref(), Some("http/1.1"));
        assert_eq!(tls.version, "TLSv1_3");

        // No client certificate: refused (TLS 1.3 reports it at the first read).
        let refused = get(addr, client(&pki, None)).await;
        assert!(refused.is_err(), "{refused:?}");

        // A client certificate of another CA: refused too.
        let other = Pki::new("another CA");
        let stranger = other.leaf("stranger", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let refused = get(addr, client(&pki, Some(stranger))).await;
        assert!(refused.is_err(), "{refused:?}");

        // Plain text to the TLS port gets no HTTP answer.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            plain.read_to_end(&mut got),
        )
        .await
        .expect("the server closes a plain-text connection");
        assert!(
            !String::from_utf8_lossy(&got).starts_with("HTTP/"),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn without_a_client_ca_any_client_is_served_and_no_common_name_is_reported() {
        let pki = Pki::new("testapp test CA");
        let addr = start(None, &pki).await;
        let (status, report) = get(addr, client(&pki, None)).await.unwrap();
        assert_eq!(status, 200);
        let tls = report.tls.expect("a TLS report");
        assert_eq!(tls.client_cn, None);
        assert_eq!(tls.sni.as_deref(), Some(HOST));
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let err = server_config(b"not pem", b"not pem", None).unwrap_err();
        assert!(err.to_string().contains("server certificate"), "{err}");
        let err = load_server_config(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tls.crt"), "{err}");
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        let pki = Pki::new("testapp test CA");
        let (cert, _) = pki.leaf(
            "who-am-i",
            &["x.example"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let der = certificates(cert.as_bytes(), "leaf").unwrap();
        assert_eq!(common_name(&der[0]).as_deref(), Some("who-am-i"));
        assert_eq!(common_name(b"garbage"), None);
    }
}
