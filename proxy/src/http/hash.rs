//! The request's consistent-hash key from a route's `hashPolicy` (header, cookie, source IP,
//! query parameter). The cluster turns the key into an endpoint with its ring hash or Maglev
//! table (`cluster::ring_hash`, `cluster::maglev`).

use http::HeaderMap;
use rustmesh_xds::route::HashPolicy;
use std::net::IpAddr;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::route::HashCookie;

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
