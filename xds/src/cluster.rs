//! Clusters (where traffic goes) and their endpoints.

use crate::address::{Address, SocketAddress};
use crate::duration::Duration;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// How a cluster finds its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryType {
    /// Endpoints listed in the config's `endpoints` under the cluster's `edsClusterConfig.serviceName`.
    Eds,
    /// Endpoints listed inline in `loadAssignment` (inbound clusters: 127.0.0.1:<port>).
    Static,
    /// The connection's original destination (`PassthroughCluster`, `InboundPassthroughClusterIpv4`).
    OriginalDst,
    /// Endpoints resolved from DNS names in `loadAssignment`: every address of every name
    /// (Istio's ServiceEntry `resolution: DNS`).
    StrictDns,
    /// One endpoint resolved from the first DNS name in `loadAssignment`: the first address of
    /// the latest answer (Istio's ServiceEntry `resolution: DNS_ROUND_ROBIN`).
    LogicalDns,
}

impl DiscoveryType {
    /// Whether the endpoints are DNS names the proxy resolves (STRICT_DNS, LOGICAL_DNS).
    pub fn is_dns(self) -> bool {
        matches!(self, DiscoveryType::StrictDns | DiscoveryType::LogicalDns)
    }
}

/// Load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    RoundRobin,
    /// Istio's default: power of two choices on active requests.
    #[default]
    LeastRequest,
    Random,
    /// Consistent hash (keys from the route's `hashPolicy`).
    RingHash,
    Maglev,
    /// The original destination decides (ORIGINAL_DST clusters).
    ClusterProvided,
}

/// The protocol used towards the upstream for HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpstreamProtocol {
    /// Same as the downstream request (Istio's `useDownstreamProtocolConfig`).
    #[default]
    UseDownstream,
    Http1,
    Http2,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A cluster: `outbound|9080|v1|reviews.default.svc.cluster.local`, `inbound|9080||`,
/// `PassthroughCluster`, `BlackHoleCluster`, `InboundPassthroughClusterIpv4`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: DiscoveryType,
    #[serde(default = "ten_seconds")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// RING_HASH's ring size (absent: Envoy's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash_lb_config: Option<RingHashLbConfig>,
    /// MAGLEV's table size (absent: Envoy's default, 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_lb_config: Option<MaglevLbConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eds_cluster_config: Option<EdsClusterConfig>,
    /// Endpoints for STATIC, STRICT_DNS and LOGICAL_DNS clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_assignment: Option<ClusterLoadAssignment>,
    /// STRICT_DNS / LOGICAL_DNS: how often the names are resolved again (Envoy's
    /// `dns_refresh_rate`, Istio's meshConfig `dnsRefreshRate`; absent: 5s, Envoy's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Duration>,
    /// STRICT_DNS / LOGICAL_DNS: the answer's TTL decides when to resolve again, the refresh
    /// rate only when the TTL is 0 (Envoy's `respect_dns_ttl`, which Istio sets).
    #[serde(default, skip_serializing_if = "is_default")]
    pub respect_dns_ttl: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Source address for upstream connections (127.0.0.6 for inbound passthrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_bind_config: Option<BindConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub upstream_protocol: UpstreamProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_http_protocol_options: Option<HttpProtocolOptions>,
    /// The service and DestinationRule behind the cluster (the SERVICE FQDN / DESTINATION RULE columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ClusterMetadata>,
    /// Originate TLS to every endpoint (a DestinationRule's `tls`); wins over
    /// `transportSocketMatches`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<crate::tls::UpstreamTransportSocket>,
    /// Per-endpoint transport by endpoint metadata (Istio's auto mTLS); the first match wins,
    /// plain TCP when none does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transport_socket_matches: Vec<crate::tls::TransportSocketMatch>,
}

/// Envoy's `RingHashLbConfig`: how many points the ring of a RING_HASH cluster has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHashLbConfig {
    /// At least this many points (Envoy's default 1024, at most 8M); Istio's
    /// `consistentHash.ringHash.minimumRingSize` (or the deprecated `minimumRingSize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
    /// At most this many points (Envoy's default and limit 8M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_ring_size: Option<u64>,
}

impl RingHashLbConfig {
    /// Envoy's default minimum ring size.
    pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
    /// Envoy's default, and limit, of both ring sizes (8M points).
    pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
}

/// Envoy's `MaglevLbConfig`: the size of a MAGLEV cluster's lookup table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaglevLbConfig {
    /// A prime, at most 5000011 (Envoy's default 65537); Istio's
    /// `consistentHash.maglev.tableSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

impl MaglevLbConfig {
    /// Envoy's default table size.
    pub const DEFAULT_TABLE_SIZE: u64 = 65537;
    /// Envoy's largest table size.
    pub const MAX_TABLE_SIZE: u64 = 5_000_011;
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// Where an EDS cluster's endpoints are listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdsClusterConfig {
    pub service_name: String,
}

/// Upstream source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindConfig {
    pub source_address: SocketAddress,
}

/// Limits from a DestinationRule's connectionPool (Envoy's defaults are effectively unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakers {
    pub thresholds: Vec<Thresholds>,
}

/// One priority's limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Ejection of failing endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(
        default,
        rename = "consecutive5xx",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}

/// HTTP connection options towards the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProtocolOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
}

/// What a cluster stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMetadata {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// `name.namespace` of the DestinationRule applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<String>,
}

/// A Kubernetes service.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    pub host: String,
    pub name: String,
    pub namespace: String,
    /// The service's pod selector, on an inbound cluster (one configuration serves every pod
    /// of a scope, and a port may be several services'): the sidecar reports the service that
    /// selects its own pod as `destination_service`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub selector: std::collections::BTreeMap<String, String>,
}

impl ServiceRef {
    /// Whether the service selects a pod with `labels` (a service without a selector selects
    /// none: its endpoints are managed by hand).
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The endpoints of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    pub cluster_name: String,
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
}

impl ClusterLoadAssignment {
    /// Every endpoint, whatever its locality.
    pub fn lb_endpoints(&self) -> impl Iterator<Item = &LbEndpoint> {
        self.endpoints.iter().flat_map(|l| l.lb_endpoints.iter())
    }
}

/// Endpoints of one locality.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    pub lb_endpoints: Vec<LbEndpoint>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: u32,
}

/// Region / zone / sub-zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_zone: String,
}

/// Health as the control plane reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
    Draining,
    Unknown,
}

/// One endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LbEndpoint {
    pub endpoint: Endpoint,
    #[serde(default, skip_serializing_if = "is_default")]
    pub health_status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
    /// `filterMetadata`: `envoy.transport_socket_match: {tlsMode: istio}` for a pod with a
    /// sidecar (what a cluster's `transportSocketMatches` match on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// Envoy's endpoint `Metadata`: string pairs by filter namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub filter_metadata:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl LbEndpoint {
    /// The pairs `transportSocketMatches` match against.
    pub fn transport_socket_match(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.metadata
            .as_ref()?
            .filter_metadata
            .get(crate::tls::TRANSPORT_SOCKET_MATCH)
    }

    /// Marks the endpoint as a pod with a sidecar (`tlsMode: istio`).
    pub fn with_istio_tls_mode(mut self) -> Self {
        self.metadata
            .get_or_insert_with(Metadata::default)
            .filter_metadata
            .entry(crate::tls::TRANSPORT_SOCKET_MATCH.to_string())
            .or_default()
            .insert(
                crate::tls::TLS_MODE_KEY.to_string(),
                crate::tls::TLS_MODE_ISTIO.to_string(),
            );
        self
    }
}

/// The endpoint metadata namespace Istio keeps a pod's workload under.
pub const ISTIO_METADATA: &str = "istio";
/// The key of that workload: `name;namespace;canonical service;canonical revision;cluster`.
pub const WORKLOAD_KEY: &str = "workload";

/// The workload behind an endpoint, as Istio writes it in the endpoint's metadata
/// (`filterMetadata.istio.workload`): a client's sidecar labels its metrics with it when the
/// server's own metadata did not come back (TCP, or an answer without the exchange headers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointWorkload {
    pub name: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl EndpointWorkload {
    /// The metadata value: the five fields joined by `;` (none of them can hold a `;`: they
    /// are Kubernetes names and label values).
    pub fn to_value(&self) -> String {
        [
            &self.name,
            &self.namespace,
            &self.canonical_service,
            &self.canonical_revision,
            &self.cluster,
        ]
        .map(String::as_str)
        .join(";")
    }

    /// Reads a metadata value; `None` unless it has the five fields.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let mut next = || parts.next().map(str::to_string);
        let w = EndpointWorkload {
            name: next()?,
            namespace: next()?,
            canonical_service: next()?,
            canonical_revision: next()?,
            cluster: next()?,
        };
        parts.next().is_none().then_some(w)
    }
}

impl LbEndpoint {
    /// Records the workload behind the endpoint ([`EndpointWorkload`]).
    pub fn with_workload(mut self, w: &EndpointWorkload) -> Self {
        self.metadata
            .get_or_insert_with(Metadata::default)
            .filter_metadata
            .entry(ISTIO_METADATA.to_string())
            .or_default()
            .insert(WORKLOAD_KEY.to_string(), w.to_value());
        self
    }

    /// The workload behind the endpoint, when its metadata names one.
    pub fn workload(&self) -> Option<EndpointWorkload> {
        let v = self
            .metadata
            .as_ref()?
            .filter_metadata
            .get(ISTIO_METADATA)?
            .get(WORKLOAD_KEY)?;
        EndpointWorkload::parse(v)
    }
}

/// An endpoint's address: an IP address, or for STRICT_DNS and LOGICAL_DNS clusters a DNS name
/// (Envoy's `socket_address.address` may be either), and its host name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: EndpointAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Envoy's `Address` of an endpoint: `{"socketAddress": {"address": "10.0.0.1" or
/// "api.example.com", "portValue": 443}}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointAddress {
    pub socket_address: HostPort,
}

/// A host (IP address or DNS name) and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPort {
    pub address: Host,
    pub port_value: u16,
}

/// An IP address, or a DNS name; written as the string either way, read as an IP address when
/// it parses as one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl Serialize for Host {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(text),
        })
    }
}

impl EndpointAddress {
    /// An IP address and port.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        EndpointAddress {
            socket_address: HostPort {
                address: Host::Ip(ip),
                port_value: port,
            },
        }
    }

    /// A DNS name and port (STRICT_DNS, LOGICAL_DNS).
    pub fn name(name: &str, port: u16) -> Self {
        EndpointAddress {
            socket_address: HostPort {
                address: Host::Name(name.to_string()),
                port_value: port,
            },
        }
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.socket_address.address {
            Host::Ip(ip) => Some(std::net::SocketAddr::new(
                *ip,
                self.socket_address.port_value,
            )),
            Host::Name(_) => None,
        }
    }

    /// The DNS name, when the host is one.
    pub fn dns_name(&self) -> Option<&str> {
        match &self.socket_address.address {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.socket_address.port_value
    }
}

impl From<Address> for EndpointAddress {
    fn from(a: Address) -> Self {
        EndpointAddress::new(a.socket_address.address, a.socket_address.port_value)
    }
}

impl LbEndpoint {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self::at(EndpointAddress::new(addr.ip(), addr.port()))
    }

    /// An endpoint at a DNS name (STRICT_DNS, LOGICAL_DNS clusters).
    pub fn named(name: &str, port: u16) -> Self {
        Self::at(EndpointAddress::name(name, port))
    }

    fn at(address: EndpointAddress) -> Self {
        LbEndpoint {
            endpoint: Endpoint {
                address,
                hostname: None,
            },
            health_status: HealthStatus::Healthy,
            load_balancing_weight: None,
            metadata: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(type_: &str, addresses: &[&str]) -> serde_json::Value {
        let eps: Vec<serde_json::Value> = addresses
            .iter()
            .map(|a| serde_json::json!({"endpoint": {"address": {"socketAddress": {"address": a, "portValue": 443}}}}))
            .collect();
        serde_json::json!({"name": "c", "type": type_, "dnsRefreshRate": "60s", "respectDnsTtl": true,
            "loadAssignment": {"clusterName": "c", "endpoints": [{"lbEndpoints": eps}]}})
    }

    fn problems(c: serde_json::Value) -> String {
        let doc = serde_json::json!({"clusters": [c]}).to_string();
        match crate::ProxyConfig::from_json(&doc) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dns_names_only_in_dns_clusters_and_ip_endpoints_read_as_before() {
        assert_eq!(
            problems(cluster(
                "STRICT_DNS",
                &["api.example.com", "b.example.com."]
            )),
            ""
        );
        assert_eq!(problems(cluster("LOGICAL_DNS", &["api.example.com"])), "");
        assert_eq!(
            problems(cluster("STRICT_DNS", &["192.0.2.1"])),
            "",
            "an IP resolves to itself"
        );
        let e = problems(cluster("STATIC", &["api.example.com"]));
        assert!(
            e.contains("clusters[0].loadAssignment.endpoints[0].lbEndpoints[0].endpoint.address.socketAddress.address")
                && e.contains("not an IP address"),
            "{e}"
        );
        let e = problems(cluster("STRICT_DNS", &["bad name!"]));
        assert!(e.contains("not a DNS name"), "{e}");
        let e = problems(cluster("LOGICAL_DNS", &["a.example.com", "b.example.com"]));
        assert!(e.contains("exactly one endpoint"), "{e}");
        let many: Vec<String> = (0..=crate::config::MAX_DNS_NAMES)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = problems(cluster("STRICT_DNS", &many));
        assert!(e.contains("at most 64"), "{e}");
        // The shape of an old ConfigMap's endpoint reads back as an IP address.
        let old: LbEndpoint = serde_json::from_str(
            r#"{"endpoint": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 80}}}}"#,
        )
        .unwrap();
        assert_eq!(old, LbEndpoint::new("10.0.0.1:80".parse().unwrap()));
        assert_eq!(
            serde_json::to_value(LbEndpoint::named("api.example.com", 443)).unwrap(),
            serde_json::json!({"endpoint": {"address": {"socketAddress": {"address": "api.example.com", "portValue": 443}}}})
        );
    }

    #[test]
    fn an_endpoints_workload_is_istios_five_fields_and_reads_back() {
        let w = EndpointWorkload {
            name: "reviews-v1".into(),
            namespace: "default".into(),
            canonical_service: "reviews".into(),
            canonical_revision: "v1".into(),
            cluster: "Kubernetes".into(),
        };
        let ep = LbEndpoint::new("10.0.0.1:9080".parse().unwrap())
            .with_istio_tls_mode()
            .with_workload(&w);
        let json = serde_json::to_value(&ep).unwrap();
        assert_eq!(
            json["metadata"]["filterMetadata"]["istio"]["workload"],
            "reviews-v1;default;reviews;v1;Kubernetes"
        );
        assert_eq!(
            json["metadata"]["filterMetadata"]["envoy.transport_socket_match"]["tlsMode"],
            "istio"
        );
        let back: LbEndpoint = serde_json::from_value(json).unwrap();
        assert_eq!(back.workload(), Some(w));
        assert_eq!(EndpointWorkload::parse("a;b;c;d"), None);
        assert_eq!(EndpointWorkload::parse("a;b;c;d;e;f"), None);
        assert_eq!(
            LbEndpoint::new("10.0.0.1:1".parse().unwrap()).workload(),
            None
        );
    }
}
