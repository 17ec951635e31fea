//! Load balancers over a cluster's usable endpoints: ROUND_ROBIN, LEAST_REQUEST (power of two
//! choices on active requests, Istio's default), RANDOM, and consistent hashing for RING_HASH and
//! MAGLEV when a hash is given (weighted rendezvous hashing: the same key goes to the same
//! endpoint, and only the keys of a removed endpoint move). Without a hash RING_HASH and MAGLEV
//! behave like LEAST_REQUEST.
//!
//! Weights (`loadBalancingWeight`, default 1) are honoured by every policy.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use rustmesh_xds::cluster::LbPolicy;

/// What a balancer needs to know about a candidate.
pub trait Candidate {
    /// `loadBalancingWeight` (at least 1).
    fn weight(&self) -> u32;
    /// Active requests (and TCP connections) now: LEAST_REQUEST's measure.
    fn load(&self) -> u64;
    /// A stable key for consistent hashing (the address).
    fn key(&self) -> u64;
}

/// Picks an index into `endpoints` (which are all usable), or `None` when there are none.
pub fn pick<C: Candidate>(
    policy: LbPolicy,
    endpoints: &[C],
    rr: &AtomicUsize,
    hash: Option<u64>,
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
        LbPolicy::RingHash | LbPolicy::Maglev if hash.is_some() => {
            Some(rendezvous(endpoints, hash.unwrap_or_default()))
        }
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

/// Weighted rendezvous (highest random weight) hashing: score = weight / -ln(u), u uniform in
/// (0, 1) derived from (hash, endpoint key).
fn rendezvous<C: Candidate>(endpoints: &[C], hash: u64) -> usize {
    let mut best = 0;
    let mut best_score = f64::MIN;
    for (i, e) in endpoints.iter().enumerate() {
        let x = mix(hash ^ mix(e.key()));
        let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(e.weight().max(1)) / -u.ln();
        if score > best_score {
            best_score = score;
            best = i;
        }
    }
    best
}

/// splitmix64's finaliser: a good 64-bit mixer.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct E {
        weight: u32,
        load: u64,
        key: u64,
    }

    impl Candidate for E {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn load(&self) -> u64 {
            self.load
        }
        fn key(&self) -> u64 {
            self.key
        }
    }

    fn eps(n: usize) -> Vec<E> {
        (0..n)
            .map(|i| E {
                weight: 1,
                load: 0,
                key: i as u64 * 7919,
            })
            .collect()
    }

    fn seeded(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(1);
            mix(s)
        }
    }

    fn counts(policy: LbPolicy, endpoints: &[E], picks: usize, hash: Option<u64>) -> Vec<usize> {
        let rr = AtomicUsize::new(0);
        let mut rng = seeded(42);
        let mut out = vec![0; endpoints.len()];
        for _ in 0..picks {
            out[pick(policy, endpoints, &rr, hash, &mut rng).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_is_even_and_honours_weights() {
        assert_eq!(
            counts(LbPolicy::RoundRobin, &eps(3), 300, None),
            [100, 100, 100]
        );
        let mut e = eps(2);
        e[1].weight = 3;
        assert_eq!(counts(LbPolicy::RoundRobin, &e, 400, None), [100, 300]);
    }

    #[test]
    fn random_spreads_in_proportion_to_weight() {
        let c = counts(LbPolicy::Random, &eps(4), 4000, None);
        assert!(c.iter().all(|n| (800..1200).contains(n)), "{c:?}");
        let mut e = eps(2);
        e[0].weight = 9;
        let c = counts(LbPolicy::Random, &e, 1000, None);
        assert!(c[0] > 800 && c[1] > 50, "{c:?}");
    }

    #[test]
    fn least_request_avoids_the_busiest() {
        let mut e = eps(3);
        e[0].load = 5;
        let c = counts(LbPolicy::LeastRequest, &e, 1000, None);
        assert_eq!(
            c[0], 0,
            "two distinct choices never both land on the busy one: {c:?}"
        );
        assert!(c[1] > 300 && c[2] > 300, "{c:?}");
        // All idle: spread over everyone.
        let c = counts(LbPolicy::LeastRequest, &eps(3), 3000, None);
        assert!(c.iter().all(|n| *n > 500), "{c:?}");
    }

    #[test]
    fn hashing_is_sticky_and_moves_only_the_removed_endpoints_keys() {
        let e = eps(5);
        let rr = AtomicUsize::new(0);
        let mut rng = seeded(1);
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            for key in 0..200u64 {
                let a = pick(policy, &e, &rr, Some(key), &mut rng);
                let b = pick(policy, &e, &rr, Some(key), &mut rng);
                assert_eq!(a, b);
            }
        }
        let fewer: Vec<E> = e[..4].to_vec();
        for key in 0..500u64 {
            let before = pick(LbPolicy::RingHash, &e, &rr, Some(key), &mut rng).unwrap();
            let after = pick(LbPolicy::RingHash, &fewer, &rr, Some(key), &mut rng).unwrap();
            if before < 4 {
                assert_eq!(before, after, "key {key} moved without need");
            }
        }
        // Keys spread over every endpoint.
        let c = (0..1000u64).fold(vec![0; 5], |mut c, k| {
            c[pick(LbPolicy::RingHash, &e, &rr, Some(k), &mut rng).unwrap()] += 1;
            c
        });
        assert!(c.iter().all(|n| *n > 100), "{c:?}");
    }

    #[test]
    fn empty_and_single() {
        let rr = AtomicUsize::new(0);
        let mut rng = seeded(3);
        let none: Vec<E> = vec![];
        assert_eq!(pick(LbPolicy::RoundRobin, &none, &rr, None, &mut rng), None);
        assert_eq!(
            pick(LbPolicy::LeastRequest, &eps(1), &rr, None, &mut rng),
            Some(0)
        );
    }

    #[test]
    fn thread_rng_varies() {
        let a: Vec<u64> = (0..4).map(|_| random()).collect();
        assert!(a.windows(2).all(|w| w[0] != w[1]));
    }
}
