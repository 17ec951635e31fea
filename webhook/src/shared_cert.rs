//! One serving certificate for every replica: kept in a Secret of the webhook's namespace
//! (`tls.crt`, `tls.key`, and the CA bundle in `ca.crt`), made once by whichever replica finds it
//! missing, rotated before expiry by one replica, followed (watched) and served by all; the
//! `caBundle` of the webhook configurations is patched to the Secret's `ca.crt` only where it
//! differs, so replicas agree on what to write and stop writing once it is there.
//!
//! Without this each replica made its own CA and patched the bundle in turn (153 patches in
//! 10 s with two replicas, issue 17 item 5): replicas never agreed and the API server trusted
//! one of them at a time.
//!
//! As in [`crate::kube_sync`], the decisions are pure functions tested here ([`SharedCert`],
//! [`secret_action`], [`choose_served`], [`trust_problem`]) and [`run`] is a thin loop around
//! them over the watches (tested against a real API server in `tests/shared_cert_cluster.rs`).
//!
//! Rotation makes a new CA each time (no CA key is ever stored): the new `ca.crt` holds the new
//! CA and the previous one, so the bundle, once patched, trusts both; each replica keeps serving
//! its current certificate until the bundles trust the new one ([`choose_served`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;

use crate::kube_sync::{FIELD_MANAGER, WebhookBundles, ca_bundle_patch_for};
use crate::server::Readiness;
use crate::tls::{self, Authority, CertResolver};

/// The Secret's key holding the serving certificate (leaf, then its CA), PEM.
pub const TLS_CRT: &str = "tls.crt";
/// The Secret's key holding the serving certificate's private key, PEM. Never logged.
pub const TLS_KEY: &str = "tls.key";
/// The Secret's key holding the CA bundle the webhook configurations must carry: the CA that
/// issued `tls.crt`, then the previous one while it is still valid (rotation overlap).
pub const CA_CRT: &str = "ca.crt";
/// A webhook configuration's webhooks: each one's name and `caBundle`
/// ([`WebhookBundles::bundles`]).
pub type Webhooks = Vec<(String, Option<Vec<u8>>)>;
/// A watched configuration as last seen: `None` until listed, then `None` when absent.
pub type ConfigState = Option<Option<Webhooks>>;

/// The readiness condition this module sets.
pub const CONDITION: &str = "certificate";

/// The certificate of the Secret, parsed and checked (the key matches, validity known).
/// `Debug` shows no key.
#[derive(Clone)]
pub struct SharedCert {
    /// `tls.crt`.
    pub cert_pem: String,
    /// `tls.key`.
    key_pem: String,
    /// `ca.crt`.
    pub ca_pem: String,
    /// Ready for rustls.
    pub certified: Arc<CertifiedKey>,
    /// Validity of the leaf.
    pub not_before: SystemTime,
    /// Validity of the leaf.
    pub not_after: SystemTime,
    /// The leaf's DNS names (and IPs, as text).
    pub names: Vec<String>,
}

impl std::fmt::Debug for SharedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SharedCert {
    fn eq(&self, other: &Self) -> bool {
        self.cert_pem == other.cert_pem
            && self.key_pem == other.key_pem
            && self.ca_pem == other.ca_pem
    }
}

fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl SharedCert {
    /// Reads the Secret's data; the reason when it is not a usable certificate (no key is ever
    /// part of the reason).
    pub fn parse(data: &BTreeMap<String, ByteString>) -> Result<SharedCert, String> {
        let text = |key: &str| -> Result<String, String> {
            let bytes = data.get(key).ok_or_else(|| format!("no `{key}`"))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| format!("`{key}` is not PEM text"))
        };
        let cert_pem = text(TLS_CRT)?;
        let key_pem = text(TLS_KEY)?;
        let ca_pem = text(CA_CRT)?;
        if CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .next()
            .is_none()
        {
            return Err(format!("`{CA_CRT}` holds no certificate"));
        }
        let certified = tls::certified_from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| format!("`{TLS_CRT}`/`{TLS_KEY}`: {e}"))?;
        let leaf = certified.cert.first().ok_or("`tls.crt` is empty")?.clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("`{TLS_CRT}`: {e}"))?;
        let validity = parsed.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => names
                            .push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                        16 => {
                            let mut b = [0u8; 16];
                            b.copy_from_slice(ip);
                            names.push(std::net::Ipv6Addr::from(b).to_string());
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Ok(SharedCert {
            not_before: system_time(validity.not_before),
            not_after: system_time(validity.not_after),
            names,
            cert_pem,
            key_pem,
            ca_pem,
            certified: Arc::new(certified),
        })
    }

    /// A new CA and a serving certificate for `names` from it, valid `validity_days`. `ca.crt`
    /// is the new CA, then the CA that issued `previous` while that one is still valid, so that
    /// a bundle patched to it trusts both the certificate being replaced and the new one.
    pub fn generate(
        names: &[String],
        validity_days: u32,
        now: SystemTime,
        previous: Option<&SharedCert>,
    ) -> crate::Result<SharedCert> {
        let authority = Authority::generate(now)?;
        let issued = authority.issue(names, validity_days, now)?;
        let mut ca_pem = authority.ca_pem().to_owned();
        if let Some(prev) = previous.filter(|p| p.not_after > now)
            && let Some(prev_ca) = first_pem_certificate(&prev.ca_pem)
            && prev_ca != ca_pem
        {
            ca_pem.push_str(&prev_ca);
        }
        let mut data = BTreeMap::new();
        data.insert(
            TLS_CRT.to_owned(),
            ByteString(format!("{}{}", issued.cert_pem, authority.ca_pem()).into_bytes()),
        );
        data.insert(TLS_KEY.to_owned(), ByteString(issued.key_pem.into_bytes()));
        data.insert(CA_CRT.to_owned(), ByteString(ca_pem.into_bytes()));
        SharedCert::parse(&data).map_err(crate::Error::tls)
    }

    /// When to replace it: two thirds into its validity.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }

    /// The Secret's data for it.
    pub fn secret_data(&self) -> BTreeMap<String, ByteString> {
        BTreeMap::from([
            (
                TLS_CRT.to_owned(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                TLS_KEY.to_owned(),
                ByteString(self.key_pem.clone().into_bytes()),
            ),
            (
                CA_CRT.to_owned(),
                ByteString(self.ca_pem.clone().into_bytes()),
            ),
        ])
    }

    /// A `kubernetes.io/tls` Secret `namespace/name` holding it.
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(self.secret_data()),
            ..Default::default()
        }
    }
}

/// The first certificate of a PEM bundle, as PEM.
fn first_pem_certificate(bundle: &str) -> Option<String> {
    let start = bundle.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = bundle[start..].find(end_marker)? + start + end_marker.len();
    Some(format!("{}\n", &bundle[start..end]))
}

/// What a replica does about the Secret as it observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAction {
    /// Usable and not due: follow it.
    Keep,
    /// Missing: create it (another replica may win: then read the winner's).
    Create,
    /// Usable but due for renewal: replace it (a merge patch guarded by its resourceVersion: of
    /// several replicas only one succeeds, the others follow the winner).
    Rotate,
    /// Present but unusable (the reason): replace it, guarded as a rotation.
    Replace(String),
}

/// The decision: `observed` is `None` when the listing found no Secret, else the Secret parsed
/// (or why it could not be). `names` are the names the certificate must carry.
pub fn secret_action(
    observed: Option<Result<&SharedCert, &str>>,
    names: &[String],
    now: SystemTime,
) -> SecretAction {
    match observed {
        None => SecretAction::Create,
        Some(Err(why)) => SecretAction::Replace(why.to_owned()),
        Some(Ok(c)) if c.not_after <= now => SecretAction::Replace("expired".to_owned()),
        Some(Ok(c)) => {
            if let Some(missing) = names.iter().find(|n| !c.names.contains(n)) {
                SecretAction::Replace(format!("the certificate does not name {missing}"))
            } else if c.renew_at() <= now {
                SecretAction::Rotate
            } else {
                SecretAction::Keep
            }
        }
    }
}

/// Whether the PEM `bundle` trusts `chain` (its leaf, for `server_name`, at `now`): the check
/// the API server makes when it calls the webhook.
pub fn bundle_trusts(
    bundle: &[u8],
    chain: &CertifiedKey,
    server_name: &str,
    now: SystemTime,
) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return false;
    }
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider()).build()
    else {
        return false;
    };
    let Some(leaf) = chain.cert.first() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(server_name.to_owned()) else {
        return false;
    };
    let intermediates = chain.cert.get(1..).unwrap_or_default();
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .is_ok()
}

/// Which certificate a replica serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// The Secret's.
    Secret,
    /// Keep the one it serves: the bundles do not trust the Secret's yet but do trust this one
    /// (a rotation whose bundle patch has not landed).
    Current,
}

/// The decision: the Secret's certificate once every bundle (`bundles`: each webhook's, as
/// observed) trusts it; until then the current one if every bundle still trusts it; else the
/// Secret's (nothing better to serve).
pub fn choose_served(
    current: Option<&CertifiedKey>,
    secret: &SharedCert,
    bundles: &[Option<&[u8]>],
    server_name: &str,
    now: SystemTime,
) -> Serve {
    let all_trust = |chain: &CertifiedKey| {
        bundles
            .iter()
            .all(|b| b.is_some_and(|b| bundle_trusts(b, chain, server_name, now)))
    };
    if all_trust(&secret.certified) {
        return Serve::Secret;
    }
    match current {
        Some(c) if c.cert.first() != secret.certified.cert.first() && all_trust(c) => {
            Serve::Current
        }
        _ => Serve::Secret,
    }
}

/// Why the webhook is not ready as far as its certificate goes, `None` when every webhook of
/// every configuration trusts the served chain. `configs`: per configuration its description
/// (`MutatingWebhookConfiguration x`) and, once listed, `None` when it does not exist or its
/// webhooks' names and bundles.
pub fn trust_problem(
    served: Option<&CertifiedKey>,
    configs: &[(String, ConfigState)],
    server_name: &str,
    now: SystemTime,
) -> Option<String> {
    let Some(served) = served else {
        return Some("no serving certificate from the shared Secret yet".to_owned());
    };
    for (what, state) in configs {
        match state {
            None => return Some(format!("waiting for the {what} to be listed")),
            Some(None) => return Some(format!("the {what} does not exist")),
            Some(Some(webhooks)) => {
                for (name, bundle) in webhooks {
                    let trusted = bundle
                        .as_deref()
                        .is_some_and(|b| bundle_trusts(b, served, server_name, now));
                    if !trusted {
                        return Some(format!(
                            "the caBundle of webhook {name} in the {what} does not trust the served certificate yet"
                        ));
                    }
                }
            }
        }
    }
    None
}

// --- the loop ---------------------------------------------------------------------------------

/// A webhook configuration whose `caBundle` is kept equal to the Secret's `ca.crt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookConfig {
    /// A MutatingWebhookConfiguration by name.
    Mutating(String),
    /// A ValidatingWebhookConfiguration by name.
    Validating(String),
}

impl WebhookConfig {
    fn describe(&self) -> String {
        match self {
            WebhookConfig::Mutating(n) => format!("MutatingWebhookConfiguration {n}"),
            WebhookConfig::Validating(n) => format!("ValidatingWebhookConfiguration {n}"),
        }
    }
}

/// What [`run`] needs.
#[derive(Clone, Debug)]
pub struct SharedCertConfig {
    /// The webhook's namespace (the Secret's).
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// Names the certificate carries; the first is the one checked for trust (the Service's
    /// `<svc>.<ns>.svc`, which the API server uses).
    pub dns_names: Vec<String>,
    /// Validity of a new certificate, in days.
    pub validity_days: u32,
    /// The configurations whose `caBundle` is managed.
    pub configs: Vec<WebhookConfig>,
}

/// Counters of what [`run`] wrote (tests and logs).
#[derive(Debug, Default)]
pub struct Writes {
    /// Successful `caBundle` patches.
    pub bundle_patches: AtomicUsize,
    /// Secrets created or replaced by this replica.
    pub secret_writes: AtomicUsize,
}

enum Update {
    Secret(Box<Result<Event<Secret>, watcher::Error>>),
    Config(usize, Result<Event<Webhooks>, watcher::Error>),
}

/// Listing-aware state of one watched object: `None` until the first listing is done, then
/// `Some(None)` when absent.
struct Followed<T> {
    pending: Option<T>,
    listed: Option<Option<T>>,
}

impl<T> Followed<T> {
    fn new() -> Self {
        Followed {
            pending: None,
            listed: None,
        }
    }

    /// Applies one watch event; whether the state changed.
    fn apply(&mut self, event: Event<T>) -> bool {
        match event {
            Event::Init => {
                self.pending = None;
                false
            }
            Event::InitApply(o) => {
                self.pending = Some(o);
                false
            }
            Event::InitDone => {
                self.listed = Some(self.pending.take());
                true
            }
            Event::Apply(o) => {
                self.listed = Some(Some(o));
                true
            }
            Event::Delete(_) => {
                self.listed = Some(None);
                true
            }
        }
    }
}

fn map_event<T, U>(e: Event<T>, f: impl Fn(T) -> U) -> Event<U> {
    match e {
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
    }
}

fn config_stream(
    client: &kube::Client,
    index: usize,
    config: &WebhookConfig,
) -> futures::stream::BoxStream<'static, Update> {
    let backoff = rustmesh_xds::backoff::Backoff::api;
    match config {
        WebhookConfig::Mutating(name) => {
            let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
            let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
            watcher::watcher(api, wc)
                .backoff(backoff())
                .map(move |e| Update::Config(index, e.map(|e| map_event(e, |o| o.bundles()))))
                .boxed()
        }
        WebhookConfig::Validating(name) => {
            let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
            let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
            watcher::watcher(api, wc)
                .backoff(backoff())
                .map(move |e| Update::Config(index, e.map(|e| map_event(e, |o| o.bundles()))))
                .boxed()
        }
    }
}

async fn patch_bundle(
    client: &kube::Client,
    config: &WebhookConfig,
    patch: json_patch::Patch,
) -> Result<(), String> {
    // kube's `Patch::Json` carries its own json-patch version: convert through JSON.
    let converted = serde_json::to_value(&patch)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let patch = kube::api::Patch::<()>::Json(converted);
    let result = match config {
        WebhookConfig::Mutating(name) => {
            let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
            api.patch(name, &params, &patch).await.map(|_| ())
        }
        WebhookConfig::Validating(name) => {
            let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
            api.patch(name, &params, &patch).await.map(|_| ())
        }
    };
    result.map_err(|e| e.to_string())
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Follows the Secret and the webhook configurations and keeps them consistent: creates or
/// rotates the Secret when needed, serves its certificate through `resolver` (see
/// [`choose_served`]), patches each configuration's `caBundle` to its `ca.crt` where it differs,
/// and sets the readiness condition [`CONDITION`] ([`trust_problem`]). Runs until dropped; API
/// errors are logged and retried (watches on the API back-off, writes after 1 s doubling to
/// 30 s).
pub async fn run(
    client: kube::Client,
    config: SharedCertConfig,
    resolver: Arc<CertResolver>,
    ready: Arc<Readiness>,
    writes: Arc<Writes>,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let wc = watcher::Config::default().fields(&format!("metadata.name={}", config.secret));
    let mut streams = vec![
        watcher::watcher(secrets.clone(), wc)
            .backoff(rustmesh_xds::backoff::Backoff::api())
            .map(|e| Update::Secret(Box::new(e)))
            .boxed(),
    ];
    for (i, c) in config.configs.iter().enumerate() {
        streams.push(config_stream(&client, i, c));
    }
    let mut updates = futures::stream::select_all(streams);
    let mut secret = Followed::<Secret>::new();
    let mut configs: Vec<Followed<Webhooks>> =
        config.configs.iter().map(|_| Followed::new()).collect();
    let mut served: Option<SharedCert> = None;
    let mut retry_after = Duration::from_secs(1);
    let mut wake = tokio::time::Instant::now() + Duration::from_secs(3600);
    let server_name = config.dns_names.first().cloned().unwrap_or_default();
    let source = format!("{}/{}", config.namespace, config.secret);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    ready.set_condition(
        CONDITION,
        Some(format!(
            "waiting for the shared certificate Secret {source}"
        )),
    );
    loop {
        tokio::select! {
            update = updates.next() => match update {
                None => return,
                Some(Update::Secret(e)) => match *e {
                    Ok(e) => { secret.apply(e); }
                    Err(e) => {
                        tracing::warn!(secret = %source, error = %e, "watching the certificate Secret");
                        continue;
                    }
                },
                Some(Update::Config(i, Ok(e))) => { configs[i].apply(e); }
                Some(Update::Config(i, Err(e))) => {
                    tracing::warn!(config = %config.configs[i].describe(), error = %e, "watching the webhook configuration");
                    continue;
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = SystemTime::now();
        wake = tokio::time::Instant::now() + Duration::from_secs(3600);
        let Some(observed) = &secret.listed else {
            continue;
        };

        // 1. The Secret: create, replace or follow it.
        let parsed = observed
            .as_ref()
            .map(|s| SharedCert::parse(s.data.as_ref().unwrap_or(&BTreeMap::new())));
        let action = secret_action(
            parsed.as_ref().map(|p| p.as_ref().map_err(String::as_str)),
            &config.dns_names,
            now,
        );
        let mut failed = false;
        let current: Option<SharedCert> = match action {
            SecretAction::Keep => parsed.and_then(Result::ok),
            SecretAction::Create => {
                match SharedCert::generate(
                    &config.dns_names,
                    config.validity_days,
                    now,
                    served.as_ref(),
                ) {
                    Err(e) => {
                        tracing::error!(error = %e, "generating the serving certificate");
                        failed = true;
                        None
                    }
                    Ok(new) => {
                        let obj = new.to_secret(&config.namespace, &config.secret);
                        match secrets.create(&pp, &obj).await {
                            Ok(created) => {
                                writes.secret_writes.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(secret = %source, not_after = ?new.not_after, "created the shared serving certificate");
                                secret.listed = Some(Some(created));
                                Some(new)
                            }
                            Err(e) if is_status(&e, 409) => {
                                // Another replica won: read its certificate.
                                tracing::info!(secret = %source, "another replica created the shared certificate first; using it");
                                match secrets.get(&config.secret).await {
                                    Ok(theirs) => {
                                        let p = SharedCert::parse(
                                            theirs.data.as_ref().unwrap_or(&BTreeMap::new()),
                                        )
                                        .ok();
                                        secret.listed = Some(Some(theirs));
                                        p
                                    }
                                    Err(e) => {
                                        tracing::warn!(secret = %source, error = %e, "reading the shared certificate");
                                        failed = true;
                                        None
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(secret = %source, error = %e, "creating the shared certificate Secret failed; retrying");
                                failed = true;
                                None
                            }
                        }
                    }
                }
            }
            SecretAction::Rotate | SecretAction::Replace(_) => {
                let old = parsed.and_then(Result::ok);
                let why = match &action {
                    SecretAction::Replace(why) => why.clone(),
                    _ => "due for renewal".to_owned(),
                };
                let previous = old.as_ref().or(served.as_ref());
                match SharedCert::generate(&config.dns_names, config.validity_days, now, previous) {
                    Err(e) => {
                        tracing::error!(error = %e, "generating the serving certificate");
                        failed = true;
                        old
                    }
                    Ok(new) => {
                        // Optimistic concurrency: a merge patch carrying the resourceVersion
                        // this replica saw; only one replica's applies (409 for the others).
                        let rv = observed
                            .as_ref()
                            .and_then(|s| s.metadata.resource_version.clone());
                        let body = serde_json::json!({
                            "metadata": {"resourceVersion": rv},
                            "type": "kubernetes.io/tls",
                            "data": new.secret_data(),
                        });
                        let params = PatchParams {
                            field_manager: Some(FIELD_MANAGER.to_owned()),
                            ..Default::default()
                        };
                        match secrets
                            .patch(&config.secret, &params, &kube::api::Patch::Merge(&body))
                            .await
                        {
                            Ok(replaced) => {
                                writes.secret_writes.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(secret = %source, reason = %why, not_after = ?new.not_after, "replaced the shared serving certificate");
                                secret.listed = Some(Some(replaced));
                                Some(new)
                            }
                            Err(e) if is_status(&e, 409) => {
                                tracing::info!(secret = %source, "another replica replaced the shared certificate first; following it");
                                old
                            }
                            Err(e) => {
                                tracing::warn!(secret = %source, error = %e, reason = %why, "replacing the shared certificate Secret failed; retrying");
                                failed = true;
                                old
                            }
                        }
                    }
                }
            }
        };

        if let Some(cert) = &current {
            // 2. Each configuration's caBundle: patched to ca.crt where it differs.
            for (i, c) in config.configs.iter().enumerate() {
                let Some(Some(webhooks)) = &configs[i].listed else {
                    continue;
                };
                let Some(patch) = ca_bundle_patch_for(webhooks, &cert.ca_pem) else {
                    continue;
                };
                match patch_bundle(&client, c, patch).await {
                    Ok(()) => {
                        // What the watch will show: not patched again before it does.
                        if let Some(Some(webhooks)) = &mut configs[i].listed {
                            for (_, bundle) in webhooks.iter_mut() {
                                *bundle = Some(cert.ca_pem.as_bytes().to_vec());
                            }
                        }
                        writes.bundle_patches.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(config = %c.describe(), "caBundle patched to the shared certificate's CA");
                    }
                    Err(e) => {
                        tracing::warn!(config = %c.describe(), error = %e, "patching caBundle failed; retrying");
                        failed = true;
                    }
                }
            }

            // 3. What to serve.
            let bundles: Vec<Option<&[u8]>> = configs
                .iter()
                .flat_map(|f| match &f.listed {
                    Some(Some(webhooks)) => webhooks.iter().map(|(_, b)| b.as_deref()).collect(),
                    _ => vec![None],
                })
                .collect();
            let currently = served.as_ref().map(|s| s.certified.as_ref());
            match choose_served(currently, cert, &bundles, &server_name, now) {
                Serve::Secret if served.as_ref() != Some(cert) => {
                    resolver.set((*cert.certified).clone());
                    served = Some(cert.clone());
                    tracing::info!(secret = %source, not_after = ?cert.not_after, "serving the shared certificate");
                }
                Serve::Secret => {}
                Serve::Current => {
                    tracing::info!(secret = %source, "the caBundles do not trust the new certificate yet; serving the current one");
                }
            }
            let renew = cert.renew_at();
            let until = renew
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(Duration::from_secs(3600));
            wake = tokio::time::Instant::now() + until;
        }

        // 4. Ready when every bundle trusts what is served.
        let states: Vec<_> = config
            .configs
            .iter()
            .zip(&configs)
            .map(|(c, f)| (c.describe(), f.listed.clone()))
            .collect();
        let problem = trust_problem(
            served.as_ref().map(|s| s.certified.as_ref()),
            &states,
            &server_name,
            now,
        );
        ready.set_condition(CONDITION, problem);

        if failed {
            wake = tokio::time::Instant::now() + retry_after;
            retry_after = (retry_after * 2).min(Duration::from_secs(30));
        } else {
            retry_after = Duration::from_secs(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        tls::service_dns_names("rustmesh-webhook", "istio-system", &[])
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_generated_certificate_round_trips_through_the_secret_and_hides_its_key() {
        let now = SystemTime::now();
        let c = SharedCert::generate(&names(), 30, now, None).unwrap();
        let again = SharedCert::parse(&c.secret_data()).unwrap();
        assert_eq!(again, c);
        assert!(
            c.names
                .contains(&"rustmesh-webhook.istio-system.svc".to_owned())
        );
        assert!(c.not_before <= now && c.not_after > now + 29 * DAY);
        assert!(bundle_trusts(
            c.ca_pem.as_bytes(),
            &c.certified,
            "rustmesh-webhook.istio-system.svc",
            now
        ));
        let debug = format!("{c:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        let secret = c.to_secret("istio-system", "rustmesh-webhook-tls");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    }

    #[test]
    fn unusable_secrets_are_named_without_their_key() {
        let c = SharedCert::generate(&names(), 30, SystemTime::now(), None).unwrap();
        let mut data = c.secret_data();
        data.remove(TLS_KEY);
        assert_eq!(SharedCert::parse(&data).unwrap_err(), "no `tls.key`");
        let other = SharedCert::generate(&names(), 30, SystemTime::now(), None).unwrap();
        let mut data = c.secret_data();
        data.insert(TLS_KEY.into(), other.secret_data()[TLS_KEY].clone());
        let err = SharedCert::parse(&data).unwrap_err();
        assert!(err.contains("tls.crt") && !err.contains("PRIVATE"), "{err}");
        let mut data = c.secret_data();
        data.insert(CA_CRT.into(), ByteString(b"junk".to_vec()));
        assert!(SharedCert::parse(&data).unwrap_err().contains("ca.crt"));
    }

    #[test]
    fn when_to_create_rotate_replace_or_keep() {
        let now = SystemTime::now();
        let c = SharedCert::generate(&names(), 30, now, None).unwrap();
        assert_eq!(secret_action(None, &names(), now), SecretAction::Create);
        assert_eq!(
            secret_action(Some(Err("no `tls.key`")), &names(), now),
            SecretAction::Replace("no `tls.key`".into())
        );
        assert_eq!(
            secret_action(Some(Ok(&c)), &names(), now),
            SecretAction::Keep
        );
        // Two thirds in: rotate; past the end: replace.
        let renew = c.renew_at();
        assert!(
            renew > now + 18 * DAY && renew < now + 22 * DAY,
            "{renew:?}"
        );
        assert_eq!(
            secret_action(Some(Ok(&c)), &names(), renew - Duration::from_secs(1)),
            SecretAction::Keep
        );
        assert_eq!(
            secret_action(Some(Ok(&c)), &names(), renew),
            SecretAction::Rotate
        );
        assert_eq!(
            secret_action(Some(Ok(&c)), &names(), c.not_after),
            SecretAction::Replace("expired".into())
        );
        // Another Service name (e.g. a revision): replaced, naming the missing name.
        let other = tls::service_dns_names("rustmesh-webhook-canary", "istio-system", &[]);
        match secret_action(Some(Ok(&c)), &other, now) {
            SecretAction::Replace(why) => assert!(why.contains("rustmesh-webhook-canary"), "{why}"),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn a_rotation_bundle_trusts_both_and_replicas_switch_only_once_the_bundle_does() {
        let now = SystemTime::now();
        let host = "rustmesh-webhook.istio-system.svc";
        let old = SharedCert::generate(&names(), 30, now, None).unwrap();
        let new = SharedCert::generate(&names(), 30, now, Some(&old)).unwrap();
        // ca.crt: the new CA, then the old one.
        assert!(bundle_trusts(
            new.ca_pem.as_bytes(),
            &new.certified,
            host,
            now
        ));
        assert!(bundle_trusts(
            new.ca_pem.as_bytes(),
            &old.certified,
            host,
            now
        ));
        assert!(!bundle_trusts(
            old.ca_pem.as_bytes(),
            &new.certified,
            host,
            now
        ));
        assert!(!bundle_trusts(b"", &new.certified, host, now));
        assert!(!bundle_trusts(
            new.ca_pem.as_bytes(),
            &new.certified,
            "other.svc",
            now
        ));
        // An expired previous certificate's CA is not carried over.
        let later = now + 40 * DAY;
        let newer = SharedCert::generate(&names(), 30, later, Some(&old)).unwrap();
        assert_eq!(newer.ca_pem.matches("BEGIN CERTIFICATE").count(), 1);
        // Nor is more than one previous CA.
        let third = SharedCert::generate(&names(), 30, now, Some(&new)).unwrap();
        assert_eq!(third.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);

        let old_bundle = Some(old.ca_pem.as_bytes());
        let new_bundle = Some(new.ca_pem.as_bytes());
        // The bundle still old: keep serving the old certificate.
        assert_eq!(
            choose_served(
                Some(&old.certified),
                &new,
                &[old_bundle, old_bundle],
                host,
                now
            ),
            Serve::Current
        );
        // One webhook patched, the other not yet: still the old one.
        assert_eq!(
            choose_served(
                Some(&old.certified),
                &new,
                &[new_bundle, old_bundle],
                host,
                now
            ),
            Serve::Current
        );
        // Every bundle patched: the new one.
        assert_eq!(
            choose_served(
                Some(&old.certified),
                &new,
                &[new_bundle, new_bundle],
                host,
                now
            ),
            Serve::Secret
        );
        // Nothing served yet, or nothing trusted at all (a fresh install): the Secret's.
        assert_eq!(
            choose_served(None, &new, &[old_bundle], host, now),
            Serve::Secret
        );
        assert_eq!(
            choose_served(Some(&old.certified), &new, &[None], host, now),
            Serve::Secret
        );
    }

    #[test]
    fn ready_only_when_every_webhook_trusts_the_served_certificate() {
        let now = SystemTime::now();
        let host = "rustmesh-webhook.istio-system.svc";
        let c = SharedCert::generate(&names(), 30, now, None).unwrap();
        let other = SharedCert::generate(&names(), 30, now, None).unwrap();
        let good = Some(c.ca_pem.as_bytes().to_vec());
        let mwc = "MutatingWebhookConfiguration m".to_owned();
        let vwc = "ValidatingWebhookConfiguration v".to_owned();
        let ok = vec![
            (
                mwc.clone(),
                Some(Some(vec![
                    ("a".into(), good.clone()),
                    ("b".into(), good.clone()),
                ])),
            ),
            (vwc.clone(), Some(Some(vec![("c".into(), good.clone())]))),
        ];
        assert_eq!(trust_problem(Some(&c.certified), &ok, host, now), None);
        assert!(trust_problem(None, &ok, host, now).is_some());
        let p = trust_problem(Some(&other.certified), &ok, host, now).unwrap();
        assert!(p.contains("webhook a") && p.contains(&mwc), "{p}");
        let mut not_listed = ok.clone();
        not_listed[1].1 = None;
        assert!(
            trust_problem(Some(&c.certified), &not_listed, host, now)
                .unwrap()
                .contains("listed")
        );
        let mut absent = ok.clone();
        absent[1].1 = Some(None);
        assert!(
            trust_problem(Some(&c.certified), &absent, host, now)
                .unwrap()
                .contains("does not exist")
        );
        let mut unset = ok;
        unset[1].1 = Some(Some(vec![("c".into(), None)]));
        assert!(
            trust_problem(Some(&c.certified), &unset, host, now)
                .unwrap()
                .contains("webhook c")
        );
    }

    #[test]
    fn the_bundle_is_patched_only_where_it_differs_so_replicas_converge() {
        let now = SystemTime::now();
        let c = SharedCert::generate(&names(), 30, now, None).unwrap();
        let webhooks = vec![
            ("a".to_owned(), None),
            ("b".to_owned(), Some(b"x".to_vec())),
        ];
        let patch = ca_bundle_patch_for(&webhooks, &c.ca_pem).expect("both differ");
        assert_eq!(patch.0.len(), 4, "a test and an add per webhook");
        // Once written (by either replica), nobody patches again.
        let done = vec![
            ("a".to_owned(), Some(c.ca_pem.as_bytes().to_vec())),
            ("b".to_owned(), Some(c.ca_pem.as_bytes().to_vec())),
        ];
        assert!(ca_bundle_patch_for(&done, &c.ca_pem).is_none());
    }
}
