//! The mesh CA (Istio's Citadel part of istiod): workload certificates for SPIFFE identities.
//!
//! - [`authority`]: the root or plugged-in intermediate and the pure signing of a CSR for an
//!   authenticated identity (what is signed is decided here, never by the CSR);
//! - [`review`]: who the caller is: its projected service-account token (audience `istio-ca`)
//!   checked by the API server's TokenReview;
//! - [`root`]: where the CA's material lives (`cacerts` plug-in, or the self-signed
//!   `istio-ca-secret` created on first start) and the `istio-ca-root-cert` ConfigMap.

pub mod authority;
pub mod review;
pub mod root;
