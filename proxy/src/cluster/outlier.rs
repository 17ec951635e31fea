//! Outlier detection (a DestinationRule's `trafficPolicy.outlierDetection`, Envoy's
//! `outlier_detection`): endpoints that keep failing are ejected from load balancing for a while.
//!
//! What counts, per endpoint, as Envoy does without `split_external_local_origin_errors`:
//!
//! * an HTTP response with status >= 500 adds one to the endpoint's consecutive 5xx count, and a
//!   502/503/504 also to its consecutive gateway-error count; any other response resets both;
//! * a failure of the proxy's own making towards that endpoint (connect refused or timed out,
//!   connection reset before the response) counts as a 503.
//!
//! When a count reaches its threshold (`consecutive5xxErrors`, default 5 as in Envoy;
//! `consecutiveGatewayErrors`, off unless set) the endpoint is ejected for `baseEjectionTime`
//! (default 30 s) times the number of times it has been ejected (at most 300 s or
//! `baseEjectionTime`, whichever is larger), unless that would take the ejected share of the
//! cluster above `maxEjectionPercent` (default 10%; one endpoint can always be ejected, as in
//! Envoy). The ejection multiplier falls by one for each `interval` (default 10 s) the endpoint
//! then stays in. Ejection ends on its own when the time is up: it is checked when load balancing
//! picks, so no timer runs per endpoint.
//!
//! Panic mode (Envoy's healthy panic threshold) follows Istio: `minHealthPercent` (default 0,
//! panic off). When the healthy share of the cluster falls below it, ejected endpoints are
//! picked again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustmesh_xds::cluster::OutlierDetection;

/// Envoy's default `consecutive_5xx`.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Envoy's default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Envoy's default `base_ejection_time`.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_percent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's default `max_ejection_time`.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// A cluster's outlier-detection settings, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive 5xx that eject (0: never).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 that eject (0: never).
    pub consecutive_gateway: u32,
    /// How often the ejection multiplier decays.
    pub interval: Duration,
    /// Ejection time per ejection.
    pub base_ejection_time: Duration,
    /// Largest share of the cluster that may be ejected at once.
    pub max_ejection_percent: u32,
    /// Below this healthy share, ejected endpoints are used anyway (0: never).
    pub min_health_percent: u32,
}

impl Policy {
    /// The policy of a cluster definition; `None` when it has no `outlierDetection`.
    pub fn from_def(def: Option<&OutlierDetection>) -> Option<Policy> {
        let d = def?;
        Some(Policy {
            consecutive_5xx: d.consecutive_5xx.unwrap_or(DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway: d.consecutive_gateway_failure.unwrap_or(0),
            interval: d
                .interval
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_INTERVAL),
            base_ejection_time: d
                .base_ejection_time
                .map(|d| d.as_std())
                .unwrap_or(DEFAULT_BASE_EJECTION_TIME),
            max_ejection_percent: d
                .max_ejection_percent
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT)
                .min(100),
            min_health_percent: d.min_health_percent.unwrap_or(0).min(100),
        })
    }

    fn ejection_time(&self, multiplier: u32) -> Duration {
        let cap = MAX_EJECTION_TIME.max(self.base_ejection_time);
        self.base_ejection_time
            .saturating_mul(multiplier.max(1))
            .min(cap)
    }
}

/// What one request (or connection attempt) to an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// Connect failure, timeout or reset before the response (counted as a 503).
    LocalFailure,
}

/// Milliseconds on a process-wide monotonic clock (tokio's, so paused-time tests work).
pub fn now_ms() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    // +1 so that 0 can mean "never".
    tokio::time::Instant::now()
        .saturating_duration_since(start)
        .as_millis() as u64
        + 1
}

/// An endpoint's outlier state. Carried over with the endpoint's stats, so it survives
/// configuration changes that keep the endpoint.
#[derive(Debug, Default)]
pub struct HostState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Until when (see [`now_ms`]) the endpoint is ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Ejections so far, after decay: the next ejection lasts `base * (multiplier + 1)`.
    multiplier: AtomicU32,
    /// How many times it was ejected (for `/clusters`).
    pub ejections_total: AtomicU64,
}

impl HostState {
    /// Until when it is (or was last) ejected; 0 if never.
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Records an outcome; returns whether the thresholds of `policy` are now reached (the
    /// caller then decides whether the cluster may eject it: [`HostState::eject`]).
    pub fn record(&self, policy: &Policy, outcome: Outcome) -> bool {
        let status = match outcome {
            Outcome::Status(s) => s,
            Outcome::LocalFailure => 503,
        };
        if status < 500 {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return false;
        }
        let n5xx = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let ngw = if (502..=504).contains(&status) {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        (policy.consecutive_5xx > 0 && n5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0 && ngw >= policy.consecutive_gateway)
    }

    /// Ejects the endpoint at `now`; returns until when. The counters start over.
    pub fn eject(&self, policy: &Policy, now: u64) -> u64 {
        let previous_until = self.ejected_until.load(Ordering::Relaxed);
        let mut multiplier = self.multiplier.load(Ordering::Relaxed);
        if previous_until > 0 && now > previous_until {
            // Decay: one step per interval spent back in the cluster.
            let back_in = now - previous_until;
            let steps = back_in / (policy.interval.as_millis().max(1) as u64);
            multiplier = multiplier.saturating_sub(steps.min(u64::from(u32::MAX)) as u32);
        }
        multiplier = multiplier.saturating_add(1);
        self.multiplier.store(multiplier, Ordering::Relaxed);
        let until = now + policy.ejection_time(multiplier).as_millis() as u64;
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        until
    }
}

/// Whether one more of `total` endpoints may be ejected while `ejected` already are.
pub fn may_eject(policy: &Policy, ejected: usize, total: usize) -> bool {
    ejected == 0
        || (ejected as u64 + 1) * 100 <= total as u64 * u64::from(policy.max_ejection_percent)
}

/// Whether the cluster is in panic mode: fewer than `minHealthPercent` of `total` are healthy.
pub fn panic(policy: &Policy, healthy: usize, total: usize) -> bool {
    total > 0 && (healthy as u64) * 100 < total as u64 * u64::from(policy.min_health_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: serde_json::Value) -> Policy {
        let d: OutlierDetection = serde_json::from_value(json).unwrap();
        Policy::from_def(Some(&d)).unwrap()
    }

    #[test]
    fn defaults_are_envoys() {
        let p = policy(serde_json::json!({}));
        assert_eq!(p.consecutive_5xx, 5);
        assert_eq!(p.consecutive_gateway, 0);
        assert_eq!(p.interval, Duration::from_secs(10));
        assert_eq!(p.base_ejection_time, Duration::from_secs(30));
        assert_eq!(p.max_ejection_percent, 10);
        assert_eq!(Policy::from_def(None), None);
    }

    #[test]
    fn consecutive_5xx_reach_the_threshold_and_a_success_resets() {
        let p = policy(serde_json::json!({"consecutive5xx": 3}));
        let h = HostState::default();
        assert!(!h.record(&p, Outcome::Status(500)));
        assert!(!h.record(&p, Outcome::LocalFailure));
        assert!(!h.record(&p, Outcome::Status(200)), "success resets");
        assert!(!h.record(&p, Outcome::Status(503)));
        assert!(!h.record(&p, Outcome::Status(500)));
        assert!(h.record(&p, Outcome::Status(502)));
        // 4xx are not failures.
        let h = HostState::default();
        for _ in 0..10 {
            assert!(!h.record(&p, Outcome::Status(404)));
        }
    }

    #[test]
    fn gateway_errors_count_separately() {
        let p = policy(serde_json::json!({"consecutive5xx": 0, "consecutiveGatewayFailure": 2}));
        let h = HostState::default();
        assert!(
            !h.record(&p, Outcome::Status(500)),
            "500 is not a gateway error"
        );
        assert!(!h.record(&p, Outcome::Status(503)));
        assert!(
            !h.record(&p, Outcome::Status(500)),
            "a non-gateway 5xx breaks the run"
        );
        assert!(!h.record(&p, Outcome::Status(504)));
        assert!(
            h.record(&p, Outcome::LocalFailure),
            "local failures are 503s"
        );
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_decays() {
        let p = policy(serde_json::json!({"baseEjectionTime": "1s", "interval": "10s"}));
        let h = HostState::default();
        let now = 1000;
        assert!(!h.is_ejected(now));
        let until = h.eject(&p, now);
        assert_eq!(until, now + 1000);
        assert!(h.is_ejected(now + 999));
        assert!(!h.is_ejected(now + 1000));
        // Ejected again soon after: twice as long.
        let now2 = until + 10;
        assert_eq!(h.eject(&p, now2), now2 + 2000);
        // After 20 s back in (two intervals), the multiplier fell back: 1 s again.
        let now3 = now2 + 2000 + 20_000;
        assert_eq!(h.eject(&p, now3), now3 + 1000);
        assert_eq!(h.ejections_total.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn ejection_time_is_capped() {
        let p = policy(serde_json::json!({"baseEjectionTime": "200s"}));
        let h = HostState::default();
        h.eject(&p, 1);
        let until = h.eject(&p, 1);
        assert_eq!(until, 1 + 300_000);
    }

    #[test]
    fn max_ejection_percent_always_allows_one() {
        let p = policy(serde_json::json!({"maxEjectionPercent": 10}));
        assert!(may_eject(&p, 0, 3));
        assert!(!may_eject(&p, 1, 3));
        assert!(may_eject(&p, 1, 20), "2 of 20 is 10%");
        assert!(!may_eject(&p, 2, 20));
        let all = policy(serde_json::json!({"maxEjectionPercent": 100}));
        assert!(may_eject(&all, 2, 3));
    }

    #[test]
    fn panic_threshold() {
        let p = policy(serde_json::json!({"minHealthPercent": 50}));
        assert!(panic(&p, 1, 3));
        assert!(!panic(&p, 2, 4));
        let off = policy(serde_json::json!({}));
        assert!(!panic(&off, 0, 3));
    }
}
