//! Chains already verified, so a peer's certificate chain is checked against the roots once,
//! not at every handshake.
//!
//! A full mutual TLS handshake costs each side two ECDSA verifications: the peer's chain (its
//! certificate signed by the CA) and the peer's `CertificateVerify` (the handshake signed by
//! the peer's key). The first gives the same answer for the same chain until the certificates'
//! validity ends, and sidecars see the same few peers' chains over and over; the second proves
//! the peer holds the key now and is never cached. A [`ChainCache`] belongs to one verifier,
//! hence to one set of roots (a new root or a renewed workload certificate builds new
//! verifiers, with empty caches). An entry is the SHA-256 of the exact chain bytes (leaf and
//! intermediates, length-prefixed) and the window in which all its certificates are valid; a
//! hit outside that window is a miss, so an expired chain is verified again (and refused).
//! At most [`MAX_CHAINS`] entries: when full, the cache starts over.
//!
//! [`CachingClientVerifier`] puts the cache in front of rustls' client-certificate verifier
//! (the server side of mutual TLS), then checks a gateway server's pins on the client's
//! certificate at every handshake ([`super::pinned`]); the client side's verifier uses
//! [`ChainCache`] directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::pinned::ClientPins;
use crate::sync::lock;

/// The most chains remembered by one verifier.
pub const MAX_CHAINS: usize = 1024;

/// Verified chains of one verifier: chain digest → (not before, not after), seconds since the
/// epoch.
#[derive(Debug, Default)]
pub struct ChainCache {
    entries: Mutex<HashMap<[u8; 32], (u64, u64)>>,
}

fn digest(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for cert in std::iter::once(end_entity).chain(intermediates) {
        ctx.update(&(cert.len() as u64).to_be_bytes());
        ctx.update(cert.as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The window in which every certificate of the chain is valid, if all parse.
fn window(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<(u64, u64)> {
    let mut from = 0u64;
    let mut until = u64::MAX;
    for cert in std::iter::once(end_entity).chain(intermediates) {
        let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
        let v = c.validity();
        from = from.max(u64::try_from(v.not_before.timestamp()).ok()?);
        until = until.min(u64::try_from(v.not_after.timestamp()).ok()?);
    }
    Some((from, until))
}

impl ChainCache {
    /// Whether this chain was verified and all of it is valid at `now`.
    pub fn verified(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        let key = digest(end_entity, intermediates);
        let now = now.as_secs();
        lock(&self.entries)
            .get(&key)
            .is_some_and(|(from, until)| *from <= now && now <= *until)
    }

    /// Remembers that this chain verified.
    pub fn remember(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let Some(window) = window(end_entity, intermediates) else {
            return;
        };
        let key = digest(end_entity, intermediates);
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_CHAINS {
            entries.clear();
        }
        entries.insert(key, window);
    }

    /// How many chains are remembered.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client-certificate verifier that checks a chain once ([`ChainCache`]), then `pins` on
/// the client's certificate every time, and delegates everything else, the handshake
/// signatures included, to `inner`.
#[derive(Debug)]
pub struct CachingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cache: ChainCache,
    pins: ClientPins,
}

impl CachingClientVerifier {
    /// `inner` with a cache in front and `pins` (none: [`ClientPins::default`]) after it.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, pins: ClientPins) -> Self {
        CachingClientVerifier {
            inner,
            cache: ChainCache::default(),
            pins,
        }
    }
}

impl ClientCertVerifier for CachingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        if !self.cache.verified(end_entity, intermediates, now) {
            self.inner
                .verify_client_cert(end_entity, intermediates, now)?;
            self.cache.remember(end_entity, intermediates);
        }
        self.pins.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::time::Duration;

    fn cert(days: i64) -> CertificateDer<'static> {
        thread_local!(static KEY: KeyPair = KeyPair::generate().unwrap());
        KEY.with(|key| signed(key, days))
    }

    fn signed(key: &KeyPair, days: i64) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        p.self_signed(key).unwrap().der().clone()
    }

    #[test]
    fn a_chain_is_remembered_only_while_all_of_it_is_valid() {
        let cache = ChainCache::default();
        let leaf = cert(1);
        let inter = cert(30);
        let now = UnixTime::now();
        assert!(!cache.verified(&leaf, std::slice::from_ref(&inter), now));
        cache.remember(&leaf, std::slice::from_ref(&inter));
        assert!(cache.verified(&leaf, std::slice::from_ref(&inter), now));
        // Other bytes (another leaf, or the leaf without its intermediate) are not it.
        assert!(!cache.verified(&cert(1), std::slice::from_ref(&inter), now));
        assert!(!cache.verified(&leaf, &[], now));
        // Past the leaf's end, or before its start, it is verified again.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 3 * 86400));
        assert!(!cache.verified(&leaf, std::slice::from_ref(&inter), later));
        let earlier = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() - 3 * 86400));
        assert!(!cache.verified(&leaf, std::slice::from_ref(&inter), earlier));
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = ChainCache::default();
        let leaf = cert(1);
        for i in 0..(MAX_CHAINS + 5) {
            let inter = vec![CertificateDer::from(i.to_be_bytes().to_vec())];
            // Not parsable: never remembered.
            cache.remember(&leaf, &inter);
        }
        assert!(cache.is_empty());
        let many: Vec<CertificateDer<'static>> = (0..MAX_CHAINS + 5).map(|_| cert(1)).collect();
        for c in &many {
            cache.remember(c, &[]);
        }
        assert!(cache.len() <= MAX_CHAINS);
    }
}
