//! A workload certificate as the sidecar holds it, and the checks a CA's answer must pass before
//! it is used.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustmesh_xds::identity::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How far into its lifetime a certificate is renewed (the and Istio's agent's 80 %).
pub const RENEW_AT: f64 = 0.8;

/// The largest trust bundle or chain element accepted (bytes of PEM).
pub const MAX_PEM_BYTES: usize = 256 * 1024;

/// Why a CA's answer (or the trust bundle) is unusable; names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The PEM is larger than [`MAX_PEM_BYTES`].
    #[error("{what} is {len} bytes, the limit is {MAX_PEM_BYTES}")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        len: usize,
    },
    /// No certificate where one is needed.
    #[error("{0} has no certificate")]
    Empty(&'static str),
    /// A certificate does not parse.
    #[error("{what}: not a valid certificate: {reason}")]
    Parse {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The leaf names another identity (or more than this one).
    #[error("the issued certificate names {got:?}, expected exactly [{expected}]")]
    WrongIdentity {
        /// The URI SANs found.
        got: Vec<String>,
        /// This workload's id.
        expected: String,
    },
    /// The leaf's public key is not the key generated for the request.
    #[error("the issued certificate is for another key than the one in the CSR")]
    WrongKey,
    /// The chain does not verify against the mesh root (or is expired).
    #[error("the issued chain does not verify against the mesh root: {0}")]
    Untrusted(String),
}

/// The certificates in a PEM text, in order.
pub fn parse_pem_certs(
    what: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    use rustls::pki_types::pem::PemObject;
    if pem.len() > MAX_PEM_BYTES {
        return Err(CertError::TooLarge {
            what,
            len: pem.len(),
        });
    }
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Empty(what));
    }
    Ok(certs)
}

/// The URI SANs of a certificate, in order.
pub fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A certificate the CA issued for this workload, with its key. The key is private to this
/// type: `Debug` never shows it.
pub struct WorkloadCert {
    /// Whose it is.
    pub identity: SpiffeId,
    /// Leaf first, then intermediates (the root is not sent to peers).
    pub chain: Vec<CertificateDer<'static>>,
    /// The mesh trust bundle peers are verified against.
    pub roots: Vec<CertificateDer<'static>>,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
    /// When it was received (the CA backdates `not_before` for clock skew, so the lifetime
    /// the renewal is planned on starts here).
    pub received: SystemTime,
    key: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

fn to_system(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl WorkloadCert {
    /// Checks a CA's answer (`chain`: PEM strings, leaf first; the root may be last) for
    /// `identity` and the key `key` (PKCS#8 DER) against the trust bundle `roots`, at `now`.
    pub fn accept(
        identity: &SpiffeId,
        key: PrivatePkcs8KeyDer<'static>,
        public_key_der: &[u8],
        chain: &[String],
        roots: Vec<CertificateDer<'static>>,
        now: SystemTime,
    ) -> Result<Self, CertError> {
        let mut certs = Vec::new();
        for pem in chain {
            certs.extend(parse_pem_certs("the issued chain", pem)?);
        }
        if certs.is_empty() {
            return Err(CertError::Empty("the issued chain"));
        }
        // Peers get the leaf and intermediates; a root in the answer is dropped.
        let leaf_der = certs.remove(0);
        certs.retain(|c| !roots.contains(c));
        certs.insert(0, leaf_der);
        let (_, leaf) = X509Certificate::from_der(&certs[0]).map_err(|e| CertError::Parse {
            what: "the issued leaf",
            reason: e.to_string(),
        })?;
        let uris = uri_sans(&leaf);
        if uris != [identity.to_string()] {
            return Err(CertError::WrongIdentity {
                got: uris,
                expected: identity.to_string(),
            });
        }
        if leaf.public_key().subject_public_key.data.as_ref() != public_key_der {
            return Err(CertError::WrongKey);
        }
        verify_chain(&certs, &roots, now)?;
        Ok(WorkloadCert {
            identity: identity.clone(),
            serial: leaf.raw_serial_as_string().replace(':', ""),
            not_before: to_system(leaf.validity().not_before),
            not_after: to_system(leaf.validity().not_after),
            received: now,
            chain: certs,
            roots,
            key,
        })
    }

    /// A certificate provisioned as files instead of by the CA (Istio's file-mounted
    /// certificates, `/etc/certs`): `cert-chain.pem` (leaf first), `key.pem` (PKCS#8) and
    /// `root-cert.pem` in `dir`. The identity is the leaf's one SPIFFE id; the same checks as a
    /// CA's answer apply (the key matches the leaf, the chain verifies against the root).
    pub fn from_dir(dir: &std::path::Path, now: SystemTime) -> Result<Self, CertError> {
        use rustls::pki_types::pem::PemObject;
        let read = |name: &'static str| -> Result<String, CertError> {
            let path = dir.join(name);
            let bad = |reason: String| CertError::Parse { what: name, reason };
            let len = std::fs::metadata(&path)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
                .len();
            if len > MAX_PEM_BYTES as u64 {
                return Err(CertError::TooLarge {
                    what: name,
                    len: len as usize,
                });
            }
            std::fs::read_to_string(&path).map_err(|e| bad(format!("{}: {e}", path.display())))
        };
        let (chain, key_pem, root) = (
            read("cert-chain.pem")?,
            read("key.pem")?,
            read("root-cert.pem")?,
        );
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            CertError::Parse {
                what: "key.pem",
                reason: format!("not a PKCS#8 private key: {e}"),
            }
        })?;
        let public = rcgen::KeyPair::try_from(&key)
            .map_err(|e| CertError::Parse {
                what: "key.pem",
                reason: e.to_string(),
            })?
            .public_key_raw()
            .to_vec();
        let leaf = parse_pem_certs("cert-chain.pem", &chain)?;
        let (_, parsed) = X509Certificate::from_der(&leaf[0]).map_err(|e| CertError::Parse {
            what: "cert-chain.pem",
            reason: e.to_string(),
        })?;
        let uris = uri_sans(&parsed);
        let identity = match uris.as_slice() {
            [one] => one.parse::<SpiffeId>().ok(),
            _ => None,
        }
        .ok_or_else(|| CertError::WrongIdentity {
            got: uris.clone(),
            expected: "one SPIFFE id".to_string(),
        })?;
        let roots = parse_pem_certs("root-cert.pem", &root)?;
        Self::accept(&identity, key, &public, &[chain], roots, now)
    }

    /// The private key, for the TLS configuration only.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// When to renew: [`RENEW_AT`] of the way from its receipt to `not_after`.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.received)
            .unwrap_or_default();
        self.received + life.mul_f64(RENEW_AT)
    }

    /// Whether it is valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Verifies `chain` (leaf first) against `roots` at `now`, as a TLS peer will.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), CertError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| CertError::Untrusted(format!("mesh root: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(store.into(), provider)
            .build()
            .map_err(|e| CertError::Untrusted(e.to_string()))?;
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verifier
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map(|_| ())
        .map_err(|e| CertError::Untrusted(e.to_string()))
}

/// Whether a certificate's subject alt names include `want`: DNS names case-insensitively (a
/// `*.` wildcard covering one label), IP addresses and URIs exactly.
pub(crate) fn has_san(cert: &X509Certificate<'_>, want: &str) -> bool {
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return false;
    };
    sans.value.general_names.iter().any(|n| match n {
        GeneralName::DNSName(d) => dns_matches(d, want),
        GeneralName::URI(u) => *u == want,
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(std::net::IpAddr::from),
                _ => None,
            };
            ip.is_some_and(|ip| want.parse::<std::net::IpAddr>().ok() == Some(ip))
        }
        _ => false,
    })
}

fn dns_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod names {
    use super::dns_matches;

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        assert!(dns_matches("api.example.com", "API.example.com"));
        assert!(dns_matches("*.example.com", "api.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", ".example.com"));
        assert!(!dns_matches("api.example.com", "api.example.org"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A CA answer of arbitrary text (PEM-looking or not) is refused, never a panic.
        #[test]
        fn arbitrary_answers_are_refused(chain in proptest::collection::vec(".{0,400}", 0..4), b64 in "[A-Za-z0-9+/=]{0,600}") {
            let who = SpiffeId::new("cluster.local", "a", "b").unwrap();
            let mut chain = chain;
            chain.push(format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"));
            let key = PrivatePkcs8KeyDer::from(vec![0u8; 8]);
            prop_assert!(WorkloadCert::accept(&who, key, &[0u8; 65], &chain, vec![], SystemTime::now()).is_err());
        }
    }
}
