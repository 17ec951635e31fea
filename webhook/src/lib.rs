//! `rustmesh-webhook`: the mutating admission webhook that injects `istio-init` and `istio-proxy`
//! into pods, the way Istio's sidecar injector does.
//!
//! The admission decision is a pure function ([`review()`]) of an `AdmissionRequest<Pod>` and the
//! [`InjectionSettings`]; the HTTPS server ([`server`]), certificates ([`tls`]) and the
//! Kubernetes watches ([`kube_sync`]) are thin layers around it.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod app;
pub mod canonical;
pub mod custom_templates;
pub mod decide;
pub mod error;
pub mod inject;
pub mod kube_sync;
pub mod metrics;
pub mod names;
pub mod native;
pub mod overlay;
pub mod patch;
pub mod probes;
pub mod prometheus;
pub mod proxy_config;
pub mod readiness;
pub mod reinject;
pub mod resources;
pub mod review;
pub mod server;
pub mod settings;
pub mod shared_cert;
pub mod templates;
pub mod tls;
pub mod traffic;
pub mod user_volumes;
pub mod validation;
pub mod values;

pub use app::{Args, Webhook, run};
pub use decide::{Decision, Why, decide};
pub use error::{Error, Result};
pub use inject::{Injection, SidecarStatus, inject};
pub use review::{Outcome, review, review_body, review_in_namespace};
pub use settings::{InjectionSettings, NativeSidecars};
pub use traffic::{InterceptionMode, InvalidAnnotations};
