//! DNS clusters (`STRICT_DNS`, `LOGICAL_DNS`): what their names resolved to, when to resolve
//! them again, and the lookup itself.
//!
//! * [`Lookup`]: one name to its IPv4 addresses and TTL. [`UpstreamLookup`] asks the pod's
//!   resolvers (the `nameserver`s of its resolv.conf, read with [`crate::dns::ResolvConf`]) over
//!   UDP with the DNS proxy's forwarding code ([`crate::dns::query_upstream`]): one A query per
//!   name, [`crate::dns::UPSTREAM_TIMEOUT`] per resolver, at most [`MAX_ADDRESSES`] addresses
//!   kept. A-only, as Istio's clusters (`V4_ONLY` lookups unless the proxy is IPv6).
//! * [`Schedule`]: when a name is resolved again: after its answer's TTL when the cluster
//!   respects it (Istio sets `respect_dns_ttl`), else, and for a TTL of 0 or a failure, after
//!   the cluster's `dnsRefreshRate` (Envoy's default 5s when absent); never sooner than
//!   [`MIN_REFRESH`], never later than [`MAX_REFRESH`].
//! * [`Answers`]: the last good addresses of each name. A failed lookup (no answer in time, an
//!   error code other than NXDOMAIN) keeps them, as Envoy does; NXDOMAIN and an answer without
//!   A records are answers (the name has no address now).
//! * [`resolved_assignment`]: the cluster's `loadAssignment` with each name replaced by its
//!   addresses (every address for STRICT_DNS, the first of the single name for LOGICAL_DNS),
//!   which the cluster manager builds the cluster's endpoints from.
//!
//! The cluster manager (`manager.rs`) runs one refresh task per DNS cluster, off the data
//! path, and swaps the cluster's endpoints when an answer changes them.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustmesh_xds::cluster::{
    Cluster as ClusterDef, ClusterLoadAssignment, DiscoveryType, EndpointAddress, Host,
};

/// The most addresses kept from one answer.
pub const MAX_ADDRESSES: usize = 64;
/// The shortest wait before resolving a name again.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest wait before resolving a name again, whatever the TTL says.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Envoy's `dns_refresh_rate` when the cluster does not set one.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// One answer: the name's addresses (possibly none) and how long they may be kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// IPv4 addresses, in the order of the answer, at most [`MAX_ADDRESSES`].
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the address records (0 when there were none).
    pub ttl: Duration,
}

/// A future of a lookup.
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer, String>> + Send + 'a>>;

/// Resolves one name. Errors say why, for the log.
pub trait Lookup: Send + Sync + 'static {
    /// The name's addresses now.
    fn lookup<'a>(&'a self, name: &'a str) -> LookupFuture<'a>;
}

/// Asks the resolvers of a resolv.conf (read again at each lookup, as it may be rewritten).
#[derive(Clone, Debug)]
pub struct UpstreamLookup {
    resolv_conf: PathBuf,
}

impl UpstreamLookup {
    /// The resolvers listed in `path` (production: `/etc/resolv.conf`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        UpstreamLookup {
            resolv_conf: path.into(),
        }
    }
}

impl Default for UpstreamLookup {
    fn default() -> Self {
        UpstreamLookup::new("/etc/resolv.conf")
    }
}

impl Lookup for UpstreamLookup {
    fn lookup<'a>(&'a self, name: &'a str) -> LookupFuture<'a> {
        Box::pin(async move {
            let rc = crate::dns::ResolvConf::read(&self.resolv_conf).map_err(|e| e.to_string())?;
            if rc.nameservers.is_empty() {
                return Err(format!(
                    "{} lists no nameserver",
                    self.resolv_conf.display()
                ));
            }
            let (addrs, ttl) =
                crate::dns::query_upstream(name, &rc.nameservers, MAX_ADDRESSES).await?;
            Ok(Answer {
                addrs,
                ttl: Duration::from_secs(u64::from(ttl)),
            })
        })
    }
}

/// When names of a cluster are resolved again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// `dnsRefreshRate`, or [`DEFAULT_REFRESH`].
    pub refresh: Duration,
    /// `respectDnsTtl`.
    pub respect_ttl: bool,
}

impl Schedule {
    /// The cluster's schedule.
    pub fn of(def: &ClusterDef) -> Self {
        Schedule {
            refresh: def
                .dns_refresh_rate
                .map(|d| d.as_std())
                .unwrap_or(DEFAULT_REFRESH),
            respect_ttl: def.respect_dns_ttl,
        }
    }

    /// How long to wait after a lookup that gave `answer` (`None`: it failed).
    pub fn next(&self, answer: Option<&Answer>) -> Duration {
        let wait = match answer {
            Some(a) if self.respect_ttl && !a.ttl.is_zero() => a.ttl,
            _ => self.refresh,
        };
        wait.clamp(MIN_REFRESH, MAX_REFRESH)
    }
}

/// The last good addresses of each name of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    by_name: HashMap<String, Vec<IpAddr>>,
}

impl Answers {
    /// Records a lookup's outcome; `true` when the name's addresses changed. A failure keeps
    /// what the name had.
    pub fn record(&mut self, name: &str, outcome: &Result<Answer, String>) -> bool {
        let Ok(answer) = outcome else {
            return false;
        };
        let addrs: Vec<IpAddr> = answer.addrs.iter().take(MAX_ADDRESSES).copied().collect();
        if self.by_name.get(name) == Some(&addrs) {
            return false;
        }
        self.by_name.insert(name.to_string(), addrs);
        true
    }

    /// The addresses of `name` (none before its first answer).
    pub fn get(&self, name: &str) -> &[IpAddr] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Keeps only the names in `names` (the names of a new definition).
    pub fn retain(&mut self, names: &[String]) {
        self.by_name.retain(|n, _| names.contains(n));
    }
}

/// The DNS names a cluster's endpoints list, each once, in order.
pub fn names(la: &ClusterLoadAssignment) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in la.lb_endpoints() {
        if let Some(n) = e.endpoint.address.dns_name()
            && !out.iter().any(|o| o == n)
        {
            out.push(n.to_string());
        }
    }
    out
}

/// `la` with each DNS name replaced by its addresses in `answers`, at the endpoint's port,
/// with the name as the endpoint's `hostname` (unless it has one): every address for
/// STRICT_DNS; for LOGICAL_DNS the first address of the (single) name only. An IP address
/// stays as it is. A name without addresses contributes no endpoint.
pub fn resolved_assignment(
    type_: DiscoveryType,
    la: &ClusterLoadAssignment,
    answers: &Answers,
) -> ClusterLoadAssignment {
    let mut out = la.clone();
    for locality in &mut out.endpoints {
        let mut lb = Vec::with_capacity(locality.lb_endpoints.len());
        for e in locality.lb_endpoints.drain(..) {
            let Host::Name(name) = &e.endpoint.address.socket_address.address else {
                lb.push(e);
                continue;
            };
            let port = e.endpoint.address.port();
            let addrs = answers.get(name);
            let take = if type_ == DiscoveryType::LogicalDns {
                1
            } else {
                addrs.len()
            };
            for ip in addrs.iter().take(take) {
                let mut r = e.clone();
                r.endpoint.address = EndpointAddress::new(*ip, port);
                if r.endpoint.hostname.is_none() {
                    r.endpoint.hostname = Some(name.clone());
                }
                lb.push(r);
            }
        }
        locality.lb_endpoints = lb;
    }
    out
}

/// A DNS cluster's resolved state, shared by its refresh task and the requests that pick from
/// it: `current` is the cluster as last resolved (`C` is the cluster type; generic so this
/// module needs nothing of the cluster's).
pub struct DnsState<C> {
    /// The cluster built from the last good answers (no endpoint before the first).
    pub current: ArcSwap<C>,
    /// The last good answers.
    pub answers: Mutex<Answers>,
    /// Whether its refresh task was started (at commit, once).
    pub started: AtomicBool,
}

impl<C> DnsState<C> {
    /// A state serving `current`, built from `answers`.
    pub fn new(current: C, answers: Answers) -> Arc<Self> {
        Arc::new(DnsState {
            current: ArcSwap::from_pointee(current),
            answers: Mutex::new(answers),
            started: AtomicBool::new(false),
        })
    }
}

impl<C> std::fmt::Debug for DnsState<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsState").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::cluster::{LbEndpoint, LocalityLbEndpoints};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn answer(addrs: &[&str], ttl: u64) -> Result<Answer, String> {
        Ok(Answer {
            addrs: addrs.iter().map(|a| ip(a)).collect(),
            ttl: Duration::from_secs(ttl),
        })
    }

    #[test]
    fn the_ttl_decides_when_respected_the_refresh_rate_otherwise() {
        let s = Schedule {
            refresh: Duration::from_secs(60),
            respect_ttl: true,
        };
        let a = answer(&["10.0.0.1"], 30).unwrap();
        assert_eq!(s.next(Some(&a)), Duration::from_secs(30));
        let zero = answer(&["10.0.0.1"], 0).unwrap();
        assert_eq!(
            s.next(Some(&zero)),
            Duration::from_secs(60),
            "TTL 0: the rate"
        );
        assert_eq!(s.next(None), Duration::from_secs(60), "failure: the rate");
        let ignore = Schedule {
            respect_ttl: false,
            ..s
        };
        assert_eq!(ignore.next(Some(&a)), Duration::from_secs(60));
        let fast = Schedule {
            refresh: Duration::from_millis(10),
            respect_ttl: false,
        };
        assert_eq!(fast.next(None), MIN_REFRESH, "never a busy loop");
        let long = answer(&["10.0.0.1"], 10 * 24 * 3600).unwrap();
        assert_eq!(s.next(Some(&long)), MAX_REFRESH);
    }

    #[test]
    fn a_failure_keeps_the_last_good_addresses_and_changes_are_reported() {
        let mut a = Answers::default();
        assert!(
            a.get("api.example.com").is_empty(),
            "nothing before the first answer"
        );
        assert!(a.record("api.example.com", &answer(&["10.0.0.1", "10.0.0.2"], 5)));
        assert!(!a.record("api.example.com", &answer(&["10.0.0.1", "10.0.0.2"], 5)));
        assert!(!a.record("api.example.com", &Err("timed out".into())));
        assert_eq!(a.get("api.example.com"), [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert!(a.record("api.example.com", &answer(&["10.0.0.3"], 5)));
        assert_eq!(a.get("api.example.com"), [ip("10.0.0.3")]);
        assert!(
            a.record("api.example.com", &answer(&[], 5)),
            "no address is an answer"
        );
        assert!(a.get("api.example.com").is_empty());
        let many: Vec<String> = (0..200)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        a.record("big", &answer(&many, 5));
        assert_eq!(a.get("big").len(), MAX_ADDRESSES);
        a.retain(&["big".to_string()]);
        assert!(a.get("api.example.com").is_empty());
    }

    #[test]
    fn names_become_every_address_or_for_logical_dns_the_first() {
        let la = ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints {
                locality: None,
                lb_endpoints: vec![
                    LbEndpoint::named("a.example.com", 443),
                    LbEndpoint::new("192.0.2.9:8443".parse().unwrap()),
                    LbEndpoint::named("b.example.com", 80),
                    LbEndpoint::named("a.example.com", 8443),
                ],
                priority: 0,
            }],
        };
        assert_eq!(names(&la), ["a.example.com", "b.example.com"]);
        let mut answers = Answers::default();
        answers.record("a.example.com", &answer(&["10.0.0.1", "10.0.0.2"], 5));
        let strict = resolved_assignment(DiscoveryType::StrictDns, &la, &answers);
        let got: Vec<(String, Option<String>)> = strict
            .lb_endpoints()
            .map(|e| {
                (
                    e.endpoint.address.socket_addr().unwrap().to_string(),
                    e.endpoint.hostname.clone(),
                )
            })
            .collect();
        let host = Some("a.example.com".to_string());
        assert_eq!(
            got,
            [
                ("10.0.0.1:443".to_string(), host.clone()),
                ("10.0.0.2:443".to_string(), host.clone()),
                ("192.0.2.9:8443".to_string(), None),
                ("10.0.0.1:8443".to_string(), host.clone()),
                ("10.0.0.2:8443".to_string(), host.clone()),
            ],
            "b has no answer yet: no endpoint"
        );
        let logical = ClusterLoadAssignment {
            endpoints: vec![LocalityLbEndpoints {
                locality: None,
                lb_endpoints: vec![LbEndpoint::named("a.example.com", 443)],
                priority: 0,
            }],
            ..la
        };
        let one = resolved_assignment(DiscoveryType::LogicalDns, &logical, &answers);
        let got: Vec<String> = one
            .lb_endpoints()
            .map(|e| e.endpoint.address.socket_addr().unwrap().to_string())
            .collect();
        assert_eq!(got, ["10.0.0.1:443"]);
    }
}
