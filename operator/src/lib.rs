//! `rustmesh-operator`: the control plane (Istio's istiod/pilot part).
//!
//! - [`index`]: the in-memory index of Services, Endpoints, pods' labels, namespaces and the
//!   Istio CRDs, updated by watch events and testable without an API server;
//! - [`render`]: the pure renderer `render(index, scope) -> ProxyConfig`;
//! - [`validation`]: each Istio object's verdict and the status conditions written back;
//! - [`configmap`]: the ConfigMap contract (keys, endpoint parts, compression, hashing) and the
//!   reader RBAC;
//! - [`renderer`]: rendering batch after batch, endpoint-only batches incrementally;
//! - [`slices`]: EndpointSlices merged per service into the Endpoints the index holds;
//! - [`controller`]: watchers feeding the index, debounced re-rendering of the affected
//!   namespaces, server-side apply, leader election, metrics and health.
#![forbid(unsafe_code)]

pub mod cli;
pub mod configmap;
pub mod controller;
pub mod debounce;
pub mod error;
pub mod fixtures;
pub mod index;
pub mod kinds;
pub mod leader;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod render;
pub mod renderer;
pub mod slices;
pub mod validation;

pub use cli::{Args, run};
pub use error::Error;
pub use index::{Index, MeshConfig, ObjKey};
pub use render::{MeshView, Scope, render, render_view};
