//! `proxy-config endpoints`: one row per host of every cluster, from the proxy's live
//! `/clusters?format=json` (or, with `--file`, from the configuration), as istioctl prints them.
//!
//! Rules (istioctl's `clusters/clusters.go`):
//! - columns `ENDPOINT STATUS OUTLIER CHECK CLUSTER` (padding 5);
//! - ENDPOINT is `address:port` (the address alone when the port is 0), STATUS the
//!   `edsHealthStatus`, OUTLIER CHECK `FAILED` when `failedOutlierCheck` is true, else `OK`;
//! - sorted by address (as text), then port, then cluster name;
//! - `--address` is the host address without port, `--cluster` the whole cluster name, `--status`
//!   the status name; all compared ignoring case.

use crate::admin::{ClusterStatus, Clusters, HostStatus};
use crate::table::{Table, WIDE_PADDING};

/// Statuses `--status` accepts.
pub const STATUSES: [&str; 6] = [
    "HEALTHY",
    "UNHEALTHY",
    "DRAINING",
    "TIMEOUT",
    "DEGRADED",
    "UNKNOWN",
];

/// Parses `--status`.
pub fn parse_status(s: &str) -> Result<String, String> {
    let up = s.to_ascii_uppercase();
    if STATUSES.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(format!(
            "{s:?} is not an endpoint status: use one of {}",
            STATUSES.join(", ").to_lowercase()
        ))
    }
}

/// Which endpoints to show. Empty fields select everything.
#[derive(Clone, Debug, Default)]
pub struct EndpointFilter {
    pub address: Option<String>,
    pub port: Option<u16>,
    pub cluster: Option<String>,
    pub status: Option<String>,
}

impl EndpointFilter {
    pub fn matches(&self, host: &HostStatus, cluster: &str) -> bool {
        let a = &host.address.socket_address;
        self.address
            .as_deref()
            .is_none_or(|x| a.address.eq_ignore_ascii_case(x))
            && self.port.is_none_or(|p| a.port_value == p)
            && self
                .cluster
                .as_deref()
                .is_none_or(|c| cluster.eq_ignore_ascii_case(c))
            && self
                .status
                .as_deref()
                .is_none_or(|s| host.health_status.eds_health_status.eq_ignore_ascii_case(s))
    }
}

/// The clusters with at least one selected host, whole (what `-o json` prints, as istioctl does).
pub fn select<'a>(clusters: &'a Clusters, filter: &EndpointFilter) -> Vec<&'a ClusterStatus> {
    clusters
        .cluster_statuses
        .iter()
        .filter(|c| c.host_statuses.iter().any(|h| filter.matches(h, &c.name)))
        .collect()
}

/// The endpoint table.
pub fn table(clusters: &Clusters, filter: &EndpointFilter) -> Table {
    let mut rows: Vec<(&str, u16, &str, &HostStatus)> = clusters
        .cluster_statuses
        .iter()
        .flat_map(|c| c.host_statuses.iter().map(move |h| (c, h)))
        .filter(|(c, h)| filter.matches(h, &c.name))
        .map(|(c, h)| {
            let a = &h.address.socket_address;
            (a.address.as_str(), a.port_value, c.name.as_str(), h)
        })
        .collect();
    rows.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    let mut t = Table::new(
        WIDE_PADDING,
        &["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"],
    );
    for (address, port, cluster, h) in rows {
        t.row(vec![
            if port == 0 {
                address.to_string()
            } else {
                format!("{address}:{port}")
            },
            h.health_status.eds_health_status.clone(),
            if h.health_status.failed_outlier_check {
                "FAILED".into()
            } else {
                "OK".into()
            },
            cluster.to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_flag_values() {
        assert_eq!(parse_status("healthy").unwrap(), "HEALTHY");
        assert!(
            parse_status("sick")
                .unwrap_err()
                .contains("healthy, unhealthy")
        );
    }

    #[test]
    fn rows_sorted_by_address_text_then_port() {
        // Seed 003: `10.240.2.112` sorts before `10.240.2.40`.
        let c = Clusters::from_json(
            "t",
            r#"{"clusterStatuses":[{"name":"outbound|9080||reviews.default.svc.cluster.local","hostStatuses":[
              {"address":{"socketAddress":{"address":"10.240.2.74","portValue":9080}},"healthStatus":{"edsHealthStatus":"HEALTHY"}},
              {"address":{"socketAddress":{"address":"10.240.2.40","portValue":9080}},"healthStatus":{"edsHealthStatus":"HEALTHY"}},
              {"address":{"socketAddress":{"address":"10.240.2.112","portValue":9080}},"healthStatus":{"edsHealthStatus":"HEALTHY","failedOutlierCheck":true}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            table(&c, &EndpointFilter::default()).render(),
            "ENDPOINT              STATUS      OUTLIER CHECK     CLUSTER\n\
             10.240.2.112:9080     HEALTHY     FAILED            outbound|9080||reviews.default.svc.cluster.local\n\
             10.240.2.40:9080      HEALTHY     OK                outbound|9080||reviews.default.svc.cluster.local\n\
             10.240.2.74:9080      HEALTHY     OK                outbound|9080||reviews.default.svc.cluster.local\n"
        );
        let only = EndpointFilter {
            address: Some("10.240.2.40".into()),
            status: Some("HEALTHY".into()),
            ..Default::default()
        };
        assert_eq!(table(&c, &only).len(), 2);
    }
}
