//! `proxy-config clusters`: one row per cluster, as istioctl prints them.
//!
//! Rules (istioctl's `configdump/cluster.go`):
//! - columns `SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE` (padding 5);
//! - `direction|port|subset|host` names are split into their columns, an empty subset shown as
//!   `-` (so `inbound|9080||` has an empty SERVICE FQDN); other names (`PassthroughCluster`,
//!   `BlackHoleCluster`, `InboundPassthroughClusterIpv4`) go whole into SERVICE FQDN with `-` for
//!   port, subset and direction;
//! - TYPE is the discovery type (`EDS`, `STATIC`, `ORIGINAL_DST`, `STRICT_DNS`, `LOGICAL_DNS`); DESTINATION
//!   RULE is `metadata.destinationRule` (`reviews.default`), empty when none;
//! - sorted by FQDN (or whole name), then subset, port and direction;
//! - the filters match as istioctl's do: `--fqdn`, `--subset` and `--direction` are substrings of
//!   the cluster name, `--port P` matches `|P|`.

use crate::table::{Table, WIDE_PADDING};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::cluster::{Cluster, DiscoveryType};
use rustmesh_xds::names::{ClusterName, Direction};

/// Which clusters to show. Empty fields select everything.
#[derive(Clone, Debug, Default)]
pub struct ClusterFilter {
    pub fqdn: Option<String>,
    pub port: Option<u16>,
    pub subset: Option<String>,
    pub direction: Option<Direction>,
}

impl ClusterFilter {
    pub fn matches(&self, c: &Cluster) -> bool {
        let name = c.name.as_str();
        self.fqdn.as_deref().is_none_or(|f| name.contains(f))
            && self.direction.is_none_or(|d| name.contains(&d.to_string()))
            && self.subset.as_deref().is_none_or(|s| name.contains(s))
            && self.port.is_none_or(|p| name.contains(&format!("|{p}|")))
    }
}

/// Sort key: (fqdn, subset, port, direction); other names sort by the whole name.
fn sort_key(name: &str) -> (String, String, u16, String) {
    match ClusterName::parse(name) {
        Some(c) => (c.host, c.subset, c.port, c.direction.to_string()),
        None => (name.to_string(), String::new(), 0, String::new()),
    }
}

/// The clusters the filter selects, sorted (what `-o json` prints).
pub fn select<'a>(config: &'a ProxyConfig, filter: &ClusterFilter) -> Vec<&'a Cluster> {
    let mut out: Vec<&Cluster> = config
        .clusters
        .iter()
        .filter(|c| filter.matches(c))
        .collect();
    out.sort_by_cached_key(|c| sort_key(&c.name));
    out
}

/// Envoy's name of a discovery type.
pub fn type_name(t: DiscoveryType) -> &'static str {
    match t {
        DiscoveryType::Eds => "EDS",
        DiscoveryType::Static => "STATIC",
        DiscoveryType::OriginalDst => "ORIGINAL_DST",
        DiscoveryType::StrictDns => "STRICT_DNS",
        DiscoveryType::LogicalDns => "LOGICAL_DNS",
    }
}

/// The cluster table.
pub fn table(config: &ProxyConfig, filter: &ClusterFilter) -> Table {
    let mut t = Table::new(
        WIDE_PADDING,
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ],
    );
    for c in select(config, filter) {
        let rule = c
            .metadata
            .as_ref()
            .and_then(|m| m.destination_rule.clone())
            .unwrap_or_default();
        let ty = type_name(c.type_).to_string();
        t.row(match ClusterName::parse(&c.name) {
            Some(n) => vec![
                n.host,
                n.port.to_string(),
                if n.subset.is_empty() {
                    "-".into()
                } else {
                    n.subset
                },
                n.direction.to_string(),
                ty,
                rule,
            ],
            None => vec![c.name.clone(), "-".into(), "-".into(), "-".into(), ty, rule],
        });
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> Cluster {
        serde_json::from_value(serde_json::json!({"name": name, "type": "EDS",
            "edsClusterConfig": {"serviceName": name}}))
        .unwrap()
    }

    #[test]
    fn filters_match_parts_of_the_name() {
        let c = cluster("outbound|9080|v1|reviews.default.svc.cluster.local");
        let f = |f: ClusterFilter| f.matches(&c);
        assert!(f(ClusterFilter::default()));
        assert!(f(ClusterFilter {
            fqdn: Some("reviews.default".into()),
            port: Some(9080),
            subset: Some("v1".into()),
            direction: Some(Direction::Outbound),
        }));
        assert!(!f(ClusterFilter {
            port: Some(908),
            ..Default::default()
        }));
        assert!(!f(ClusterFilter {
            direction: Some(Direction::Inbound),
            ..Default::default()
        }));
    }

    #[test]
    fn sorted_by_host_then_subset_then_port() {
        let config = ProxyConfig {
            clusters: [
                "outbound|9080|v2|reviews.default.svc.cluster.local",
                "PassthroughCluster",
                "outbound|9080||reviews.default.svc.cluster.local",
                "inbound|9080||",
                "outbound|80||reviews.default.svc.cluster.local",
            ]
            .iter()
            .map(|n| cluster(n))
            .collect(),
            ..Default::default()
        };
        let names: Vec<&str> = select(&config, &ClusterFilter::default())
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "inbound|9080||",
                "PassthroughCluster",
                "outbound|80||reviews.default.svc.cluster.local",
                "outbound|9080||reviews.default.svc.cluster.local",
                "outbound|9080|v2|reviews.default.svc.cluster.local",
            ]
        );
    }
}
