//! The cluster manager as the HTTP layer sees it ([`ClusterUpstreams`]), the one place the HTTP
//! layer calls into the clusters: one request to a cluster picks an endpoint (load balancer,
//! consistent hash, previous-host avoidance, outlier ejection), passes the cluster's
//! connection-pool limits, and goes out over a pooled connection to that endpoint, opened by the
//! cluster's own dialer ([`crate::dial::ClusterDialer`]: source address, `connectTimeout` and the
//! connection counters are the TCP proxy's). The outcome feeds the endpoint's stats and outlier
//! detection.
//!
//! Pools ([`crate::pool`]): each endpoint of an EDS/STATIC cluster keeps an HTTP/1.1 and an h2c
//! pool ([`EndpointPools`](crate::pool::EndpointPools)); they survive configuration changes
//! that keep the endpoint and the cluster's definition. ORIGINAL_DST clusters
//! (`PassthroughCluster`, inbound passthrough) pool per destination address in a bounded table
//! ([`PassthroughPools`]).
//!
//! The upstream protocol is the cluster's `upstreamProtocol`: `HTTP1`, `HTTP2` (h2c with prior
//! knowledge), or `USE_DOWNSTREAM` (Istio's default: HTTP/2 requests go out as h2c, the rest as
//! HTTP/1.1).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response, Version};
use rustmesh_xds::cluster::UpstreamProtocol;

use crate::body::ProxyBody;
use crate::cluster::outlier::Outcome;
use crate::cluster::{Clusters, Endpoint, Kind, RequestOutcome, UpstreamCluster};
use crate::pool::client::EndpointClient;
use crate::pool::{PassthroughPools, UpstreamError};

/// An upstream's answer and the endpoint that gave it (for the previous-hosts retry predicate).
pub struct UpstreamResponse {
    /// The response. Keep its extensions: hyper's `OnUpgrade` there carries WebSocket upgrades.
    pub response: Response<ProxyBody>,
    /// The endpoint that answered.
    pub endpoint: SocketAddr,
    /// The SPIFFE id the endpoint proved over mutual TLS (the source side's
    /// `destination_principal`).
    pub server_identity: Option<Arc<String>>,
}

/// The downstream connection a request came on, in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Where the client was connecting (the original destination for captured connections).
    pub local: SocketAddr,
}

/// A retry refused by the cluster's `maxRetries` (Envoy's retry overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOverflow;

/// The clusters of one configuration snapshot, as the HTTP layer sends to them.
#[derive(Clone)]
pub struct ClusterUpstreams {
    clusters: Clusters,
    passthrough: Arc<PassthroughPools>,
    original_source: Option<IpAddr>,
}

impl ClusterUpstreams {
    /// Requests go to `clusters`; ORIGINAL_DST pools come from `passthrough` (shared by every
    /// connection of the sidecar).
    pub fn new(clusters: Clusters, passthrough: Arc<PassthroughPools>) -> Self {
        ClusterUpstreams {
            clusters,
            passthrough,
            original_source: None,
        }
    }

    /// Requests to ORIGINAL_DST clusters leave from `client` when set (TPROXY inbound:
    /// [`crate::dial::ClusterDialer::with_original_source`]), on pools of that client's own.
    pub fn with_original_source(mut self, client: Option<IpAddr>) -> Self {
        self.original_source = client;
        self
    }
}

fn wants_http2(cluster: &UpstreamCluster, version: Version) -> bool {
    match cluster.def.upstream_protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::UseDownstream => version == Version::HTTP_2,
    }
}

fn no_healthy(cluster: &UpstreamCluster) -> UpstreamError {
    cluster.stats.cx_none_healthy.inc();
    UpstreamError::NoHealthyUpstream
}

impl ClusterUpstreams {
    /// Admits one retry to `cluster` under its `maxRetries` (the permit is held for the retry's
    /// attempt): `Err(())` when over it, counted as Envoy's `upstream_rq_retry_overflow`. A
    /// cluster that does not exist has no limit (the attempt fails on its own).
    pub fn try_retry(
        &self,
        cluster: &str,
    ) -> Result<Option<crate::pool::limits::RetryPermit>, RetryOverflow> {
        let Some(c) = self.clusters.get(cluster) else {
            return Ok(None);
        };
        match c.breaker.try_retry() {
            Some(p) => Ok(Some(p)),
            None => {
                c.stats.rq_retry_overflow.inc();
                Err(RetryOverflow)
            }
        }
    }

    /// Sends `req` to `cluster`: picks an endpoint (load balancer; with `hash` set, the
    /// cluster's ring hash / Maglev table; never one of `exclude_hosts` when another is
    /// available), enforces the cluster's connection-pool limits
    /// ([`crate::pool::limits::CircuitBreaker`]) and sends over the endpoint's pooled
    /// connection ([`EndpointClient`]); the outcome feeds the endpoint's stats and outlier
    /// detection.
    ///
    /// The request arrives ready to send: hop-by-hop headers removed, route changes applied,
    /// URI in absolute form (`http://<authority><path>`), `host` set, `version` as received
    /// downstream (the version used upstream is the cluster's `upstreamProtocol`). Its
    /// extensions hold a [`DownstreamInfo`] (for `ORIGINAL_DST` clusters). Errors are
    /// [`UpstreamError`]s so retries and local replies follow Envoy's.
    pub async fn request(
        &self,
        cluster: &str,
        hash: Option<u64>,
        exclude_hosts: &[SocketAddr],
        req: Request<ProxyBody>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let c = self
            .clusters
            .get(cluster)
            .ok_or_else(|| UpstreamError::ClusterNotFound(cluster.to_string()))?
            .clone();
        let http2 = wants_http2(&c, req.version());
        let (pool, endpoint): (EndpointClient, Option<Arc<Endpoint>>) = match c.kind {
            Kind::BlackHole => return Err(no_healthy(&c)),
            Kind::OriginalDst => {
                let dst = req
                    .extensions()
                    .get::<DownstreamInfo>()
                    .map(|d| d.local)
                    .ok_or_else(|| no_healthy(&c))?;
                let pool = self
                    .passthrough
                    .get(c.dialer(), dst, http2, self.original_source);
                (pool, None)
            }
            Kind::Balanced => {
                let e = c
                    .pick_excluding(hash, exclude_hosts)
                    .ok_or_else(|| no_healthy(&c))?;
                let pool = e
                    .pools
                    .get(c.dialer(), e.addr, &e.stats, http2, e.tls.clone());
                (pool, Some(e))
            }
        };
        let permit = c.breaker.acquire(http2).await.map_err(|_| {
            c.stats.rq_overflow.inc();
            UpstreamError::Overflow
        })?;
        let guard = endpoint.as_ref().map(|e| e.start_request());
        let result = pool.send(req).await;
        let outcome = match &result {
            Ok(resp) => Some(Outcome::Status(resp.status().as_u16())),
            Err(UpstreamError::Reset { .. } | UpstreamError::ConnectFailure { .. }) => {
                Some(Outcome::LocalFailure)
            }
            Err(_) => None,
        };
        if let Some(e) = &endpoint {
            if let Some(o) = outcome {
                c.report(e, o);
            }
            if let Some(g) = guard {
                g.finish(match outcome {
                    Some(Outcome::Status(s)) if s < 500 => RequestOutcome::Success,
                    _ => RequestOutcome::Error,
                });
            }
        }
        let resp = result?;
        let (parts, body) = resp.into_parts();
        Ok(UpstreamResponse {
            response: Response::from_parts(parts, permit.attach(body)),
            endpoint: endpoint.map_or(pool.addr(), |e| e.addr),
            server_identity: pool.server_identity(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterManager;
    use crate::stats::Metrics;
    use http_body_util::BodyExt;
    use rustmesh_xds::ProxyConfig;

    fn config(endpoints: &[SocketAddr]) -> ProxyConfig {
        let lb: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|a| serde_json::json!({"endpoint": {"address": {"socketAddress": {"address": a.ip().to_string(), "portValue": a.port()}}}}))
            .collect();
        ProxyConfig::from_json(
            &serde_json::json!({
                "clusters": [{"name": "c", "type": "EDS", "connectTimeout": "1s", "edsClusterConfig": {"serviceName": "c"}}],
                "endpoints": [{"clusterName": "c", "endpoints": [{"lbEndpoints": lb}]}],
            })
            .to_string(),
        )
        .unwrap()
    }

    /// A server answering 200 to every HTTP/1.1 request.
    async fn server() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn get(up: &ClusterUpstreams) -> u16 {
        let req = http::Request::builder()
            .uri("http://svc/")
            .body(crate::body::boxed(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
            .unwrap();
        let r = up.request("c", None, &[], req).await.unwrap();
        let status = r.response.status().as_u16();
        let _ = r.response.into_body().collect().await;
        status
    }

    /// Pools survive an endpoint change, and the replaced cluster and endpoints are freed: the
    /// pools must not hold the cluster or the endpoint they live in (cluster → endpoints →
    /// pools → dialer → cluster; endpoint → pools → connector → endpoint).
    #[tokio::test]
    async fn replaced_clusters_are_freed_while_their_pools_live_on() {
        let (a, b) = (server().await, server().await);
        let manager = ClusterManager::new(Metrics::default());
        let first = manager.build(&config(&[a]));
        manager.commit(&first);
        let passthrough = Arc::new(PassthroughPools::default());
        let up = ClusterUpstreams::new(first.clone(), passthrough.clone());
        assert_eq!(get(&up).await, 200);
        let old = Arc::downgrade(first.get("c").unwrap());
        let old_endpoint = Arc::downgrade(&first.get("c").unwrap().endpoints[0]);
        let pool_of_a = first.get("c").unwrap().endpoints[0].pools.clone();
        drop((up, first));
        let second = manager.build(&config(&[a, b]));
        manager.commit(&second);
        assert!(
            old.upgrade().is_none(),
            "the replaced cluster is still alive"
        );
        // Nor may the pools hold the endpoint they live in (endpoint → pools → endpoint).
        assert!(
            old_endpoint.upgrade().is_none(),
            "the replaced endpoint is still alive"
        );
        let c = second.get("c").unwrap();
        let kept = c.endpoints.iter().find(|e| e.addr == a).unwrap();
        assert!(
            Arc::ptr_eq(&kept.pools, &pool_of_a),
            "a's pool carried over"
        );
        let up = ClusterUpstreams::new(second.clone(), passthrough);
        for _ in 0..4 {
            assert_eq!(get(&up).await, 200);
        }
        // Two endpoints, four requests, one connection each at most: the pool was reused.
        let opened: u64 = c
            .endpoints
            .iter()
            .map(|e| e.stats.cx_total.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert!(
            opened <= 2,
            "{opened} connections for 5 sequential requests"
        );
    }
}
