//! Filter chain matching, as Envoy does it.
//!
//! Criteria are applied in Envoy's order, each narrowing the chains left by the previous one:
//!
//! 1. **destination port**: the chains naming the connection's port, if any does; otherwise the
//!    chains naming no port. If chains name the port but none of them matches the later
//!    criteria, the *default chain* is used, never the port-less chains (Envoy's rule, which
//!    keeps e.g. a STRICT mTLS port from falling through to a passthrough chain);
//! 2. **destination address** (`prefixRanges`): the chains with the longest range containing
//!    the address; a chain without ranges counts as `0.0.0.0/0` and `::/0`; then the **server
//!    name** (`serverNames`, the SNI of a TLS ClientHello): the chains naming it exactly, else
//!    those with the longest `*suffix` it ends in, else those naming none;
//! 3. **transport protocol**: the chains naming the sniffed one (`tls`, `raw_buffer`), else
//!    those naming none;
//! 4. **application protocols**: for the first sniffed protocol that some chain names, those
//!    chains; else the chains naming none.
//!
//! Whatever is left is one chain (two chains with the same criteria are refused when the
//! configuration is loaded, as Envoy does); nothing left means the default chain, if any.
//! Sniffing is needed only when a chain left after steps 1–2 names a server name, a transport
//! or an application protocol ([`FilterChains::needs_sniff`]), so server-first protocols on
//! plain TCP ports never wait.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustmesh_xds::address::CidrRange;
use rustmesh_xds::listener::{FilterChain, FilterChainMatch, HttpConnectionManager, NetworkFilter};

use rustmesh_xds::peer_authn::MtlsMode;
use rustmesh_xds::tls::DownstreamTransportSocket;

use crate::access_log::AccessLogs;
use crate::cluster::{Clusters, UpstreamCluster, lb};
use crate::identity::Store as CertStore;
use crate::sniff::Detected;
use crate::transport::Terminate;

/// Envoy's default `idleTimeout` of `tcp_proxy`: one hour.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a chain does with a connection.
#[derive(Debug)]
pub enum Terminal {
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(TcpRoute),
    /// `envoy.filters.network.http_connection_manager`, with its compiled access logs and
    /// tracing.
    Http(
        Arc<HttpConnectionManager>,
        AccessLogs,
        Option<Arc<crate::trace::Tracer>>,
    ),
}

/// A compiled `tcp_proxy`: its cluster(s), resolved.
#[derive(Debug)]
pub struct TcpRoute {
    /// `statPrefix`.
    pub stat_prefix: String,
    /// One cluster with weight 1, or the weighted clusters.
    pub clusters: Vec<(Arc<UpstreamCluster>, u32)>,
    total_weight: u64,
    /// `idleTimeout` (default one hour); `None` for `0s`, which disables it.
    pub idle_timeout: Option<Duration>,
    /// `accessLog`, compiled.
    pub access_logs: AccessLogs,
    /// Which Istio metrics these connections record, and how labelled (`disabledMetrics`,
    /// `tagOverrides`).
    pub metrics: crate::metrics::ChainMetrics,
}

impl TcpRoute {
    /// The cluster for one connection: the only one, or one drawn in proportion to the weights.
    pub fn pick_cluster(&self) -> &Arc<UpstreamCluster> {
        self.pick_with(lb::random())
    }

    fn pick_with(&self, draw: u64) -> &Arc<UpstreamCluster> {
        if self.clusters.len() == 1 || self.total_weight == 0 {
            return &self.clusters[0].0;
        }
        let mut point = draw % self.total_weight;
        for (c, w) in &self.clusters {
            if point < u64::from(*w) {
                return c;
            }
            point -= u64::from(*w);
        }
        &self.clusters[self.clusters.len() - 1].0
    }
}

/// One compiled filter chain.
#[derive(Debug)]
pub struct Chain {
    /// The chain's `name`, or `<listener>[<index>]` / `<listener>[default]` when it has none.
    pub name: String,
    /// Its match criteria, as configured.
    pub matcher: FilterChainMatch,
    /// Its ranges, with "none" spelled `0.0.0.0/0` and `::/0` (Envoy's reading).
    ranges: Vec<CidrRange>,
    /// What it does.
    pub terminal: Terminal,
    /// Terminate TLS first (its `transportSocket`: Istio's inbound mutual TLS, or a gateway
    /// server's `credentialName`).
    pub tls: Option<Arc<Terminate>>,
}

/// The filter chains of a listener, compiled.
#[derive(Debug, Default)]
pub struct FilterChains {
    chains: Vec<Arc<Chain>>,
    by_port: HashMap<u16, Vec<usize>>,
    any_port: Vec<usize>,
    default: Option<Arc<Chain>>,
}

/// A compile error: (field path, message).
pub type CompileError = (String, String);

const ANY_V4: CidrRange = CidrRange {
    address_prefix: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    prefix_len: 0,
};
const ANY_V6: CidrRange = CidrRange {
    address_prefix: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    prefix_len: 0,
};

impl FilterChains {
    /// Compiles `filter_chains` and `default_filter_chain` of a listener for a pod carrying
    /// `pod_labels`; `path` is the listener's field path (`listeners[3]`) for errors, `name` its
    /// name.
    ///
    /// A chain whose `sourceLabels` the pod lacks is left out. Of two chains with the same
    /// criteria, the later is left out when either has `sourceLabels` (the first applicable
    /// VirtualService rule wins, as Istio renders it for this pod), and refused otherwise.
    pub fn compile(
        path: &str,
        name: &str,
        chains: &[FilterChain],
        default: Option<&FilterChain>,
        clusters: &Clusters,
        identity: &Arc<CertStore>,
        pod_labels: &BTreeMap<String, String>,
    ) -> Result<Self, CompileError> {
        let mut out = FilterChains::default();
        let selected = |fc: &&FilterChain| {
            fc.filter_chain_match
                .source_labels
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v))
        };
        for (i, fc) in chains.iter().enumerate() {
            if !selected(&fc) {
                continue;
            }
            let wanted = &fc.filter_chain_match.source_labels;
            let p = format!("{path}.filterChains[{i}]");
            let chain = compile_chain(&p, fc, format!("{name}[{i}]"), clusters, identity)?;
            if let Some((j, other)) = out
                .chains
                .iter()
                .enumerate()
                .find(|(_, other)| same_criteria(other, &chain))
            {
                if !wanted.is_empty() || !other.matcher.source_labels.is_empty() {
                    continue;
                }
                return Err((
                    format!("{p}.filterChainMatch"),
                    format!(
                        "the same criteria as filterChains[{j}]: a connection could match either (Envoy refuses this too)"
                    ),
                ));
            }
            let at = out.chains.len();
            match chain.matcher.destination_port {
                Some(port) => out.by_port.entry(port).or_default().push(at),
                None => out.any_port.push(at),
            }
            out.chains.push(Arc::new(chain));
        }
        // A default chain with `sourceLabels` the pod lacks is left out as well.
        if let Some(fc) = default.filter(selected) {
            let p = format!("{path}.defaultFilterChain");
            out.default = Some(Arc::new(compile_chain(
                &p,
                fc,
                format!("{name}[default]"),
                clusters,
                identity,
            )?));
        }
        Ok(out)
    }

    /// Every chain, in configuration order (the default chain last).
    pub fn all(&self) -> impl Iterator<Item = &Arc<Chain>> {
        self.chains.iter().chain(self.default.iter())
    }

    /// Steps 1 and 2: the chains left for a connection to `dst`, and whether chains named the
    /// port (then the default chain, not the port-less chains, is the fallback).
    fn by_destination(&self, dst: SocketAddr) -> impl Iterator<Item = &Arc<Chain>> + Clone {
        let group: &[usize] = match self.by_port.get(&dst.port()) {
            Some(g) => g,
            None => &self.any_port,
        };
        let ip = dst.ip().to_canonical();
        let longest = move |c: &Chain| {
            c.ranges
                .iter()
                .filter(|r| r.contains(ip))
                .map(|r| r.prefix_len)
                .max()
        };
        let best = group.iter().filter_map(|i| longest(&self.chains[*i])).max();
        group
            .iter()
            .map(|i| &self.chains[*i])
            .filter(move |c| best.is_some() && longest(c) == best)
    }

    /// Whether choosing among the chains for `dst` needs the sniffed protocol.
    pub fn needs_sniff(&self, dst: SocketAddr) -> bool {
        self.by_destination(dst).any(|c| {
            c.matcher.transport_protocol.is_some()
                || !c.matcher.application_protocols.is_empty()
                || !c.matcher.server_names.is_empty()
        })
    }

    /// The chain for a connection to `dst` whose first bytes were `detected` (use
    /// [`Detected::raw`] when sniffing was not needed), else the default chain.
    pub fn select(&self, dst: SocketAddr, detected: &Detected) -> Option<&Arc<Chain>> {
        self.select_for(dst, detected, MtlsMode::Permissive)
    }

    /// [`FilterChains::select`] under a peer authentication `mode` (inbound): `STRICT` keeps
    /// only the chains that terminate mutual TLS (a plain-text client, or TLS that is not the
    /// mesh's, matches nothing and is closed, as in Istio, where STRICT renders only those);
    /// `DISABLE` drops them (a mesh client's TLS goes to the app as bytes); `PERMISSIVE` (and
    /// `UNSET`) keeps all.
    pub fn select_for(
        &self,
        dst: SocketAddr,
        detected: &Detected,
        mode: MtlsMode,
    ) -> Option<&Arc<Chain>> {
        let allowed = move |c: &Chain| match mode {
            MtlsMode::Strict => c.tls.is_some(),
            MtlsMode::Disable => c.tls.is_none(),
            MtlsMode::Permissive | MtlsMode::Unset => true,
        };
        self.select_chain(dst, detected, allowed)
            .or(self.default.as_ref().filter(|c| allowed(c)))
    }

    fn select_chain(
        &self,
        dst: SocketAddr,
        detected: &Detected,
        allowed: impl Fn(&Chain) -> bool + Copy,
    ) -> Option<&Arc<Chain>> {
        let left = self.by_destination(dst).filter(move |c| allowed(c));
        // 2. (cont.) Server name.
        let sni = detected.server_name.as_deref();
        let best = left
            .clone()
            .filter_map(|c| server_name_rank(&c.matcher.server_names, sni))
            .max();
        let left = left.filter(move |c| {
            best.is_some() && server_name_rank(&c.matcher.server_names, sni) == best
        });
        // 3. Transport protocol.
        let transport = detected.transport.as_str();
        let named = left
            .clone()
            .any(|c| c.matcher.transport_protocol.as_deref() == Some(transport));
        let left = left.filter(move |c| match &c.matcher.transport_protocol {
            Some(t) => named && t == transport,
            None => !named,
        });
        // 4. Application protocols: the first sniffed one some chain names.
        let wanted = detected
            .application_protocols
            .iter()
            .find(|p| {
                left.clone()
                    .any(|c| c.matcher.application_protocols.contains(p))
            })
            .cloned();
        let mut left = left.filter(move |c| match &wanted {
            Some(p) => c.matcher.application_protocols.contains(p),
            None => c.matcher.application_protocols.is_empty(),
        });
        left.next()
    }
}

/// How well a chain's `serverNames` match the SNI (higher wins; `None`: no match): naming none
/// is 0, a `*.suffix` the suffix's length, an exact name (case-insensitive) above every suffix.
fn server_name_rank(names: &[String], sni: Option<&str>) -> Option<usize> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            let n = n.to_ascii_lowercase();
            if n == sni {
                Some(usize::MAX)
            } else {
                n.strip_prefix('*')
                    .filter(|suffix| sni.len() > suffix.len() && sni.ends_with(suffix))
                    .map(str::len)
            }
        })
        .max()
}

fn same_criteria(a: &Chain, b: &Chain) -> bool {
    let (ma, mb) = (&a.matcher, &b.matcher);
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    ma.destination_port == mb.destination_port
        && ma.transport_protocol == mb.transport_protocol
        && sorted(&ma.application_protocols) == sorted(&mb.application_protocols)
        && sorted(&ma.server_names) == sorted(&mb.server_names)
        && a.ranges.iter().any(|r| b.ranges.contains(r))
}

fn compile_chain(
    path: &str,
    fc: &FilterChain,
    fallback_name: String,
    clusters: &Clusters,
    identity: &Arc<CertStore>,
) -> Result<Chain, CompileError> {
    let mut ranges: Vec<CidrRange> = fc
        .filter_chain_match
        .prefix_ranges
        .iter()
        .map(|r| normalise(*r))
        .collect();
    if ranges.is_empty() {
        ranges = vec![ANY_V4, ANY_V6];
    }
    let Some(filter) = fc.filters.last() else {
        return Err((format!("{path}.filters"), "no terminal filter".into()));
    };
    let fp = format!("{path}.filters[{}].typedConfig", fc.filters.len() - 1);
    let access_logs = AccessLogs::compile(match filter {
        NetworkFilter::TcpProxy(t) => &t.access_log,
        NetworkFilter::HttpConnectionManager(h) => &h.access_log,
    })
    .map_err(|(i, e)| (format!("{fp}.accessLog[{i}]"), e.to_string()))?;
    let terminal = match filter {
        NetworkFilter::TcpProxy(t) => {
            let cluster = |field: String, name: &str| {
                clusters
                    .get(name)
                    .cloned()
                    .ok_or_else(|| (field, format!("cluster {name:?} is not defined")))
            };
            let list = match (&t.cluster, &t.weighted_clusters) {
                (Some(c), _) => vec![(cluster(format!("{fp}.cluster"), c)?, 1)],
                (None, Some(w)) => w
                    .clusters
                    .iter()
                    .enumerate()
                    .map(|(i, cw)| {
                        Ok((
                            cluster(
                                format!("{fp}.weightedClusters.clusters[{i}].name"),
                                &cw.name,
                            )?,
                            cw.weight,
                        ))
                    })
                    .collect::<Result<Vec<_>, CompileError>>()?,
                (None, None) => {
                    return Err((fp, "tcp_proxy needs cluster or weightedClusters".into()));
                }
            };
            if list.is_empty() {
                return Err((
                    format!("{fp}.weightedClusters.clusters"),
                    "at least one cluster is required".into(),
                ));
            }
            let total_weight = list.iter().map(|(_, w)| u64::from(*w)).sum();
            let idle_timeout = match t.idle_timeout {
                None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
                Some(d) if d.as_std().is_zero() => None,
                Some(d) => Some(d.as_std()),
            };
            Terminal::Tcp(TcpRoute {
                stat_prefix: t.stat_prefix.clone(),
                clusters: list,
                total_weight,
                idle_timeout,
                access_logs,
                metrics: crate::metrics::ChainMetrics::of(&t.disabled_metrics, &t.tag_overrides),
            })
        }
        NetworkFilter::HttpConnectionManager(h) => {
            // Environment tags read the sidecar's own environment, as Istio's do.
            let tracer = h
                .tracing
                .as_ref()
                .map(|t| crate::trace::Tracer::compile(t, |n| std::env::var(n).ok()))
                .transpose()
                .map_err(|e| (format!("{fp}.tracing"), e.to_string()))?;
            Terminal::Http(Arc::new((**h).clone()), access_logs, tracer.map(Arc::new))
        }
    };
    let tls = match &fc.transport_socket {
        None => None,
        Some(DownstreamTransportSocket::Tls(ctx)) => Some(Arc::new(
            Terminate::new(ctx, identity.clone()).map_err(|(field, message)| {
                (
                    format!("{path}.transportSocket.typedConfig.{field}"),
                    message,
                )
            })?,
        )),
    };
    Ok(Chain {
        name: fc.name.clone().unwrap_or(fallback_name),
        matcher: fc.filter_chain_match.clone(),
        ranges,
        terminal,
        tls,
    })
}

/// Clears the host bits of a range, so `10.1.2.3/16` and `10.1.0.0/16` are the same range.
fn normalise(r: CidrRange) -> CidrRange {
    let address_prefix = match r.address_prefix {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(r.prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(r.prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    CidrRange {
        address_prefix,
        prefix_len: r.prefix_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterManager;
    use crate::sniff::Transport;
    use crate::stats::Metrics;
    use rustmesh_xds::ProxyConfig;
    use serde_json::json;

    fn tcp(cluster: &str) -> serde_json::Value {
        json!([{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {"statPrefix": cluster, "cluster": cluster}}])
    }

    fn http() -> serde_json::Value {
        json!([{"name": "envoy.filters.network.http_connection_manager",
                "typedConfig": {"statPrefix": "h", "routeConfig": {"name": "r", "virtualHosts": []}}}])
    }

    /// A config with one listener made of `chains` (and `default`), and clusters for every name.
    fn chains(chains: serde_json::Value, default: Option<serde_json::Value>) -> FilterChains {
        chains_for_pod(chains, default, &[])
    }

    /// [`chains`], compiled for a pod carrying `labels`.
    fn chains_for_pod(
        chains: serde_json::Value,
        default: Option<serde_json::Value>,
        labels: &[(&str, &str)],
    ) -> FilterChains {
        let mut listener = json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}},
            "filterChains": chains});
        if let Some(d) = default {
            listener["defaultFilterChain"] = d;
        }
        let names = [
            "a",
            "b",
            "c",
            "d",
            "e",
            "default",
            "BlackHoleCluster",
            "InboundPassthroughClusterIpv4",
        ];
        let clusters: Vec<_> = names
            .iter()
            .map(|n| json!({"name": n, "type": "STATIC", "loadAssignment": {"clusterName": n, "endpoints": []}}))
            .collect();
        let config = ProxyConfig::from_json(
            &json!({"listeners": [listener], "clusters": clusters}).to_string(),
        )
        .unwrap();
        let clusters = ClusterManager::new(Metrics::default()).build(&config);
        let l = &config.listeners[0];
        FilterChains::compile(
            "listeners[0]",
            &l.name,
            &l.filter_chains,
            l.default_filter_chain.as_ref(),
            &clusters,
            &Arc::new(CertStore::default()),
            &labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn dst(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn apps(protocols: &[&str]) -> Detected {
        Detected {
            transport: Transport::RawBuffer,
            application_protocols: protocols.iter().map(|p| p.to_string()).collect(),
            server_name: None,
        }
    }

    fn tls() -> Detected {
        Detected {
            transport: Transport::Tls,
            ..Detected::default()
        }
    }

    fn chosen(fc: &FilterChains, to: &str, d: &Detected) -> Option<String> {
        fc.select(dst(to), d).map(|c| match &c.terminal {
            Terminal::Tcp(t) => t.clusters[0].0.name.clone(),
            Terminal::Http(..) => format!("http:{}", c.name),
        })
    }

    /// The inbound listener as Istio renders it (seed 000): port chains with HTTP and TCP
    /// variants, a blackhole for the listener's own port, and the passthrough catch-all.
    fn virtual_inbound() -> FilterChains {
        chains(
            json!([
                {"name": "blackhole", "filterChainMatch": {"destinationPort": 15006}, "filters": tcp("BlackHoleCluster")},
                {"name": "9080-http", "filterChainMatch": {"destinationPort": 9080, "transportProtocol": "raw_buffer",
                    "applicationProtocols": ["http/1.0", "http/1.1", "h2c"]}, "filters": http()},
                {"name": "9080-tcp", "filterChainMatch": {"destinationPort": 9080, "transportProtocol": "raw_buffer"}, "filters": tcp("a")},
                {"name": "9080-tls", "filterChainMatch": {"destinationPort": 9080, "transportProtocol": "tls"}, "filters": tcp("b")},
                {"name": "passthrough", "filterChainMatch": {"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
                    "filters": tcp("InboundPassthroughClusterIpv4")},
            ]),
            None,
        )
    }

    #[test]
    fn istio_inbound_chains() {
        let fc = virtual_inbound();
        let to = "10.244.0.22:9080";
        assert!(fc.needs_sniff(dst(to)));
        assert_eq!(
            chosen(&fc, to, &apps(&["http/1.1"])).as_deref(),
            Some("http:9080-http")
        );
        assert_eq!(
            chosen(&fc, to, &apps(&["h2c"])).as_deref(),
            Some("http:9080-http")
        );
        assert_eq!(
            chosen(&fc, to, &Detected::raw()).as_deref(),
            Some("a"),
            "TCP on an HTTP port"
        );
        assert_eq!(chosen(&fc, to, &tls()).as_deref(), Some("b"));
        // Other ports: the passthrough, no sniffing.
        assert!(!fc.needs_sniff(dst("10.244.0.22:3306")));
        assert_eq!(
            chosen(&fc, "10.244.0.22:3306", &Detected::raw()).as_deref(),
            Some("InboundPassthroughClusterIpv4")
        );
        assert_eq!(
            chosen(&fc, "10.244.0.22:15006", &Detected::raw()).as_deref(),
            Some("BlackHoleCluster")
        );
        // An IPv6 destination: the passthrough only covers IPv4, nothing matches.
        assert_eq!(chosen(&fc, "[fd00::1]:3306", &Detected::raw()), None);
    }

    /// Envoy's rule has a consequence for configurations: when a port's HTTP chain names
    /// `transportProtocol: raw_buffer`, its TCP fallback chain must name it too (as Istio renders
    /// it), or plain TCP (and HTTP/1.0, which the HTTP chain does not list) finds no chain.
    #[test]
    fn a_tcp_fallback_without_transport_is_shadowed_by_a_raw_buffer_http_chain() {
        let fc = chains(
            json!([
                {"name": "9080-http", "filterChainMatch": {"destinationPort": 9080, "transportProtocol": "raw_buffer",
                    "applicationProtocols": ["http/1.1", "h2c"]}, "filters": http()},
                {"name": "9080-tcp", "filterChainMatch": {"destinationPort": 9080}, "filters": tcp("a")},
            ]),
            None,
        );
        assert_eq!(
            chosen(&fc, "10.0.0.1:9080", &apps(&["http/1.1"])).as_deref(),
            Some("http:9080-http")
        );
        assert_eq!(chosen(&fc, "10.0.0.1:9080", &Detected::raw()), None);
        assert_eq!(chosen(&fc, "10.0.0.1:9080", &apps(&["http/1.0"])), None);
        assert_eq!(chosen(&fc, "10.0.0.1:9080", &tls()).as_deref(), Some("a"));
    }

    #[test]
    fn a_port_that_names_chains_never_falls_back_to_port_less_chains() {
        // Like STRICT mTLS: port 9080 takes TLS only. Plain text must not reach the catch-all.
        let fc = chains(
            json!([
                {"filterChainMatch": {"destinationPort": 9080, "transportProtocol": "tls"}, "filters": tcp("a")},
                {"filters": tcp("b")},
            ]),
            Some(json!({"filters": tcp("default")})),
        );
        assert_eq!(
            chosen(&fc, "10.0.0.1:9080", &Detected::raw()).as_deref(),
            Some("default")
        );
        assert_eq!(chosen(&fc, "10.0.0.1:9080", &tls()).as_deref(), Some("a"));
        assert_eq!(
            chosen(&fc, "10.0.0.1:9090", &Detected::raw()).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn longest_prefix_wins_and_no_ranges_means_everything() {
        let fc = chains(
            json!([
                {"filterChainMatch": {"prefixRanges": [{"addressPrefix": "10.0.0.0", "prefixLen": 8}]}, "filters": tcp("a")},
                {"filterChainMatch": {"prefixRanges": [{"addressPrefix": "10.1.0.0", "prefixLen": 16},
                                                       {"addressPrefix": "192.168.0.0", "prefixLen": 16}]}, "filters": tcp("b")},
                {"filterChainMatch": {"prefixRanges": [{"addressPrefix": "10.1.2.3", "prefixLen": 32}]}, "filters": tcp("c")},
                {"filterChainMatch": {"prefixRanges": [{"addressPrefix": "fd00::", "prefixLen": 8}]}, "filters": tcp("d")},
                {"filterChainMatch": {"destinationPort": 53}, "filters": tcp("e")},
            ]),
            None,
        );
        assert_eq!(
            chosen(&fc, "10.9.9.9:80", &Detected::raw()).as_deref(),
            Some("a")
        );
        assert_eq!(
            chosen(&fc, "10.1.9.9:80", &Detected::raw()).as_deref(),
            Some("b")
        );
        assert_eq!(
            chosen(&fc, "192.168.3.4:80", &Detected::raw()).as_deref(),
            Some("b")
        );
        assert_eq!(
            chosen(&fc, "10.1.2.3:80", &Detected::raw()).as_deref(),
            Some("c")
        );
        assert_eq!(
            chosen(&fc, "[fd12::1]:80", &Detected::raw()).as_deref(),
            Some("d")
        );
        assert_eq!(chosen(&fc, "172.16.0.1:80", &Detected::raw()), None);
        assert_eq!(
            chosen(&fc, "10.1.2.3:53", &Detected::raw()).as_deref(),
            Some("e"),
            "port first"
        );
        // IPv4-mapped addresses (dual-stack sockets) match IPv4 ranges.
        assert_eq!(
            chosen(&fc, "[::ffff:10.1.2.3]:80", &Detected::raw()).as_deref(),
            Some("c")
        );
    }

    #[test]
    fn application_protocol_order_and_fallback() {
        let fc = chains(
            json!([
                {"filterChainMatch": {"applicationProtocols": ["h2c"]}, "filters": tcp("a")},
                {"filterChainMatch": {"applicationProtocols": ["http/1.1", "http/1.0"]}, "filters": tcp("b")},
            ]),
            Some(json!({"filters": tcp("default")})),
        );
        assert!(fc.needs_sniff(dst("10.0.0.1:9080")));
        assert_eq!(
            chosen(&fc, "10.0.0.1:9080", &apps(&["h2c"])).as_deref(),
            Some("a")
        );
        assert_eq!(
            chosen(&fc, "10.0.0.1:9080", &apps(&["http/1.0"])).as_deref(),
            Some("b")
        );
        // ALPN order: the first protocol some chain names wins.
        assert_eq!(
            chosen(&fc, "10.0.0.1:9080", &apps(&["spdy", "http/1.1", "h2c"])).as_deref(),
            Some("b")
        );
        assert_eq!(
            chosen(&fc, "10.0.0.1:9080", &Detected::raw()).as_deref(),
            Some("default"),
            "server-first TCP on an HTTP listener goes to the default chain (PassthroughCluster)"
        );
    }

    /// Istio's chains for TLS ServiceEntry hosts on a port without addresses (`a` exact, `b`
    /// and `c` wildcards): by SNI, exact before the longest wildcard, anything else (no SNI,
    /// another name, plain text) to the default chain.
    #[test]
    fn server_names_exact_then_longest_wildcard_then_the_default() {
        let fc = chains(
            json!([
                {"filterChainMatch": {"serverNames": ["www.example.com"]}, "filters": tcp("a")},
                {"filterChainMatch": {"serverNames": ["*.example.com"]}, "filters": tcp("b")},
                {"filterChainMatch": {"serverNames": ["*.api.example.com", "other.test"]}, "filters": tcp("c")},
            ]),
            Some(json!({"filters": tcp("default")})),
        );
        assert!(fc.needs_sniff(dst("192.0.2.1:443")));
        let sni = |name: &str| Detected {
            transport: Transport::Tls,
            server_name: Some(name.to_string()),
            ..Detected::default()
        };
        for (name, want) in [
            ("www.example.com", "a"),
            ("WWW.Example.com", "a"),
            ("img.example.com", "b"),
            ("v1.api.example.com", "c"),
            ("other.test", "c"),
            ("example.com", "default"),
            ("www.example.org", "default"),
        ] {
            assert_eq!(
                chosen(&fc, "192.0.2.1:443", &sni(name)).as_deref(),
                Some(want),
                "{name}"
            );
        }
        assert_eq!(
            chosen(&fc, "192.0.2.1:443", &tls()).as_deref(),
            Some("default"),
            "TLS without SNI"
        );
        assert_eq!(
            chosen(&fc, "192.0.2.1:443", &Detected::raw()).as_deref(),
            Some("default"),
            "plain text"
        );
        // A chain naming no server name takes what no name matches.
        let fc = chains(
            json!([
                {"filterChainMatch": {"serverNames": ["a.test"]}, "filters": tcp("a")},
                {"filters": tcp("d")},
            ]),
            None,
        );
        assert_eq!(
            chosen(&fc, "192.0.2.1:443", &sni("a.test")).as_deref(),
            Some("a")
        );
        assert_eq!(
            chosen(&fc, "192.0.2.1:443", &sni("b.test")).as_deref(),
            Some("d")
        );
    }

    /// The error compiling the first listener's chains of `config`.
    fn compile_error(config: &ProxyConfig) -> CompileError {
        let clusters = ClusterManager::new(Metrics::default()).build(config);
        let l = &config.listeners[0];
        FilterChains::compile(
            "listeners[0]",
            "l",
            &l.filter_chains,
            None,
            &clusters,
            &Arc::new(CertStore::default()),
            &BTreeMap::new(),
        )
        .unwrap_err()
    }

    /// A VirtualService `tcp` rule with `sourceLabels` (Istio evaluates them per proxy): the
    /// chain exists only for a pod with those labels; the first chain the pod keeps among
    /// those with the same criteria applies, as the first applicable rule does.
    #[test]
    fn source_labels_keep_a_chain_only_for_pods_carrying_them() {
        let by_labels = json!([
            {"filterChainMatch": {"sourceLabels": {"app": "reviews", "version": "v1"}}, "filters": tcp("a")},
            {"filterChainMatch": {"sourceLabels": {"app": "ratings"}}, "filters": tcp("b")},
            {"filters": tcp("c")},
        ]);
        let to = "10.0.0.1:9000";
        let raw = apps(&[]);
        for (labels, want) in [
            (&[("app", "reviews"), ("version", "v1")][..], "a"),
            (&[("app", "reviews"), ("version", "v2")][..], "c"),
            (&[("app", "ratings")][..], "b"),
            (&[][..], "c"),
        ] {
            let fc = chains_for_pod(by_labels.clone(), None, labels);
            assert_eq!(chosen(&fc, to, &raw).as_deref(), Some(want), "{labels:?}");
        }
        // A rule without sourceLabels before them applies to every pod.
        let first_wins = json!([
            {"filters": tcp("c")},
            {"filterChainMatch": {"sourceLabels": {"app": "ratings"}}, "filters": tcp("b")},
        ]);
        let fc = chains_for_pod(first_wins, None, &[("app", "ratings")]);
        assert_eq!(chosen(&fc, to, &raw).as_deref(), Some("c"));
        // Other criteria still select among the chains a pod keeps.
        let by_port = json!([
            {"filterChainMatch": {"destinationPort": 9000, "sourceLabels": {"app": "ratings"}}, "filters": tcp("b")},
            {"filterChainMatch": {"destinationPort": 9000}, "filters": tcp("c")},
            {"filterChainMatch": {"destinationPort": 9001}, "filters": tcp("d")},
        ]);
        let fc = chains_for_pod(by_port, None, &[("app", "ratings")]);
        assert_eq!(chosen(&fc, to, &raw).as_deref(), Some("b"));
        assert_eq!(chosen(&fc, "10.0.0.1:9001", &raw).as_deref(), Some("d"));
        // A detected port (the operator's shape): HTTP sniffed, a labelled pod's plain TCP and
        // TLS to its chains, everything else of every pod to the default.
        let detected = json!([
            {"name": "http", "filterChainMatch": {"transportProtocol": "raw_buffer",
                "applicationProtocols": ["http/1.1", "h2c"]}, "filters": http()},
            {"filterChainMatch": {"transportProtocol": "raw_buffer", "sourceLabels": {"app": "ratings"}}, "filters": tcp("b")},
            {"filterChainMatch": {"transportProtocol": "tls", "sourceLabels": {"app": "ratings"}}, "filters": tcp("d")},
        ]);
        for (labels, plain, tls_to) in [
            (&[("app", "ratings")][..], "b", "d"),
            (&[("app", "reviews")][..], "c", "c"),
        ] {
            let fc = chains_for_pod(detected.clone(), Some(json!({"filters": tcp("c")})), labels);
            assert_eq!(chosen(&fc, to, &raw).as_deref(), Some(plain), "{labels:?}");
            assert_eq!(
                chosen(&fc, to, &tls()).as_deref(),
                Some(tls_to),
                "{labels:?}"
            );
            assert_eq!(
                chosen(&fc, to, &apps(&["http/1.1"])).as_deref(),
                Some("http:http"),
                "{labels:?}"
            );
        }
    }

    #[test]
    fn duplicate_criteria_are_refused() {
        let config = ProxyConfig::from_json(
            &json!({"listeners": [{"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 1}},
                "filterChains": [
                    {"filterChainMatch": {"destinationPort": 80}, "filters": tcp("a")},
                    {"filterChainMatch": {"destinationPort": 80, "prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]}, "filters": tcp("a")},
                ]}],
                "clusters": [{"name": "a", "type": "STATIC", "loadAssignment": {"clusterName": "a", "endpoints": []}}]})
            .to_string(),
        )
        .unwrap();
        let err = compile_error(&config);
        assert_eq!(err.0, "listeners[0].filterChains[1].filterChainMatch");
    }

    #[test]
    fn a_transport_socket_the_proxy_cannot_honour_is_refused_naming_its_field() {
        // A client certificate required with nothing to verify it against: the document's
        // validation lets it pass, the proxy cannot serve it, so the chain is refused rather
        // than served without verifying clients.
        let mut tls = serde_json::to_value(rustmesh_xds::tls::gateway_termination(
            rustmesh_xds::tls::GatewayCert::Credential("c"),
            rustmesh_xds::tls::ClientCerts::Ignored,
        ))
        .unwrap();
        tls["requireClientCertificate"] = json!(true);
        let config = ProxyConfig::from_json(
            &json!({"listeners": [{"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 1}},
                "filterChains": [{"filterChainMatch": {"serverNames": ["a.example.com"], "transportProtocol": "tls"},
                    "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": tls},
                    "filters": tcp("a")}]}],
                "clusters": [{"name": "a", "type": "STATIC", "loadAssignment": {"clusterName": "a", "endpoints": []}}]})
            .to_string(),
        )
        .unwrap();
        let err = compile_error(&config);
        assert_eq!(
            err.0,
            "listeners[0].filterChains[0].transportSocket.typedConfig.requireClientCertificate"
        );
    }

    #[test]
    fn weighted_tcp_clusters_follow_weights() {
        let fc = chains(
            json!([{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {"statPrefix": "w",
                "weightedClusters": {"clusters": [{"name": "a", "weight": 90}, {"name": "b", "weight": 10}]},
                "idleTimeout": "0s"}}]}]),
            None,
        );
        let chain = fc.select(dst("10.0.0.1:1"), &Detected::raw()).unwrap();
        let Terminal::Tcp(route) = &chain.terminal else {
            panic!()
        };
        assert_eq!(route.idle_timeout, None, "0s disables the idle timeout");
        let mut a = 0;
        for i in 0..1000u64 {
            if route.pick_with(crate::cluster::splitmix::mix(i)).name == "a" {
                a += 1;
            }
        }
        assert!((850..950).contains(&a), "{a}");
    }
}
