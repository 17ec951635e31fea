//! Istio's names for listeners, routes and clusters, so `proxy-config` output reads as users know it.

use std::fmt;
use std::net::IpAddr;

/// The listener on 15001 that takes every outbound connection.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// The listener on 15006 that takes every inbound connection.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// Connects to the original destination (ALLOW_ANY).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Drops the connection (REGISTRY_ONLY).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Inbound traffic to a port no service declares, delivered from 127.0.0.6.
pub const INBOUND_PASSTHROUGH_CLUSTER_V4: &str = "InboundPassthroughClusterIpv4";
/// IPv6 counterpart of [`INBOUND_PASSTHROUGH_CLUSTER_V4`].
pub const INBOUND_PASSTHROUGH_CLUSTER_V6: &str = "InboundPassthroughClusterIpv6";
/// Catch-all virtual host sending unknown hosts to `PassthroughCluster`.
pub const ALLOW_ANY_VHOST: &str = "allow_any";
/// Catch-all virtual host answering 502 for unknown hosts.
pub const BLOCK_ALL_VHOST: &str = "block_all";

/// `0.0.0.0_9080`, `10.96.0.10_53`.
pub fn listener_name(ip: IpAddr, port: u16) -> String {
    format!("{ip}_{port}")
}

/// Stat prefix of an outbound listener: `outbound_0.0.0.0_9080`.
pub fn outbound_stat_prefix(ip: IpAddr, port: u16) -> String {
    format!("outbound_{ip}_{port}")
}

/// Name of the route table an outbound HTTP listener uses: `9080` for the `0.0.0.0_<port>`
/// listener, `<fqdn>:<port>` for a listener bound to one service's ClusterIP.
pub fn outbound_route_name(port: u16, fqdn: Option<&str>) -> String {
    match fqdn {
        Some(host) => format!("{host}:{port}"),
        None => port.to_string(),
    }
}

/// Traffic direction part of a cluster name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// A cluster name in Istio's `direction|port|subset|host` form, e.g.
/// `outbound|9080|v1|reviews.default.svc.cluster.local` or `inbound|9080||`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterName {
    pub direction: Direction,
    pub port: u16,
    pub subset: String,
    pub host: String,
}

impl ClusterName {
    pub fn outbound(port: u16, subset: &str, fqdn: &str) -> Self {
        ClusterName {
            direction: Direction::Outbound,
            port,
            subset: subset.to_string(),
            host: fqdn.to_string(),
        }
    }

    pub fn inbound(port: u16) -> Self {
        ClusterName {
            direction: Direction::Inbound,
            port,
            subset: String::new(),
            host: String::new(),
        }
    }

    /// Reads a `direction|port|subset|host` name; `None` for other names (`PassthroughCluster`...).
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('|');
        let direction = match parts.next()? {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            _ => return None,
        };
        let port = parts.next()?.parse().ok()?;
        let subset = parts.next()?.to_string();
        let host = parts.next()?.to_string();
        if parts.next().is_some() {
            return None;
        }
        Some(ClusterName {
            direction,
            port,
            subset,
            host,
        })
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|{}|{}|{}",
            self.direction, self.port, self.subset, self.host
        )
    }
}

/// `reviews.default.svc.cluster.local`.
pub fn service_fqdn(name: &str, namespace: &str, domain_suffix: &str) -> String {
    format!("{name}.{namespace}.svc.{domain_suffix}")
}

/// Every name a client may use for a service port, in the order Istio lists them in a virtual host:
/// the FQDN, the short name (only for clients in the same namespace), each shorter suffix form,
/// then the ClusterIP; each with and without `:port`.
pub fn service_domains(
    name: &str,
    namespace: &str,
    domain_suffix: &str,
    port: u16,
    cluster_ip: Option<IpAddr>,
    client_namespace: &str,
) -> Vec<String> {
    let fqdn = service_fqdn(name, namespace, domain_suffix);
    let mut hosts = vec![fqdn];
    if namespace == client_namespace {
        hosts.push(name.to_string());
    }
    // `reviews.default.svc.cluster`, `reviews.default.svc`, `reviews.default` for `cluster.local`.
    let suffix_labels: Vec<&str> = domain_suffix.split('.').collect();
    for keep in (0..suffix_labels.len()).rev() {
        let mut host = format!("{name}.{namespace}.svc");
        for label in &suffix_labels[..keep] {
            host.push('.');
            host.push_str(label);
        }
        hosts.push(host);
    }
    hosts.push(format!("{name}.{namespace}"));
    if let Some(ip) = cluster_ip {
        hosts.push(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    hosts
        .into_iter()
        .flat_map(|h| {
            let with_port = format!("{h}:{port}");
            [h, with_port]
        })
        .collect()
}

/// The names of a ServiceEntry host's virtual host on port `port`, as Istio lists them: the
/// host (a wildcard `*.example.com` as written), then each of the entry's addresses; each with
/// and without `:port`.
pub fn entry_domains(host: &str, port: u16, addresses: &[IpAddr]) -> Vec<String> {
    let mut names = vec![host.to_string()];
    names.extend(addresses.iter().map(|ip| match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }));
    names
        .into_iter()
        .flat_map(|h| {
            let with_port = format!("{h}:{port}");
            [h, with_port]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_round_trip() {
        let c = ClusterName::outbound(9080, "v1", "reviews.default.svc.cluster.local");
        assert_eq!(
            c.to_string(),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(ClusterName::parse(&c.to_string()), Some(c));
        assert_eq!(ClusterName::inbound(9080).to_string(), "inbound|9080||");
        assert_eq!(
            ClusterName::parse("inbound|9080||"),
            Some(ClusterName::inbound(9080))
        );
        assert_eq!(ClusterName::parse(PASSTHROUGH_CLUSTER), None);
        assert_eq!(ClusterName::parse("outbound|x||h"), None);
        assert_eq!(ClusterName::parse("outbound|1|a|b|c"), None);
    }

    #[test]
    fn listener_and_route_names() {
        assert_eq!(
            listener_name("0.0.0.0".parse().unwrap(), 9080),
            "0.0.0.0_9080"
        );
        assert_eq!(
            listener_name("10.96.0.10".parse().unwrap(), 53),
            "10.96.0.10_53"
        );
        assert_eq!(outbound_route_name(9080, None), "9080");
        assert_eq!(
            outbound_route_name(80, Some("nginx.test.svc.cluster.local")),
            "nginx.test.svc.cluster.local:80"
        );
    }

    #[test]
    fn domains_match_seed_002() {
        // The virtual host of seed 002 (publictest in istio-demo, seen from istio-demo).
        let d = service_domains(
            "publictest",
            "istio-demo",
            "cluster.local",
            9000,
            Some("10.1.122.241".parse().unwrap()),
            "istio-demo",
        );
        assert_eq!(
            d,
            [
                "publictest.istio-demo.svc.cluster.local",
                "publictest.istio-demo.svc.cluster.local:9000",
                "publictest",
                "publictest:9000",
                "publictest.istio-demo.svc.cluster",
                "publictest.istio-demo.svc.cluster:9000",
                "publictest.istio-demo.svc",
                "publictest.istio-demo.svc:9000",
                "publictest.istio-demo",
                "publictest.istio-demo:9000",
                "10.1.122.241",
                "10.1.122.241:9000",
            ]
        );
        // From another namespace the bare short name is not offered.
        let other = service_domains(
            "reviews",
            "default",
            "cluster.local",
            9080,
            None,
            "bookinfo",
        );
        assert!(!other.contains(&"reviews".to_string()));
        assert!(other.contains(&"reviews.default".to_string()));
    }

    #[test]
    fn entry_domains_are_the_host_and_its_addresses_with_and_without_the_port() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            entry_domains("api.example.com", 8080, &[v4, v6]),
            [
                "api.example.com",
                "api.example.com:8080",
                "192.0.2.1",
                "192.0.2.1:8080",
                "[2001:db8::1]",
                "[2001:db8::1]:8080"
            ]
        );
        assert_eq!(
            entry_domains("*.example.com", 80, &[]),
            ["*.example.com", "*.example.com:80"]
        );
    }
}
