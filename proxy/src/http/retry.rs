//! Retries of a forwarded request: the route's `retryPolicy` interpreted ([`RetrySpec`]: which
//! failures `retryOn` retries, the back-off) and the attempts of one request ([`RetryLoop`]: the
//! attempt count, the per-try and overall timeouts, the hosts already tried, and after each
//! failed attempt the decision to retry, to time out or to stop).
//!
//! Stage: the forwarding stage (`http/forward.rs`) has built the upstream request and started
//! its mirrors; it then drives a [`RetryLoop`]: [`RetryLoop::begin`] before each attempt (its
//! number and time limit), [`RetryLoop::exclude`] for the cluster manager's pick,
//! [`RetryLoop::tried`] with the endpoint reached, and [`RetryLoop::next`] with how the attempt
//! ended. The loop itself does no I/O and reads no clock: the caller passes `now`, so each
//! decision is a pure function tested here. The answer, or the local reply for the last failure
//! (`http/reply.rs`), then goes back to the forwarding stage, which finishes the response.

use crate::http::UpstreamError;
use crate::http::rng::Rng;
use http::Response;
use rustmesh_xds::route::RetryPolicy;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

impl AttemptFailure {
    /// How an answer counts: its status and, for trailers-only gRPC answers, its `grpc-status`
    /// header (whether that is a failure is the policy's call, [`RetrySpec::should_retry`]).
    pub fn of_response<B>(response: &Response<B>) -> Self {
        AttemptFailure::Status {
            status: response.status().as_u16(),
            grpc_status: response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }
    }

    /// How a cluster's error counts. The errors trying again cannot fix (no such cluster, no
    /// healthy upstream, pool overflow) count as status 0, which no `retryOn` retries.
    pub fn of_error(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::ConnectFailure { .. } => AttemptFailure::ConnectFailure,
            UpstreamError::Reset { .. } => AttemptFailure::Reset,
            UpstreamError::RefusedStream { .. } => AttemptFailure::RefusedStream,
            // Not retried: the cluster has nothing to offer or is overloaded.
            _ => AttemptFailure::Status {
                status: 0,
                grpc_status: None,
            },
        }
    }
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

/// Which timeout bounds an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The route's `timeout` (the whole exchange until response headers): when it fires, the
    /// request ends with 504 (`UT`), whatever the policy.
    Overall,
    /// The policy's `perTryTimeout`: a failure like any other ([`AttemptFailure::PerTryTimeout`]).
    PerTry,
}

/// The time limit of one attempt: the earlier of the per-try and the overall deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimit {
    /// When the response headers must have come.
    pub at: Instant,
    /// Which timeout that is (the overall one when both fall at the same time).
    pub timeout: Timeout,
}

/// What follows a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait the back-off, then begin another attempt.
    Retry {
        /// The back-off.
        after: Duration,
    },
    /// The back-off would reach the overall deadline: wait out what is left of it, then answer
    /// 504 (`UT`).
    TimeOut {
        /// What is left until the overall deadline.
        after: Duration,
    },
    /// Deliver this attempt's outcome: it is not a failure `retryOn` retries.
    Deliver,
    /// Deliver this attempt's outcome although `retryOn` retries it: the retries are used up, or
    /// the request body is no longer replayable (flag `URX`).
    Exhausted,
}

/// The attempts of one forwarded request, driven by the forwarding stage.
///
/// Made from the route's retry policy (none, or `numRetries: 0`, means one attempt, no per-try
/// timeout) and its overall `timeout`; counts attempts, remembers the endpoints tried (for
/// `retryPreviousHosts`) and decides, after each attempt, whether and when another one follows.
#[derive(Debug)]
pub struct RetryLoop<'a> {
    policy: Option<&'a RetrySpec>,
    deadline: Option<Instant>,
    attempts: u32,
    tried: Vec<SocketAddr>,
}

impl<'a> RetryLoop<'a> {
    /// The attempts of a request under `policy`, with the overall `timeout` counted from `now`.
    pub fn new(policy: Option<&'a RetrySpec>, timeout: Option<Duration>, now: Instant) -> Self {
        RetryLoop {
            policy: policy.filter(|p| p.num_retries > 0),
            deadline: timeout.map(|d| now + d),
            attempts: 0,
            tried: Vec::new(),
        }
    }

    /// Whether a second attempt can happen at all (then the request's head and body are kept
    /// for it).
    pub fn may_retry(&self) -> bool {
        self.policy.is_some()
    }

    /// Begins an attempt at `now`: its number (1 for the first, as `x-envoy-attempt-count`
    /// writes it) and its time limit, if any.
    pub fn begin(&mut self, now: Instant) -> (u32, Option<AttemptLimit>) {
        self.attempts += 1;
        let per_try = self.policy.and_then(|p| p.per_try_timeout).map(|d| now + d);
        let at = match (per_try, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let limit = at.map(|at| AttemptLimit {
            at,
            timeout: if self.deadline.is_some_and(|d| d <= at) {
                Timeout::Overall
            } else {
                Timeout::PerTry
            },
        });
        (self.attempts, limit)
    }

    /// The endpoints the cluster should avoid for this attempt: those already tried, under
    /// `retryPreviousHosts`; none otherwise.
    pub fn exclude(&self) -> &[SocketAddr] {
        if self.policy.is_some_and(|p| p.retry_previous_hosts) {
            &self.tried
        } else {
            &[]
        }
    }

    /// Records the endpoint an attempt reached (answered, reset or refused).
    pub fn tried(&mut self, endpoint: SocketAddr) {
        if self.policy.is_some() {
            self.tried.push(endpoint);
        }
    }

    /// What follows the current attempt, which ended with `failure`. `replayable`: whether the
    /// request body can still be sent again (it fitted the retry buffer); `now` measures what is
    /// left of the overall timeout; `rng` draws the back-off (only when a retry follows).
    pub fn next(&self, failure: AttemptFailure, replayable: bool, now: Instant, rng: &Rng) -> Next {
        let Some(policy) = self.policy.filter(|p| p.should_retry(failure)) else {
            return Next::Deliver;
        };
        if self.attempts > policy.num_retries || !replayable {
            return Next::Exhausted;
        }
        let pause = policy.backoff(self.attempts, rng);
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(now);
            if left <= pause {
                return Next::TimeOut { after: left };
            }
        }
        Next::Retry { after: pause }
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

    fn spec(retry_on: &str, num_retries: u32) -> RetrySpec {
        RetrySpec::from_policy(&RetryPolicy {
            retry_on: retry_on.into(),
            num_retries,
            ..Default::default()
        })
    }

    fn status(status: u16) -> AttemptFailure {
        AttemptFailure::Status {
            status,
            grpc_status: None,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn answers_and_errors_count_as_failures() {
        let mut r = Response::new(());
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(AttemptFailure::of_response(&r), status(503));
        let mut g = Response::new(());
        g.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(
            AttemptFailure::of_response(&g),
            AttemptFailure::Status {
                status: 200,
                grpc_status: Some(14)
            }
        );
        let reason = String::new();
        use AttemptFailure::*;
        let cases = [
            (
                UpstreamError::ConnectFailure {
                    endpoint: None,
                    reason: reason.clone(),
                },
                ConnectFailure,
            ),
            (
                UpstreamError::Reset {
                    endpoint: Some(addr(1)),
                    reason,
                },
                Reset,
            ),
            (
                UpstreamError::RefusedStream { endpoint: None },
                RefusedStream,
            ),
            (UpstreamError::NoHealthyUpstream, status(0)),
            (UpstreamError::Overflow, status(0)),
            (UpstreamError::ClusterNotFound("c".into()), status(0)),
        ];
        for (error, failure) in cases {
            assert_eq!(AttemptFailure::of_error(&error), failure, "{error}");
        }
        // What the cluster cannot fix by trying again is retried under no condition.
        let all = spec(
            "5xx,gateway-error,reset,connect-failure,refused-stream,retriable-4xx",
            1,
        );
        assert!(!all.should_retry(status(0)));
    }

    #[test]
    fn which_failures_each_condition_retries() {
        use AttemptFailure::*;
        let five = spec("5xx", 1);
        for f in [
            ConnectFailure,
            Reset,
            RefusedStream,
            PerTryTimeout,
            status(500),
            status(599),
        ] {
            assert!(five.should_retry(f), "5xx retries {f:?}");
        }
        for f in [status(200), status(409), status(499)] {
            assert!(!five.should_retry(f), "5xx does not retry {f:?}");
        }
        let gw = spec("gateway-error", 1);
        for f in [
            ConnectFailure,
            Reset,
            PerTryTimeout,
            status(502),
            status(503),
            status(504),
        ] {
            assert!(gw.should_retry(f), "gateway-error retries {f:?}");
        }
        for f in [RefusedStream, status(500), status(501)] {
            assert!(!gw.should_retry(f), "gateway-error does not retry {f:?}");
        }
        let reset = spec("reset", 1);
        assert!(reset.should_retry(Reset));
        assert!(!reset.should_retry(ConnectFailure));
        assert!(!reset.should_retry(PerTryTimeout));
        let grpc = spec(
            "cancelled,deadline-exceeded,resource-exhausted,internal,unavailable",
            1,
        );
        for code in [1, 4, 8, 13, 14] {
            assert!(grpc.should_retry(Status {
                status: 200,
                grpc_status: Some(code)
            }));
        }
        assert!(!grpc.should_retry(Status {
            status: 200,
            grpc_status: Some(2)
        }));
        assert!(!grpc.should_retry(status(503)));
        // Unknown tokens are ignored, as Envoy does.
        assert_eq!(spec("bogus, 5xx", 1).on, spec("5xx", 1).on);
        assert!(!spec("", 3).should_retry(ConnectFailure));
    }

    #[test]
    fn one_attempt_without_a_policy_or_with_zero_retries() {
        let now = Instant::now();
        let rng = Rng::seeded(7);
        let mut zero = spec("5xx", 0);
        zero.per_try_timeout = Some(Duration::from_secs(1));
        for policy in [None, Some(&zero)] {
            let mut attempts = RetryLoop::new(policy, None, now);
            assert!(!attempts.may_retry());
            // A per-try timeout without retries does not bound the only attempt.
            assert_eq!(attempts.begin(now), (1, None));
            attempts.tried(addr(1));
            assert!(attempts.exclude().is_empty());
            let next = attempts.next(AttemptFailure::ConnectFailure, true, now, &rng);
            assert_eq!(next, Next::Deliver);
        }
    }

    #[test]
    fn retries_until_num_retries_then_exhausted() {
        let now = Instant::now();
        let rng = Rng::seeded(1);
        let policy = spec("connect-failure", 2);
        let mut attempts = RetryLoop::new(Some(&policy), None, now);
        assert!(attempts.may_retry());
        let mut decisions = Vec::new();
        for expected in 1..=3 {
            let (n, limit) = attempts.begin(now);
            assert_eq!((n, limit), (expected, None));
            decisions.push(attempts.next(AttemptFailure::ConnectFailure, true, now, &rng));
        }
        assert!(matches!(decisions[0], Next::Retry { .. }), "{decisions:?}");
        assert!(matches!(decisions[1], Next::Retry { .. }), "{decisions:?}");
        assert_eq!(decisions[2], Next::Exhausted);

        // An answer or a failure the policy does not retry is delivered at once.
        let mut attempts = RetryLoop::new(Some(&policy), None, now);
        attempts.begin(now);
        assert_eq!(attempts.next(status(200), true, now, &rng), Next::Deliver);
        assert_eq!(attempts.next(status(503), true, now, &rng), Next::Deliver);
        // A body that outgrew the retry buffer cannot be sent again.
        assert_eq!(
            attempts.next(AttemptFailure::ConnectFailure, false, now, &rng),
            Next::Exhausted
        );
    }

    #[test]
    fn backoff_is_jittered_below_the_exponential_ceiling_and_the_cap() {
        let policy = spec("5xx", 20);
        let rng = Rng::seeded(3);
        for retry in 1..=20u32 {
            let ceiling = Duration::from_millis((25 * ((1u64 << retry) - 1)).min(250));
            for _ in 0..200 {
                assert!(policy.backoff(retry, &rng) < ceiling, "retry {retry}");
            }
        }
        // The loop waits the back-off of its attempt number.
        let now = Instant::now();
        let mut attempts = RetryLoop::new(Some(&policy), None, now);
        for retry in 1..=10u32 {
            attempts.begin(now);
            let Next::Retry { after } = attempts.next(status(500), true, now, &rng) else {
                panic!("retry {retry} follows");
            };
            let ceiling = Duration::from_millis((25 * ((1u64 << retry) - 1)).min(250));
            assert!(after < ceiling, "retry {retry}: {after:?}");
        }
        // The draws spread over the range rather than sitting at one end.
        let draws: Vec<_> = (0..200).map(|_| policy.backoff(5, &rng)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(draws.iter().any(|d| *d >= Duration::from_millis(150)));
    }

    #[test]
    fn each_attempt_is_bounded_by_the_earlier_of_per_try_and_overall_timeouts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut policy = spec("5xx", 5);
        policy.per_try_timeout = Some(s(1));
        let mut attempts = RetryLoop::new(Some(&policy), Some(Duration::from_millis(2500)), t0);
        let per_try = |at| AttemptLimit {
            at,
            timeout: Timeout::PerTry,
        };
        let overall = |at| AttemptLimit {
            at,
            timeout: Timeout::Overall,
        };
        assert_eq!(attempts.begin(t0), (1, Some(per_try(t0 + s(1)))));
        assert_eq!(attempts.begin(t0 + s(1)), (2, Some(per_try(t0 + s(2)))));
        let deadline = t0 + Duration::from_millis(2500);
        assert_eq!(attempts.begin(t0 + s(2)), (3, Some(overall(deadline))));
        // Both at once: the overall timeout, which ends the request.
        let mut even = RetryLoop::new(Some(&policy), Some(s(1)), t0);
        assert_eq!(even.begin(t0), (1, Some(overall(t0 + s(1)))));
        // Only the overall timeout, without a policy.
        let mut once = RetryLoop::new(None, Some(s(3)), t0);
        assert_eq!(once.begin(t0 + s(1)), (1, Some(overall(t0 + s(3)))));
    }

    #[test]
    fn retries_stop_when_the_back_off_reaches_the_overall_timeout() {
        let t0 = Instant::now();
        let rng = Rng::seeded(9);
        let policy = spec("5xx", 5);
        let mut attempts = RetryLoop::new(Some(&policy), Some(Duration::from_secs(1)), t0);
        attempts.begin(t0);
        // Plenty of time left: the back-off (under 25 ms for the first retry) is waited.
        assert!(matches!(
            attempts.next(status(503), true, t0, &rng),
            Next::Retry { after } if after < Duration::from_millis(25)
        ));
        // Less left than any back-off: wait out the rest, then time out.
        let at_deadline = t0 + Duration::from_secs(1);
        assert_eq!(
            attempts.next(status(503), true, at_deadline, &rng),
            Next::TimeOut {
                after: Duration::ZERO
            }
        );
        assert_eq!(
            attempts.next(
                status(503),
                true,
                at_deadline + Duration::from_secs(5),
                &rng
            ),
            Next::TimeOut {
                after: Duration::ZERO
            }
        );
        // 1 ms left and a back-off of at least that: the rest, exactly.
        let late = at_deadline - Duration::from_millis(1);
        let mut outcomes = Vec::new();
        for _ in 0..50 {
            outcomes.push(attempts.next(status(503), true, late, &rng));
        }
        for next in &outcomes {
            match next {
                Next::TimeOut { after } => assert_eq!(*after, Duration::from_millis(1)),
                Next::Retry { after } => assert!(*after < Duration::from_millis(1)),
                other => panic!("{other:?}"),
            }
        }
        assert!(outcomes.iter().any(|n| matches!(n, Next::TimeOut { .. })));
        // Failures that are not retried are delivered, whatever the time.
        assert_eq!(
            attempts.next(status(200), true, at_deadline, &rng),
            Next::Deliver
        );
    }

    #[test]
    fn previous_hosts_are_avoided_only_under_retry_previous_hosts() {
        let now = Instant::now();
        let mut policy = spec("5xx", 3);
        let mut attempts = RetryLoop::new(Some(&policy), None, now);
        attempts.begin(now);
        attempts.tried(addr(1));
        assert!(attempts.exclude().is_empty());
        policy.retry_previous_hosts = true;
        let mut attempts = RetryLoop::new(Some(&policy), None, now);
        attempts.begin(now);
        assert!(attempts.exclude().is_empty());
        attempts.tried(addr(1));
        attempts.begin(now);
        attempts.tried(addr(2));
        assert_eq!(attempts.exclude(), &[addr(1), addr(2)]);
    }
}
