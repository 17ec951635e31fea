//! Envoy's ring hash (`RING_HASH`, Istio's `consistentHash.ringHash`): every endpoint gets
//! points on a 64-bit ring in proportion to its weight; a request's hash goes to the endpoint of
//! the first point at or after it.
//!
//! Size, as Envoy's `RingHashLbConfig`: the lightest endpoint gets
//! `ceil(minimum_ring_size * its weight / total weight)` points and every other endpoint as many
//! per unit of weight, so the ring has at least `minimum_ring_size` points (default 1024); when
//! that would exceed `maximum_ring_size` (default and limit 8M) every endpoint gets its share of
//! the maximum instead (at least one point). An endpoint's points are `point(address, n)` for
//! `n = 0, 1, ...`: the same endpoint always lands on the same places, so while the point count
//! per endpoint stays the same (the lightest endpoint's share of the minimum does not round
//! differently), removing an endpoint moves only the keys that were on it. When the count per
//! endpoint grows (fewer endpoints share the minimum) the new points take some keys from the
//! other survivors too, as in Envoy.
//!
//! Memory: 16 bytes per point (hash and endpoint index), 16 KiB at the default size.

use super::splitmix::mix;
use std::net::SocketAddr;

/// The ring: points sorted by hash, each naming an endpoint by its index in the list the ring
/// was built from.
#[derive(Debug, Clone)]
pub struct RingHash {
    ring: Vec<(u64, u32)>,
}

/// Where endpoint `addr` puts its `n`th point.
fn point(addr: &SocketAddr, n: u64) -> u64 {
    let base = rustmesh_xds::fnv::hash(addr.to_string().as_bytes());
    mix(base ^ mix(n))
}

impl RingHash {
    /// Points per endpoint for `weights` (each at least 1) and the ring size limits.
    pub fn points_per_endpoint(weights: &[u32], minimum: u64, maximum: u64) -> Vec<u64> {
        let weights: Vec<u64> = weights.iter().map(|w| u64::from((*w).max(1))).collect();
        let total: u64 = weights.iter().sum();
        let Some(lightest) = weights.iter().copied().min() else {
            return Vec::new();
        };
        let maximum = maximum.max(1);
        // The lightest endpoint's share of the minimum, rounded up; the others in proportion.
        let per_lightest = (minimum.max(1) * lightest).div_ceil(total);
        let points: Vec<u64> = weights
            .iter()
            .map(|w| w * per_lightest / lightest)
            .collect();
        if points.iter().sum::<u64>() <= maximum {
            points
        } else {
            weights
                .iter()
                .map(|w| (w * maximum / total).max(1))
                .collect()
        }
    }

    /// Builds the ring for `endpoints` (address and weight) with at least `minimum` and at most
    /// `maximum` points.
    pub fn new(endpoints: &[(SocketAddr, u32)], minimum: u64, maximum: u64) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        let counts = Self::points_per_endpoint(&weights, minimum, maximum);
        let mut ring = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (i, ((addr, _), count)) in endpoints.iter().zip(counts).enumerate() {
            ring.extend((0..count).map(|n| (point(addr, n), i as u32)));
        }
        ring.sort_unstable();
        RingHash { ring }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the ring has no points (no endpoints).
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The endpoint (its index) for `hash`: the first point at or after it whose endpoint
    /// `accept`s, walking on along the ring past the others (excluded or ejected endpoints).
    pub fn pick(&self, hash: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.ring.partition_point(|(h, _)| *h < hash);
        let (before, after) = self.ring.split_at(start);
        after
            .iter()
            .chain(before)
            .map(|(_, i)| *i as usize)
            .find(|i| accept(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::lb::test_keys::{eps, key};
    use rustmesh_xds::cluster::RingHashLbConfig;

    const MIN: u64 = RingHashLbConfig::DEFAULT_MINIMUM_RING_SIZE;
    const MAX: u64 = RingHashLbConfig::MAX_RING_SIZE;

    fn counts(r: &RingHash, n: usize, keys: u64) -> Vec<usize> {
        let mut c = vec![0; n];
        for k in 0..keys {
            c[r.pick(key(k), |_| true).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn ring_size_follows_envoys_limits() {
        // Default minimum: 5 equal endpoints get ceil(1024 / 5) points each.
        assert_eq!(RingHash::new(&eps(&[1; 5]), MIN, MAX).len(), 5 * 205);
        assert_eq!(RingHash::new(&eps(&[1; 4]), MIN, MAX).len(), 1024);
        assert_eq!(RingHash::new(&eps(&[1; 3]), 4096, MAX).len(), 3 * 1366);
        // Weights in proportion: the lightest gets its share rounded up, the others as many
        // per unit of weight.
        assert_eq!(
            RingHash::points_per_endpoint(&[1, 3], MIN, MAX),
            vec![256, 768]
        );
        // More endpoints than the minimum: one point each.
        assert_eq!(RingHash::points_per_endpoint(&[1; 3], 2, MAX), vec![1; 3]);
        // The maximum caps the ring.
        assert_eq!(
            RingHash::points_per_endpoint(&[1, 1], 1000, 100),
            vec![50, 50]
        );
        assert!(RingHash::new(&[], MIN, MAX).is_empty());
    }

    #[test]
    fn a_key_always_gets_the_same_endpoint_and_keys_spread_by_weight() {
        let e = eps(&[1; 5]);
        let (a, b) = (RingHash::new(&e, MIN, MAX), RingHash::new(&e, MIN, MAX));
        for k in 0..500 {
            let first = a.pick(key(k), |_| true);
            assert_eq!(first, a.pick(key(k), |_| true));
            assert_eq!(first, b.pick(key(k), |_| true), "rebuilt ring differs");
        }
        let c = counts(&a, 5, 10_000);
        assert!(c.iter().all(|n| (1400..2600).contains(n)), "{c:?}");
        // Weight 3 against 1: about three quarters of the keys.
        let c = counts(&RingHash::new(&eps(&[1, 3]), MIN, MAX), 2, 10_000);
        assert!((6800..8200).contains(&c[1]), "{c:?}");
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        // 10 endpoints and a minimum of 81: each gets ceil(81 / 10) = 9 points, and still 9
        // (ceil(81 / 9)) once one is removed: no survivor's key moves.
        let all = eps(&[1; 10]);
        let fewer: Vec<_> = all.iter().copied().filter(|e| *e != all[2]).collect();
        let (before, after) = (RingHash::new(&all, 81, MAX), RingHash::new(&fewer, 81, MAX));
        assert_eq!((before.len(), after.len()), (90, 81));
        let addr = |eps: &[(SocketAddr, u32)], i: usize| eps[i].0;
        let mut moved_off_removed = 0;
        for k in 0..5000 {
            let b = addr(&all, before.pick(key(k), |_| true).unwrap());
            let a = addr(&fewer, after.pick(key(k), |_| true).unwrap());
            if b == all[2].0 {
                moved_off_removed += 1;
            } else {
                assert_eq!(a, b, "key {k} moved without need");
            }
        }
        assert!(moved_off_removed > 100, "{moved_off_removed}");
        // With the default minimum and weight 1 the survivors grow from 205 to 256 points,
        // and the new points take a small share of the other survivors' keys (as in Envoy).
        let all = eps(&[1; 5]);
        let fewer: Vec<_> = all.iter().copied().filter(|e| *e != all[2]).collect();
        let (before, after) = (
            RingHash::new(&all, MIN, MAX),
            RingHash::new(&fewer, MIN, MAX),
        );
        let moved = (0..5000)
            .filter(|k| {
                let b = all[before.pick(key(*k), |_| true).unwrap()].0;
                let a = fewer[after.pick(key(*k), |_| true).unwrap()].0;
                b != all[2].0 && a != b
            })
            .count();
        assert!(moved < 1000, "{moved} of 4000 survivor keys moved");
    }

    #[test]
    fn pick_walks_past_endpoints_not_accepted() {
        let e = eps(&[1; 3]);
        let r = RingHash::new(&e, MIN, MAX);
        let first = r.pick(42, |_| true).unwrap();
        let second = r.pick(42, |i| i != first).unwrap();
        assert_ne!(first, second);
        // The next one along the ring: the same for the same key.
        assert_eq!(r.pick(42, |i| i != first), Some(second));
        assert_eq!(r.pick(42, |_| false), None);
        assert_eq!(RingHash::new(&[], MIN, MAX).pick(1, |_| true), None);
    }
}
