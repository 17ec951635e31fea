//! The sidecar's own counters (TCP, listeners, clusters, configuration reloads), in one
//! Prometheus registry shared with the HTTP metrics.
//!
//! Names follow Envoy's Prometheus export (`envoy_cluster_upstream_cx_total{cluster_name=...}`,
//! `envoy_listener_downstream_cx_total{listener=...}`), which is what Istio's `/stats/prometheus`
//! shows for them; Istio's own `istio_*` metrics are registered by the HTTP side
//! (`crate::metrics`) into the same [`Registry`] (see [`Metrics::register`]).
//!
//! Hot paths never touch a family's map: a cluster or listener fetches its handles
//! ([`ClusterStats`], [`ListenerStats`]) once, when a configuration is compiled, and then only
//! increments atomics. A cluster or listener that keeps its name across configurations keeps
//! its counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `{cluster_name="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The cluster's name.
    pub cluster_name: String,
}

/// `{listener="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener's name (`virtualOutbound`, `0.0.0.0_9080`).
    pub listener: String,
}

/// `{listener="...", reason="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The listener's name.
    pub listener: String,
    /// Why the connection was closed without being proxied.
    pub reason: String,
}

/// `{http_conn_manager_prefix="..."}`: an HTTP connection manager's `statPrefix`, as Envoy's tag
/// for `http.<stat_prefix>.*` statistics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpPrefixLabels {
    /// The connection manager's `statPrefix` (`inbound_0.0.0.0_9080`).
    pub http_conn_manager_prefix: String,
}

/// `{result="applied"|"rejected"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied` or `rejected`.
    pub result: String,
}

/// Why a connection was closed without being proxied (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its original destination was the listener itself (a loop).
    Loop,
    /// No filter chain matched and there is no default chain.
    NoFilterChain,
    /// The cluster is `BlackHoleCluster` or has no healthy endpoint.
    NoHealthyUpstream,
    /// Connecting to the upstream failed or timed out.
    UpstreamConnectFailed,
    /// The cluster's `maxConnections` connections are open (Envoy's `upstream_cx_overflow`).
    UpstreamOverflow,
    /// No configuration has the listener (for example no `virtualOutbound`).
    NoListener,
    /// The original destination could not be read.
    NoOriginalDst,
    /// The chain terminates mutual TLS and the handshake failed (no certificate here, the
    /// client's refused, timeout).
    TlsHandshake,
    /// An AuthorizationPolicy denied the TCP connection (Envoy's network RBAC filter).
    RbacDenied,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Loop => "loop",
            Refusal::NoFilterChain => "no_filter_chain",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::UpstreamConnectFailed => "upstream_connect_failed",
            Refusal::UpstreamOverflow => "upstream_overflow",
            Refusal::NoListener => "no_listener",
            Refusal::NoOriginalDst => "no_original_dst",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::RbacDenied => "rbac_access_denied",
        }
    }
}

/// The families, registered once.
#[derive(Clone, Default)]
pub struct Metrics {
    cluster_cx_total: Family<ClusterLabels, Counter>,
    cluster_cx_active: Family<ClusterLabels, Gauge>,
    cluster_cx_connect_fail: Family<ClusterLabels, Counter>,
    cluster_cx_connect_timeout: Family<ClusterLabels, Counter>,
    cluster_cx_none_healthy: Family<ClusterLabels, Counter>,
    cluster_cx_rx_bytes: Family<ClusterLabels, Counter>,
    cluster_cx_tx_bytes: Family<ClusterLabels, Counter>,
    cluster_cx_idle_timeout: Family<ClusterLabels, Counter>,
    cluster_outlier_ejections: Family<ClusterLabels, Counter>,
    cluster_rq_overflow: Family<ClusterLabels, Counter>,
    cluster_rq_retry_overflow: Family<ClusterLabels, Counter>,
    cluster_update_success: Family<ClusterLabels, Counter>,
    cluster_update_failure: Family<ClusterLabels, Counter>,
    listener_cx_total: Family<ListenerLabels, Counter>,
    listener_cx_active: Family<ListenerLabels, Gauge>,
    listener_cx_rx_bytes: Family<ListenerLabels, Counter>,
    listener_cx_tx_bytes: Family<ListenerLabels, Counter>,
    listener_refused: Family<RefusedLabels, Counter>,
    listener_bind_failures: Family<ListenerLabels, Counter>,
    http_rbac: [Family<HttpPrefixLabels, Counter>; 4],
    tcp_rbac: RbacStats,
    config_reloads: Family<ReloadLabels, Counter>,
    config_rejected: Gauge,
    config_api_live: Gauge,
}

/// Handles of one cluster's counters.
#[derive(Clone, Debug, Default)]
pub struct ClusterStats {
    /// Upstream connections opened.
    pub cx_total: Counter,
    /// Upstream connections open now.
    pub cx_active: Gauge,
    /// Connection attempts that failed (refused, unreachable, timed out).
    pub cx_connect_fail: Counter,
    /// Connection attempts that timed out (`connectTimeout`).
    pub cx_connect_timeout: Counter,
    /// Connections that found no healthy endpoint.
    pub cx_none_healthy: Counter,
    /// Bytes received from upstreams.
    pub cx_rx_bytes: Counter,
    /// Bytes sent to upstreams.
    pub cx_tx_bytes: Counter,
    /// TCP proxy connections closed by `idleTimeout`.
    pub cx_idle_timeout: Counter,
    /// Endpoints ejected by outlier detection.
    pub outlier_ejections: Counter,
    /// HTTP requests refused by the connection-pool limits.
    pub rq_overflow: Counter,
    /// Retries not attempted because `maxRetries` retries were in progress.
    pub rq_retry_overflow: Counter,
    /// DNS clusters: resolutions that answered (Envoy's `update_success`).
    pub update_success: Counter,
    /// DNS clusters: resolutions that failed, the last good addresses kept (Envoy's
    /// `update_failure`).
    pub update_failure: Counter,
}

/// Handles of one listener's counters.
#[derive(Clone, Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted (bound listeners) or handed over (virtual listeners).
    pub cx_total: Counter,
    /// Connections open now.
    pub cx_active: Gauge,
    /// Bytes received from downstream clients.
    pub cx_rx_bytes: Counter,
    /// Bytes sent to downstream clients.
    pub cx_tx_bytes: Counter,
}

/// Handles of Envoy's RBAC filter counters for one connection manager (`http.<prefix>.rbac.*`)
/// or for the TCP chains (`tcp.rbac.*`, Istio's network filter prefix): `allowed`/`denied`
/// counted by each CUSTOM, DENY and ALLOW stage that ran, `logged`/`not_logged` by the AUDIT
/// stage.
#[derive(Clone, Debug, Default)]
pub struct RbacStats {
    /// Let through by a stage.
    pub allowed: Counter,
    /// Denied by a stage.
    pub denied: Counter,
    /// Matched an AUDIT policy.
    pub logged: Counter,
    /// Matched no AUDIT policy.
    pub not_logged: Counter,
}

/// Envoy's RBAC counter names and their help, in [`RbacStats`]' field order.
const RBAC_COUNTERS: [(&str, &str); 4] = [
    (
        "allowed",
        "Requests or connections an RBAC filter let through",
    ),
    ("denied", "Requests or connections an RBAC filter denied"),
    ("logged", "Requests or connections an AUDIT policy matched"),
    (
        "not_logged",
        "Requests or connections no AUDIT policy matched",
    ),
];

impl RbacStats {
    /// Adds one decision's counts.
    pub fn record(&self, allowed: u8, denied: u8, logged: u8, not_logged: u8) {
        for (c, n) in [
            (&self.allowed, allowed),
            (&self.denied, denied),
            (&self.logged, logged),
            (&self.not_logged, not_logged),
        ] {
            if n > 0 {
                c.inc_by(u64::from(n));
            }
        }
    }
}

impl Metrics {
    /// Registers the families into `registry`. Call once at start, before the registry is
    /// shared for scraping; the HTTP side registers its own into the same registry.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let cluster = [
            (
                "envoy_cluster_upstream_cx",
                "Upstream connections opened",
                &m.cluster_cx_total,
            ),
            (
                "envoy_cluster_upstream_cx_connect_fail",
                "Upstream connection failures",
                &m.cluster_cx_connect_fail,
            ),
            (
                "envoy_cluster_upstream_cx_connect_timeout",
                "Upstream connection timeouts",
                &m.cluster_cx_connect_timeout,
            ),
            (
                "envoy_cluster_upstream_cx_none_healthy",
                "Connections that found no healthy upstream",
                &m.cluster_cx_none_healthy,
            ),
            (
                "envoy_cluster_upstream_cx_rx_bytes",
                "Bytes received from upstreams",
                &m.cluster_cx_rx_bytes,
            ),
            (
                "envoy_cluster_upstream_cx_tx_bytes",
                "Bytes sent to upstreams",
                &m.cluster_cx_tx_bytes,
            ),
            (
                "envoy_cluster_upstream_cx_idle_timeout",
                "TCP proxy connections closed for idleness",
                &m.cluster_cx_idle_timeout,
            ),
            (
                "envoy_cluster_outlier_detection_ejections_enforced",
                "Endpoints ejected by outlier detection",
                &m.cluster_outlier_ejections,
            ),
            (
                "envoy_cluster_upstream_rq_pending_overflow",
                "Requests refused by the connection-pool limits (503, x-envoy-overloaded)",
                &m.cluster_rq_overflow,
            ),
            (
                "envoy_cluster_upstream_rq_retry_overflow",
                "Retries not attempted: the cluster's maxRetries retries were in progress",
                &m.cluster_rq_retry_overflow,
            ),
            (
                "envoy_cluster_update_success",
                "DNS clusters: resolutions answered",
                &m.cluster_update_success,
            ),
            (
                "envoy_cluster_update_failure",
                "DNS clusters: resolutions failed (the last good addresses are kept)",
                &m.cluster_update_failure,
            ),
        ];
        for (name, help, family) in cluster {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "envoy_cluster_upstream_cx_active",
            "Upstream connections open",
            m.cluster_cx_active.clone(),
        );
        let listener = [
            (
                "envoy_listener_downstream_cx",
                "Downstream connections",
                &m.listener_cx_total,
            ),
            (
                "envoy_listener_downstream_cx_rx_bytes",
                "Bytes received from downstream",
                &m.listener_cx_rx_bytes,
            ),
            (
                "envoy_listener_downstream_cx_tx_bytes",
                "Bytes sent to downstream",
                &m.listener_cx_tx_bytes,
            ),
        ];
        for (name, help, family) in listener {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "envoy_listener_downstream_cx_active",
            "Downstream connections open",
            m.listener_cx_active.clone(),
        );
        let tcp = &m.tcp_rbac;
        let tcp = [&tcp.allowed, &tcp.denied, &tcp.logged, &tcp.not_logged];
        for (i, (name, help)) in RBAC_COUNTERS.into_iter().enumerate() {
            registry.register(
                format!("envoy_http_rbac_{name}"),
                help,
                m.http_rbac[i].clone(),
            );
            registry.register(format!("envoy_tcp_rbac_{name}"), help, tcp[i].clone());
        }
        registry.register(
            "rustmesh_listener_downstream_cx_refused",
            "Connections closed without being proxied, by reason",
            m.listener_refused.clone(),
        );
        registry.register(
            "rustmesh_listener_bind_failures",
            "Listeners a router could not bind (port in use, permission), by listener; retried with the next configuration",
            m.listener_bind_failures.clone(),
        );
        registry.register(
            "rustmesh_config_reloads",
            "Configuration documents applied or rejected",
            m.config_reloads.clone(),
        );
        registry.register(
            "rustmesh_config_rejected",
            "1 while the newest configuration document is refused and an older one serves",
            m.config_rejected.clone(),
        );
        registry.register(
            "rustmesh_config_api_live",
            "1 while the configuration is followed through the Kubernetes API, 0 while the mounted copy is",
            m.config_api_live.clone(),
        );
        m
    }

    /// The handles of a cluster's counters.
    pub fn cluster(&self, name: &str) -> ClusterStats {
        let l = ClusterLabels {
            cluster_name: name.to_string(),
        };
        ClusterStats {
            cx_total: self.cluster_cx_total.get_or_create_owned(&l),
            cx_active: self.cluster_cx_active.get_or_create_owned(&l),
            cx_connect_fail: self.cluster_cx_connect_fail.get_or_create_owned(&l),
            cx_connect_timeout: self.cluster_cx_connect_timeout.get_or_create_owned(&l),
            cx_none_healthy: self.cluster_cx_none_healthy.get_or_create_owned(&l),
            cx_rx_bytes: self.cluster_cx_rx_bytes.get_or_create_owned(&l),
            cx_tx_bytes: self.cluster_cx_tx_bytes.get_or_create_owned(&l),
            cx_idle_timeout: self.cluster_cx_idle_timeout.get_or_create_owned(&l),
            outlier_ejections: self.cluster_outlier_ejections.get_or_create_owned(&l),
            rq_overflow: self.cluster_rq_overflow.get_or_create_owned(&l),
            rq_retry_overflow: self.cluster_rq_retry_overflow.get_or_create_owned(&l),
            update_success: self.cluster_update_success.get_or_create_owned(&l),
            update_failure: self.cluster_update_failure.get_or_create_owned(&l),
        }
    }

    /// The handles of a listener's counters.
    pub fn listener(&self, name: &str) -> ListenerStats {
        let l = ListenerLabels {
            listener: name.to_string(),
        };
        ListenerStats {
            cx_total: self.listener_cx_total.get_or_create_owned(&l),
            cx_active: self.listener_cx_active.get_or_create_owned(&l),
            cx_rx_bytes: self.listener_cx_rx_bytes.get_or_create_owned(&l),
            cx_tx_bytes: self.listener_cx_tx_bytes.get_or_create_owned(&l),
        }
    }

    /// The RBAC counters of the HTTP connection manager with `stat_prefix` (looked up once per
    /// connection).
    pub fn rbac_http(&self, stat_prefix: &str) -> RbacStats {
        let l = HttpPrefixLabels {
            http_conn_manager_prefix: stat_prefix.to_string(),
        };
        let [allowed, denied, logged, not_logged] =
            self.http_rbac.each_ref().map(|f| f.get_or_create_owned(&l));
        RbacStats {
            allowed,
            denied,
            logged,
            not_logged,
        }
    }

    /// The RBAC counters of the TCP chains.
    pub fn rbac_tcp(&self) -> RbacStats {
        self.tcp_rbac.clone()
    }

    /// Counts a connection closed without being proxied. Off the hot path (a refusal).
    pub fn refused(&self, listener: &str, reason: Refusal) {
        self.listener_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason: reason.as_str().to_string(),
            })
            .inc();
    }

    /// Counts a listener a router could not bind.
    pub fn bind_failed(&self, listener: &str) {
        self.listener_bind_failures
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// How many times binding `listener` failed so far.
    pub fn bind_failures(&self, listener: &str) -> u64 {
        self.listener_bind_failures
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .get()
    }

    /// How many connections `listener` refused for `reason` so far.
    pub fn refused_count(&self, listener: &str, reason: Refusal) -> u64 {
        self.listener_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason: reason.as_str().to_string(),
            })
            .get()
    }

    /// Records a configuration reload.
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ReloadLabels {
                result: result.to_string(),
            })
            .inc();
        self.config_rejected.set(i64::from(!applied));
    }

    /// Whether the configuration is followed through the API (else the mounted copy).
    pub fn config_api_live(&self, live: bool) {
        self.config_api_live.set(i64::from(live));
    }

    /// 1 while the configuration is followed through the API.
    pub fn config_api_live_value(&self) -> i64 {
        self.config_api_live.get()
    }

    /// (applied, rejected) reload counts.
    pub fn config_reload_counts(&self) -> (u64, u64) {
        let get = |r: &str| {
            self.config_reloads
                .get_or_create(&ReloadLabels {
                    result: r.to_string(),
                })
                .get()
        };
        (get("applied"), get("rejected"))
    }
}

/// The registry as Prometheus text (what `/stats/prometheus` serves).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_counters_by_name_and_show_in_the_registry() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let a = m.cluster("outbound|9080||reviews.default.svc.cluster.local");
        a.cx_total.inc();
        let again = m.cluster("outbound|9080||reviews.default.svc.cluster.local");
        again.cx_total.inc();
        assert_eq!(a.cx_total.get(), 2);
        m.listener("virtualOutbound").cx_rx_bytes.inc_by(10);
        m.refused("virtualOutbound", Refusal::Loop);
        m.config_reload(false);
        m.rbac_http("inbound_0.0.0.0_9080").record(1, 1, 0, 1);
        m.rbac_http("inbound_0.0.0.0_9080").record(2, 0, 1, 0);
        m.rbac_tcp().record(0, 1, 0, 0);
        let text = encode(&registry);
        assert!(
            text.contains(
                "envoy_cluster_upstream_cx_total{cluster_name=\"outbound|9080||reviews.default.svc.cluster.local\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "envoy_listener_downstream_cx_rx_bytes_total{listener=\"virtualOutbound\"} 10"
        ));
        assert!(text.contains(
            "rustmesh_listener_downstream_cx_refused_total{listener=\"virtualOutbound\",reason=\"loop\"} 1"
        ));
        assert!(text.contains("rustmesh_config_reloads_total{result=\"rejected\"} 1"));
        assert!(text.contains("rustmesh_config_rejected 1"));
        for line in [
            "envoy_http_rbac_allowed_total{http_conn_manager_prefix=\"inbound_0.0.0.0_9080\"} 3",
            "envoy_http_rbac_denied_total{http_conn_manager_prefix=\"inbound_0.0.0.0_9080\"} 1",
            "envoy_http_rbac_logged_total{http_conn_manager_prefix=\"inbound_0.0.0.0_9080\"} 1",
            "envoy_http_rbac_not_logged_total{http_conn_manager_prefix=\"inbound_0.0.0.0_9080\"} 1",
            "envoy_tcp_rbac_denied_total 1",
            "envoy_tcp_rbac_allowed_total 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        m.config_reload(true);
        assert_eq!(m.config_reload_counts(), (1, 1));
    }
}
