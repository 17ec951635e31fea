//! Envoy's Maglev table (`MAGLEV`, Istio's `consistentHash.maglev`): a lookup table of a prime
//! size (`tableSize`, default 65537) where every endpoint fills slots along its own permutation
//! (an offset and a skip from its address) in turn, weighted endpoints more often; a request's
//! hash picks slot `hash % size`. Near-perfect balance, and a change of endpoints moves few
//! keys besides those of the endpoint that left.
//!
//! Memory: 4 bytes per slot (an endpoint index), 256 KiB at the default size; built only for
//! MAGLEV clusters.

use super::splitmix::mix;
use std::net::SocketAddr;

/// The table: each slot names an endpoint by its index in the list it was built from.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;

impl Maglev {
    /// Builds the table of `table_size` slots (a prime, larger than the endpoint count, is
    /// what validation lets through) for `endpoints` (address and weight).
    pub fn new(endpoints: &[(SocketAddr, u32)], table_size: u64) -> Self {
        let n = endpoints.len();
        let m = table_size.max(1);
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let mut table = vec![EMPTY; m as usize];
        let params: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|(a, _)| {
                let k = rustmesh_xds::fnv::hash(a.to_string().as_bytes());
                let offset = mix(k) % m;
                let skip = mix(k ^ 0x5bd1_e995) % (m - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let weight = |i: usize| u64::from(endpoints[i].1.max(1));
        let heaviest = (0..n).map(weight).max().unwrap_or(1);
        let mut next = vec![0u64; n];
        let mut credit = vec![0u64; n];
        let mut filled = 0u64;
        'fill: loop {
            for i in 0..n {
                // Weighted Maglev: an endpoint takes a slot each time it has gathered the
                // heaviest endpoint's weight in credit.
                credit[i] += weight(i);
                if credit[i] < heaviest {
                    continue;
                }
                credit[i] -= heaviest;
                let (offset, skip) = params[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == EMPTY {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    /// Number of slots (0 without endpoints).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table has no slots (no endpoints).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The endpoint (its index) for `hash`: slot `hash % size`, or the next slot whose endpoint
    /// `accept`s (walking past excluded or ejected endpoints).
    pub fn pick(&self, hash: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let start = (hash % self.table.len() as u64) as usize;
        let (before, after) = self.table.split_at(start);
        after
            .iter()
            .chain(before)
            .map(|i| *i as usize)
            .find(|i| accept(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::lb::test_keys::{eps, key};
    use rustmesh_xds::cluster::MaglevLbConfig;

    const SIZE: u64 = MaglevLbConfig::DEFAULT_TABLE_SIZE;

    fn slots(m: &Maglev, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in &m.table {
            c[*i as usize] += 1;
        }
        c
    }

    #[test]
    fn table_size_is_honoured_and_slots_are_balanced_by_weight() {
        let m = Maglev::new(&eps(&[1; 5]), SIZE);
        assert_eq!(m.len(), 65537);
        assert!(!m.table.contains(&EMPTY));
        let c = slots(&m, 5);
        assert!(
            c.iter().all(|n| n.abs_diff(65537 / 5) <= 1),
            "near-perfect balance: {c:?}"
        );
        let m = Maglev::new(&eps(&[1; 3]), 5003);
        assert_eq!(m.len(), 5003);
        // Weight 3 against 1: three quarters of the slots.
        let c = slots(&Maglev::new(&eps(&[1, 3]), SIZE), 2);
        assert!(c[1].abs_diff(65537 * 3 / 4) < 100, "{c:?}");
        assert!(Maglev::new(&[], SIZE).is_empty());
    }

    #[test]
    fn a_key_always_gets_the_same_endpoint_and_disruption_is_small() {
        let all = eps(&[1; 5]);
        let fewer: Vec<_> = all.iter().copied().filter(|e| *e != all[2]).collect();
        let (before, again, after) = (
            Maglev::new(&all, SIZE),
            Maglev::new(&all, SIZE),
            Maglev::new(&fewer, SIZE),
        );
        let mut moved_off_survivors = 0;
        for k in 0..5000 {
            let b = before.pick(key(k), |_| true).unwrap();
            assert_eq!(b, before.pick(key(k), |_| true).unwrap());
            assert_eq!(
                b,
                again.pick(key(k), |_| true).unwrap(),
                "rebuilt table differs"
            );
            let a = fewer[after.pick(key(k), |_| true).unwrap()].0;
            if all[b].0 != all[2].0 && all[b].0 != a {
                moved_off_survivors += 1;
            }
        }
        // Maglev moves a few of the survivors' keys too, not many (of about 4000).
        assert!(
            moved_off_survivors < 250,
            "{moved_off_survivors} keys moved"
        );
    }

    #[test]
    fn pick_walks_past_endpoints_not_accepted() {
        let m = Maglev::new(&eps(&[1; 3]), 7);
        let a = m.pick(3, |_| true).unwrap();
        let b = m.pick(3, |i| i != a).unwrap();
        assert_ne!(a, b);
        assert_eq!(m.pick(3, |_| false), None);
        assert_eq!(Maglev::new(&[], 7).pick(1, |_| true), None);
    }
}
