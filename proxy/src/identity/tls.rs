//! Mutual TLS between sidecars as Istio does it, as rustls configurations built from the
//! workload certificate: the building blocks the listeners (terminating) and the dialer
//! (originating) will use.
//!
//! - Both ends present their workload chain and verify the peer's against the mesh root.
//!   Names are SPIFFE ids in the URI SAN, not DNS names: the server verifier checks the chain
//!   and then that the server is one of the identities the client expects (Istio's
//!   `subjectAltNames` of a cluster, the service accounts behind it), and
//!   [`peer_identity`] gives either end the other's id (for metrics and authorization).
//! - ALPN is given by the caller ([`crate::transport::Purpose`] has Istio's), so an inbound
//!   listener recognises a mesh peer's TLS before any certificate is read.
//! - TLS to a server outside the mesh (a DestinationRule's `SIMPLE` / `MUTUAL`) is
//!   [`external_client_config`]: the server's chain verified against the given roots and its
//!   name against the expected subject alt names (the SNI when none are given), or not verified
//!   at all (`insecureSkipVerify`), with the client certificate from files for `MUTUAL`.
//! - A gateway's TLS with a `Gateway` server's `credentialName` is
//!   [`credential_server_config`]: the Secret's certificate, and for `MUTUAL` clients verified
//!   against the Secret's CA (plain WebPKI: DNS names, no SPIFFE ids) and the server's pins
//!   ([`super::pinned`]).
//! - Certificate revocation lists (a `caCrl` file, a credential Secret's `ca.crl`) go with the
//!   roots as a [`Trust`]: a client's chain (rustls' verifier) or a server's (webpki, called
//!   here, as the name check is the mesh's own) is refused when a list revokes any certificate
//!   of it, or when no list is from the CA that issued one of them (Envoy's rule that a list
//!   for one CA of a chain needs lists for all of them, applied to every chain).
//! - A peer's chain is verified against the roots once per configuration
//!   ([`super::verified`]); its handshake signature at every handshake.
//! - Only TLS 1.2 and 1.3 with the provider's default suites (ring); a terminating chain's
//!   `tlsParams` (a Gateway server's `minProtocolVersion`, `maxProtocolVersion`,
//!   `cipherSuites`) narrow them ([`server_builder`]). The key stays in memory.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use rustmesh_xds::identity::SpiffeId;
use rustmesh_xds::tls::{TlsParameters, TlsVersion};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::WorkloadCert;
use super::pinned::ClientPins;
use super::verified::CachingClientVerifier;
use super::verified::ChainCache;

/// The CA certificates a peer's chain is verified against, and the certificate revocation
/// lists it is checked against (none: no revocation check).
#[derive(Clone, Debug)]
pub struct Trust {
    /// The CA certificates.
    pub roots: rustls::RootCertStore,
    /// The revocation lists (DER), each already parsed once ([`pem_crls`]).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Trust {
    /// `roots` without revocation lists.
    pub fn roots(roots: rustls::RootCertStore) -> Self {
        Trust {
            roots,
            crls: Vec::new(),
        }
    }
}

/// The certificate revocation lists of the PEM text `pem` (`what` names it in errors), at
/// least one, each parsed, so a bad list is refused when it is read rather than at a
/// handshake.
pub fn pem_crls(
    what: &str,
    pem: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificate revocation lists: {e}"))?;
    if crls.is_empty() {
        return Err(format!("{what}: no certificate revocation list (X509 CRL)"));
    }
    for (i, crl) in crls.iter().enumerate() {
        webpki::OwnedCertRevocationList::from_der(crl.as_ref())
            .map_err(|e| format!("{what}: revocation list {i}: {e}"))?;
    }
    Ok(crls)
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsConfigError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cert: &WorkloadCert) -> Result<rustls::RootCertStore, TlsConfigError> {
    let mut store = rustls::RootCertStore::empty();
    for root in &cert.roots {
        store
            .add(root.clone())
            .map_err(|e| TlsConfigError(format!("mesh root: {e}")))?;
    }
    Ok(store)
}

/// The SPIFFE ids in a certificate's URI SANs.
pub fn spiffe_ids(der: &CertificateDer<'_>) -> Vec<SpiffeId> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    super::cert::uri_sans(&cert)
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect()
}

/// The peer's SPIFFE id after a handshake (its leaf's one URI SAN), if it presented one.
pub fn peer_identity(peer_certificates: Option<&[CertificateDer<'static>]>) -> Option<SpiffeId> {
    let leaf = peer_certificates?.first()?;
    let mut ids = spiffe_ids(leaf);
    (ids.len() == 1).then(|| ids.remove(0))
}

/// The rustls suite of a TLS 1.2 cipher suite's BoringSSL name (one of
/// [`rustmesh_xds::tls::TLS12_CIPHER_SUITES`]).
pub(crate) fn tls12_suite(name: &str) -> Option<rustls::CipherSuite> {
    use rustls::CipherSuite as C;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-CHACHA20-POLY1305" => C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// A server configuration's start: TLS 1.2 and 1.3 with ring's suites, narrowed by `params`
/// (the versions between its minimum and maximum; of TLS 1.2's suites, those it lists).
/// Fails on what [`TlsParameters::problems`] names.
pub fn server_builder(
    params: Option<&TlsParameters>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TlsConfigError> {
    let mut provider = rustls::crypto::ring::default_provider();
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> =
        vec![&rustls::version::TLS13, &rustls::version::TLS12];
    if let Some(p) = params {
        if let Some((field, message)) = p.problems().into_iter().next() {
            return Err(TlsConfigError(format!("tlsParams.{field}: {message}")));
        }
        let (min, max) = p.versions();
        versions.retain(|v| {
            let v = if v.version == rustls::ProtocolVersion::TLSv1_3 {
                TlsVersion::V1_3
            } else {
                TlsVersion::V1_2
            };
            min <= v && v <= max
        });
        if !p.cipher_suites.is_empty() {
            let wanted: Vec<rustls::CipherSuite> = p
                .cipher_suites
                .iter()
                .filter_map(|n| tls12_suite(n))
                .collect();
            provider.cipher_suites.retain(|s| match s {
                rustls::SupportedCipherSuite::Tls13(_) => true,
                rustls::SupportedCipherSuite::Tls12(_) => wanted.contains(&s.suite()),
            });
        }
    }
    rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| TlsConfigError(e.to_string()))
}

/// The server side: presents `cert`, and verifies a client certificate against the mesh root,
/// requiring one when `require_client_certificate` (Istio's mutual TLS always does). The
/// caller decides, from the ALPN and the policy, whether TLS is used at all.
pub fn server_config(
    cert: &WorkloadCert,
    alpn: &[&[u8]],
    require_client_certificate: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    server_config_with(
        cert,
        alpn,
        require_client_certificate,
        None,
        &ClientPins::default(),
    )
}

/// [`server_config`] narrowed by `params` and `pins` (a gateway server's `ISTIO_MUTUAL` with
/// TLS versions or suites, or `subjectAltNames` and certificate digests).
pub fn server_config_with(
    cert: &WorkloadCert,
    alpn: &[&[u8]],
    require_client_certificate: bool,
    params: Option<&TlsParameters>,
    pins: &ClientPins,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(cert)?.into(),
        provider(),
    );
    let builder = if require_client_certificate {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = Arc::new(CachingClientVerifier::new(
        builder.build().map_err(|e| TlsConfigError(e.to_string()))?,
        pins.clone(),
    ));
    let mut config = server_builder(params)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key())
        .map_err(|e| TlsConfigError(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate chain (leaf first) and its private key.
pub type ChainAndKey = (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// The server side of a gateway's TLS (a `Gateway` server's `credentialName` or files, or
/// its `credentialNames` or `tlsCertificates`): presents one of `certs` (a Kubernetes
/// Secret's or files', not the workload's; with several, per client: [`ByClientHello`]) and,
/// with `trust` (the Secret's CA and revocation lists, or the files'), verifies a client
/// certificate against them and `pins`, requiring one when `require_client_certificate`
/// (`MUTUAL`); without `trust` no client certificate is asked for (`SIMPLE`).
pub fn credential_server_config(
    certs: Vec<ChainAndKey>,
    trust: Option<Trust>,
    require_client_certificate: bool,
    alpn: &[&[u8]],
    params: Option<&TlsParameters>,
    pins: &ClientPins,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let builder = server_builder(params)?;
    let builder = match trust {
        Some(Trust { roots, crls }) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .with_crls(crls);
            let verifier = if require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsConfigError(format!("the client CA certificates: {e}")))?;
            builder.with_client_cert_verifier(Arc::new(CachingClientVerifier::new(
                verifier,
                pins.clone(),
            )))
        }
        None if !pins.is_empty() => {
            return Err(TlsConfigError(
                "client certificates are pinned but there are no CA certificates to verify \
                 them against"
                    .into(),
            ));
        }
        None if require_client_certificate => {
            return Err(TlsConfigError(
                "a client certificate is required but there are no CA certificates to verify \
                 it against"
                    .into(),
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = match <[ChainAndKey; 1]>::try_from(certs) {
        Ok([(chain, key)]) => builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsConfigError(format!("the certificate and key: {e}")))?,
        Err(certs) => builder.with_cert_resolver(Arc::new(ByClientHello::new(certs)?)),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server's several certificates (a Gateway server's `credentialNames` or
/// `tlsCertificates`: an RSA and an ECDSA one, as a rule), one picked per ClientHello as
/// Envoy picks: among those whose names cover the client's SNI (all of them when none does,
/// or without SNI), the first whose key is ECDSA or Ed25519 and signs with a scheme the client
/// offers, else the first whose key does. A client that can verify none of them gets no
/// certificate, and the handshake fails.
#[derive(Debug)]
pub struct ByClientHello {
    certs: Vec<Arc<rustls::sign::CertifiedKey>>,
}

impl ByClientHello {
    /// Each of `certs` (at least one), its key loaded and checked against its certificate.
    pub fn new(certs: Vec<ChainAndKey>) -> Result<Self, TlsConfigError> {
        if certs.is_empty() {
            return Err(TlsConfigError("no certificate to present".into()));
        }
        let provider = provider();
        let certs = certs
            .into_iter()
            .enumerate()
            .map(|(i, (chain, key))| {
                let key = provider
                    .key_provider
                    .load_private_key(key)
                    .map_err(|e| TlsConfigError(format!("certificate {i}: the key: {e}")))?;
                let certified = rustls::sign::CertifiedKey::new(chain, key);
                certified.keys_match().map_err(|e| {
                    TlsConfigError(format!("certificate {i}: the certificate and key: {e}"))
                })?;
                Ok(Arc::new(certified))
            })
            .collect::<Result<_, TlsConfigError>>()?;
        Ok(ByClientHello { certs })
    }
}

/// Whether the leaf of `c` is valid for `name`.
fn names(c: &rustls::sign::CertifiedKey, name: &ServerName<'_>) -> bool {
    c.cert
        .first()
        .and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok())
        .is_some_and(|leaf| leaf.verify_is_valid_for_subject_name(name).is_ok())
}

impl rustls::server::ResolvesServerCert for ByClientHello {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let sni = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok());
        let named: Vec<&Arc<rustls::sign::CertifiedKey>> = match &sni {
            Some(sni) => self.certs.iter().filter(|c| names(c, sni)).collect(),
            None => Vec::new(),
        };
        let candidates = if named.is_empty() {
            self.certs.iter().collect()
        } else {
            named
        };
        let schemes = hello.signature_schemes();
        let usable: Vec<_> = candidates
            .into_iter()
            .filter(|c| c.key.choose_scheme(schemes).is_some())
            .collect();
        usable
            .iter()
            .find(|c| {
                matches!(
                    c.key.algorithm(),
                    rustls::SignatureAlgorithm::ECDSA | rustls::SignatureAlgorithm::ED25519
                )
            })
            .or(usable.first())
            .map(|c| Arc::clone(c))
    }
}

/// The client side: presents `cert` and accepts a server whose chain verifies against the mesh
/// root and whose SPIFFE id is one of `expected` (any mesh identity when `expected` is empty,
/// as Istio does for a cluster without `subjectAltNames`).
pub fn client_config(
    cert: &WorkloadCert,
    expected: Vec<SpiffeId>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let verifier = Arc::new(ServerVerifier::new(
        Some(Trust::roots(roots(cert)?)),
        Check::Spiffe(expected),
    )?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain.clone(), cert.key())
        .map_err(|e| TlsConfigError(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client side towards a server outside the mesh: presents `client` (chain, key) if any,
/// verifies the server's chain against `trust` (its roots and revocation lists; not at all
/// when `None`: `insecureSkipVerify`) and its name: one of `sans` (DNS names, with a
/// certificate's `*.` wildcard, IP addresses or URIs, compared exactly) or, when `sans` is
/// empty, the server name the client sends.
pub fn external_client_config(
    trust: Option<Trust>,
    sans: Vec<String>,
    client: Option<ChainAndKey>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let check = if sans.is_empty() {
        Check::ServerName
    } else {
        Check::Sans(sans)
    };
    let verifier = Arc::new(ServerVerifier::new(trust, check)?);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsConfigError(format!("the client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// What a server's leaf must name, beyond a chain to the roots.
#[derive(Debug)]
enum Check {
    /// One of these SPIFFE ids (any mesh identity when empty); DNS names are ignored (mesh
    /// certificates carry none).
    Spiffe(Vec<SpiffeId>),
    /// One of these subject alt names.
    Sans(Vec<String>),
    /// The server name the client sent (SNI), as any TLS client checks it.
    ServerName,
}

/// Verifies a server by chain and by name, as [`Check`] says.
#[derive(Debug)]
struct ServerVerifier {
    /// `None`: no verification at all (`insecureSkipVerify`).
    roots: Option<rustls::RootCertStore>,
    /// The revocation lists of the trust, parsed.
    crls: Vec<webpki::CertRevocationList<'static>>,
    check: Check,
    provider: Arc<CryptoProvider>,
    /// Chains already verified against `roots` and `crls`.
    chains: ChainCache,
}

impl ServerVerifier {
    fn new(trust: Option<Trust>, check: Check) -> Result<Self, TlsConfigError> {
        let (roots, crls) = match trust {
            Some(Trust { roots, crls }) => (Some(roots), crls),
            None => (None, Vec::new()),
        };
        let crls = crls
            .iter()
            .map(|c| {
                webpki::OwnedCertRevocationList::from_der(c.as_ref())
                    .map(webpki::CertRevocationList::from)
                    .map_err(|e| TlsConfigError(format!("a certificate revocation list: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(ServerVerifier {
            roots,
            crls,
            check,
            provider: provider(),
            chains: ChainCache::default(),
        })
    }

    /// The server's chain to `roots` for server authentication, no certificate of it revoked
    /// by `crls` (when there are any).
    fn verify_chain(
        &self,
        roots: &rustls::RootCertStore,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crls)
            .ok()
            .map(|b| b.build());
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        )
        .map(|_| ())
        .map_err(pki_error)
    }
}

/// rustls' error (hence the TLS alert sent) for webpki's `e`.
fn pki_error(e: webpki::Error) -> TlsError {
    use rustls::CertificateError as C;
    use webpki::Error as E;
    let c = match e {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => C::BadEncoding,
        E::CertExpired { .. } | E::InvalidCertValidity => C::Expired,
        E::CertNotValidYet { .. } => C::NotValidYet,
        E::UnknownIssuer => C::UnknownIssuer,
        E::CertRevoked => C::Revoked,
        E::UnknownRevocationStatus => C::UnknownRevocationStatus,
        E::CrlExpired { .. } => C::ExpiredRevocationList,
        E::InvalidSignatureForPublicKey => C::BadSignature,
        E::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    };
    TlsError::InvalidCertificate(c)
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        if !self.chains.verified(end_entity, intermediates, now) {
            self.verify_chain(roots, end_entity, intermediates, now)?;
            self.chains.remember(end_entity, intermediates);
        }
        let expected = match &self.check {
            Check::Spiffe(expected) => expected,
            Check::ServerName => {
                rustls::client::verify_server_name(&parsed, server_name)?;
                return Ok(ServerCertVerified::assertion());
            }
            Check::Sans(sans) => {
                let (_, cert) = X509Certificate::from_der(end_entity)
                    .map_err(|e| TlsError::General(format!("the server's certificate: {e}")))?;
                if sans.iter().any(|want| super::cert::has_san(&cert, want)) {
                    return Ok(ServerCertVerified::assertion());
                }
                return Err(TlsError::General(format!(
                    "the server's certificate names none of the expected subject alt names [{}]",
                    sans.join(", ")
                )));
            }
        };
        let ids = spiffe_ids(end_entity);
        let [id] = ids.as_slice() else {
            return Err(TlsError::General(format!(
                "the server's certificate has {} SPIFFE ids, expected one",
                ids.len()
            )));
        };
        if !expected.is_empty() && !expected.contains(id) {
            return Err(TlsError::General(format!(
                "the server is {id}, not one of the expected identities [{}]",
                expected
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}
