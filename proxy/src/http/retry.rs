//! Retries of a forwarded request: the route's `retryPolicy` interpreted ([`RetrySpec`]: which
//! failures `retryOn` retries, the back-off) and the loop of attempts of one request as a type of
//! its own.
//!
//! Stage: after the forwarding stage (`http::forward`) has built the upstream request and
//! started its mirrors, it sends the request through the cluster manager once per attempt; this
//! module decides each attempt's limits and whether another one follows. The answer, or the local
//! reply for the last failure (`http::reply`), then goes back to the forwarding stage, which
//! finishes the response headers.

use crate::http::rng::Rng;
use rustmesh_xds::route::RetryPolicy;
use std::time::Duration;

/// Retry conditions, from Envoy's `retryOn` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx, resets, connect failures, per-try timeouts.
    pub five_xx: bool,
    /// `gateway-error`: 502/503/504, resets, connect failures, per-try timeouts.
    pub gateway_error: bool,
    /// `reset`: the upstream reset or disconnected.
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `retriable-status-codes`: statuses in `retriableStatusCodes`.
    pub retriable_status_codes: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// gRPC `cancelled` (1).
    pub grpc_cancelled: bool,
    /// gRPC `deadline-exceeded` (4).
    pub grpc_deadline_exceeded: bool,
    /// gRPC `resource-exhausted` (8).
    pub grpc_resource_exhausted: bool,
    /// gRPC `internal` (13).
    pub grpc_internal: bool,
    /// gRPC `unavailable` (14).
    pub grpc_unavailable: bool,
}

impl RetryOn {
    /// Reads a comma-separated `retryOn`; unknown tokens are ignored, as Envoy does.
    pub fn parse(s: &str) -> Self {
        let mut r = RetryOn::default();
        for token in s.split(',').map(str::trim) {
            match token {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "reset" => r.reset = true,
                "connect-failure" => r.connect_failure = true,
                "refused-stream" => r.refused_stream = true,
                "retriable-status-codes" => r.retriable_status_codes = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "cancelled" => r.grpc_cancelled = true,
                "deadline-exceeded" => r.grpc_deadline_exceeded = true,
                "resource-exhausted" => r.grpc_resource_exhausted = true,
                "internal" => r.grpc_internal = true,
                "unavailable" => r.grpc_unavailable = true,
                _ => {}
            }
        }
        r
    }
}

/// Why an attempt failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The upstream answered with these headers.
    Status {
        /// HTTP status.
        status: u16,
        /// `grpc-status` in the response headers (trailers-only gRPC answers).
        grpc_status: Option<u32>,
    },
    /// Could not connect.
    ConnectFailure,
    /// Reset / disconnect before the response headers.
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

/// A retry policy, interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySpec {
    /// Conditions.
    pub on: RetryOn,
    /// Retries after the first attempt.
    pub num_retries: u32,
    /// Timeout of each attempt (until response headers).
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Avoid hosts already tried.
    pub retry_previous_hosts: bool,
    /// Back-off base interval (Envoy's default, 25 ms).
    pub base_interval: Duration,
    /// Back-off cap (10 × base, Envoy's default).
    pub max_interval: Duration,
}

impl RetrySpec {
    /// Interprets a configured policy.
    pub fn from_policy(p: &RetryPolicy) -> Self {
        RetrySpec {
            on: RetryOn::parse(&p.retry_on),
            num_retries: p.num_retries,
            per_try_timeout: p
                .per_try_timeout
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero()),
            retriable_status_codes: p.retriable_status_codes.clone(),
            retry_previous_hosts: p.retry_previous_hosts,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
        }
    }

    /// Whether a failed attempt should be retried (the caller checks the count).
    pub fn should_retry(&self, failure: AttemptFailure) -> bool {
        let on = &self.on;
        match failure {
            AttemptFailure::ConnectFailure => on.connect_failure || on.five_xx || on.gateway_error,
            AttemptFailure::Reset => on.reset || on.five_xx || on.gateway_error,
            AttemptFailure::RefusedStream => on.refused_stream || on.five_xx,
            AttemptFailure::PerTryTimeout => on.five_xx || on.gateway_error,
            AttemptFailure::Status {
                status,
                grpc_status,
            } => {
                (on.five_xx && (500..600).contains(&status))
                    || (on.gateway_error && matches!(status, 502..=504))
                    || (on.retriable_4xx && status == 409)
                    || (on.retriable_status_codes && self.retriable_status_codes.contains(&status))
                    || match grpc_status {
                        Some(1) => on.grpc_cancelled,
                        Some(4) => on.grpc_deadline_exceeded,
                        Some(8) => on.grpc_resource_exhausted,
                        Some(13) => on.grpc_internal,
                        Some(14) => on.grpc_unavailable,
                        _ => false,
                    }
            }
        }
    }

    /// Envoy's fully jittered exponential back-off before retry number `retry` (1-based):
    /// uniform in `[0, base × (2^retry − 1))`, capped at the max interval.
    pub fn backoff(&self, retry: u32, rng: &Rng) -> Duration {
        let factor = (1u64 << retry.clamp(1, 20)) - 1;
        let ceiling = (self.base_interval.as_millis() as u64)
            .saturating_mul(factor)
            .min(self.max_interval.as_millis() as u64);
        Duration::from_millis(rng.below(ceiling.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_tokens() {
        let r = RetrySpec::from_policy(&RetryPolicy {
            retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                .into(),
            num_retries: 2,
            retriable_status_codes: vec![503],
            ..Default::default()
        });
        use AttemptFailure::*;
        assert!(r.should_retry(ConnectFailure));
        assert!(r.should_retry(RefusedStream));
        assert!(!r.should_retry(Reset));
        assert!(r.should_retry(Status {
            status: 503,
            grpc_status: None
        }));
        assert!(!r.should_retry(Status {
            status: 500,
            grpc_status: None
        }));
        assert!(r.should_retry(Status {
            status: 200,
            grpc_status: Some(14)
        }));
        assert!(!r.should_retry(Status {
            status: 200,
            grpc_status: Some(13)
        }));
        let g = RetrySpec::from_policy(&RetryPolicy {
            retry_on: "gateway-error,retriable-4xx".into(),
            ..Default::default()
        });
        assert!(g.should_retry(Status {
            status: 502,
            grpc_status: None
        }));
        assert!(!g.should_retry(Status {
            status: 500,
            grpc_status: None
        }));
        assert!(g.should_retry(Status {
            status: 409,
            grpc_status: None
        }));
        assert!(g.should_retry(PerTryTimeout));
        let rng = Rng::seeded(1);
        for n in 1..10 {
            assert!(g.backoff(n, &rng) < Duration::from_millis(250));
        }
    }
}
