//! rustmesh's sidecar binary, as a library: the capture step (`proxy istio-iptables`) and the
//! socket helpers the sidecar's listeners use to learn where a captured connection was going.
//!
//! `main.rs` only parses the command line and calls in here.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod capture;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod drain;
mod error;
pub mod http;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod sidecar;
pub mod snapshot;
pub mod sniff;
pub mod socket;
pub mod stats;
pub mod wait;

pub use error::{Error, Result};
