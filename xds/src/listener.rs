//! Listeners and their filter chains.
//!
//! `virtualOutbound` (0.0.0.0:15001) and `virtualInbound` (0.0.0.0:15006) are the only listeners
//! bound to a port; they hand each connection to the listener matching its original destination
//! (`<ip>_<port>` first, then `0.0.0.0_<port>`), whose filter chains pick TCP proxying or HTTP routing.

use crate::address::{Address, CidrRange};
use crate::duration::Duration;
use crate::route::RouteConfiguration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which way a listener's traffic flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    #[default]
    Unspecified,
    Inbound,
    Outbound,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A listener: bound to a port (`bindToPort`, the two virtual listeners) or virtual (reached
/// through the original destination of a connection accepted by a bound one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// `virtualOutbound`, `virtualInbound`, `0.0.0.0_9080`, `10.96.0.10_53`.
    pub name: String,
    pub address: Address,
    #[serde(default)]
    pub traffic_direction: TrafficDirection,
    /// Hand connections to the listener matching their original destination (15001, 15006).
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_original_dst: bool,
    /// False for the per-service virtual listeners, which are never bound themselves.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bind_to_port: bool,
    /// Tried most specific first (see [`FilterChainMatch`]).
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    /// Used when no chain matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_filter_chain: Option<FilterChain>,
    /// How long to wait for the first bytes when a chain needs to sniff the protocol; after that
    /// the connection is treated as raw TCP (server-first protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_filters_timeout: Option<Duration>,
}

/// One way of handling connections, chosen by [`FilterChainMatch`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChain {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "FilterChainMatch::is_empty")]
    pub filter_chain_match: FilterChainMatch,
    /// Network filters; the last one terminates the connection (`tcp_proxy` or `http_connection_manager`).
    pub filters: Vec<NetworkFilter>,
    /// Terminate TLS before the filters (Istio's inbound mutual TLS chains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<crate::tls::DownstreamTransportSocket>,
}

/// Conditions a connection must meet for a chain. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    /// Original destination port (on 15006, the app port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// Original destination address ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<CidrRange>,
    /// Server names (SNI) of a TLS ClientHello, sniffed from the first bytes: exact names, or
    /// `*suffix` for any longer name ending in `suffix` (Envoy's `server_names`, whose wildcards
    /// are `*.suffix`: an exact name beats the longest wildcard, which beats chains naming none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// `raw_buffer` or `tls`, sniffed from the first bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    /// `http/1.0`, `http/1.1`, `h2c` for plain HTTP, sniffed from the first bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
    /// Labels the proxy's own pod must carry for the chain to exist (a VirtualService `tcp` or
    /// `tls` match's `sourceLabels`; not Envoy's). Istio evaluates them when it generates each
    /// proxy's configuration; rustmesh's documents serve every pod of a scope, so the proxy
    /// drops a chain its labels do not satisfy when it loads the configuration, and of chains
    /// with the same criteria that remain, the first applies (the VirtualService's order), as
    /// for routes' [`source_labels`](crate::route::RouteMatch::source_labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
}

impl FilterChainMatch {
    pub fn is_empty(&self) -> bool {
        *self == FilterChainMatch::default()
    }
}

/// Transport protocol value for plain TCP.
pub const RAW_BUFFER: &str = "raw_buffer";
/// Transport protocol value for TLS.
pub const TLS: &str = "tls";
/// The application protocols Istio lists for plain HTTP chains (HTTP/1.0 falls to the TCP chain).
pub const HTTP_PROTOCOLS: [&str; 2] = ["http/1.1", "h2c"];

/// A terminal network filter, written as Envoy writes it: `{"name": ..., "typedConfig": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", content = "typedConfig", deny_unknown_fields)]
pub enum NetworkFilter {
    /// Proxy the bytes to a cluster.
    #[serde(rename = "envoy.filters.network.tcp_proxy")]
    TcpProxy(TcpProxy),
    /// Parse HTTP and route each request.
    #[serde(rename = "envoy.filters.network.http_connection_manager")]
    HttpConnectionManager(Box<HttpConnectionManager>),
}

/// TCP proxying to one cluster, or to weighted clusters (from a VirtualService `tcp` route).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProxy {
    pub stat_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<crate::route::WeightedClusters>,
    /// Close the connection after this long with no bytes either way (Envoy's default: 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Access logs: one line per connection to each, when it closes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<crate::access_log::AccessLog>,
    /// Istio metrics not recorded for these connections (Telemetry `metrics` overrides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_metrics: Vec<crate::telemetry::Metric>,
    /// Label edits of the Istio metrics (Telemetry `tagOverrides`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tag_overrides: crate::telemetry::MetricTags,
}

/// The RDS reference of an HTTP connection manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rds {
    pub route_config_name: String,
}

/// HTTP handling: routes come from a named route table (`rds`) or inline (`routeConfig`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds: Option<Rds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<RouteConfiguration>,
    /// Close a stream with no activity after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    /// Access logs (Istio's meshConfig `accessLogFile`, `accessLogEncoding`,
    /// `accessLogFormat`): one line per request to each, when its response ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<crate::access_log::AccessLog>,
    /// Distributed tracing (Istio's tracing provider and sampling): propagate the trace
    /// context and report a span per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::trace::Tracing>,
    /// Istio metrics not recorded for these requests (Telemetry `metrics` overrides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_metrics: Vec<crate::telemetry::Metric>,
    /// Label edits of the Istio metrics (Telemetry `tagOverrides`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tag_overrides: crate::telemetry::MetricTags,
}

impl NetworkFilter {
    /// The cluster a TCP filter sends to, or the route table an HTTP filter uses, as `istioctl`
    /// shows it in the DESTINATION column.
    pub fn destination(&self) -> String {
        match self {
            NetworkFilter::TcpProxy(t) => match (&t.cluster, &t.weighted_clusters) {
                (Some(c), _) => c.clone(),
                (None, Some(w)) => w
                    .clusters
                    .iter()
                    .map(|c| format!("{}:{}", c.name, c.weight))
                    .collect::<Vec<_>>()
                    .join(","),
                (None, None) => String::new(),
            },
            NetworkFilter::HttpConnectionManager(h) => match (&h.rds, &h.route_config) {
                (Some(r), _) => format!("Route: {}", r.route_config_name),
                (None, Some(rc)) => format!("Inline Route: {}", rc.name),
                (None, None) => String::new(),
            },
        }
    }
}
