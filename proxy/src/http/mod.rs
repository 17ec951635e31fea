//! HTTP routing with VirtualService semantics, as a library independent of the listeners.
//!
//! The listener plumbing accepts a connection, picks an `http_connection_manager` filter chain
//! and calls [`serve_connection`] with the connection and an [`HttpContext`]: the compiled route
//! table (swappable), the cluster manager ([`upstreams::ClusterUpstreams`]), metrics, and the connection's
//! addresses. Everything else (virtual host and route matching, faults, redirects, rewrites,
//! header changes, retries, timeouts, mirrors, hash keys, upgrades, metrics and access logs)
//! happens here.
//!
//! A request passes these stages, one file each, in order: `server.rs` (the connection: hyper,
//! drain), `request.rs` (head, request id, authorization (`authorize.rs`, inbound with
//! AuthorizationPolicies), route match, faults, redirect and direct responses),
//! `forward.rs` (the upstream request built once, its body kept for retries and mirrors, the
//! mirrors, the answer's headers, upgrades), [`retry`] (the attempts), `reply.rs` (local
//! replies, gRPC status mapping, an upstream error's reply and flag), `record.rs` (metrics and
//! the access log when the response body ends).
//!
//! * [`route`]: the route engine ([`RouteTable`]), compiled once per configuration snapshot
//!   (`route/compile.rs`), matched per request (`route/matching.rs`), with the matched route's
//!   decisions: weighted cluster, faults, mirrors, redirect, rewrite (`route/actions.rs`).
//! * [`retry`]: the route's retry policy ([`retry::RetrySpec`]: which failures `retryOn`
//!   retries, back-off) and the attempts of one request ([`retry::RetryLoop`]).
//! * [`hash`]: hash-policy keys (the cluster's ring hash / Maglev table turns them into an
//!   endpoint).
//! * [`upstreams`]: the cluster manager as the HTTP layer calls it, its one call into the
//!   clusters ([`upstreams::ClusterUpstreams`]: endpoint pick ([`crate::cluster`]), limits and
//!   pooled connections ([`crate::pool`]), outlier detection feedback).
//! * [`handler`]: the connection manager the listeners call ([`handler::ConnectionManager`]):
//!   route tables compiled per configuration, one [`serve_connection_with_drain`] per HTTP
//!   filter chain connection.

mod authorize;
mod forward;
pub mod handler;
pub mod hash;
pub mod headers;
mod record;
mod reply;
mod request;
pub mod retry;
pub mod rng;
pub mod route;
mod server;
pub mod upstreams;

pub use crate::body::{BoxError, ProxyBody};
pub use crate::pool::UpstreamError;
pub use authorize::{Authorizer, ConnAuthz, CurrentPolicies, DENIED_BODY, PodPolicies};
pub use rng::Rng;
pub use route::{RouteError, RouteTable};
pub use server::{serve_connection, serve_connection_draining, serve_connection_with_drain};
pub use upstreams::{DownstreamInfo, UpstreamResponse};

use crate::metrics::{Destinations, Metrics, Reporter, WorkloadInfo};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use upstreams::ClusterUpstreams;

/// Limits and timeouts of the HTTP server side.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Largest request head (HTTP/1.1 request line + headers; HTTP/2 header list); larger → 431.
    pub max_request_headers_bytes: usize,
    /// Most request headers (HTTP/1.1); more → 431.
    pub max_request_headers: usize,
    /// Time allowed to receive a whole HTTP/1.1 request head (slowloris); then the connection closes.
    pub header_read_timeout: Duration,
    /// Request body bytes kept for retries and mirrors; larger bodies are neither retried nor mirrored whole.
    pub retry_buffer_bytes: usize,
    /// HTTP/2 concurrent streams per downstream connection.
    pub max_concurrent_streams: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_request_headers_bytes: 60 * 1024,
            max_request_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            retry_buffer_bytes: 1024 * 1024,
            max_concurrent_streams: 1024,
        }
    }
}

/// Routes of a listener, swapped atomically when a new configuration arrives; requests on open
/// connections use the table current when they start.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// Everything [`serve_connection`] needs besides the connection.
#[derive(Clone)]
pub struct HttpContext {
    /// The route table (compiled with this pod's labels, see [`RouteTable::compile`]).
    pub routes: SharedRoutes,
    /// The cluster manager (this connection's snapshot of it).
    pub upstreams: ClusterUpstreams,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// This pod's workload (metric labels).
    pub workload: Arc<WorkloadInfo>,
    /// This pod's workload as the metadata exchange sends it (`crate::peer`).
    pub own_metadata: Arc<crate::peer::OwnMetadata>,
    /// Cluster → service (metric labels).
    pub destinations: Arc<Destinations>,
    /// `source` for outbound (15001) connections, `destination` for inbound (15006).
    pub reporter: Reporter,
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection's (original) destination address.
    pub local: SocketAddr,
    /// Server limits.
    pub settings: Arc<HttpSettings>,
    /// Random source for weights, percentages, jitter and request ids (seed it in tests).
    pub rng: Arc<Rng>,
    /// Where access-log lines go.
    pub access_log: crate::access_log::Sink,
    /// The connection manager's access logs (none: nothing is logged or copied for them).
    pub access_logs: crate::access_log::AccessLogs,
    /// The client's SPIFFE id, when the connection's chain terminated mutual TLS.
    pub peer_identity: Option<rustmesh_xds::identity::SpiffeId>,
    /// This workload's SPIFFE id, while it holds a certificate.
    pub own_identity: Option<String>,
    /// The `x-forwarded-client-cert` element appended to each request of a connection whose
    /// client mutual TLS verified ([`crate::transport::Io::client_cert_details`]).
    pub client_cert_details: Option<http::HeaderValue>,
    /// The AuthorizationPolicies every request is checked against (inbound connections of a
    /// pod with policies; `None`: no check).
    pub authz: Option<Arc<Authorizer>>,
    /// Distributed tracing (the connection manager has `tracing`): each request's span.
    pub trace: Option<crate::trace::ConnTracing>,
    /// The SNI the client sent, if it spoke TLS (the access log's `%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<Arc<str>>,
    /// Which Istio metrics this connection's requests record, and how labelled (the connection
    /// manager's `disabledMetrics` and `tagOverrides`).
    pub metric_settings: crate::metrics::ChainMetrics,
}

impl std::fmt::Debug for HttpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpContext")
            .field("routes", &self.routes.load().name)
            .field("reporter", &self.reporter)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Why a downstream connection ended with an error (protocol errors, I/O errors, timeouts).
#[derive(Debug, thiserror::Error)]
#[error("http connection from {peer}: {source}")]
pub struct ConnectionError {
    /// The client.
    pub peer: SocketAddr,
    /// What hyper reported.
    #[source]
    pub source: BoxError,
}
