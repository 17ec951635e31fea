//! Load balancers over a cluster's usable endpoints: ROUND_ROBIN, LEAST_REQUEST (power of two
//! choices on active requests, Istio's default), RANDOM, and the consistent-hash table of a
//! RING_HASH or MAGLEV cluster ([`HashTable`]: a [`RingHash`] or a [`Maglev`] table, built once
//! per endpoint set). A request without a hash key on a RING_HASH or MAGLEV cluster is balanced
//! like LEAST_REQUEST.
//!
//! Weights (`loadBalancingWeight`, default 1) are honoured by every policy.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::net::SocketAddr;

use rustmesh_xds::cluster::{Cluster, LbPolicy, MaglevLbConfig, RingHashLbConfig};

use super::maglev::Maglev;
use super::ring_hash::RingHash;

/// What a balancer needs to know about a candidate.
pub trait Candidate {
    /// `loadBalancingWeight` (at least 1).
    fn weight(&self) -> u32;
    /// Active requests (and TCP connections) now: LEAST_REQUEST's measure.
    fn load(&self) -> u64;
}

/// A RING_HASH or MAGLEV cluster's table over its usable endpoints, sized from the cluster's
/// `ringHashLbConfig` / `maglevLbConfig` (Envoy's defaults when absent).
#[derive(Debug, Clone)]
pub enum HashTable {
    /// RING_HASH.
    Ring(RingHash),
    /// MAGLEV.
    Maglev(Maglev),
}

impl HashTable {
    /// The table of `def` over `endpoints` (address and weight), `None` for the other policies
    /// or without endpoints.
    pub fn build(def: &Cluster, endpoints: &[(SocketAddr, u32)]) -> Option<HashTable> {
        if endpoints.is_empty() {
            return None;
        }
        match def.lb_policy {
            LbPolicy::RingHash => {
                let c = def.ring_hash_lb_config.unwrap_or_default();
                let max = RingHashLbConfig::MAX_RING_SIZE;
                let minimum = c
                    .minimum_ring_size
                    .unwrap_or(RingHashLbConfig::DEFAULT_MINIMUM_RING_SIZE)
                    .min(max);
                let maximum = c.maximum_ring_size.unwrap_or(max).min(max);
                Some(HashTable::Ring(RingHash::new(endpoints, minimum, maximum)))
            }
            LbPolicy::Maglev => {
                let size = def
                    .maglev_lb_config
                    .and_then(|c| c.table_size)
                    .filter(|n| *n > 0)
                    .unwrap_or(MaglevLbConfig::DEFAULT_TABLE_SIZE)
                    .min(MaglevLbConfig::MAX_TABLE_SIZE);
                Some(HashTable::Maglev(Maglev::new(endpoints, size)))
            }
            _ => None,
        }
    }

    /// The endpoint (index into the list the table was built from) for `hash`, walking past
    /// those `accept` refuses.
    pub fn pick(&self, hash: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Ring(r) => r.pick(hash, accept),
            HashTable::Maglev(m) => m.pick(hash, accept),
        }
    }
}

/// Picks an index into `endpoints` (which are all usable), or `None` when there are none.
/// Consistent hashing is [`HashTable`]'s: here RING_HASH and MAGLEV are LEAST_REQUEST.
pub fn pick<C: Candidate>(
    policy: LbPolicy,
    endpoints: &[C],
    rr: &AtomicUsize,
    rng: &mut dyn FnMut() -> u64,
) -> Option<usize> {
    let n = endpoints.len();
    if n <= 1 {
        return (n == 1).then_some(0);
    }
    let uniform = endpoints
        .iter()
        .all(|e| e.weight() == endpoints[0].weight());
    match policy {
        LbPolicy::RoundRobin => {
            let turn = rr.fetch_add(1, Ordering::Relaxed);
            if uniform {
                Some(turn % n)
            } else {
                let total: u64 = endpoints.iter().map(|e| u64::from(e.weight().max(1))).sum();
                Some(by_weight(endpoints, turn as u64 % total))
            }
        }
        LbPolicy::Random => Some(weighted_random(endpoints, uniform, rng)),
        LbPolicy::LeastRequest
        | LbPolicy::RingHash
        | LbPolicy::Maglev
        | LbPolicy::ClusterProvided => {
            // Power of two choices: two distinct candidates, the less loaded wins (the first on
            // a tie). With weights, candidates are drawn in proportion to them.
            let a = weighted_random(endpoints, uniform, rng);
            let mut b = weighted_random(endpoints, uniform, rng);
            if b == a {
                b = (a + 1 + (rng() as usize) % (n - 1)) % n;
            }
            Some(if endpoints[b].load() < endpoints[a].load() {
                b
            } else {
                a
            })
        }
    }
}

fn by_weight<C: Candidate>(endpoints: &[C], mut point: u64) -> usize {
    for (i, e) in endpoints.iter().enumerate() {
        let w = u64::from(e.weight().max(1));
        if point < w {
            return i;
        }
        point -= w;
    }
    endpoints.len() - 1
}

fn weighted_random<C: Candidate>(
    endpoints: &[C],
    uniform: bool,
    rng: &mut dyn FnMut() -> u64,
) -> usize {
    if uniform {
        (rng() % endpoints.len() as u64) as usize
    } else {
        let total: u64 = endpoints.iter().map(|e| u64::from(e.weight().max(1))).sum();
        by_weight(endpoints, rng() % total)
    }
}

thread_local! {
    // `RandomState::new()` draws fresh random keys per thread.
    static RNG: Cell<u64> =
        Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish() | 1);
}

/// A fast per-thread random number (xorshift64*), no lock. Not for cryptography.
pub fn random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Endpoints and keys shared by the consistent-hash tables' unit tests.
#[cfg(test)]
pub(crate) mod test_keys {
    use crate::cluster::splitmix::mix;
    use std::net::SocketAddr;

    /// Endpoints `10.0.0.<i+1>:9080` with the given weights.
    pub fn eps(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 9080)), *w))
            .collect()
    }

    /// A well-spread request key for test key `k`.
    pub fn key(k: u64) -> u64 {
        mix(k.wrapping_mul(0x9E37_79B9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::splitmix::mix;

    #[derive(Clone)]
    struct E {
        weight: u32,
        load: u64,
    }

    impl Candidate for E {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn load(&self) -> u64 {
            self.load
        }
    }

    fn eps(n: usize) -> Vec<E> {
        (0..n).map(|_| E { weight: 1, load: 0 }).collect()
    }

    fn seeded(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(1);
            mix(s)
        }
    }

    fn counts(policy: LbPolicy, endpoints: &[E], picks: usize) -> Vec<usize> {
        let rr = AtomicUsize::new(0);
        let mut rng = seeded(42);
        let mut out = vec![0; endpoints.len()];
        for _ in 0..picks {
            out[pick(policy, endpoints, &rr, &mut rng).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_is_even_and_honours_weights() {
        assert_eq!(counts(LbPolicy::RoundRobin, &eps(3), 300), [100, 100, 100]);
        let mut e = eps(2);
        e[1].weight = 3;
        assert_eq!(counts(LbPolicy::RoundRobin, &e, 400), [100, 300]);
    }

    #[test]
    fn random_spreads_in_proportion_to_weight() {
        let c = counts(LbPolicy::Random, &eps(4), 4000);
        assert!(c.iter().all(|n| (800..1200).contains(n)), "{c:?}");
        let mut e = eps(2);
        e[0].weight = 9;
        let c = counts(LbPolicy::Random, &e, 1000);
        assert!(c[0] > 800 && c[1] > 50, "{c:?}");
    }

    #[test]
    fn least_request_avoids_the_busiest() {
        let mut e = eps(3);
        e[0].load = 5;
        let c = counts(LbPolicy::LeastRequest, &e, 1000);
        assert_eq!(
            c[0], 0,
            "two distinct choices never both land on the busy one: {c:?}"
        );
        assert!(c[1] > 300 && c[2] > 300, "{c:?}");
        // All idle: spread over everyone.
        let c = counts(LbPolicy::LeastRequest, &eps(3), 3000);
        assert!(c.iter().all(|n| *n > 500), "{c:?}");
    }

    #[test]
    fn hash_policies_without_a_key_balance_like_least_request() {
        let mut e = eps(3);
        e[0].load = 5;
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let c = counts(policy, &e, 1000);
            assert_eq!(c[0], 0, "{c:?}");
            assert!(c[1] > 300 && c[2] > 300, "{c:?}");
        }
    }

    #[test]
    fn hash_tables_are_built_for_their_policies_with_their_sizes() {
        let eps: Vec<(SocketAddr, u32)> = (1..=3u8)
            .map(|i| (SocketAddr::from(([10, 0, 0, i], 80)), 1))
            .collect();
        let def = |json: serde_json::Value| -> Cluster { serde_json::from_value(json).unwrap() };
        let ring = def(serde_json::json!({"name": "c", "type": "EDS", "lbPolicy": "RING_HASH"}));
        match HashTable::build(&ring, &eps) {
            Some(HashTable::Ring(r)) => assert_eq!(r.len(), 3 * 342),
            other => panic!("{other:?}"),
        }
        let ring = def(
            serde_json::json!({"name": "c", "type": "EDS", "lbPolicy": "RING_HASH",
            "ringHashLbConfig": {"minimumRingSize": 3000}}),
        );
        match HashTable::build(&ring, &eps) {
            Some(HashTable::Ring(r)) => assert_eq!(r.len(), 3000),
            other => panic!("{other:?}"),
        }
        let maglev = def(serde_json::json!({"name": "c", "type": "EDS", "lbPolicy": "MAGLEV"}));
        match HashTable::build(&maglev, &eps) {
            Some(HashTable::Maglev(m)) => assert_eq!(m.len(), 65537),
            other => panic!("{other:?}"),
        }
        let maglev = def(
            serde_json::json!({"name": "c", "type": "EDS", "lbPolicy": "MAGLEV",
            "maglevLbConfig": {"tableSize": 251}}),
        );
        match HashTable::build(&maglev, &eps) {
            Some(HashTable::Maglev(m)) => assert_eq!(m.len(), 251),
            other => panic!("{other:?}"),
        }
        // No table for the other policies, nor without endpoints.
        let rr = def(serde_json::json!({"name": "c", "type": "EDS", "lbPolicy": "ROUND_ROBIN"}));
        assert!(HashTable::build(&rr, &eps).is_none());
        assert!(HashTable::build(&maglev, &[]).is_none());
    }

    #[test]
    fn empty_and_single() {
        let rr = AtomicUsize::new(0);
        let mut rng = seeded(3);
        let none: Vec<E> = vec![];
        assert_eq!(pick(LbPolicy::RoundRobin, &none, &rr, &mut rng), None);
        assert_eq!(
            pick(LbPolicy::LeastRequest, &eps(1), &rr, &mut rng),
            Some(0)
        );
    }

    #[test]
    fn thread_rng_varies() {
        let a: Vec<u64> = (0..4).map(|_| random()).collect();
        assert!(a.windows(2).all(|w| w[0] != w[1]));
    }
}
