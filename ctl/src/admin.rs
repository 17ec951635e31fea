//! The proxy's admin API as `rustmeshctl` reads it (the contract is written out in
//! `ctl/README.md`, "Admin API contract"):
//!
//! - `GET /config_dump?include_eds` → `200`, the [`ProxyConfig`] document the proxy is serving,
//!   as `ProxyConfig::to_json` writes it (bare, not wrapped), `endpoints` included;
//! - `GET /clusters?format=json` → `200`, live endpoint health in Envoy's shape ([`Clusters`]);
//! - either answers `503` while the proxy has no configuration loaded yet;
//! - `GET /certs` → `200`, the certificates in Envoy's shape (read in [`crate::secrets`]).

use crate::error::Error;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::cluster::HealthStatus;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Path and query `rustmeshctl` asks for the configuration.
pub const CONFIG_DUMP_PATH: &str = "/config_dump?include_eds";
/// Path and query `rustmeshctl` asks for live endpoint health.
pub const CLUSTERS_PATH: &str = "/clusters?format=json";

/// Reads a configuration document (from `/config_dump` or `--file`), naming the bad field.
pub fn parse_config(origin: &str, text: &str) -> Result<ProxyConfig, Error> {
    ProxyConfig::from_json(text).map_err(|error| Error::MalformedDump {
        origin: origin.to_string(),
        error,
    })
}

/// `GET /clusters?format=json`: every cluster, with the state of each of its hosts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Clusters {
    #[serde(default)]
    pub cluster_statuses: Vec<ClusterStatus>,
}

/// One cluster of [`Clusters`]. Fields `rustmeshctl` does not read are kept for `-o json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_statuses: Vec<HostStatus>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One host (endpoint) of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub address: HostAddress,
    #[serde(default)]
    pub health_status: HostHealth,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `{"socketAddress": {"address": "10.244.0.32", "portValue": 9080}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAddress {
    pub socket_address: HostSocketAddress,
}

/// An IP (or host name) and port, as text and number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSocketAddress {
    pub address: String,
    #[serde(default)]
    pub port_value: u16,
}

/// The health of a host: what the control plane says, and whether outlier detection ejected it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostHealth {
    /// `HEALTHY`, `UNHEALTHY`, `DRAINING`, `TIMEOUT`, `DEGRADED` or `UNKNOWN` (the proto3 default,
    /// so an absent field reads as `UNKNOWN`, as in Envoy).
    #[serde(default = "unknown")]
    pub eds_health_status: String,
    /// True while outlier detection keeps the host ejected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed_outlier_check: bool,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for HostHealth {
    fn default() -> Self {
        HostHealth {
            eds_health_status: unknown(),
            failed_outlier_check: false,
            other: Map::new(),
        }
    }
}

fn unknown() -> String {
    "UNKNOWN".to_string()
}

/// Envoy's name of a control-plane health status.
pub fn health_name(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Healthy => "HEALTHY",
        HealthStatus::Unhealthy => "UNHEALTHY",
        HealthStatus::Draining => "DRAINING",
        HealthStatus::Unknown => "UNKNOWN",
    }
}

impl Clusters {
    /// Reads a `/clusters?format=json` answer.
    pub fn from_json(origin: &str, text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| Error::MalformedClusters {
            origin: origin.to_string(),
            reason: e.to_string(),
        })
    }

    /// What the proxy would report for `config` with no live information: every cluster, its
    /// endpoints (inline or from EDS) with the health the control plane gave them, none ejected.
    /// Used with `--file`, where there is no running proxy to ask.
    pub fn from_config(config: &ProxyConfig) -> Self {
        let cluster_statuses = config
            .clusters
            .iter()
            .map(|c| {
                let hosts = config
                    .load_assignment(c)
                    .map(|la| {
                        la.lb_endpoints()
                            .map(|ep| {
                                let a = &ep.endpoint.address.socket_address;
                                let mut other = Map::new();
                                other.insert(
                                    "weight".into(),
                                    Value::from(ep.load_balancing_weight.unwrap_or(1)),
                                );
                                HostStatus {
                                    address: HostAddress {
                                        socket_address: HostSocketAddress {
                                            address: a.address.to_string(),
                                            port_value: a.port_value,
                                        },
                                    },
                                    health_status: HostHealth {
                                        eds_health_status: health_name(ep.health_status).into(),
                                        failed_outlier_check: false,
                                        other: Map::new(),
                                    },
                                    other,
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut other = Map::new();
                other.insert("addedViaApi".into(), Value::Bool(true));
                ClusterStatus {
                    name: c.name.clone(),
                    host_statuses: hosts,
                    other,
                }
            })
            .collect();
        Clusters { cluster_statuses }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_envoy_shape_and_keeps_unknown_fields() {
        let text = r#"{"clusterStatuses":[{"name":"outbound|9080||reviews.default.svc.cluster.local",
            "addedViaApi":true,
            "hostStatuses":[{"address":{"socketAddress":{"address":"10.244.0.32","portValue":9080}},
              "stats":[{"name":"cx_active","type":"GAUGE","value":"1"}],
              "healthStatus":{"edsHealthStatus":"HEALTHY","failedOutlierCheck":true},"weight":1}]},
            {"name":"PassthroughCluster"}]}"#;
        let c = Clusters::from_json("test", text).unwrap();
        assert_eq!(c.cluster_statuses.len(), 2);
        let h = &c.cluster_statuses[0].host_statuses[0];
        assert!(h.health_status.failed_outlier_check);
        assert_eq!(h.address.socket_address.port_value, 9080);
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(
            back["clusterStatuses"][0]["hostStatuses"][0]["stats"][0]["value"],
            "1"
        );
        assert_eq!(back["clusterStatuses"][0]["addedViaApi"], true);
    }

    #[test]
    fn absent_health_is_unknown() {
        let c = Clusters::from_json(
            "test",
            r#"{"clusterStatuses":[{"name":"x","hostStatuses":[{"address":{"socketAddress":{"address":"10.0.0.1","portValue":80}}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.cluster_statuses[0].host_statuses[0]
                .health_status
                .eds_health_status,
            "UNKNOWN"
        );
    }

    #[test]
    fn wrong_shape_is_refused_with_the_reason() {
        let e = Clusters::from_json("http://127.0.0.1:15000", r#"{"clusterStatuses":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http://127.0.0.1:15000") && e.contains("expected a sequence"),
            "{e}"
        );
    }
}
