//! The signing core of the mesh CA: a root (or a plugged-in intermediate) and the pure function
//! that turns a workload's CSR into its certificate chain.
//!
//! What the CA signs is decided here, not by the CSR: the certificate carries exactly one URI
//! SAN, the SPIFFE id the caller was authenticated as ([`super::review`]), with a lifetime the
//! CA bounds, X.509v3 leaf extensions for both TLS ends, and a random serial. The CSR only
//! contributes its public key, after its self-signature proves the caller holds the private key.
//! A CSR asking for any other name is refused, naming the name: a workload can never obtain a
//! certificate for someone else.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustmesh_xds::identity::SpiffeId;

/// The largest CSR accepted (PEM bytes). A P-256 CSR is under 1 KiB; RSA-4096 under 4 KiB.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Workload certificate lifetime when the request names none (Istio's default, 24 h).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest workload certificate lifetime the CA grants (Istio's `MAX_WORKLOAD_CERT_TTL`
/// default, 90 days).
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Lifetime of the self-signed root created on first start (Istio's default, 10 years).
pub const SELF_SIGNED_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Lifetime of the CA's own serving certificate (renewed when the CA restarts; a sidecar
/// verifies it against the mesh root, so its renewal needs nothing from the workloads).
pub const SERVING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far back a certificate's `notBefore` is set, so a peer whose clock runs slightly behind
/// accepts it at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a CSR was not signed. Each names what is wrong; none carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {0} bytes, the limit is {MAX_CSR_BYTES}")]
    TooLarge(usize),
    /// Not a PEM CSR, or its self-signature does not verify (no proof of the private key).
    #[error("CSR is not a valid PEM certificate request with a verifying signature: {0}")]
    Csr(String),
    /// The CSR asks for a name other than the caller's identity.
    #[error("CSR asks for {requested}, but the caller is authenticated as {identity}")]
    ForeignName {
        /// The name asked for.
        requested: String,
        /// The caller's identity.
        identity: String,
    },
    /// The identity is in another trust domain than this CA's.
    #[error("identity {identity} is not in this CA's trust domain {trust_domain:?}")]
    TrustDomain {
        /// The identity.
        identity: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The requested lifetime exceeds [`MAX_WORKLOAD_TTL`].
    #[error("requested certificate lifetime {requested:?} exceeds the maximum {max:?}")]
    TtlTooLong {
        /// What the caller asked.
        requested: Duration,
        /// The CA's maximum.
        max: Duration,
    },
    /// The signing itself failed (a bug or an unusable CA key).
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Why CA material could not be created or loaded. Names the file (Secret key) that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CA material {what}: {reason}")]
pub struct MaterialError {
    /// Which item, e.g. `ca-key.pem`.
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(what: &'static str) -> impl Fn(rcgen::Error) -> MaterialError {
    move |e| MaterialError {
        what,
        reason: e.to_string(),
    }
}

/// The CA's PEM material, as stored in its Secret (Istio's key names). The key is only ever
/// written to that Secret: never to a file, a log line or a `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    /// `ca-cert.pem`: the signing certificate.
    pub ca_cert: String,
    /// `ca-key.pem`: its private key (PKCS#8).
    pub ca_key: String,
    /// `cert-chain.pem`: the signing certificate's chain up to the root (empty for a root).
    pub cert_chain: String,
    /// `root-cert.pem`: the trust bundle every workload gets (one root, or two during a root
    /// rotation).
    pub root_cert: String,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("ca_cert", &self.ca_cert)
            .field("ca_key", &"<redacted>")
            .field("cert_chain", &self.cert_chain)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator works");
    // Positive, and never zero-led so the DER integer keeps 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

impl Material {
    /// A new self-signed root for `trust_domain` (subject `O=<trust domain>`, as Istio's), valid
    /// for [`SELF_SIGNED_ROOT_TTL`] from `now`, with a fresh P-256 key.
    pub fn self_signed_root(trust_domain: &str, now: SystemTime) -> Result<Self, MaterialError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad("ca-key.pem"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(now + SELF_SIGNED_ROOT_TTL);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = false;
        let cert = params.self_signed(&key).map_err(bad("ca-cert.pem"))?;
        Ok(Material {
            ca_cert: cert.pem(),
            ca_key: key.serialize_pem(),
            cert_chain: String::new(),
            root_cert: cert.pem(),
        })
    }
}

/// A loaded CA: signs workload CSRs for identities of its trust domain.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate, then its chain (PEM blocks), then the root bundle: what follows
    /// the leaf in every issued chain.
    chain_after_leaf: Vec<String>,
    root_bundle: String,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_after_leaf", &self.chain_after_leaf.len())
            .finish_non_exhaustive()
    }
}

/// The PEM blocks of `pem` (certificates), each re-encoded on its own.
fn pem_blocks(what: &'static str, pem: &str) -> Result<Vec<String>, MaterialError> {
    let blocks = ::pem::parse_many(pem).map_err(|e| MaterialError {
        what,
        reason: e.to_string(),
    })?;
    Ok(blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| {
            ::pem::encode_config(
                b,
                ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
            )
        })
        .collect())
}

impl Authority {
    /// Loads `material` (self-signed, or a plugged-in intermediate with its chain and root).
    pub fn new(trust_domain: &str, material: &Material) -> Result<Self, MaterialError> {
        let key = KeyPair::from_pem(&material.ca_key).map_err(bad("ca-key.pem"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&material.ca_cert, key).map_err(bad("ca-cert.pem"))?;
        let roots = pem_blocks("root-cert.pem", &material.root_cert)?;
        if roots.is_empty() {
            return Err(MaterialError {
                what: "root-cert.pem",
                reason: "no certificate in it".into(),
            });
        }
        let signing = pem_blocks("ca-cert.pem", &material.ca_cert)?;
        let mut chain_after_leaf = signing;
        for block in pem_blocks("cert-chain.pem", &material.cert_chain)? {
            if !chain_after_leaf.contains(&block) {
                chain_after_leaf.push(block);
            }
        }
        for root in &roots {
            if !chain_after_leaf.contains(root) {
                chain_after_leaf.push(root.clone());
            }
        }
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            issuer,
            chain_after_leaf,
            root_bundle: roots.concat(),
        })
    }

    /// The trust bundle (PEM) workloads verify peers with: `root-cert.pem` of the ConfigMap
    /// `istio-ca-root-cert`.
    pub fn root_bundle(&self) -> &str {
        &self.root_bundle
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs `csr_pem` for `identity` (already authenticated), valid from `now` for `ttl`
    /// (`None`: [`DEFAULT_WORKLOAD_TTL`]). Returns the chain as Istio's CA does: the leaf first,
    /// the root last, each a PEM string.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<Vec<String>, SignError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(SignError::TooLarge(csr_pem.len()));
        }
        if identity.trust_domain() != self.trust_domain {
            return Err(SignError::TrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let ttl = match ttl {
            None => DEFAULT_WORKLOAD_TTL,
            Some(t) if t.is_zero() => DEFAULT_WORKLOAD_TTL,
            Some(t) if t > MAX_WORKLOAD_TTL => {
                return Err(SignError::TtlTooLong {
                    requested: t,
                    max: MAX_WORKLOAD_TTL,
                });
            }
            Some(t) => t,
        };
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::Csr(e.to_string()))?;
        let expected = identity.to_string();
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(uri) if uri.as_str() == expected => continue,
                SanType::URI(uri) => format!("URI {}", uri.as_str()),
                SanType::DnsName(n) => format!("DNS name {}", n.as_str()),
                SanType::IpAddress(ip) => format!("IP address {ip}"),
                SanType::Rfc822Name(n) => format!("email {}", n.as_str()),
                other => format!("{other:?}"),
            };
            return Err(SignError::ForeignName {
                requested,
                identity: expected,
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(expected.clone().try_into().map_err(
                |e: rcgen::Error| SignError::Signing(e.to_string()),
            )?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(now + ttl);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let mut chain = Vec::with_capacity(1 + self.chain_after_leaf.len());
        chain.push(leaf.pem());
        chain.extend(self.chain_after_leaf.iter().cloned());
        Ok(chain)
    }

    /// A TLS serving certificate for the CA's own endpoint, for `dns_names`, valid for
    /// [`SERVING_TTL`] from `now`: the chain (leaf first) and the new key (PKCS#8 PEM, kept in
    /// memory by the caller).
    pub fn serving_certificate(
        &self,
        dns_names: &[String],
        now: SystemTime,
    ) -> Result<(Vec<String>, String), SignError> {
        let signing = |e: rcgen::Error| SignError::Signing(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(signing)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(now + SERVING_TTL);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(signing)?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain_after_leaf.iter().cloned());
        Ok((chain, key.serialize_pem()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    pub(crate) fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa).unwrap()
    }

    /// A workload's CSR: a fresh P-256 key, asking for `sans`.
    pub(crate) fn csr(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    pub(crate) fn uri(s: &str) -> SanType {
        SanType::URI(s.to_string().try_into().unwrap())
    }

    fn der(pem_str: &str) -> Vec<u8> {
        ::pem::parse(pem_str).unwrap().into_contents()
    }

    /// Verifies `chain` (leaf first) as rustls verifies a client certificate against `roots`.
    fn verify(chain: &[String], roots: &str, now: SystemTime) -> Result<(), rustls::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut store = rustls::RootCertStore::empty();
        for root in pem_blocks("root", roots).unwrap() {
            store.add(CertificateDer::from(der(&root))).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(store.into())
            .build()
            .unwrap();
        let certs: Vec<CertificateDer<'static>> =
            chain.iter().map(|p| CertificateDer::from(der(p))).collect();
        let now = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        verifier
            .verify_client_cert(&certs[0], &certs[1..], now)
            .map(|_| ())
    }

    #[test]
    fn signs_exactly_the_callers_identity_for_both_tls_ends() {
        let now = SystemTime::now();
        let material = Material::self_signed_root("cluster.local", now).unwrap();
        let ca = Authority::new("cluster.local", &material).unwrap();
        let who = id("bookinfo", "reviews");
        // A CSR naming the identity, and one naming nothing: both get the identity only.
        for sans in [vec![uri(&who.to_string())], vec![]] {
            let chain = ca.sign(&csr(sans), &who, None, now).unwrap();
            assert_eq!(chain.len(), 2, "leaf then root");
            assert_eq!(chain[1].trim(), ca.root_bundle().trim());
            let leaf_der = der(&chain[0]);
            let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
            let sans: Vec<String> = leaf
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(u) => format!("URI:{u}"),
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(sans, vec![format!("URI:{who}")]);
            assert!(!leaf.is_ca());
            let eku = leaf.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
            let lifetime =
                leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
            assert_eq!(
                lifetime as u64,
                (DEFAULT_WORKLOAD_TTL + CLOCK_SKEW).as_secs()
            );
            verify(&chain, ca.root_bundle(), now).unwrap();
            // Past its lifetime the chain no longer verifies.
            assert!(verify(&chain, ca.root_bundle(), now + DEFAULT_WORKLOAD_TTL * 2).is_err());
        }
    }

    #[test]
    fn serials_differ_for_the_same_key() {
        let now = SystemTime::now();
        let ca = Authority::new(
            "cluster.local",
            &Material::self_signed_root("cluster.local", now).unwrap(),
        )
        .unwrap();
        let who = id("a", "b");
        let request = csr(vec![]);
        let serial = |pem: &str| {
            let d = der(pem);
            X509Certificate::from_der(&d)
                .unwrap()
                .1
                .raw_serial()
                .to_vec()
        };
        let one = ca.sign(&request, &who, None, now).unwrap();
        let two = ca.sign(&request, &who, None, now).unwrap();
        assert_ne!(serial(&one[0]), serial(&two[0]));
    }

    #[test]
    fn refuses_other_names_bad_csrs_and_lifetimes_naming_why() {
        let now = SystemTime::now();
        let ca = Authority::new(
            "cluster.local",
            &Material::self_signed_root("cluster.local", now).unwrap(),
        )
        .unwrap();
        let who = id("bookinfo", "reviews");
        let err = |csr: &str, who: &SpiffeId, ttl| ca.sign(csr, who, ttl, now).unwrap_err();

        let other = csr(vec![uri("spiffe://cluster.local/ns/bookinfo/sa/admin")]);
        assert_eq!(
            err(&other, &who, None).to_string(),
            "CSR asks for URI spiffe://cluster.local/ns/bookinfo/sa/admin, but the caller is \
             authenticated as spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
        let mixed = csr(vec![
            uri(&who.to_string()),
            SanType::DnsName("reviews".try_into().unwrap()),
        ]);
        assert!(
            matches!(err(&mixed, &who, None), SignError::ForeignName { requested, .. } if requested == "DNS name reviews")
        );

        // A CSR whose self-signature does not verify (one byte of its key flipped).
        let good = csr(vec![]);
        let mut block = ::pem::parse(&good).unwrap();
        let mut bytes = block.contents().to_vec();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        block = ::pem::Pem::new(block.tag().to_string(), bytes);
        assert!(matches!(
            err(&::pem::encode(&block), &who, None),
            SignError::Csr(_)
        ));
        assert!(matches!(err("not a csr", &who, None), SignError::Csr(_)));
        assert!(matches!(
            err(&"x".repeat(MAX_CSR_BYTES + 1), &who, None),
            SignError::TooLarge(_)
        ));
        assert!(matches!(
            err(&good, &who, Some(MAX_WORKLOAD_TTL + Duration::from_secs(1))),
            SignError::TtlTooLong { .. }
        ));
        let foreign = SpiffeId::new("other.domain", "bookinfo", "reviews").unwrap();
        assert!(matches!(
            err(&good, &foreign, None),
            SignError::TrustDomain { .. }
        ));
        // A bounded lifetime is granted as asked.
        let chain = ca
            .sign(&good, &who, Some(Duration::from_secs(3600)), now)
            .unwrap();
        let d = der(&chain[0]);
        let (_, leaf) = X509Certificate::from_der(&d).unwrap();
        assert_eq!(
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp(),
            3600 + CLOCK_SKEW.as_secs() as i64
        );
    }

    #[test]
    fn a_plugged_in_intermediate_signs_chains_that_verify_against_the_root() {
        let now = SystemTime::now();
        let root = Material::self_signed_root("cluster.local", now).unwrap();
        // The user's offline root signs an intermediate for the mesh (Istio's plug-in CA).
        let root_issuer =
            Issuer::from_ca_cert_pem(&root.ca_cert, KeyPair::from_pem(&root.ca_key).unwrap())
                .unwrap();
        let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let inter = params.signed_by(&inter_key, &root_issuer).unwrap();
        let plugged = Material {
            ca_cert: inter.pem(),
            ca_key: inter_key.serialize_pem(),
            cert_chain: format!("{}{}", inter.pem(), root.root_cert),
            root_cert: root.root_cert.clone(),
        };
        let ca = Authority::new("cluster.local", &plugged).unwrap();
        let chain = ca.sign(&csr(vec![]), &id("a", "b"), None, now).unwrap();
        assert_eq!(chain.len(), 3, "leaf, intermediate, root: {chain:?}");
        assert_eq!(chain[1].trim(), inter.pem().trim());
        verify(&chain, &root.root_cert, now).unwrap();
        // The intermediate alone is no trust anchor for the workloads: the root is.
        assert_eq!(ca.root_bundle().trim(), root.root_cert.trim());
    }

    #[test]
    fn bad_material_names_the_item_and_debug_never_shows_the_key() {
        let now = SystemTime::now();
        let good = Material::self_signed_root("cluster.local", now).unwrap();
        let mut bad = good.clone();
        bad.ca_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        assert_eq!(
            Authority::new("cluster.local", &bad).unwrap_err().what,
            "ca-key.pem"
        );
        let mut bad = good.clone();
        bad.root_cert = String::new();
        assert_eq!(
            Authority::new("cluster.local", &bad).unwrap_err().what,
            "root-cert.pem"
        );
        let shown = format!("{good:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("PRIVATE KEY"));
        let ca = Authority::new("cluster.local", &good).unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::tests::{csr, id};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary text as a CSR is refused, never a panic.
        #[test]
        fn arbitrary_csrs_are_refused(text in ".{0,2000}") {
            let ca = Authority::new("cluster.local", &Material::self_signed_root("cluster.local", SystemTime::now()).unwrap()).unwrap();
            prop_assert!(ca.sign(&text, &id("a", "b"), None, SystemTime::now()).is_err());
        }

        /// A real CSR with bytes flipped is signed for the identity or refused, never a panic.
        #[test]
        fn corrupted_csrs_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let ca = Authority::new("cluster.local", &Material::self_signed_root("cluster.local", SystemTime::now()).unwrap()).unwrap();
            let good = csr(vec![]);
            let block = ::pem::parse(&good).unwrap();
            let mut bytes = block.contents().to_vec();
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x | 1;
            }
            let bad = ::pem::encode(&::pem::Pem::new(block.tag().to_string(), bytes));
            let _ = ca.sign(&bad, &id("a", "b"), None, SystemTime::now());
        }
    }
}
