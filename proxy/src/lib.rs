//! rustmesh's sidecar binary, as a library: the capture step (`proxy istio-iptables`) and the
//! socket helpers the sidecar's listeners use to learn where a captured connection was going.
//!
//! `main.rs` only parses the command line and calls in here.
//!
//! The modules depend one way (`tests/module_graph.rs` checks it). A request's path, each module
//! calling only the ones after it: [`listener`] (accept, original destination, filter chain,
//! with [`snapshot`] the compiled configuration) → [`http`] (connection manager, route) or the
//! TCP proxy → [`cluster`] (cluster by name, load balancing, outlier detection, endpoints) →
//! [`pool`] (per-endpoint HTTP connection pools, circuit breaker) → [`dial`] (opening and
//! counting upstream connections) → [`transport`] (plain or TLS bytes: mutual TLS terminated
//! on a chain, originated to an endpoint, with [`identity`]'s certificate) → [`stats`],
//! [`socket`]. Beside them: [`body`] (the body
//! types) and [`drive`] (running a hyper connection in one task), used by `http` and `pool`;
//! [`authz`] (AuthorizationPolicy, compiled with the snapshot, enforced by the inbound
//! listener and the HTTP connection manager), [`metrics`], [`admin`], [`status`] (15020: the
//! app's probes), [`config`], [`identity`],
//! [`dns`], [`drain`], [`wait`], [`capture`];
//! [`sidecar`] wires them.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod body;
pub mod capture;
pub mod cluster;
pub mod config;
pub mod dial;
pub mod dns;
pub mod drain;
pub mod drive;
mod error;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod listener;
pub mod logging;
pub mod merge_metrics;
pub mod metrics;
pub mod peer;
pub mod pool;
pub mod sidecar;
pub mod snapshot;
pub mod sniff;
pub mod socket;
pub mod stats;
pub mod status;
mod sync;
pub mod trace;
pub mod transport;
pub mod wait;

pub use error::{Error, Result};
