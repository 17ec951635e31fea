//! What every capture listener and connection handler shares: the configuration store, the
//! counters, Istio's metrics, the workload and the HTTP connection manager.

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
}
