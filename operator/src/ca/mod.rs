//! The mesh CA (Istio's Citadel part of istiod): workload certificates for SPIFFE identities.
//!
//! - [`authority`]: the root or plugged-in intermediate and the pure signing of a CSR for an
//!   authenticated identity (what is signed is decided here, never by the CSR);
//! - [`credential`]: a DestinationRule's `credentialName` Secret, served to a sidecar of its
//!   namespace whose service account may list Secrets (Istio's rule);
//! - [`review`]: who the caller is: its projected service-account token (audience `istio-ca`)
//!   checked by the API server's TokenReview;
//! - [`root`]: where the CA's material lives (`cacerts` plug-in, or the self-signed
//!   `istio-ca-secret` created on first start) and the `istio-ca-root-cert` ConfigMap;
//! - [`publish`]: keeps `istio-ca-root-cert` in every namespace (the leader writes);
//! - [`service`]: Istio's `IstioCertificateService/CreateCertificate` over gRPC and TLS
//!   (port 15012): the decision core [`service::Ca`] and its server.

pub mod authority;
pub mod credential;
pub mod publish;
pub mod review;
pub mod root;
pub mod service;
