//! A private PKI for tests that need real certificates (rcgen): a CA, the leaves it issues
//! (server or client, DNS names, a URI such as a SPIFFE id, a common name) and the
//! certificate revocation lists it signs, all as PEM text. Keys stay in the test process.
//!
//! ```ignore
//! let ca = TestCa::new("gateway CA");
//! let (cert, key) = ca.issue("httpbin", &["httpbin.example.com"]);
//! let crl = ca.revoke(&[&cert]);
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use x509_parser::pem::parse_x509_pem;

/// A certificate authority of a test.
pub struct TestCa {
    /// Its certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a leaf is for, beyond its names (its extended key usage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Usage {
    /// No extended key usage: any purpose.
    #[default]
    Any,
    /// `serverAuth` only.
    Server,
    /// `clientAuth` only.
    Client,
}

impl TestCa {
    /// A self-signed CA with common name `cn` (CAs of one test differ by it, so a certificate
    /// of one is not taken for the other's by name), which may sign certificates and
    /// revocation lists.
    pub fn new(cn: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate with common name `cn` for the DNS names `dns`, for any purpose, as PEM
    /// (certificate, PKCS#8 key).
    pub fn issue(&self, cn: &str, dns: &[&str]) -> (String, String) {
        self.issue_with(cn, dns, None, Usage::Any)
    }

    /// [`TestCa::issue`] with the URI SAN `uri` (a SPIFFE id) if given, for `usage`.
    pub fn issue_with(
        &self,
        cn: &str,
        dns: &[&str],
        uri: Option<&str>,
        usage: Usage,
    ) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        self.leaf(cn, dns, uri, usage, key)
    }

    /// [`TestCa::issue`] with an Ed25519 key (the others are ECDSA P-256): a server with both
    /// presents the one a client can verify.
    pub fn issue_ed25519(&self, cn: &str, dns: &[&str]) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        self.leaf(cn, dns, None, Usage::Any, key)
    }

    fn leaf(
        &self,
        cn: &str,
        dns: &[&str],
        uri: Option<&str>,
        usage: Usage,
        key: KeyPair,
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().expect("a URI")));
        }
        params.extended_key_usages = match usage {
            Usage::Any => Vec::new(),
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate revocation list of this CA revoking `certs` (PEM certificates it issued),
    /// valid from 2026 to 2099, as PEM.
    pub fn revoke(&self, certs: &[&str]) -> String {
        let revoked_certs = certs
            .iter()
            .map(|pem| {
                let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
                let cert = pem.parse_x509().expect("an X.509 certificate");
                RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.tbs_certificate.raw_serial()),
                    revocation_time: date_time_ymd(2026, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                }
            })
            .collect();
        CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("revocation list")
        .pem()
        .expect("revocation list PEM")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn leaves_carry_their_names_and_usage_and_lists_name_the_revoked_serials() {
        let ca = TestCa::new("test CA");
        let (cert, key) = ca.issue_with(
            "alice",
            &["alice.example.com"],
            Some("spiffe://cluster.local/ns/a/sa/alice"),
            Usage::Client,
        );
        assert!(key.contains("PRIVATE KEY"));
        let (_, pem) = parse_x509_pem(cert.as_bytes()).unwrap();
        let c = pem.parse_x509().unwrap();
        assert_eq!(
            c.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "alice"
        );
        let sans = format!("{:?}", c.subject_alternative_name().unwrap().unwrap().value);
        assert!(
            sans.contains("alice.example.com") && sans.contains("spiffe://"),
            "{sans}"
        );
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let crl = ca.revoke(&[&cert]);
        let (_, pem) = parse_x509_pem(crl.as_bytes()).unwrap();
        assert_eq!(pem.label, "X509 CRL");
        let (_, list) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
                .unwrap();
        let revoked: Vec<_> = list
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        assert_eq!(revoked, [c.tbs_certificate.raw_serial().to_vec()]);
    }
}
