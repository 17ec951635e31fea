//! The mesh CA (Istio's Citadel part of istiod): workload certificates for SPIFFE identities.
//!
//! - [`authority`]: the root or plugged-in intermediate and the pure signing of a CSR for an
//!   authenticated identity (what is signed is decided here, never by the CSR).

pub mod authority;
