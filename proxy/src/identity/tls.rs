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
//! - Only TLS 1.2 and 1.3 with the provider's default suites (ring); the key stays in memory.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use rustmesh_xds::identity::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::WorkloadCert;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("mutual TLS configuration: {0}")]
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

/// The server side: presents `cert`, and verifies a client certificate against the mesh root,
/// requiring one when `require_client_certificate` (Istio's mutual TLS always does). The
/// caller decides, from the ALPN and the policy, whether TLS is used at all.
pub fn server_config(
    cert: &WorkloadCert,
    alpn: &[&[u8]],
    require_client_certificate: bool,
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
    let verifier = builder.build().map_err(|e| TlsConfigError(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key())
        .map_err(|e| TlsConfigError(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client side: presents `cert` and accepts a server whose chain verifies against the mesh
/// root and whose SPIFFE id is one of `expected` (any mesh identity when `expected` is empty,
/// as Istio does for a cluster without `subjectAltNames`).
pub fn client_config(
    cert: &WorkloadCert,
    expected: Vec<SpiffeId>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: roots(cert)?,
        expected,
        provider: provider(),
    });
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

/// Verifies a server by chain (mesh root) and SPIFFE id, ignoring the DNS name (mesh
/// certificates carry none).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: rustls::RootCertStore,
    expected: Vec<SpiffeId>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let ids = spiffe_ids(end_entity);
        let [id] = ids.as_slice() else {
            return Err(TlsError::General(format!(
                "the server's certificate has {} SPIFFE ids, expected one",
                ids.len()
            )));
        };
        if !self.expected.is_empty() && !self.expected.contains(id) {
            return Err(TlsError::General(format!(
                "the server is {id}, not one of the expected identities [{}]",
                self.expected
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
