//! What every capture listener and connection handler shares: the configuration store, the
//! counters, Istio's metrics, the workload, the HTTP connection manager and the workload
//! certificate.

use std::sync::Arc;

use crate::http::handler::ConnectionManager;
use crate::metrics::{Metrics as IstioMetrics, WorkloadInfo};
use crate::snapshot::Store;
use crate::stats::Metrics;

/// What every listener shares.
pub struct Shared {
    /// The current configuration.
    pub store: Arc<Store>,
    /// Envoy-style counters (listeners, clusters).
    pub metrics: Metrics,
    /// Istio's standard metrics (`istio_tcp_*` are recorded by the TCP proxy), and the registry.
    pub istio: Arc<IstioMetrics>,
    /// This pod's workload (labels of Istio's metrics).
    pub workload: Arc<WorkloadInfo>,
    /// The HTTP connection manager.
    pub http: Arc<ConnectionManager>,
    /// The workload certificate (empty without a CA): chains terminating mutual TLS present it.
    pub identity: Arc<crate::identity::Store>,
    /// TPROXY interception: inbound connections to the app (ORIGINAL_DST clusters) leave from
    /// the client's own address, as Istio's `original_src` filter does
    /// ([`crate::dial::ClusterDialer::with_original_source`]).
    pub original_source: bool,
    /// A router (`proxy run --type router`): on SIGTERM every HTTP connection closes after its
    /// request, as Istio's agent drains all of a router's listeners (`drain_listeners?graceful`),
    /// where a sidecar drains only the inbound ones; and the pod's AuthorizationPolicies and JWT
    /// rules apply on every listener, as Istio applies a gateway's.
    pub router: bool,
}

impl Shared {
    /// This workload's SPIFFE id, while it holds a certificate (Istio's principal label).
    pub fn own_principal(&self) -> Option<String> {
        self.identity.current().map(|c| c.identity.to_string())
    }
}
