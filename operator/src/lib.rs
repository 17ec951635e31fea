//! `rustmesh-operator`: the control plane (Istio's istiod/pilot part).
//!
//! Modules (the imports between them form no cycle; `cli` and `main` are the thin top):
//! - [`index`]: the in-memory index of Services, Endpoints, pods' labels, namespaces and the
//!   Istio CRDs, updated by watch events and testable without an API server; [`index::kinds`]:
//!   the one trait ([`index::kinds::IstioKind`]) and generic store every Istio kind goes through;
//! - [`jwks`]: the key sets of RequestAuthentication rules: what the index's objects need
//!   fetched, what the fetches gave (pure), and the fetcher over HTTP(S) (the I/O shell the
//!   controller runs);
//! - [`registry`]: the services and their endpoints as the renderer reads them;
//! - [`validation`]: each Istio object's verdict and the status conditions written back;
//! - [`delegate`]: VirtualService delegation, the delegate's routes merged into the root's
//!   (shared by validation's warnings and the renderer);
//! - [`render`](mod@render): the pure renderer (`render_parts(view, scope) -> ProxyConfig`);
//! - [`configmap`]: the ConfigMap contract (keys, endpoint parts, compression, hashing, the
//!   hashed [`render`](fn@render)/[`render_view`]) and the reader RBAC;
//! - [`renderer`]: rendering batch after batch, endpoint-only batches incrementally;
//! - [`slices`]: EndpointSlices merged per service into the Endpoints the index holds;
//! - [`controller`]: watches feeding the index, debounced re-rendering of the affected
//!   namespaces, server-side apply, statuses, leader election, metrics and health.
#![forbid(unsafe_code)]

pub mod ca;
pub mod cli;
pub mod configmap;
pub mod controller;
pub mod debounce;
pub mod delegate;
pub mod error;
pub mod fixtures;
pub mod index;
pub mod jwks;
pub mod leader;
pub mod metrics;
pub mod protocol;
pub mod providers;
pub mod registry;
pub mod render;
pub mod renderer;
pub mod slices;
pub mod validation;

pub use cli::{Args, run};
pub use configmap::{render, render_view};
pub use error::Error;
pub use index::{Index, MeshConfig, ObjKey};
pub use render::{MeshView, Scope};
