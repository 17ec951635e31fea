//! `credentialName` Secrets (a DestinationRule's, or a `Gateway` server's at a gateway) as the
//! proxy holds them: fetched from the mesh CA
//! ([`super::ca_client::CaClient::fetch_credential`]) when a connection first needs one,
//! parsed, kept in memory only (never written or logged), and asked for again after [`REFRESH`]
//! so a rotated Secret is picked up by the next handshakes (open connections keep theirs). The
//! refresh runs in the background while the copy held keeps serving, so no connection waits on
//! the CA for a credential it already has, even an unreachable CA. While the CA cannot answer,
//! the last good copy keeps serving; a credential never fetched fails its connections with the
//! CA's reason, remembered for [`RETRY`] so a busy cluster does not flood the CA.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustmesh_xds::ca::FetchCredentialResponse;

use super::ca_client::CaClient;
use crate::sync::lock;

/// How long a fetched credential is used before the CA is asked again.
pub const REFRESH: Duration = Duration::from_secs(60);
/// How long a failure is remembered before the CA is asked again.
pub const RETRY: Duration = Duration::from_secs(2);

/// One SDS resource of a credential: the certificate chain and key (`<secret>`) or the CA
/// certificates (`<secret>-cacert`). `version` changes when the content does.
pub struct Credential {
    /// The certificate chain, leaf first (empty for roots).
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (`None` for roots).
    pub key: Option<PrivateKeyDer<'static>>,
    /// The CA certificates (empty for a certificate).
    pub roots: Vec<CertificateDer<'static>>,
    /// The CA's certificate revocation lists (the Secret's `ca.crl` or `crl`; only with
    /// roots, empty when it has none).
    pub crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    /// Distinct for each distinct content fetched.
    pub version: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("chain", &self.chain.len())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .field("version", &self.version)
            .finish()
    }
}

/// Reads the CA's answer for `name`: a certificate resource needs a chain and a key, a roots
/// resource (`-cacert`) at least one certificate.
pub fn parse(
    name: &str,
    answer: &FetchCredentialResponse,
    version: u64,
) -> Result<Credential, String> {
    let certs = |what: &str, pem: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("kubernetes://{name}: {what} are not PEM certificates: {e}"))
    };
    let roots_wanted = name.ends_with(rustmesh_xds::tls::SDS_CACERT_SUFFIX);
    if roots_wanted {
        let roots = certs("the CA certificates", &answer.ca_certificates)?;
        if roots.is_empty() {
            return Err(format!("kubernetes://{name}: no CA certificate"));
        }
        let crls = if answer.crl.trim().is_empty() {
            Vec::new()
        } else {
            super::tls::pem_crls(
                &format!("kubernetes://{name}: the revocation list"),
                answer.crl.as_bytes(),
            )?
        };
        return Ok(Credential {
            chain: Vec::new(),
            key: None,
            roots,
            crls,
            version,
        });
    }
    let chain = certs("the certificate chain", &answer.cert_chain)?;
    if chain.is_empty() {
        return Err(format!("kubernetes://{name}: no certificate"));
    }
    // The key's parse error is rustls' and never carries the key.
    let key = PrivateKeyDer::from_pem_slice(answer.private_key.as_bytes())
        .map_err(|e| format!("kubernetes://{name}: the key is not a PEM private key: {e}"))?;
    Ok(Credential {
        chain,
        key: Some(key),
        roots: Vec::new(),
        crls: Vec::new(),
        version,
    })
}

struct Entry {
    value: Option<Arc<Credential>>,
    /// The content's fingerprint, to keep `version` when a refresh brings the same.
    fingerprint: u64,
    error: Option<String>,
    at: Instant,
}

/// The credentials this sidecar uses, by SDS name without `kubernetes://`.
#[derive(Default)]
pub struct Credentials {
    inner: Arc<Inner>,
}

/// What the background refreshes share with [`Credentials`].
#[derive(Default)]
struct Inner {
    client: OnceLock<CaClient>,
    /// The names a background refresh is running for.
    refreshing: Mutex<HashSet<String>>,
    entries: Mutex<HashMap<String, Entry>>,
    /// One fetch at a time: a burst of connections asks the CA once.
    fetching: tokio::sync::Mutex<()>,
    versions: AtomicU64,
    /// [`REFRESH`] unless set (milliseconds; 0: the default).
    refresh_ms: AtomicU64,
}

/// What the copy held of a credential is worth now.
enum Held {
    /// Use it.
    Fresh(Arc<Credential>),
    /// Use it, and ask the CA for a newer one in the background.
    Stale(Arc<Credential>),
    /// A recent failure and no copy: that failure is the answer.
    Failed(String),
    /// Nothing to go on: ask the CA now.
    Missing,
}

impl Credentials {
    /// Fetches from the CA `client` talks to (set once, at start; without it every credential
    /// fails, naming the missing CA).
    pub fn set_client(&self, client: CaClient) {
        let _ = self.inner.client.set(client);
    }

    /// Asks the CA again after `every` instead of [`REFRESH`] (tests, and a faster rotation).
    pub fn set_refresh(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.inner.refresh_ms.store(ms, Ordering::Relaxed);
    }

    /// The credentials held now, by name, sorted (what `/certs` shows).
    pub fn held(&self) -> Vec<(String, Arc<Credential>)> {
        let mut out: Vec<(String, Arc<Credential>)> = lock(&self.inner.entries)
            .iter()
            .filter_map(|(n, e)| e.value.clone().map(|v| (n.clone(), v)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Credential `name` (`<secret>` or `<secret>-cacert`): the copy held (refreshed in the
    /// background once older than the refresh interval), else asked of the CA now.
    pub async fn get(&self, name: &str) -> Result<Arc<Credential>, String> {
        match self.inner.held(name) {
            Held::Fresh(v) => Ok(v),
            Held::Failed(e) => Err(e),
            Held::Stale(v) => {
                if lock(&self.inner.refreshing).insert(name.to_string()) {
                    let inner = self.inner.clone();
                    let name = name.to_string();
                    tokio::spawn(async move {
                        let _ = inner.fetch(&name).await;
                        lock(&inner.refreshing).remove(&name);
                    });
                }
                Ok(v)
            }
            Held::Missing => self.inner.fetch(name).await,
        }
    }
}

impl Inner {
    fn refresh(&self) -> Duration {
        match self.refresh_ms.load(Ordering::Relaxed) {
            0 => REFRESH,
            ms => Duration::from_millis(ms),
        }
    }

    fn held(&self, name: &str) -> Held {
        let refresh = self.refresh();
        let entries = lock(&self.entries);
        let Some(e) = entries.get(name) else {
            return Held::Missing;
        };
        let age = e.at.elapsed();
        match (&e.value, &e.error) {
            (Some(v), None) if age < refresh => Held::Fresh(v.clone()),
            // The last refresh failed: keep serving without asking again for a while.
            (Some(v), Some(_)) if age < RETRY => Held::Fresh(v.clone()),
            (Some(v), _) => Held::Stale(v.clone()),
            (None, Some(err)) if age < RETRY => Held::Failed(err.clone()),
            (None, _) => Held::Missing,
        }
    }

    /// Asks the CA for `name` now (one fetch at a time) and keeps the answer.
    async fn fetch(&self, name: &str) -> Result<Arc<Credential>, String> {
        let _one = self.fetching.lock().await;
        match self.held(name) {
            Held::Fresh(v) => return Ok(v),
            Held::Failed(e) => return Err(e),
            Held::Stale(_) | Held::Missing => {}
        }
        let fetched = match self.client.get() {
            None => Err(format!(
                "kubernetes://{name}: no mesh CA (CA_ADDR) to serve a credentialName Secret"
            )),
            Some(client) => client
                .fetch_credential(name)
                .await
                .map_err(|e| format!("kubernetes://{name}: {e}")),
        };
        let mut entries = lock(&self.entries);
        let previous = entries.remove(name);
        let now = Instant::now();
        let (entry, result) = match fetched {
            Ok(answer) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (
                    &answer.cert_chain,
                    &answer.private_key,
                    &answer.ca_certificates,
                    &answer.crl,
                )
                    .hash(&mut h);
                let fingerprint = h.finish();
                match previous {
                    Some(Entry {
                        value: Some(v),
                        fingerprint: f,
                        ..
                    }) if f == fingerprint => (
                        Entry {
                            value: Some(v.clone()),
                            fingerprint,
                            error: None,
                            at: now,
                        },
                        Ok(v),
                    ),
                    _ => {
                        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
                        match parse(name, &answer, version) {
                            Ok(c) => {
                                let c = Arc::new(c);
                                tracing::info!(credential = name, version, "credential installed");
                                (
                                    Entry {
                                        value: Some(c.clone()),
                                        fingerprint,
                                        error: None,
                                        at: now,
                                    },
                                    Ok(c),
                                )
                            }
                            Err(e) => failed(previous, e, now),
                        }
                    }
                }
            }
            Err(e) => failed(previous, e, now),
        };
        entries.insert(name.to_string(), entry);
        result
    }
}

/// A failed fetch: the last good copy keeps serving, else the error is the answer.
fn failed(
    previous: Option<Entry>,
    error: String,
    now: Instant,
) -> (Entry, Result<Arc<Credential>, String>) {
    tracing::warn!(error = %error, "credential not fetched");
    match previous {
        Some(Entry {
            value: Some(v),
            fingerprint,
            ..
        }) => (
            Entry {
                value: Some(v.clone()),
                fingerprint,
                error: Some(error),
                at: now,
            },
            Ok(v),
        ),
        _ => (
            Entry {
                value: None,
                fingerprint: 0,
                error: Some(error.clone()),
                at: now,
            },
            Err(error),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_needs_chain_and_key_and_roots_a_certificate() {
        let (cert, key) = pki();
        let answer = FetchCredentialResponse {
            cert_chain: cert.clone(),
            private_key: key.clone(),
            ca_certificates: String::new(),
            crl: String::new(),
        };
        let c = parse("db", &answer, 1).unwrap();
        assert_eq!(
            (c.chain.len(), c.key.is_some(), c.roots.len()),
            (1, true, 0)
        );
        assert!(!format!("{c:?}").contains("PRIVATE"));
        let e = parse("db-cacert", &answer, 1).unwrap_err();
        assert!(e.contains("no CA certificate"), "{e}");
        let roots = FetchCredentialResponse {
            ca_certificates: cert,
            ..FetchCredentialResponse::default()
        };
        assert_eq!(parse("db-cacert", &roots, 2).unwrap().roots.len(), 1);
        let no_key = FetchCredentialResponse {
            private_key: "garbage".into(),
            ..answer
        };
        let e = parse("db", &no_key, 1).unwrap_err();
        assert!(e.contains("not a PEM private key"), "{e}");
    }

    #[test]
    fn roots_carry_the_secrets_revocation_lists_and_a_bad_list_is_refused() {
        use rcgen::{
            BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
            KeyIdMethod, KeyPair, SerialNumber, date_time_ymd,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().pem();
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&Issuer::new(params, key))
        .unwrap()
        .pem()
        .unwrap();
        let roots = |crl: &str| FetchCredentialResponse {
            ca_certificates: ca.clone(),
            crl: crl.to_string(),
            ..FetchCredentialResponse::default()
        };
        assert_eq!(parse("db-cacert", &roots(""), 1).unwrap().crls.len(), 0);
        assert_eq!(parse("db-cacert", &roots(&crl), 1).unwrap().crls.len(), 1);
        let e = parse("db-cacert", &roots(&ca), 1).unwrap_err();
        assert!(
            e.contains("kubernetes://db-cacert") && e.contains("revocation list"),
            "{e}"
        );
        let mangled = crl.replace("\n", "\nAAAA\n").replacen("\nAAAA\n", "\n", 1);
        let e = parse("db-cacert", &roots(&mangled), 1).unwrap_err();
        assert!(e.contains("revocation list"), "{e}");
    }

    #[tokio::test]
    async fn without_a_ca_a_credential_fails_naming_it() {
        let creds = Credentials::default();
        let e = creds.get("db").await.unwrap_err();
        assert!(
            e.contains("kubernetes://db") && e.contains("CA_ADDR"),
            "{e}"
        );
        // Remembered: the same answer without asking again.
        assert_eq!(creds.get("db").await.unwrap_err(), e);
    }
}
