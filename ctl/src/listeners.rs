//! `proxy-config listeners`: one row per filter chain (the default chain included), as istioctl
//! prints them.
//!
//! Rules (istioctl's `configdump/listener.go`):
//! - listeners sorted by port, then address (as text), then type (`HTTP` < `HTTP+TCP` < `TCP` <
//!   `UNKNOWN`); within a listener, rows sorted by DESTINATION in descending text order (stable);
//! - MATCH joins `Trans: <transportProtocol>`, `App: <protocols>` and `Addr: <ranges><:port>` (or
//!   `Addr: *:<port>`) with `; `, or is `ALL`; the exact ALPN lists Istio uses get names
//!   (`http/1.0,http/1.1,h2c` is `App: HTTP`, ...), other lists are printed as they are;
//! - DESTINATION is `Route: <name>` for RDS, the cluster for an inline route table that sends
//!   everything to one cluster, `Inline Route: ...` otherwise; for TCP the cluster, prefixed with
//!   `Cluster: ` unless its name contains `Cluster`; a chain whose TCP proxy mentions
//!   `BlackHoleCluster` (or that has no known filter) is `Non-HTTP/Non-TCP`.

use crate::table::{LISTENER_PADDING, Table};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::listener::{
    FilterChain, FilterChainMatch, HttpConnectionManager, Listener, NetworkFilter, TcpProxy,
    TrafficDirection,
};
use rustmesh_xds::names::BLACKHOLE_CLUSTER;
use rustmesh_xds::route::{RouteConfiguration, RouteMatch};

/// `--type`: istioctl's listener types, plus the traffic direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerType {
    Inbound,
    Outbound,
    Http,
    Tcp,
    HttpTcp,
}

impl std::str::FromStr for ListenerType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "inbound" => Ok(ListenerType::Inbound),
            "outbound" => Ok(ListenerType::Outbound),
            "http" => Ok(ListenerType::Http),
            "tcp" => Ok(ListenerType::Tcp),
            "http+tcp" => Ok(ListenerType::HttpTcp),
            _ => Err(format!(
                "{s:?} is not a listener type: use inbound, outbound, HTTP, TCP or HTTP+TCP"
            )),
        }
    }
}

/// Which listeners to show. Empty fields select everything.
#[derive(Clone, Debug, Default)]
pub struct ListenerFilter {
    /// Listener address, compared as text ignoring case (`0.0.0.0`, `10.96.0.10`).
    pub address: Option<String>,
    pub port: Option<u16>,
    pub kind: Option<ListenerType>,
}

impl ListenerFilter {
    pub fn matches(&self, l: &Listener) -> bool {
        if let Some(a) = &self.address
            && !l
                .address
                .socket_address
                .address
                .to_string()
                .eq_ignore_ascii_case(a)
        {
            return false;
        }
        if let Some(p) = self.port
            && l.address.socket_address.port_value != p
        {
            return false;
        }
        match self.kind {
            None => true,
            Some(ListenerType::Inbound) => l.traffic_direction == TrafficDirection::Inbound,
            Some(ListenerType::Outbound) => l.traffic_direction == TrafficDirection::Outbound,
            Some(ListenerType::Http) => listener_type(l) == "HTTP",
            Some(ListenerType::Tcp) => listener_type(l) == "TCP",
            Some(ListenerType::HttpTcp) => listener_type(l) == "HTTP+TCP",
        }
    }
}

/// The listeners the filter selects, in document order (what `-o json` prints).
pub fn select<'a>(config: &'a ProxyConfig, filter: &ListenerFilter) -> Vec<&'a Listener> {
    config
        .listeners
        .iter()
        .filter(|l| filter.matches(l))
        .collect()
}

/// The chains of a listener, the default chain last.
fn chains(l: &Listener) -> impl Iterator<Item = &FilterChain> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
}

fn is_blackhole(t: &TcpProxy) -> bool {
    // istioctl looks for the name anywhere in the filter's configuration.
    serde_json::to_string(t).is_ok_and(|s| s.contains(BLACKHOLE_CLUSTER))
}

/// istioctl's listener type: `HTTP`, `TCP`, `HTTP+TCP` or `UNKNOWN` (black-hole TCP chains do
/// not count).
pub fn listener_type(l: &Listener) -> &'static str {
    let (mut http, mut tcp) = (0, 0);
    for f in chains(l).flat_map(|c| c.filters.iter()) {
        match f {
            NetworkFilter::HttpConnectionManager(_) => http += 1,
            NetworkFilter::TcpProxy(t) if !is_blackhole(t) => tcp += 1,
            NetworkFilter::TcpProxy(_) => {}
        }
    }
    match (http > 0, tcp > 0) {
        (true, false) => "HTTP",
        (true, true) => "HTTP+TCP",
        (false, true) => "TCP",
        (false, false) => "UNKNOWN",
    }
}

/// The ALPN lists Istio generates, and the names istioctl gives them.
const NAMED_ALPNS: [(&str, &[&str]); 4] = [
    (
        "App: HTTP TLS",
        &[
            "http/1.0",
            "http/1.1",
            "h2c",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2",
        ],
    ),
    (
        "App: Istio HTTP Plain",
        &["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
    ),
    ("App: TCP TLS", &["istio-peer-exchange", "istio"]),
    ("App: HTTP", &["http/1.0", "http/1.1", "h2c"]),
];

/// The MATCH column for one filter chain.
pub fn describe_match(m: &FilterChainMatch) -> String {
    let mut parts = Vec::new();
    if !m.server_names.is_empty() {
        parts.push(format!("SNI: {}", m.server_names.join(",")));
    }
    if let Some(t) = &m.transport_protocol
        && !t.is_empty()
    {
        parts.push(format!("Trans: {t}"));
    }
    if !m.application_protocols.is_empty() {
        let named = NAMED_ALPNS
            .iter()
            .find(|(_, list)| m.application_protocols.iter().eq(list.iter()))
            .map(|(name, _)| name.to_string());
        parts.push(named.unwrap_or_else(|| format!("App: {}", m.application_protocols.join(","))));
    }
    let port = m
        .destination_port
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    if !m.prefix_ranges.is_empty() {
        let ranges: Vec<String> = m
            .prefix_ranges
            .iter()
            .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len))
            .collect();
        parts.push(format!("Addr: {}{port}", ranges.join(",")));
    } else if !port.is_empty() {
        parts.push(format!("Addr: *{port}"));
    }
    // Not Envoy's: the chain exists only for pods with these labels (a VirtualService match's
    // `sourceLabels`), which the proxy checks when it loads the configuration.
    if !m.source_labels.is_empty() {
        let labels: Vec<String> = m
            .source_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("Source: {}", labels.join(",")));
    }
    if parts.is_empty() {
        "ALL".to_string()
    } else {
        parts.join("; ")
    }
}

/// A cluster name as the DESTINATION column shows it.
fn cluster_label(name: &str) -> String {
    if name.contains("Cluster") {
        name.to_string()
    } else {
        format!("Cluster: {name}")
    }
}

/// The DESTINATION column for one filter chain.
pub fn describe_destination(chain: &FilterChain) -> String {
    for f in &chain.filters {
        match f {
            NetworkFilter::HttpConnectionManager(h) => return describe_http(h),
            NetworkFilter::TcpProxy(t) if !is_blackhole(t) => {
                return match (&t.cluster, &t.weighted_clusters) {
                    (Some(c), _) => cluster_label(c),
                    // istioctl prints an empty name here; the weights say more.
                    (None, Some(w)) => cluster_label(
                        &w.clusters
                            .iter()
                            .map(|c| format!("{}:{}", c.name, c.weight))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    (None, None) => cluster_label(""),
                };
            }
            NetworkFilter::TcpProxy(_) => {}
        }
    }
    "Non-HTTP/Non-TCP".to_string()
}

fn describe_http(h: &HttpConnectionManager) -> String {
    if let Some(rc) = &h.route_config {
        return describe_inline_routes(rc);
    }
    match &h.rds {
        Some(r) if !r.route_config_name.is_empty() => format!("Route: {}", r.route_config_name),
        _ => "HTTP".to_string(),
    }
}

/// An inline route table: its one cluster when it sends everything there, else its hosts and
/// matches.
fn describe_inline_routes(rc: &RouteConfiguration) -> String {
    if let [vh] = rc.virtual_hosts.as_slice()
        && vh.domains == ["*"]
        && let [r] = vh.routes.as_slice()
        && r.match_.prefix.as_deref() == Some("/")
        && let Some(cluster) = r.route.as_ref().and_then(|a| a.cluster.as_ref())
    {
        return cluster_label(cluster);
    }
    let vhosts: Vec<String> = rc
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes = vh
                .routes
                .iter()
                .map(|r| describe_route_match(&r.match_))
                .collect::<Vec<_>>()
                .join(", ");
            if vh.domains == ["*"] {
                routes
            } else {
                format!("{} {routes}", vh.domains.join("/"))
            }
        })
        .collect();
    format!("Inline Route: {}", vhosts.join("; "))
}

/// A route's path condition as istioctl writes it: `/*` for prefix `/`, `/api*` for a prefix,
/// an exact path as it is, `regex <re>` for a regex. Headers are not shown.
pub fn describe_route_match(m: &RouteMatch) -> String {
    let mut conds = Vec::new();
    if let Some(p) = m.prefix.as_deref().filter(|p| !p.is_empty()) {
        conds.push(format!("{p}*"));
    }
    if let Some(p) = m.path.as_deref().filter(|p| !p.is_empty()) {
        conds.push(p.to_string());
    }
    if let Some(r) = &m.safe_regex {
        conds.push(format!("regex {}", r.regex));
    }
    conds.join(" ")
}

/// One row of the verbose table, before sorting.
struct Row {
    address: String,
    port: u16,
    kind: &'static str,
    matches: Vec<(String, String)>,
}

/// The listener table: `ADDRESSES PORT MATCH DESTINATION`, or `ADDRESSES PORT TYPE` when not
/// verbose.
pub fn table(config: &ProxyConfig, filter: &ListenerFilter, verbose: bool) -> Table {
    let mut rows: Vec<Row> = select(config, filter)
        .into_iter()
        .map(|l| Row {
            address: l.address.socket_address.address.to_string(),
            port: l.address.socket_address.port_value,
            kind: listener_type(l),
            matches: chains(l)
                .map(|c| {
                    (
                        describe_match(&c.filter_chain_match),
                        describe_destination(c),
                    )
                })
                .collect(),
        })
        .collect();
    rows.sort_by(|a, b| (a.port, &a.address, a.kind).cmp(&(b.port, &b.address, b.kind)));
    if !verbose {
        let mut t = Table::new(LISTENER_PADDING, &["ADDRESSES", "PORT", "TYPE"]);
        for r in rows {
            t.row(vec![r.address, r.port.to_string(), r.kind.to_string()]);
        }
        return t;
    }
    let mut t = Table::new(
        LISTENER_PADDING,
        &["ADDRESSES", "PORT", "MATCH", "DESTINATION"],
    );
    for mut r in rows {
        r.matches.sort_by(|a, b| b.1.cmp(&a.1));
        for (m, d) in r.matches {
            t.row(vec![r.address.clone(), r.port.to_string(), m, d]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::listener::RAW_BUFFER;

    fn fcm(json: &str) -> FilterChainMatch {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn match_texts() {
        assert_eq!(describe_match(&FilterChainMatch::default()), "ALL");
        assert_eq!(
            describe_match(&fcm(r#"{"destinationPort": 9080}"#)),
            "Addr: *:9080"
        );
        assert_eq!(
            describe_match(&fcm(
                r#"{"transportProtocol":"raw_buffer","applicationProtocols":["http/1.1","h2c"]}"#
            )),
            "Trans: raw_buffer; App: http/1.1,h2c"
        );
        assert_eq!(
            describe_match(&fcm(
                r#"{"applicationProtocols":["http/1.0","http/1.1","h2c"]}"#
            )),
            "App: HTTP"
        );
        assert_eq!(
            describe_match(&fcm(
                r#"{"destinationPort":9080,"prefixRanges":[{"addressPrefix":"10.244.0.22","prefixLen":32}]}"#
            )),
            "Addr: 10.244.0.22/32:9080"
        );
        assert_eq!(
            describe_match(&fcm(
                r#"{"transportProtocol":"tls","applicationProtocols":["istio-peer-exchange","istio"],"prefixRanges":[{"addressPrefix":"0.0.0.0","prefixLen":0}]}"#
            )),
            "Trans: tls; App: TCP TLS; Addr: 0.0.0.0/0"
        );
        // The operator's inbound mutual TLS chains, as istioctl prints Istio's.
        assert_eq!(
            describe_match(&fcm(
                r#"{"destinationPort":9080,"transportProtocol":"tls","applicationProtocols":["istio-http/1.0","istio-http/1.1","istio-h2"]}"#
            )),
            "Trans: tls; App: istio-http/1.0,istio-http/1.1,istio-h2; Addr: *:9080"
        );
        assert_eq!(
            describe_match(&fcm(
                r#"{"destinationPort":3306,"transportProtocol":"tls","applicationProtocols":["istio-peer-exchange","istio","istio-http/1.0","istio-http/1.1","istio-h2"]}"#
            )),
            "Trans: tls; App: istio-peer-exchange,istio,istio-http/1.0,istio-http/1.1,istio-h2; Addr: *:3306"
        );
        assert_eq!(
            describe_match(&FilterChainMatch {
                transport_protocol: Some(RAW_BUFFER.into()),
                ..Default::default()
            }),
            "Trans: raw_buffer"
        );
        assert_eq!(
            describe_match(&fcm(
                r#"{"serverNames":["www.example.com","*.example.org"]}"#
            )),
            "SNI: www.example.com,*.example.org"
        );
        assert_eq!(
            describe_match(&fcm(
                r#"{"serverNames":["db.example.com"],"sourceLabels":{"app":"ratings","version":"v1"}}"#
            )),
            "SNI: db.example.com; Source: app=ratings,version=v1"
        );
    }

    fn chain(json: &str) -> FilterChain {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn destination_texts() {
        let tcp = |c: &str| {
            chain(&format!(
                r#"{{"filters":[{{"name":"envoy.filters.network.tcp_proxy","typedConfig":{{"statPrefix":"{c}","cluster":"{c}"}}}}]}}"#
            ))
        };
        assert_eq!(
            describe_destination(&tcp("PassthroughCluster")),
            "PassthroughCluster"
        );
        assert_eq!(
            describe_destination(&tcp("InboundPassthroughClusterIpv4")),
            "InboundPassthroughClusterIpv4"
        );
        assert_eq!(
            describe_destination(&tcp("outbound|53||kube-dns.kube-system.svc.cluster.local")),
            "Cluster: outbound|53||kube-dns.kube-system.svc.cluster.local"
        );
        assert_eq!(
            describe_destination(&tcp("BlackHoleCluster")),
            "Non-HTTP/Non-TCP"
        );
        let rds = chain(
            r#"{"filters":[{"name":"envoy.filters.network.http_connection_manager","typedConfig":{"statPrefix":"x","rds":{"routeConfigName":"9080"}}}]}"#,
        );
        assert_eq!(describe_destination(&rds), "Route: 9080");
        let inline_all = chain(
            r#"{"filters":[{"name":"envoy.filters.network.http_connection_manager","typedConfig":{"statPrefix":"x","routeConfig":{"name":"inbound|80||","virtualHosts":[{"name":"inbound|http|80","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"inbound|80||"}}]}]}}}]}"#,
        );
        assert_eq!(describe_destination(&inline_all), "Cluster: inbound|80||");
        let inline_paths = chain(
            r#"{"filters":[{"name":"envoy.filters.network.http_connection_manager","typedConfig":{"statPrefix":"x","routeConfig":{"name":"stats","virtualHosts":[{"name":"backend","domains":["*"],"routes":[{"match":{"prefix":"/stats/prometheus"},"route":{"cluster":"prometheus_stats"}}]}]}}}]}"#,
        );
        assert_eq!(
            describe_destination(&inline_paths),
            "Inline Route: /stats/prometheus*"
        );
        let weighted = chain(
            r#"{"filters":[{"name":"envoy.filters.network.tcp_proxy","typedConfig":{"statPrefix":"x","weightedClusters":{"clusters":[{"name":"outbound|27017|v1|mongo","weight":80},{"name":"outbound|27017|v2|mongo","weight":20}]}}}]}"#,
        );
        assert_eq!(
            describe_destination(&weighted),
            "Cluster: outbound|27017|v1|mongo:80,outbound|27017|v2|mongo:20"
        );
    }

    #[test]
    fn route_match_texts() {
        let m = |j: &str| -> RouteMatch { serde_json::from_str(j).unwrap() };
        assert_eq!(describe_route_match(&m(r#"{"prefix":"/"}"#)), "/*");
        assert_eq!(describe_route_match(&m(r#"{"prefix":"/api"}"#)), "/api*");
        assert_eq!(
            describe_route_match(&m(r#"{"path":"/productpage"}"#)),
            "/productpage"
        );
        assert_eq!(
            describe_route_match(&m(r#"{"safeRegex":{"regex":"/v[0-9]+/.*"}}"#)),
            "regex /v[0-9]+/.*"
        );
    }

    #[test]
    fn type_flag_values() {
        assert_eq!("HTTP+TCP".parse(), Ok(ListenerType::HttpTcp));
        assert_eq!("Inbound".parse(), Ok(ListenerType::Inbound));
        assert!("udp".parse::<ListenerType>().unwrap_err().contains("udp"));
    }
}
