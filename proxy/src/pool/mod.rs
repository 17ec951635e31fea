//! Upstream HTTP connection pools, per endpoint: what a request goes out on once the cluster
//! has picked where it goes.
//!
//! * [`EndpointPools`]: each endpoint of an EDS/STATIC cluster keeps an HTTP/1.1 and an h2c pool,
//!   made on first use; the cluster manager carries them over configuration changes that keep
//!   the endpoint and the cluster's definition.
//! * [`PassthroughPools`]: ORIGINAL_DST clusters (`PassthroughCluster`, inbound passthrough)
//!   pool per destination address in a bounded table.
//! * [`client`]: one pool ([`client::EndpointClient`]), HTTP/1.1 or h2c, its connections
//!   opened by the cluster's dialer ([`crate::dial::ClusterDialer`]).
//! * [`limits`]: a cluster's connection-pool limits ([`limits::CircuitBreaker`]).
//!
//! Errors are [`UpstreamError`]s (defined with the client, which reports most of them), which
//! the HTTP layer turns into Envoy's local replies and response flags.

pub mod client;
pub mod limits;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use crate::dial::{ClusterDialer, EndpointStats};
use crate::sync::lock;
use crate::transport::Originate;
use client::EndpointClient;

pub use client::{UpstreamError, UpstreamLocal};

/// An endpoint's HTTP connection pools, made on first use.
#[derive(Debug, Default)]
pub struct EndpointPools {
    http1: OnceLock<EndpointClient>,
    http2: OnceLock<EndpointClient>,
}

impl EndpointPools {
    /// The endpoint's pool for HTTP/1.1, or HTTP/2 when `http2`; made on first use with
    /// `dialer` (its cluster's), to `addr`, counting into the endpoint's `stats`, over mutual
    /// TLS when `tls` (the endpoint's, fixed for the pools' life: a change of transport is a
    /// change of the cluster's definition, which makes new pools).
    pub fn get(
        &self,
        dialer: &ClusterDialer,
        addr: SocketAddr,
        stats: &Arc<EndpointStats>,
        http2: bool,
        tls: Option<Arc<Originate>>,
    ) -> EndpointClient {
        let slot = if http2 { &self.http2 } else { &self.http1 };
        slot.get_or_init(|| client(dialer, addr, Some(stats.clone()), http2, tls))
            .clone()
    }
}

/// Pools of ORIGINAL_DST clusters, by (cluster, destination, protocol, original source: with
/// TPROXY each client has its own, since a connection carries its client's address). Bounded:
/// when full it starts over (open connections finish; later requests open new ones).
#[derive(Debug, Default)]
pub struct PassthroughPools {
    pools: Mutex<HashMap<PassthroughKey, EndpointClient>>,
}

/// (cluster, destination, HTTP/2, original source).
type PassthroughKey = (String, SocketAddr, bool, Option<IpAddr>);

/// Most destinations [`PassthroughPools`] keeps pools for.
pub const MAX_PASSTHROUGH_POOLS: usize = 1024;

impl PassthroughPools {
    /// The pool to `dst` for the cluster `dialer` dials for (HTTP/1.1, or h2c when `http2`),
    /// its connections opened from `original_source` when set
    /// ([`ClusterDialer::with_original_source`]).
    pub fn get(
        &self,
        dialer: &ClusterDialer,
        dst: SocketAddr,
        http2: bool,
        original_source: Option<IpAddr>,
    ) -> EndpointClient {
        let mut pools = lock(&self.pools);
        let key = (dialer.cluster().to_string(), dst, http2, original_source);
        if let Some(c) = pools.get(&key) {
            return c.clone();
        }
        if pools.len() >= MAX_PASSTHROUGH_POOLS {
            pools.clear();
        }
        let c = match original_source {
            None => client(dialer, dst, None, http2, None),
            Some(_) => {
                let dialer = dialer.clone().with_original_source(original_source);
                client(&dialer, dst, None, http2, None)
            }
        };
        pools.insert(key, c.clone());
        c
    }
}

/// A pool whose connections are opened by the cluster's dialer (not the cluster: the pool
/// lives in the cluster's endpoints). The dialer enforces `connectTimeout`; the pool's own
/// limit is only a backstop.
fn client(
    dialer: &ClusterDialer,
    addr: SocketAddr,
    stats: Option<Arc<EndpointStats>>,
    http2: bool,
    tls: Option<Arc<Originate>>,
) -> EndpointClient {
    // The handshake runs after the dialer's `connectTimeout`, within its own limit.
    let backstop = dialer.connect_timeout() * 2
        + if tls.is_some() {
            crate::transport::HANDSHAKE_TIMEOUT
        } else {
            std::time::Duration::ZERO
        };
    EndpointClient::new(dialer.clone(), addr, stats, http2, backstop, tls)
}
