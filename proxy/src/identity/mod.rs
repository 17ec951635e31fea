//! The sidecar's workload identity: its SPIFFE id, a P-256 key generated here that never leaves
//! the process (never written to disk or logged), and the certificate the mesh CA issues for it,
//! renewed before it expires.
//!
//! - [`cert`]: a workload certificate as the sidecar holds it ([`WorkloadCert`]), checked on
//!   arrival: the chain verifies against the mesh root, the leaf names exactly this workload,
//!   and its key is the one generated here.
//! - [`ca_client`]: asks the CA (Istio's `IstioCertificateService/CreateCertificate` over gRPC
//!   and TLS, authenticated by the pod's projected `istio-ca` token).
//! - [`credential`]: `credentialName` Secrets (a DestinationRule's, a `Gateway` server's),
//!   fetched from the CA for this workload, kept in memory and refreshed;
//! - [`manager`]: keeps a valid certificate in a [`Store`]: fetches at start, renews at 80 % of
//!   the lifetime, retries with backoff while the CA is down, and keeps serving with the current
//!   certificate until it expires.
//! - [`pinned`]: client certificates a gateway server pins (subject alt names, certificate
//!   and key digests), checked after the chain;
//! - [`verified`]: peer chains verified once per verifier, not at every handshake (the
//!   handshake's own signature always is);
//! - [`tls`]: Istio's mutual TLS between sidecars as rustls configurations (chains verified
//!   against the mesh root, SPIFFE ids instead of DNS names, Istio's ALPN).

pub mod ca_client;
pub mod cert;
pub mod credential;
pub mod manager;
pub mod pinned;
pub mod tls;
pub mod verified;

pub use cert::WorkloadCert;
pub use manager::Store;
