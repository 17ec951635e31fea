//! The serving certificate: generated at start (a CA plus a serving certificate for the Service's
//! DNS names, renewed before expiry) or loaded from a mounted Secret (`tls.crt`/`tls.key`,
//! reloaded when the files change). Either way it sits behind an [`ArcSwap`] read by every TLS
//! handshake, so a new certificate takes effect for new connections without dropping any request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{Error, Result};

/// The ring crypto provider, used for everything TLS in this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Hands the current certificate to every handshake; [`CertResolver::set`] swaps it atomically.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    /// A resolver serving `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertResolver {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Serves `key` from the next handshake on. Connections already established keep theirs.
    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server configuration (ring, TLS 1.2/1.3, ALPN h2 and http/1.1) over `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::tls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The DNS names a webhook Service is reached by: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc` and
/// `<svc>.<ns>.svc.cluster.local`, plus any extra names or IPs.
pub fn service_dns_names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ];
    for e in extra {
        if !names.contains(e) {
            names.push(e.clone());
        }
    }
    names
}

/// A certificate authority generated in memory; its certificate goes into the
/// MutatingWebhookConfiguration's `caBundle`.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// A serving certificate issued by an [`Authority`].
#[derive(Debug)]
pub struct Issued {
    /// Ready for rustls (leaf then CA).
    pub certified: CertifiedKey,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// When to issue the next one: two thirds into the validity.
    pub renew_at: SystemTime,
}

/// How long the generated CA is valid. The CA is only replaced when the webhook restarts.
pub const CA_VALIDITY_DAYS: u32 = 3650;

impl Authority {
    /// Generates a new CA key and self-signed certificate.
    pub fn generate(now: SystemTime) -> Result<Self> {
        let key = KeyPair::generate().map_err(Error::tls)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "rustmesh-webhook-ca");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "rustmesh");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, now, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(Error::tls)?;
        Ok(Authority {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (the `caBundle`, base64-encoded by the API machinery).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// Issues a serving certificate for `dns_names` (IP addresses become IP SANs).
    pub fn issue(
        &self,
        dns_names: &[String],
        validity_days: u32,
        now: SystemTime,
    ) -> Result<Issued> {
        if dns_names.is_empty() {
            return Err(Error::tls("a serving certificate needs at least one name"));
        }
        let key = KeyPair::generate().map_err(Error::tls)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(Error::tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, dns_names[0].as_str());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let validity_days = validity_days.max(1);
        let not_before_time = set_validity(&mut params, now, validity_days);
        let cert = params.signed_by(&key, &self.issuer).map_err(Error::tls)?;

        let key_pem = key.serialize_pem();
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(Error::tls)?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(Error::tls)?;
        let not_after_time =
            not_before_time + Duration::from_secs(86_400 * (u64::from(validity_days) + 1));
        let lifetime = not_after_time
            .duration_since(not_before_time)
            .unwrap_or_default();
        Ok(Issued {
            certified,
            cert_pem: cert.pem(),
            key_pem,
            not_after: not_after_time,
            renew_at: not_before_time + lifetime * 2 / 3,
        })
    }
}

/// Sets `not_before` to yesterday (clock skew between the webhook and the API server) and
/// `not_after` to `days` after today, both at midnight UTC; returns `not_before` as a `SystemTime`.
fn set_validity(params: &mut CertificateParams, now: SystemTime, days: u32) -> SystemTime {
    let today = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let start = (today - 1).max(0);
    let end = today + i64::from(days);
    let at = |day: i64| {
        let (y, m, d) = civil_from_days(day);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = at(start);
    params.not_after = at(end);
    UNIX_EPOCH + Duration::from_secs(start as u64 * 86_400)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) — Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y as i32, m as u8, d as u8)
}

/// Loads `tls.crt` (leaf first, then any chain) and `tls.key` (PKCS#8, PKCS#1 or SEC1 PEM),
/// checking that the key belongs to the certificate.
pub fn load_pem_files(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::Io {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    certified_from_pem(&cert_pem, &key_pem).map_err(|e| {
        Error::tls(format!(
            "{} / {}: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })
}

/// Parses a PEM certificate chain and key into a [`CertifiedKey`].
pub fn certified_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE in the certificate file".to_owned());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key PEM: {e}"))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())
}

/// Where a mounted certificate lives.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// `tls.crt`.
    pub cert: PathBuf,
    /// `tls.key`.
    pub key: PathBuf,
}

/// Polls the mounted files every `interval` and serves the new pair when their content changed
/// and parses (a Secret update swaps both files atomically, but a half-written pair that does not
/// match is simply retried at the next poll). Runs until the task is dropped.
pub async fn reload_files(resolver: Arc<CertResolver>, files: CertFiles, interval: Duration) {
    let snapshot = |f: &CertFiles| (std::fs::read(&f.cert).ok(), std::fs::read(&f.key).ok());
    let mut last = snapshot(&files);
    loop {
        tokio::time::sleep(interval).await;
        let now = snapshot(&files);
        if now == last {
            continue;
        }
        match (&now.0, &now.1) {
            (Some(c), Some(k)) => match certified_from_pem(c, k) {
                Ok(key) => {
                    resolver.set(key);
                    tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
                    last = now;
                }
                Err(e) => {
                    tracing::warn!(cert = %files.cert.display(), error = %e, "new certificate files not usable yet; keeping the current one");
                }
            },
            _ => {
                tracing::warn!(cert = %files.cert.display(), "certificate files unreadable; keeping the current one")
            }
        }
    }
}

/// Issues a new serving certificate whenever the current one reaches its renewal time, and
/// swaps it in. Checks at least hourly (robust to suspended clocks). Runs until dropped.
pub async fn rotate(
    authority: Arc<Authority>,
    resolver: Arc<CertResolver>,
    dns_names: Vec<String>,
    validity_days: u32,
    mut renew_at: SystemTime,
) {
    loop {
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(3600));
        tokio::time::sleep(wait).await;
        if SystemTime::now() < renew_at {
            continue;
        }
        match authority.issue(&dns_names, validity_days, SystemTime::now()) {
            Ok(issued) => {
                resolver.set(issued.certified);
                renew_at = issued.renew_at;
                tracing::info!(not_after = ?issued.not_after, "serving certificate renewed");
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing the serving certificate failed; retrying in a minute");
                renew_at = SystemTime::now() + Duration::from_secs(60);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn issue_and_renewal_time() {
        let now = SystemTime::now();
        let ca = Authority::generate(now).unwrap();
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let names = service_dns_names("rustmesh-webhook", "rustmesh-system", &["127.0.0.1".into()]);
        assert!(names.contains(&"rustmesh-webhook.rustmesh-system.svc".to_owned()));
        assert!(names.contains(&"rustmesh-webhook.rustmesh-system.svc.cluster.local".to_owned()));
        let issued = ca.issue(&names, 30, now).unwrap();
        assert!(issued.renew_at > now);
        assert!(issued.renew_at < issued.not_after);
        assert!(issued.not_after > now + Duration::from_secs(29 * 86_400));
        assert_eq!(issued.certified.cert.len(), 2, "leaf and CA");
        assert!(issued.certified.keys_match().is_ok());
        assert!(ca.issue(&[], 30, now).is_err());
    }

    #[test]
    fn pem_round_trip_and_mismatch() {
        let now = SystemTime::now();
        let ca = Authority::generate(now).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["x.svc".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        assert!(certified_from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).is_ok());
        let other = KeyPair::generate().unwrap();
        let err = certified_from_pem(cert.pem().as_bytes(), other.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(!err.is_empty());
        assert!(certified_from_pem(b"", key.serialize_pem().as_bytes()).is_err());
        assert!(certified_from_pem(cert.pem().as_bytes(), b"junk").is_err());
    }
}
