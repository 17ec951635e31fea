//! One endpoint of a cluster at run time ([`Endpoint`]): its place in load balancing (health,
//! weight, priority), its counters and outlier state, its HTTP connection pools, and the guards
//! that count a request ([`RequestGuard`]) or a TCP proxy connection ([`LoadGuard`]) in its
//! stats and in LEAST_REQUEST's load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustmesh_xds::cluster::{HealthStatus, Locality};

use super::{lb, outlier};
use crate::dial::EndpointStats;
use crate::pool::EndpointPools;

/// One endpoint of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// As the control plane reports it.
    pub health: HealthStatus,
    /// `loadBalancingWeight`, 1 when unset.
    pub weight: u32,
    /// Locality priority (0 is tried first).
    pub priority: u32,
    /// Region / zone / sub-zone.
    pub locality: Option<Locality>,
    /// Host name, for STRICT_DNS endpoints.
    pub hostname: Option<String>,
    /// Counters (`/clusters`), carried over while the endpoint stays in its cluster.
    pub stats: Arc<EndpointStats>,
    /// Outlier detection's view of it (consecutive errors, ejection), carried over as `stats`.
    pub outlier: Arc<outlier::HostState>,
    /// HTTP connection pools to it (kept while the cluster's definition is unchanged).
    pub pools: Arc<EndpointPools>,
    /// Mutual TLS to originate to it (its cluster's `transportSocket`, or the
    /// `transportSocketMatches` entry its metadata matches); `None`: plain TCP.
    pub tls: Option<Arc<crate::transport::Originate>>,
}

impl Endpoint {
    /// Whether load balancing may pick it (`HEALTHY` or `UNKNOWN`).
    pub fn usable(&self) -> bool {
        matches!(self.health, HealthStatus::Healthy | HealthStatus::Unknown)
    }

    /// Starts an HTTP request on this endpoint: counts it in `rq_total` and `rq_active` (and in
    /// LEAST_REQUEST's load) until the guard is finished or dropped (dropped = error).
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        self.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        self.stats.load.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            endpoint: self.clone(),
            done: false,
        }
    }

    /// Counts a TCP proxy connection in LEAST_REQUEST's load while the guard lives.
    pub fn hold(self: &Arc<Self>) -> LoadGuard {
        self.stats.load.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            endpoint: self.clone(),
        }
    }
}

impl lb::Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> u64 {
        self.stats.load.load(Ordering::Relaxed)
    }
}

/// How an HTTP request on an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Answered (counted in `rq_success`).
    Success,
    /// Failed (5xx, reset; `rq_error`).
    Error,
    /// Timed out (`rq_timeout` and `rq_error`).
    Timeout,
}

/// An HTTP request in flight on an endpoint (see [`Endpoint::start_request`]).
#[derive(Debug)]
pub struct RequestGuard {
    endpoint: Arc<Endpoint>,
    done: bool,
}

impl RequestGuard {
    /// Ends the request with its outcome.
    pub fn finish(mut self, outcome: RequestOutcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: RequestOutcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let s = &self.endpoint.stats;
        s.rq_active.fetch_sub(1, Ordering::Relaxed);
        s.load.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            RequestOutcome::Success => s.rq_success.fetch_add(1, Ordering::Relaxed),
            RequestOutcome::Error => s.rq_error.fetch_add(1, Ordering::Relaxed),
            RequestOutcome::Timeout => {
                s.rq_error.fetch_add(1, Ordering::Relaxed);
                s.rq_timeout.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.record(RequestOutcome::Error);
    }
}

/// A TCP proxy connection counted in an endpoint's load (see [`Endpoint::hold`]).
#[derive(Debug)]
pub struct LoadGuard {
    endpoint: Arc<Endpoint>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.endpoint.stats.load.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{config, eds, endpoints, manager};

    #[test]
    fn request_guard_counts_once() {
        let c = config(serde_json::json!({
            "clusters": [eds("a", "RANDOM")],
            "endpoints": [endpoints("a", &[("10.0.0.1:80", "HEALTHY", 0)])],
        }));
        let clusters = manager().build(&c);
        let e = clusters.get("a").unwrap().pick(None).unwrap();
        e.start_request().finish(RequestOutcome::Timeout);
        drop(e.start_request());
        let s = e.stats.snapshot();
        let get = |n: &str| s.iter().find(|(k, _, _)| *k == n).unwrap().1;
        assert_eq!(get("rq_total"), 2);
        assert_eq!(get("rq_active"), 0);
        assert_eq!(get("rq_timeout"), 1);
        assert_eq!(get("rq_error"), 2);
        assert_eq!(lb::Candidate::load(&e), 0);
    }
}
