//! Retrying the Kubernetes API server: one back-off schedule for every part that talks to it
//! (the sidecar's ConfigMap watch, the operator's and the webhook's watches, the operator's
//! EndpointSlice probe), so that an API outage is met by every sidecar of the mesh backing off
//! rather than by a storm of reconnects.
//!
//! The schedule is client-go's reflector's (0.8 s doubling to 30 s, jittered, starting over after
//! two minutes without a failure): the `n`-th failure in a row is followed by a pause drawn
//! uniformly from the upper half of its ceiling `min(0.8 s × 2^(n-1), 30 s)`, so 0.4–0.8 s, then
//! 0.8–1.6 s, 1.6–3.2 s, ... and 15–30 s from the seventh on; no pause is longer than 30 s, so a
//! recovered API server is heard again within 30 s. The jitter spreads the retries of many
//! sidecars that lost the API at the same moment.
//!
//! The schedule starts over only when the remote has gone [`RESET_AFTER`] without failing since
//! the end of the last pause. kube-runtime's `default_backoff()` starts over on every `Ok` of the
//! watch stream, and the watcher yields `Ok(Event::Init)` before each (re)list, before it has
//! asked the API anything: against an unreachable API its pause never grew past the first one
//! (51 attempts a minute per sidecar). [`Backoff`] ignores those resets (its
//! `kube::runtime::utils::Backoff::reset` does nothing, with the `kube` feature).
//!
//! [`Backoff::pause`] is pure (the time is passed in, the jitter comes from a seeded generator),
//! so the schedule is tested without a clock; with the `kube` feature it is also the
//! `Iterator`/`Backoff` that `WatchStreamExt::backoff` takes, reading tokio's clock (paused time
//! in tests).

use std::time::{Duration, Instant};

/// The ceiling of the first pause (client-go's and kube-runtime's 800 ms).
pub const FIRST: Duration = Duration::from_millis(800);
/// The largest ceiling: no pause is longer.
pub const CAP: Duration = Duration::from_secs(30);
/// How long the remote must go without failing for the schedule to start over.
pub const RESET_AFTER: Duration = Duration::from_secs(120);

/// Exponential back-off with jitter; see the module docs for the schedule.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    reset_after: Duration,
    /// The ceiling of the last pause; `None` before the first failure (or after a reset).
    ceiling: Option<Duration>,
    /// When the last pause ends (the next attempt).
    quiet_from: Option<Instant>,
    /// splitmix64 state for the jitter.
    rng: u64,
}

impl Backoff {
    /// The schedule for the Kubernetes API ([`FIRST`], [`CAP`], [`RESET_AFTER`]), jittered from
    /// a seed that differs between processes (std's randomly keyed hasher), so sidecars that
    /// failed together retry apart.
    pub fn api() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self::new(FIRST, CAP, RESET_AFTER, seed)
    }

    /// A schedule whose ceilings go `first`, doubling, up to `cap`, starting over after
    /// `reset_after` without a failure; the jitter drawn from `seed`.
    pub fn new(first: Duration, cap: Duration, reset_after: Duration, seed: u64) -> Self {
        Self {
            first,
            cap: cap.max(first),
            reset_after,
            ceiling: None,
            quiet_from: None,
            rng: seed,
        }
    }

    /// A failure at `now`: how long to wait before the next attempt.
    pub fn pause(&mut self, now: Instant) -> Duration {
        if self
            .quiet_from
            .is_some_and(|q| now.saturating_duration_since(q) >= self.reset_after)
        {
            self.ceiling = None;
        }
        let ceiling = match self.ceiling {
            None => self.first,
            Some(c) => c.saturating_mul(2).min(self.cap),
        };
        self.ceiling = Some(ceiling);
        let half = ceiling / 2;
        let pause = half + half.mul_f64(self.unit());
        self.quiet_from = Some(now + pause);
        pause
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The most attempts the remote can see within `window` of the first one when every attempt
    /// fails at once: the first, and one after each pause, every pause at least half its
    /// ceiling. What a test of a retrying client may assert.
    pub fn most_attempts(&self, window: Duration) -> u32 {
        let mut attempts = 1;
        let mut elapsed = Duration::ZERO;
        let mut ceiling = self.first;
        loop {
            elapsed += ceiling / 2;
            if elapsed > window {
                return attempts;
            }
            attempts += 1;
            ceiling = ceiling.saturating_mul(2).min(self.cap);
        }
    }
}

/// With the `kube` feature: the back-off of `WatchStreamExt::backoff`. Each `next` is a failure
/// now (tokio's clock, so paused time in tests moves it).
#[cfg(feature = "kube")]
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.pause(tokio::time::Instant::now().into_std()))
    }
}

#[cfg(feature = "kube")]
impl kube::runtime::utils::Backoff for Backoff {
    /// Does nothing: the stream calls it on every `Ok`, including the watcher's `Init` that
    /// comes before the API has answered; the schedule starts over after [`RESET_AFTER`]
    /// without a failure instead.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(seed: u64) -> Backoff {
        Backoff::new(FIRST, CAP, RESET_AFTER, seed)
    }

    #[test]
    fn pauses_double_from_the_first_to_the_cap_each_in_the_upper_half_of_its_ceiling() {
        for seed in 0..50 {
            let mut b = api(seed);
            let mut now = Instant::now();
            let mut ceiling = FIRST;
            for n in 0..12 {
                let p = b.pause(now);
                assert!(
                    p >= ceiling / 2 && p <= ceiling,
                    "seed {seed}, failure {n}: {p:?} outside {:?}..={ceiling:?}",
                    ceiling / 2
                );
                now += p;
                ceiling = (ceiling * 2).min(CAP);
            }
            assert_eq!(ceiling, CAP);
        }
    }

    #[test]
    fn the_pauses_are_jittered() {
        let firsts: std::collections::BTreeSet<_> =
            (0..20).map(|s| api(s).pause(Instant::now())).collect();
        assert!(firsts.len() > 10, "{firsts:?}");
        let a = Backoff::api().pause(Instant::now());
        assert!(a >= FIRST / 2 && a <= FIRST);
    }

    #[test]
    fn it_starts_over_only_after_a_quiet_period() {
        let mut b = api(1);
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..8 {
            now += b.pause(now);
        }
        // Failing again soon after the last attempt: still at the cap.
        let p = b.pause(now + Duration::from_secs(60));
        assert!(p >= CAP / 2, "{p:?}");
        now += Duration::from_secs(60) + p;
        // Quiet for RESET_AFTER since the last pause ended: back to the first ceiling.
        let p = b.pause(now + RESET_AFTER);
        assert!(p <= FIRST, "{p:?}");
    }

    #[test]
    fn most_attempts_follows_the_schedule() {
        let b = api(0);
        // Attempts at 0 and after at least 0.4, 1.2, 2.8, 6.0, 12.4, 25.2, 40.2, 55.2 s.
        assert_eq!(b.most_attempts(Duration::ZERO), 1);
        assert_eq!(b.most_attempts(Duration::from_millis(399)), 1);
        assert_eq!(b.most_attempts(Duration::from_millis(400)), 2);
        assert_eq!(b.most_attempts(Duration::from_secs(10)), 5);
        assert_eq!(b.most_attempts(Duration::from_secs(60)), 9);
        assert_eq!(b.most_attempts(Duration::from_secs(600)), 9 + 36);
        // And no run of the schedule exceeds it.
        for seed in 0..50 {
            let mut b = api(seed);
            let window = Duration::from_secs(60);
            let (t0, mut now, mut attempts) = (Instant::now(), Duration::ZERO, 1);
            loop {
                now += b.pause(t0 + now);
                if now > window {
                    break;
                }
                attempts += 1;
            }
            assert!(attempts <= b.most_attempts(window), "seed {seed}");
        }
    }
}
