//! Keeps the workload's certificate valid: fetch at start, renew at [`super::cert::RENEW_AT`]
//! of its lifetime, retry with capped exponential backoff while the CA fails, and keep the
//! current certificate until it expires (a CA outage does not break serving). An expired
//! certificate is dropped, so the sidecar reports not ready instead of presenting it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustmesh_xds::identity::SpiffeId;

use super::ca_client::CaClient;
use super::cert::WorkloadCert;
use super::credential::Credentials;
use crate::drain;

/// The first retry delay after a failure.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The current certificate, swapped atomically; handshakes read it without locks. Also holds
/// the `credentialName` Secrets fetched from the same CA.
#[derive(Default)]
pub struct Store {
    current: ArcSwapOption<WorkloadCert>,
    generation: AtomicU64,
    failures: AtomicU64,
    credentials: Credentials,
}

impl Store {
    /// The `credentialName` Secrets (TLS to servers outside the mesh).
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The current certificate, if any (it may have expired if the CA stayed down).
    pub fn current(&self) -> Option<Arc<WorkloadCert>> {
        self.current.load_full()
    }

    /// Whether a certificate valid now is held.
    pub fn ready(&self) -> bool {
        self.current()
            .is_some_and(|c| c.is_valid_at(SystemTime::now()))
    }

    /// How many certificates have been installed (tells TLS configurations to rebuild).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Failed fetches since the last success.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Installs `cert`.
    pub fn install(&self, cert: WorkloadCert) {
        self.current.store(Some(Arc::new(cert)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.failures.store(0, Ordering::Relaxed);
    }

    fn drop_expired(&self, now: SystemTime) {
        if self.current().is_some_and(|c| !c.is_valid_at(now)) {
            self.current.store(None);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// How long to wait before the next fetch: until the certificate's renewal time after a
/// success; after `failures` failures in a row, `RETRY_MIN * 2^(failures-1)` capped at
/// [`RETRY_MAX`] (and never past the current certificate's renewal time, when that is later).
pub fn next_fetch(current: Option<&WorkloadCert>, failures: u32, now: SystemTime) -> Duration {
    let renew = current
        .map(|c| c.renew_at().duration_since(now).unwrap_or_default())
        .unwrap_or_default();
    if failures == 0 {
        return renew;
    }
    let backoff = RETRY_MIN
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(RETRY_MAX);
    backoff.max(renew)
}

/// Fetches and renews `identity`'s certificate into `store` until the drain closes (a long
/// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` drain still renews).
pub async fn run(client: CaClient, identity: SpiffeId, store: Arc<Store>, drain: drain::Watch) {
    let mut failures: u32 = 0;
    loop {
        match client.fetch(&identity).await {
            Ok(cert) => {
                tracing::info!(identity = %identity, serial = %cert.serial,
                    "workload certificate installed");
                store.install(cert);
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                store.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(identity = %identity, attempt = failures,
                    "workload certificate: {e}");
            }
        }
        let now = SystemTime::now();
        store.drop_expired(now);
        let wait = next_fetch(store.current().as_deref(), failures, now);
        // Wake at expiry too, to stop presenting an expired certificate.
        let expiry = store
            .current()
            .and_then(|c| c.not_after.duration_since(now).ok())
            .unwrap_or(wait);
        tokio::select! {
            () = tokio::time::sleep(wait.min(expiry.max(Duration::from_millis(1)))) => {}
            () = drain.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let now = SystemTime::now();
        let waits: Vec<u64> = (0..8).map(|f| next_fetch(None, f, now).as_secs()).collect();
        assert_eq!(waits, vec![0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(next_fetch(None, u32::MAX, now), RETRY_MAX);
    }

    #[test]
    fn an_empty_store_is_not_ready() {
        let store = Store::default();
        assert!(!store.ready());
        assert_eq!((store.generation(), store.failures()), (0, 0));
    }
}
