//! `rustmesh-xds`: the proxy's configuration model, shared by the operator (which renders it),
//! the proxy (which runs it) and `proxy-config` (which shows it).
//!
//! The shapes and names follow Envoy's and Istio's, so `/config_dump` and the `proxy-config`
//! tables read the way users of Istio know them: listeners `virtualOutbound` (0.0.0.0:15001),
//! `virtualInbound` (0.0.0.0:15006), `0.0.0.0_9080`; routes `9080`; clusters
//! `outbound|9080|v1|reviews.default.svc.cluster.local`, `inbound|9080||`, `PassthroughCluster`,
//! `BlackHoleCluster`, `InboundPassthroughClusterIpv4`.
//!
//! Also what the parts must agree on beyond the model: the ConfigMap contract (`configmap`,
//! `scope`) and the back-off with which each retries the Kubernetes API (`backoff`).
//! [`yaml`] is the one reader of YAML written by users (the webhook's annotations and settings,
//! `rustmesh-api`'s Istio documents), with bounds on what aliases may expand to.
//! With the `serve` feature, [`serve`] caps and times out the connections of every part's own
//! ports (webhook, operator, the sidecar's admin ports) and raises the open-files limit.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod address;
pub mod authz;
pub mod backoff;
pub mod ca;
pub mod cel;
pub mod cluster;
pub mod config;
pub mod configmap;
pub mod duration;
pub mod error;
pub mod fnv;
pub mod identity;
pub mod listener;
pub mod names;
pub mod peer_authn;
pub mod probe;
pub mod regex;
pub mod request_authn;
pub mod route;
pub mod scope;
#[cfg(feature = "serve")]
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod types;
pub mod well_known;
pub mod yaml;

pub use config::ProxyConfig;
pub use duration::Duration;
pub use error::Error;
