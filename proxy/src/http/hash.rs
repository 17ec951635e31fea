//! Consistent hashing: the request key from a route's `hashPolicy` (header, cookie, source IP,
//! query parameter), and the two pure endpoint tables Envoy uses with it, a ring hash
//! (`RING_HASH`) and a Maglev table (`MAGLEV`).
//!
//! Both tables are built from an endpoint list and answer `pick(hash)`; the cluster manager
//! keeps one per cluster and rebuilds it when the endpoints change. Stickiness: a key keeps its
//! endpoint while that endpoint stays; removing an endpoint only moves the keys that were on it
//! (ring hash exactly, Maglev almost exactly).

use http::HeaderMap;
use rustmesh_xds::route::HashPolicy;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A 64-bit finaliser (murmur3's), to spread FNV's output over the ring.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn hash_str(s: &str) -> u64 {
    mix(rustmesh_xds::fnv::hash(s.as_bytes()))
}

/// A cookie the proxy must set on the response (hash policy with `ttl` and no cookie sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCookie {
    /// Cookie name.
    pub name: String,
    /// Generated value.
    pub value: String,
    /// `Path` attribute.
    pub path: Option<String>,
    /// `Max-Age`.
    pub ttl: Duration,
}

impl GeneratedCookie {
    /// The `Set-Cookie` header value, as Envoy writes it.
    pub fn set_cookie(&self) -> String {
        let mut s = format!(
            "{}=\"{}\"; Max-Age={}",
            self.name,
            self.value,
            self.ttl.as_secs()
        );
        if let Some(p) = &self.path {
            s.push_str("; Path=");
            s.push_str(p);
        }
        s.push_str("; HttpOnly");
        s
    }
}

/// A request's hash and the cookie to set, if one was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashOutcome {
    /// `None` when no policy produced a key (the cluster then picks as it likes).
    pub hash: Option<u64>,
    /// Cookie generated for a `cookie` policy with a `ttl`.
    pub set_cookie: Option<GeneratedCookie>,
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// Computes the request hash from `policies` like Envoy: every policy that yields a key is
/// folded in (`h = rotl(h, 1) ^ key`). A cookie policy with a `ttl` and no cookie in the request
/// generates one from the peer address and the other inputs, and hashes that.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<IpAddr>,
    authority: &str,
    path: &str,
) -> HashOutcome {
    let mut out = HashOutcome::default();
    let fold = |key: u64, out: &mut HashOutcome| {
        out.hash = Some(match out.hash {
            Some(h) => h.rotate_left(1) ^ key,
            None => key,
        });
    };
    for p in policies {
        if let Some(name) = &p.header_name {
            let values: Vec<&[u8]> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            if !values.is_empty() {
                fold(
                    mix(rustmesh_xds::fnv::hash(&values.join(&b","[..]))),
                    &mut out,
                );
            }
        } else if let Some(c) = &p.cookie {
            match cookie_value(headers, &c.name) {
                Some(v) => fold(hash_str(v), &mut out),
                None => {
                    if let Some(ttl) = c.ttl {
                        let seed = format!(
                            "{}|{authority}|{path}|{}",
                            peer.map(|p| p.to_string()).unwrap_or_default(),
                            c.name
                        );
                        let value = format!("{:016x}", hash_str(&seed));
                        fold(hash_str(&value), &mut out);
                        out.set_cookie = Some(GeneratedCookie {
                            name: c.name.clone(),
                            value,
                            path: c.path.clone(),
                            ttl: ttl.as_std(),
                        });
                    }
                }
            }
        } else if p.source_ip {
            if let Some(ip) = peer {
                fold(hash_str(&ip.to_string()), &mut out);
            }
        } else if let Some(name) = &p.query_parameter_name
            && let Some(v) = crate::http::route::query_param(query, name)
        {
            fold(hash_str(v), &mut out);
        }
    }
    out
}

/// Envoy's ring hash: each endpoint gets `weight`-proportional points on a 64-bit ring; a key
/// goes to the first point at or after its hash.
#[derive(Debug, Clone)]
pub struct RingHash {
    ring: Vec<(u64, usize)>,
    endpoints: Vec<SocketAddr>,
}

impl RingHash {
    /// Points per unit of weight (ketama's 160): a fixed number, so adding or removing an
    /// endpoint moves only the keys of that endpoint.
    pub const POINTS_PER_WEIGHT: u64 = 160;

    /// Builds the ring for endpoints with weights (0 is treated as 1).
    pub fn new(endpoints: &[(SocketAddr, u32)]) -> Self {
        let mut ring = Vec::new();
        for (i, (addr, w)) in endpoints.iter().enumerate() {
            let points = Self::POINTS_PER_WEIGHT * u64::from((*w).clamp(1, 1000));
            let key = addr.to_string();
            for n in 0..points {
                ring.push((hash_str(&format!("{key}_{n}")), i));
            }
        }
        ring.sort_unstable();
        RingHash {
            ring,
            endpoints: endpoints.iter().map(|(a, _)| *a).collect(),
        }
    }

    /// The endpoint for `hash`, skipping endpoints in `exclude` (walking on along the ring).
    pub fn pick(&self, hash: u64, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(h, _)| *h < hash);
        (0..self.ring.len())
            .map(|i| self.endpoints[self.ring[(start + i) % self.ring.len()].1])
            .find(|a| !exclude.contains(a))
    }
}

/// Envoy's Maglev table (prime size, default 65537): near-perfect balance and minimal
/// disruption when endpoints change.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<usize>,
    endpoints: Vec<SocketAddr>,
}

impl Maglev {
    /// Envoy's default table size.
    pub const DEFAULT_TABLE_SIZE: usize = 65537;

    /// Builds the table (`table_size` should be a prime larger than the endpoint count).
    pub fn new(endpoints: &[(SocketAddr, u32)], table_size: usize) -> Self {
        let n = endpoints.len();
        let m = table_size.max(1);
        let mut table = vec![usize::MAX; if n == 0 { 0 } else { m }];
        if n > 0 {
            let params: Vec<(u64, u64)> = endpoints
                .iter()
                .map(|(a, _)| {
                    let k = a.to_string();
                    let offset = hash_str(&format!("{k}#offset")) % m as u64;
                    let skip = hash_str(&format!("{k}#skip")) % (m as u64 - 1).max(1) + 1;
                    (offset, skip)
                })
                .collect();
            let max_w = endpoints
                .iter()
                .map(|(_, w)| (*w).max(1))
                .max()
                .unwrap_or(1);
            let mut next = vec![0u64; n];
            let mut credit = vec![0u64; n];
            let mut filled = 0;
            'outer: loop {
                for i in 0..n {
                    // Weighted Maglev: an endpoint takes a slot only once it has enough credit.
                    credit[i] += u64::from(endpoints[i].1.max(1));
                    if credit[i] < u64::from(max_w) {
                        continue;
                    }
                    credit[i] -= u64::from(max_w);
                    let (offset, skip) = params[i];
                    loop {
                        let slot = ((offset + next[i] * skip) % m as u64) as usize;
                        next[i] += 1;
                        if table[slot] == usize::MAX {
                            table[slot] = i;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        break 'outer;
                    }
                }
            }
        }
        Maglev {
            table,
            endpoints: endpoints.iter().map(|(a, _)| *a).collect(),
        }
    }

    /// The endpoint for `hash`, skipping endpoints in `exclude` (probing the next slots).
    pub fn pick(&self, hash: u64, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        if self.table.is_empty() {
            return None;
        }
        let m = self.table.len();
        let start = (hash % m as u64) as usize;
        (0..m)
            .map(|i| self.endpoints[self.table[(start + i) % m]])
            .find(|a| !exclude.contains(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::route::HashCookie;
    use std::collections::HashMap;

    fn eps(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 9080)), 1))
            .collect()
    }

    fn stickiness<T>(
        build: impl Fn(&[(SocketAddr, u32)]) -> T,
        pick: impl Fn(&T, u64) -> SocketAddr,
    ) {
        let all = eps(5);
        let fewer: Vec<_> = all
            .iter()
            .copied()
            .filter(|(a, _)| *a != all[2].0)
            .collect();
        let (all_t, fewer_t) = (build(&all), build(&fewer));
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        let mut moved_off_survivors = 0;
        for k in 0..5000u64 {
            let h = hash_str(&format!("user-{k}"));
            let before = pick(&all_t, h);
            *counts.entry(before).or_default() += 1;
            let after = pick(&fewer_t, h);
            if before != all[2].0 && before != after {
                moved_off_survivors += 1;
            }
        }
        assert_eq!(counts.len(), 5);
        for c in counts.values() {
            assert!(*c > 500, "unbalanced: {counts:?}");
        }
        // Keys on surviving endpoints stay (Maglev may move a few).
        assert!(
            moved_off_survivors < 250,
            "{moved_off_survivors} keys moved"
        );
    }

    #[test]
    fn ring_hash_is_sticky_and_balanced() {
        stickiness(RingHash::new, |t, h| t.pick(h, &[]).unwrap());
    }

    #[test]
    fn maglev_is_sticky_and_balanced() {
        stickiness(|e| Maglev::new(e, 65537), |t, h| t.pick(h, &[]).unwrap());
    }

    #[test]
    fn exclusion_and_empty() {
        let e = eps(3);
        let r = RingHash::new(&e);
        let first = r.pick(42, &[]).unwrap();
        let second = r.pick(42, &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(r.pick(42, &[e[0].0, e[1].0, e[2].0]), None);
        assert_eq!(RingHash::new(&[]).pick(1, &[]), None);
        assert_eq!(Maglev::new(&[], 7).pick(1, &[]), None);
        let m = Maglev::new(&e, 7);
        let a = m.pick(3, &[]).unwrap();
        assert_ne!(m.pick(3, &[a]).unwrap(), a);
    }

    #[test]
    fn keys_from_policies() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("cookie", "a=1; session=\"abc\"".parse().unwrap());
        let by_header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-user", v.parse().unwrap());
            request_hash(
                &[HashPolicy {
                    header_name: Some("x-user".into()),
                    ..Default::default()
                }],
                &h,
                None,
                None,
                "a",
                "/",
            )
            .hash
        };
        assert_eq!(by_header("alice"), by_header("alice"));
        assert_ne!(by_header("alice"), by_header("bob"));
        let cookie = HashPolicy {
            cookie: Some(HashCookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl: Some(rustmesh_xds::Duration::from_secs(60)),
            }),
            ..Default::default()
        };
        let with = request_hash(std::slice::from_ref(&cookie), &h, None, None, "a", "/");
        assert!(with.hash.is_some() && with.set_cookie.is_none());
        let without = request_hash(
            std::slice::from_ref(&cookie),
            &HeaderMap::new(),
            None,
            Some("10.0.0.1".parse().unwrap()),
            "a",
            "/",
        );
        let c = without.set_cookie.unwrap();
        assert!(
            c.set_cookie().starts_with("session=\""),
            "{}",
            c.set_cookie()
        );
        assert!(c.set_cookie().contains("Max-Age=60; Path=/; HttpOnly"));
        // The generated cookie, sent back, hashes the same.
        let mut back = HeaderMap::new();
        back.insert("cookie", format!("session={}", c.value).parse().unwrap());
        assert_eq!(
            request_hash(&[cookie], &back, None, None, "a", "/").hash,
            without.hash
        );
        let q = HashPolicy {
            query_parameter_name: Some("u".into()),
            ..Default::default()
        };
        assert!(
            request_hash(
                std::slice::from_ref(&q),
                &HeaderMap::new(),
                Some("u=1"),
                None,
                "a",
                "/"
            )
            .hash
            .is_some()
        );
        assert!(
            request_hash(&[q], &HeaderMap::new(), None, None, "a", "/")
                .hash
                .is_none()
        );
        let ip = HashPolicy {
            source_ip: true,
            ..Default::default()
        };
        assert!(
            request_hash(
                &[ip],
                &HeaderMap::new(),
                None,
                Some("::1".parse().unwrap()),
                "a",
                "/"
            )
            .hash
            .is_some()
        );
    }
}
