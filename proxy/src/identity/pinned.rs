//! Client certificates a terminating chain pins: a Gateway server's `subjectAltNames`,
//! `verifyCertificateSpki` and `verifyCertificateHash` (Envoy's `matchSubjectAltNames`,
//! `verifyCertificateSpki`, `verifyCertificateHash` of the validation context).
//!
//! A client certificate is first verified against the server's roots as before; then
//! [`ClientPins::check`] asks that it name one of the subject alt names, when any are given
//! (DNS names, a `*.` wildcard in the certificate covering one label, URIs and IP addresses,
//! as Envoy's exact matchers), and that the SHA-256 digest of the certificate or of its
//! SubjectPublicKeyInfo be one of those given, when any are (either list, as in Envoy). The
//! pins are checked at every handshake, after the chain (whose verification is cached), by
//! [`super::verified::CachingClientVerifier`].

use std::sync::Arc;

use rustls::Error as TlsError;
use rustls::pki_types::CertificateDer;
use rustmesh_xds::tls::{CertificateValidationContext, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a client certificate must be, beyond verifying against the roots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientPins {
    /// One of these subject alt names (any, when empty).
    pub sans: Vec<String>,
    /// The certificate's digest is one of these, or its key's one of `spkis` (any, when both
    /// are empty).
    pub hashes: Vec<Sha256>,
    /// Digests of the SubjectPublicKeyInfo accepted (see `hashes`).
    pub spkis: Vec<Sha256>,
}

impl ClientPins {
    /// The pins of a validation context, or what is wrong with one, as (field below the
    /// context, message).
    pub fn of(v: &CertificateValidationContext) -> Result<Self, (String, String)> {
        let mut sans = Vec::new();
        for (i, m) in v.match_subject_alt_names.iter().enumerate() {
            match m.exact_only() {
                Some(s) => sans.push(s.to_string()),
                None => {
                    return Err((
                        format!("matchSubjectAltNames[{i}]"),
                        "only `exact` subject alt name matchers are implemented".into(),
                    ));
                }
            }
        }
        let (hashes, spkis) = v.pinned_digests()?;
        Ok(ClientPins {
            sans,
            hashes,
            spkis,
        })
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.sans.is_empty() && self.hashes.is_empty() && self.spkis.is_empty()
    }

    /// Whether `end_entity` is a certificate these pins accept; the error says which pin it
    /// fails.
    pub fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), TlsError> {
        if self.is_empty() {
            return Ok(());
        }
        let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
            .map_err(|e| TlsError::General(format!("the client's certificate: {e}")))?;
        if !self.sans.is_empty()
            && !self
                .sans
                .iter()
                .any(|want| super::cert::has_san(&cert, want))
        {
            return Err(refused(format!(
                "the client's certificate names none of the subject alt names [{}]",
                self.sans.join(", ")
            )));
        }
        if self.hashes.is_empty() && self.spkis.is_empty() {
            return Ok(());
        }
        let pinned = self.hashes.contains(&sha256(end_entity.as_ref()))
            || self
                .spkis
                .contains(&sha256(cert.tbs_certificate.subject_pki.raw));
        if pinned {
            Ok(())
        } else {
            Err(refused(
                "the client's certificate is not one of verifyCertificateHash, nor is its key \
                 one of verifyCertificateSpki"
                    .into(),
            ))
        }
    }
}

/// A refused certificate: the client gets a `certificate_unknown` alert, the log the reason.
fn refused(why: String) -> TlsError {
    TlsError::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(std::io::Error::other(why)),
    )))
}

fn sha256(bytes: &[u8]) -> Sha256 {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    /// A self-signed certificate naming the DNS names `dns` and the URI `uri`, and its key.
    fn cert(dns: &[&str], uri: Option<&str>) -> (CertificateDer<'static>, KeyPair) {
        let mut p =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(uri) = uri {
            p.subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        (p.self_signed(&key).unwrap().der().clone(), key)
    }

    fn pins(sans: &[&str], hashes: Vec<Sha256>, spkis: Vec<Sha256>) -> ClientPins {
        ClientPins {
            sans: sans.iter().map(|s| s.to_string()).collect(),
            hashes,
            spkis,
        }
    }

    #[test]
    fn a_client_certificate_passes_only_the_pins_it_meets() {
        let spiffe = "spiffe://cluster.local/ns/foo/sa/client";
        let (client, key) = cert(&["client.example.com"], Some(spiffe));
        let (other, _) = cert(&["*.example.com"], None);
        let ok = |p: &ClientPins, c: &CertificateDer<'_>| p.check(c).is_ok();

        assert!(ok(&ClientPins::default(), &client), "nothing pinned");
        // Subject alt names: DNS, URI; a wildcard in the certificate covers one label.
        assert!(ok(&pins(&["client.example.com"], vec![], vec![]), &client));
        assert!(ok(&pins(&["nope", spiffe], vec![], vec![]), &client));
        assert!(!ok(
            &pins(&["spiffe://cluster.local/ns/foo/sa/other"], vec![], vec![]),
            &client
        ));
        assert!(ok(&pins(&["api.example.com"], vec![], vec![]), &other));
        assert!(!ok(&pins(&["a.b.example.com"], vec![], vec![]), &other));

        // Digests: of the certificate, or of its key (SubjectPublicKeyInfo) — either list.
        let hash = sha256(client.as_ref());
        let spki = sha256(&rcgen::PublicKeyData::subject_public_key_info(&key));
        assert!(ok(&pins(&[], vec![hash], vec![]), &client));
        assert!(!ok(&pins(&[], vec![hash], vec![]), &other));
        assert!(ok(&pins(&[], vec![[0; 32]], vec![spki]), &client));
        assert!(ok(&pins(&[], vec![hash], vec![[0; 32]]), &client));
        assert!(!ok(&pins(&[], vec![[0; 32]], vec![[0; 32]]), &client));
        // Both kinds of pin must hold.
        assert!(!ok(&pins(&["nope"], vec![hash], vec![]), &client));
        assert!(ok(&pins(&[spiffe], vec![hash], vec![]), &client));
    }

    #[test]
    fn pins_come_from_the_validation_context_naming_what_is_wrong() {
        let mut v = CertificateValidationContext {
            match_subject_alt_names: rustmesh_xds::tls::exact_sans(&["a.example".into()]),
            verify_certificate_spki: vec![],
            verify_certificate_hash: vec!["00".repeat(32)],
            crl: None,
        };
        assert_eq!(
            ClientPins::of(&v),
            Ok(pins(&["a.example"], vec![[0; 32]], vec![]))
        );
        v.match_subject_alt_names[0].prefix = Some("a".into());
        assert_eq!(ClientPins::of(&v).unwrap_err().0, "matchSubjectAltNames[0]");
        v.match_subject_alt_names.clear();
        v.verify_certificate_spki = vec!["short".into()];
        assert_eq!(
            ClientPins::of(&v).unwrap_err().0,
            "verifyCertificateSpki[0]"
        );
    }
}
