//! A cluster's connection-pool limits (a DestinationRule's `connectionPool`, Envoy's circuit
//! breaker thresholds). Each cluster has one; the HTTP layer's call into the cluster
//! ([`crate::http::upstreams::ClusterUpstreams`]) admits every request through it.
//!
//! * HTTP/1.1: each request needs a connection of its own. At most `maxConnections` run at once;
//!   up to `http1MaxPendingRequests` (`maxPendingRequests`) more wait for one; beyond that the
//!   request overflows (503, `x-envoy-overloaded: true`, flag `UO`).
//! * HTTP/2: requests share connections; at most `http2MaxRequests` (`maxRequests`) are active.
//! * `maxRequests` also caps HTTP/1.1 requests, as in Envoy.
//! * `maxRetries` (`connectionPool.http.maxRetries`): retries outstanding at once across the
//!   cluster; over it a retry is not attempted and the answer in hand goes back, counted in
//!   `envoy_cluster_upstream_rq_retry_overflow` ([`CircuitBreaker::try_retry`]).
//!
//! The [`Permit`] must be held until the response body ends; [`Permit::attach`] ties it to the
//! body.

use crate::body::{BoxError, ProxyBody};
use hyper::body::{Body, Frame, SizeHint};
use rustmesh_xds::cluster::Thresholds;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Request admission for one cluster.
#[derive(Debug)]
pub struct CircuitBreaker {
    connections: Arc<Semaphore>,
    max_pending: u64,
    pending: AtomicU64,
    max_requests: u64,
    active: Arc<AtomicU64>,
    max_retries: u64,
    retries: Arc<AtomicU64>,
}

/// One retry in progress; the cluster's count of retries goes down when it is dropped.
#[derive(Debug)]
pub struct RetryPermit {
    retries: Arc<AtomicU64>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The cluster is at its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream connection pool overflow")]
pub struct Overflow;

/// One admitted request; releases its slot when dropped.
#[derive(Debug)]
pub struct Permit {
    _connection: Option<OwnedSemaphorePermit>,
    active: Arc<AtomicU64>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

// Envoy's defaults when a threshold is unset are 1024; Istio writes u32::MAX explicitly.
const ENVOY_DEFAULT: u32 = 1024;
const MAX_PERMITS: usize = Semaphore::MAX_PERMITS;

impl CircuitBreaker {
    /// From a cluster's first (default priority) thresholds; `None` = Istio's unlimited.
    pub fn new(t: Option<&Thresholds>) -> Self {
        // Envoy's default for max_retries is 3.
        let (conns, pending, requests, retries) = match t {
            Some(t) => (
                t.max_connections.unwrap_or(ENVOY_DEFAULT),
                t.max_pending_requests.unwrap_or(ENVOY_DEFAULT),
                t.max_requests.unwrap_or(ENVOY_DEFAULT),
                t.max_retries.unwrap_or(3),
            ),
            None => (u32::MAX, u32::MAX, u32::MAX, u32::MAX),
        };
        CircuitBreaker {
            connections: Arc::new(Semaphore::new((conns as usize).min(MAX_PERMITS))),
            max_pending: u64::from(pending),
            pending: AtomicU64::new(0),
            max_requests: u64::from(requests),
            active: Arc::new(AtomicU64::new(0)),
            max_retries: u64::from(retries),
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Admits one retry, to be held until its attempt is over; `None` when `maxRetries`
    /// retries of the cluster are already in progress (Envoy's retry overflow).
    pub fn try_retry(&self) -> Option<RetryPermit> {
        let prev = self.retries.fetch_add(1, Ordering::AcqRel);
        let permit = RetryPermit {
            retries: self.retries.clone(),
        };
        (prev < self.max_retries).then_some(permit)
    }

    /// Admits a request, waiting as a pending request when HTTP/1.1 connections are all busy.
    pub async fn acquire(&self, http2: bool) -> Result<Permit, Overflow> {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        let permit = Permit {
            _connection: None,
            active: self.active.clone(),
        };
        if prev >= self.max_requests {
            return Err(Overflow);
        }
        if http2 {
            return Ok(permit);
        }
        let conn = match self.connections.clone().try_acquire_owned() {
            Ok(c) => c,
            Err(_) => {
                let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
                if waiting >= self.max_pending {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(Overflow);
                }
                let got = self.connections.clone().acquire_owned().await;
                self.pending.fetch_sub(1, Ordering::AcqRel);
                got.map_err(|_| Overflow)?
            }
        };
        let mut permit = permit;
        permit._connection = Some(conn);
        Ok(permit)
    }

    /// One TCP proxy connection under `maxConnections` (the same slots HTTP/1.1 requests take),
    /// held while the connection lives; `None` when they are all taken: the connection is
    /// refused, as Envoy's `upstream_cx_overflow`.
    pub fn try_connection(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// Requests admitted and not yet finished.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }
}

impl Permit {
    /// A body that holds this permit until it ends or is dropped.
    pub fn attach(self, body: ProxyBody) -> ProxyBody {
        http_body_util::BodyExt::boxed(Guarded {
            inner: body,
            permit: Some(self),
        })
    }
}

struct Guarded {
    inner: ProxyBody,
    permit: Option<Permit>,
}

impl Body for Guarded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || self.inner.is_end_stream()
        {
            self.permit = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http1_connections_then_pending_then_overflow() {
        let cb = Arc::new(CircuitBreaker::new(Some(&Thresholds {
            max_connections: Some(1),
            max_pending_requests: Some(1),
            ..Default::default()
        })));
        let first = cb.acquire(false).await.unwrap();
        let cb2 = cb.clone();
        let waiting = tokio::spawn(async move { cb2.acquire(false).await.map(|_| ()) });
        while cb.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(cb.acquire(false).await.unwrap_err(), Overflow);
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(cb.active(), 0);
    }

    #[test]
    fn tcp_connections_share_max_connections() {
        let cb = CircuitBreaker::new(Some(&Thresholds {
            max_connections: Some(1),
            ..Default::default()
        }));
        let one = cb.try_connection().expect("the first");
        assert!(cb.try_connection().is_none(), "over maxConnections");
        drop(one);
        assert!(cb.try_connection().is_some());
    }

    #[test]
    fn max_retries_caps_the_retries_in_progress() {
        let cb = CircuitBreaker::new(Some(&Thresholds {
            max_retries: Some(1),
            ..Default::default()
        }));
        let first = cb.try_retry().expect("one retry");
        assert!(cb.try_retry().is_none(), "a second at once overflows");
        drop(first);
        assert!(
            cb.try_retry().is_some(),
            "free again once the first is over"
        );
        let none = CircuitBreaker::new(Some(&Thresholds {
            max_retries: Some(0),
            ..Default::default()
        }));
        assert!(none.try_retry().is_none());
    }

    #[tokio::test]
    async fn http2_max_requests() {
        let cb = CircuitBreaker::new(Some(&Thresholds {
            max_requests: Some(2),
            ..Default::default()
        }));
        let a = cb.acquire(true).await.unwrap();
        let _b = cb.acquire(true).await.unwrap();
        assert!(cb.acquire(true).await.is_err());
        drop(a);
        assert!(cb.acquire(true).await.is_ok());
    }
}
