//! What a matched route decides before its request goes upstream, drawn per request: the
//! cluster of a weighted choice, fault injection (delay, abort), the mirrors to copy to, the
//! redirect `Location`, the rewritten path. Comes after [`matching`](super::matching); the
//! server's request stage (`http::request`) and forwarding stage (`http::forward`) act on them.

use super::{Action, ClusterChoice, CompiledRoute, MirrorPolicy, PathMatch};
use crate::http::rng::Rng;
use rustmesh_xds::route::{ClusterWeight, FaultPolicy, RedirectAction};
use std::time::Duration;

impl CompiledRoute {
    /// The upstream path (and query) after `prefixRewrite`/`regexRewrite`.
    pub fn rewrite_path(&self, path: &str, query: Option<&str>) -> Option<String> {
        let Action::Forward(a) = &self.action else {
            return None;
        };
        let new_path = if let Some(rw) = &a.prefix_rewrite {
            match &self.path {
                PathMatch::Prefix(p) => {
                    let rest = path.get(p.len()..).unwrap_or("");
                    // Istio's rewrite of "/" to "/" etc: join without doubling nothing special.
                    format!("{rw}{rest}")
                }
                PathMatch::Exact(_) | PathMatch::Regex(_) => rw.clone(),
            }
        } else if let Some(rr) = &a.regex_rewrite {
            rr.pattern
                .replace_all(path, rr.substitution.as_str())
                .into_owned()
        } else {
            return None;
        };
        let new_path = if new_path.is_empty() {
            "/".to_string()
        } else {
            new_path
        };
        Some(match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        })
    }
}

impl ClusterChoice {
    /// The cluster for a draw; `rng` decides weighted choices.
    pub fn choose(&self, rng: &Rng) -> (&str, Option<&ClusterWeight>) {
        match self {
            ClusterChoice::Single(c) => (c.as_str(), None),
            ClusterChoice::Weighted { clusters, total } => {
                let mut draw = rng.below(*total);
                for c in clusters {
                    let w = u64::from(c.weight);
                    if draw < w {
                        return (c.name.as_str(), Some(c));
                    }
                    draw -= w;
                }
                // Unreachable with total = sum of weights; fall back to the last.
                let last = clusters.last().expect("weighted clusters are never empty");
                (last.name.as_str(), Some(last))
            }
        }
    }
}

/// What fault injection decided for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this instead of forwarding.
    pub abort: Option<AbortWith>,
}

/// The answer of an injected abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortWith {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status (HTTP 200, trailers-only).
    Grpc(u32),
}

/// Draws the fault decision for one request. Delay and abort are drawn independently.
pub fn decide_fault(fault: Option<&FaultPolicy>, rng: &Rng) -> FaultDecision {
    let Some(f) = fault else {
        return FaultDecision::default();
    };
    let delay = f
        .delay
        .as_ref()
        .filter(|d| d.percentage.includes(rng.unit()))
        .map(|d| d.fixed_delay.as_std());
    let abort = f
        .abort
        .as_ref()
        .filter(|a| a.percentage.includes(rng.unit()))
        .and_then(|a| match (a.http_status, a.grpc_status) {
            (Some(s), _) => Some(AbortWith::Http(s)),
            (None, Some(g)) => Some(AbortWith::Grpc(g)),
            _ => None,
        });
    FaultDecision { delay, abort }
}

/// The mirrors to send a copy to for one request.
pub fn decide_mirrors<'a>(mirrors: &'a [MirrorPolicy], rng: &Rng) -> Vec<&'a str> {
    mirrors
        .iter()
        .filter(|m| m.percentage.includes(rng.unit()))
        .map(|m| m.cluster.as_str())
        .collect()
}

/// The `Location` of a redirect for a request (`scheme`, `authority`, `path`, `query` as received).
pub fn redirect_location(
    rd: &RedirectAction,
    scheme: &str,
    authority: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let new_scheme = rd.scheme_redirect.as_deref().unwrap_or(scheme);
    let (req_host, req_port) = split_host_port(authority);
    let host = rd.host_redirect.as_deref().unwrap_or(req_host);
    let port = match (rd.port_redirect, req_port) {
        (Some(p), _) => Some(p.to_string()),
        // A scheme change drops the old port, as Envoy does.
        (None, Some(p)) if rd.scheme_redirect.is_none() && rd.host_redirect.is_none() => {
            Some(p.to_string())
        }
        _ => None,
    };
    let port = port.filter(|p| {
        !((new_scheme == "http" && p == "80") || (new_scheme == "https" && p == "443"))
    });
    let path_and_query = match &rd.path_redirect {
        Some(p) if p.contains('?') => p.clone(),
        Some(p) => match query {
            Some(q) => format!("{p}?{q}"),
            None => p.clone(),
        },
        None => match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        },
    };
    match port {
        Some(p) => format!("{new_scheme}://{host}:{p}{path_and_query}"),
        None => format!("{new_scheme}://{host}{path_and_query}"),
    }
}

/// Splits `host:port` (IPv6 in brackets kept whole).
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let host = &authority[..=end];
                let port = authority[end + 1..].strip_prefix(':');
                (host, port)
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects() {
        let rd = RedirectAction {
            scheme_redirect: Some("https".into()),
            response_code: 301,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(&rd, "http", "a.com:80", "/x", Some("q=1")),
            "https://a.com/x?q=1"
        );
        let rd = RedirectAction {
            host_redirect: Some("b.com".into()),
            port_redirect: Some(8443),
            path_redirect: Some("/new".into()),
            response_code: 302,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(&rd, "http", "a.com:9080", "/old", None),
            "http://b.com:8443/new"
        );
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_host_port("reviews"), ("reviews", None));
    }
}
