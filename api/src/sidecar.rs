//! `Sidecar`: narrows what a workload's proxy sees and accepts.
//! Shapes follow <https://istio.io/latest/docs/reference/config/networking/sidecar/>.

use crate::common::Destination;
use crate::destination_rule::{ClientTlsSettings, ConnectionPoolSettings};
use crate::status::IstioStatus;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The spec of a Sidecar.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    plural = "sidecars",
    singular = "sidecar",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "IstioStatus",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// Pods this Sidecar applies to; without it, it applies to every pod of its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarWorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    /// What the workload may reach. Hosts are `namespace/dnsName`: `./*`, `istio-system/*`,
    /// `*/reviews.default.svc.cluster.local`, `~/*` (nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
}

/// The Sidecar's selector: `{labels: {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarWorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A port of a listener: number, protocol (`HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, ...) and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Whether traffic for a listener is captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    Default,
    Iptables,
    None,
}

/// An inbound listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    pub port: SidecarPort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Where to deliver: `127.0.0.1:PORT` or `[::1]:PORT` (the app's loopback), `0.0.0.0:PORT` or
    /// `[::]:PORT` (the pod's own address, on the listener's port). `unix://` is not implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// A parsed `defaultEndpoint` of an ingress listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultEndpoint {
    /// `127.0.0.1:PORT` or `[::1]:PORT`: the app's loopback address.
    Loopback(std::net::IpAddr, u16),
    /// `0.0.0.0:PORT` or `[::]:PORT`: the pod's own address (the connection's original
    /// destination), on PORT.
    Instance(u16),
    /// `unix://PATH`: a Unix domain socket.
    Unix(String),
}

impl DefaultEndpoint {
    /// Parses Istio's four forms; `None` for anything else.
    pub fn parse(endpoint: &str) -> Option<Self> {
        if let Some(path) = endpoint.strip_prefix("unix://") {
            return Some(Self::Unix(path.to_string()));
        }
        let (host, port) = endpoint.rsplit_once(':')?;
        let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
        match host {
            "127.0.0.1" => Some(Self::Loopback(std::net::Ipv4Addr::LOCALHOST.into(), port)),
            "[::1]" => Some(Self::Loopback(std::net::Ipv6Addr::LOCALHOST.into(), port)),
            "0.0.0.0" | "[::]" => Some(Self::Instance(port)),
            _ => None,
        }
    }
}

/// An outbound listener and the hosts it exposes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    pub hosts: Vec<String>,
}

/// What happens to traffic for destinations outside the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicyMode {
    /// Only services in the registry are reachable; anything else goes to `BlackHoleCluster`.
    RegistryOnly,
    /// Unknown destinations are reached directly through `PassthroughCluster` (Istio's default).
    #[default]
    AllowAny,
}

/// `outboundTrafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundTrafficPolicyMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// One `egress.hosts` entry, split into its namespace part and its host part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressHost<'a> {
    /// `.` (the Sidecar's own namespace), `*` (any), `~` (none) or a namespace name.
    pub namespace: &'a str,
    /// `*`, `*.example.com` or a DNS name.
    pub host: &'a str,
}

impl<'a> EgressHost<'a> {
    /// Splits `ns/host`. Istio requires the namespace part; `None` when it is missing.
    pub fn parse(entry: &'a str) -> Option<Self> {
        let (namespace, host) = entry.split_once('/')?;
        if namespace.is_empty() || host.is_empty() || host.contains('/') {
            return None;
        }
        Some(EgressHost { namespace, host })
    }

    /// Whether a service `fqdn` in `service_namespace` is exposed by this entry, for a Sidecar in
    /// `sidecar_namespace`.
    pub fn exposes(&self, sidecar_namespace: &str, service_namespace: &str, fqdn: &str) -> bool {
        let ns_ok = match self.namespace {
            "*" => true,
            "~" => false,
            "." => service_namespace == sidecar_namespace,
            ns => service_namespace == ns,
        };
        ns_ok && host_matches(self.host, fqdn)
    }
}

/// Istio host matching: `*` matches everything, `*.suffix` matches names ending in `.suffix`,
/// anything else must be equal.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_hosts_scope_like_istio() {
        let own = EgressHost::parse("./*").unwrap();
        assert!(own.exposes("bookinfo", "bookinfo", "reviews.bookinfo.svc.cluster.local"));
        assert!(!own.exposes("bookinfo", "default", "ratings.default.svc.cluster.local"));

        let system = EgressHost::parse("istio-system/*").unwrap();
        assert!(system.exposes(
            "bookinfo",
            "istio-system",
            "istiod.istio-system.svc.cluster.local"
        ));
        assert!(!system.exposes("bookinfo", "bookinfo", "reviews.bookinfo.svc.cluster.local"));

        let one = EgressHost::parse("*/reviews.default.svc.cluster.local").unwrap();
        assert!(one.exposes("x", "default", "reviews.default.svc.cluster.local"));
        assert!(!one.exposes("x", "default", "ratings.default.svc.cluster.local"));

        let none = EgressHost::parse("~/*").unwrap();
        assert!(!none.exposes("x", "x", "a.x.svc.cluster.local"));

        let wildcard = EgressHost::parse("*/*.example.com").unwrap();
        assert!(wildcard.exposes("x", "ext", "api.example.com"));
        assert!(!wildcard.exposes("x", "ext", "example.org"));

        assert_eq!(EgressHost::parse("reviews"), None);
        assert_eq!(EgressHost::parse("/reviews"), None);
    }
}
