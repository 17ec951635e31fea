//! `rustmesh-api`: Istio's `networking.istio.io` API, `security.istio.io`'s
//! PeerAuthentication, AuthorizationPolicy and RequestAuthentication, and
//! `telemetry.istio.io`'s Telemetry as Rust types.
//!
//! - [`VirtualService`], [`DestinationRule`], [`Sidecar`], [`ServiceEntry`], [`Gateway`],
//!   [`PeerAuthentication`], [`AuthorizationPolicy`], [`RequestAuthentication`] and
//!   [`Telemetry`] read Istio's own YAML unchanged (camelCase, `0.5s` durations, `oneOf` fields
//!   such as `StringMatch`). What a ServiceEntry or a Gateway may hold that the operator does
//!   not render is refused by name ([`support`]).
//! - [`parse::load`] reads multi-document YAML and reports errors with field path and line. It
//!   reads within [`rustmesh_xds::yaml::Limits::MANIFESTS`]: a stream of at most 16 MiB, whose
//!   aliases may not expand it past 4 Mi nodes or 64 MiB of text in all, nested at most 64 deep
//!   (a "billion laughs" alias bomb is refused naming the limit and the document);
//!   [`parse::load_all_with`] takes other limits.
//! - [`validate::Validate`] checks what the schema cannot (weights, regexes, subsets, hosts).
//! - [`checks::object_findings`]: every check of one object that needs no other object, errors
//!   and warnings, shared by the operator's status conditions and the validating webhook.
//! - [`crd`] generates the CRDs checked in under `crds/`.
#![forbid(unsafe_code)]

pub mod authorization_policy;
pub mod checks;
pub mod common;
pub mod crd;
pub mod destination_rule;
pub mod error;
pub mod gateway;
mod locate;
pub mod parse;
pub mod peer_authentication;
pub mod request_authentication;
pub mod service_entry;
pub mod sidecar;
pub mod status;
pub mod support;
pub mod telemetry;
pub mod validate;
pub mod virtual_service;
pub mod workload;

pub use authorization_policy::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use destination_rule::{DestinationRule, DestinationRuleSpec};
pub use error::{Error, FieldError};
pub use gateway::{Gateway, GatewaySpec};
pub use parse::{IstioObject, load, load_all, load_all_with};
pub use peer_authentication::{PeerAuthentication, PeerAuthenticationSpec};
pub use request_authentication::{RequestAuthentication, RequestAuthenticationSpec};
pub use rustmesh_xds::duration::{self, Duration};
pub use rustmesh_xds::yaml;
pub use service_entry::{ServiceEntry, ServiceEntrySpec};
pub use sidecar::{Sidecar, SidecarSpec};
pub use status::IstioStatus;
pub use telemetry::{Telemetry, TelemetrySpec};
pub use virtual_service::{VirtualService, VirtualServiceSpec};
