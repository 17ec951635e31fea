//! Prometheus metrics (`/metrics`) and the health endpoints (`/healthz`, `/readyz`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

use crate::ca::service::CaMetrics;
use std::sync::atomic::{AtomicBool, Ordering};

type Labels = Vec<(String, String)>;

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Namespace reconciles by result (`written`, `unchanged`, `error`).
    pub reconciles: Family<Labels, Counter>,
    /// Errors by kind (`render`, `apply`, `status`, `watch`, `rbac`, `event`).
    pub errors: Family<Labels, Counter>,
    /// Seconds to build the mesh view and render one namespace's scopes.
    pub render_seconds: Histogram,
    /// Namespace renders by path (`full`, `endpoints`: only changed endpoints recomputed).
    pub renders: Family<Labels, Counter>,
    /// Compressed bytes of each scope's configuration.
    pub config_bytes: Family<Labels, Gauge>,
    /// Seconds from the first change of a batch to the ConfigMap write it caused.
    pub change_to_write_seconds: Histogram,
    /// CR status writes.
    pub status_writes: Counter,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// 1 once every watch has finished its initial list.
    pub synced: Gauge,
    /// The mesh CA's counters, under Istio's names (`citadel_server_*`, no prefix).
    pub ca: CaMetrics,
    /// Connections to the metrics port closed at accept: its connection limit was reached.
    pub connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let ca = CaMetrics::default();
        ca.register(&mut root);
        let registry = root.sub_registry_with_prefix("rustmesh_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let render_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let renders = Family::<Labels, Counter>::default();
        let config_bytes = Family::<Labels, Gauge>::default();
        let change_to_write_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let status_writes = Counter::default();
        let leader = Gauge::default();
        let synced = Gauge::default();
        registry.register(
            "reconciles",
            "Namespace reconciles by result",
            reconciles.clone(),
        );
        registry.register("errors", "Errors by kind", errors.clone());
        registry.register(
            "render_seconds",
            "Seconds to render one namespace's scopes",
            render_seconds.clone(),
        );
        registry.register(
            "renders",
            "Namespace renders by path (full, or endpoints only)",
            renders.clone(),
        );
        registry.register(
            "config_bytes",
            "Compressed bytes of each scope's configuration",
            config_bytes.clone(),
        );
        registry.register(
            "change_to_write_seconds",
            "Seconds from a watched change to the ConfigMap write it caused",
            change_to_write_seconds.clone(),
        );
        registry.register("status_writes", "CR status writes", status_writes.clone());
        registry.register(
            "leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        registry.register("synced", "1 once every watch has listed", synced.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections to the metrics port closed at accept: its connection limit was reached",
            connections_refused.clone(),
        );
        Metrics {
            registry: root,
            ca,
            reconciles,
            errors,
            render_seconds,
            renders,
            config_bytes,
            change_to_write_seconds,
            status_writes,
            leader,
            synced,
            connections_refused,
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    pub fn reconcile(&self, result: &str) {
        self.reconciles
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    pub fn render_path(&self, path: &str) {
        self.renders
            .get_or_create(&vec![("path".to_string(), path.to_string())])
            .inc();
    }

    pub fn scope_bytes(&self, namespace: &str, scope: &str, bytes: usize) {
        self.config_bytes
            .get_or_create(&vec![
                ("namespace".to_string(), namespace.to_string()),
                ("scope".to_string(), scope.to_string()),
            ])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Shared state of the HTTP endpoints.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once every watch has listed (readiness).
    pub ready: Arc<AtomicBool>,
}

/// The limits of the metrics port's connections (`/metrics`, `/healthz`, `/readyz`): 64 at once,
/// 5 s for a request head and idle, 5 min at most (`rustmesh_xds::serve::ConnLimits::OPS`).
pub const LIMITS: rustmesh_xds::serve::ConnLimits = rustmesh_xds::serve::ConnLimits::OPS;

/// Serves `app` (the [`router`]) on `listener` under [`LIMITS`] until `shutdown` resolves;
/// connections over the cap are closed at accept and counted in
/// `rustmesh_operator_connections_refused_total`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let refused = metrics.connections_refused.clone();
    let gate = rustmesh_xds::serve::Gate::new("operator metrics", LIMITS.max_connections)
        .on_refused(move || {
            refused.inc();
        });
    rustmesh_xds::serve::run_http(
        listener,
        Arc::new(gate),
        LIMITS,
        |tcp: tokio::net::TcpStream| async move { Ok(tcp) },
        hyper_util::service::TowerToHyperService::new(app),
        shutdown,
    )
    .await;
}

/// `/metrics`, `/healthz` (alive), `/readyz` (initial sync done).
pub fn router(health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the initial sync",
                    )
                }
            }),
        )
        .with_state(health)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let res = app
            .clone()
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_endpoints() {
        let health = Health {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let app = router(health.clone());
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.ready.store(true, Ordering::SeqCst);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        health.metrics.reconcile("written");
        let (status, text) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("rustmesh_operator_reconciles_total"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// Reads until the server closes `s`; whether it did within `within`.
    async fn closed_within(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .expect("an answer")
    }

    /// Issue 17 item 3: before, `axum::serve` kept every idle connection forever and had no
    /// cap, so a few thousand idle clients used up the operator's descriptors.
    #[tokio::test]
    async fn the_metrics_port_closes_connections_over_its_cap_and_idle_ones_and_keeps_answering() {
        use std::time::Duration;
        let metrics = Arc::new(Metrics::new());
        let app = router(Health {
            metrics: metrics.clone(),
            ready: Arc::new(AtomicBool::new(true)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            app,
            metrics.clone(),
            std::future::pending(),
        ));

        let extra = 16;
        let mut conns = Vec::new();
        for _ in 0..LIMITS.max_connections + extra {
            conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut closed_at_once = 0;
        for c in conns.iter_mut().rev().take(extra) {
            if closed_within(c, Duration::from_secs(3)).await {
                closed_at_once += 1;
            }
        }
        assert!(
            closed_at_once > 0,
            "no connection over the cap was closed at accept"
        );
        for (i, c) in conns.iter_mut().enumerate() {
            assert!(
                closed_within(c, Duration::from_secs(60)).await,
                "idle connection {i} still open"
            );
        }
        drop(conns);
        assert!(fetch(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let text = fetch(addr, "/metrics").await;
        assert!(
            metrics.connections_refused.get() >= closed_at_once,
            "{text}"
        );
        assert!(
            text.contains("rustmesh_operator_connections_refused_total"),
            "{text}"
        );
    }

    #[test]
    fn exposes_the_metrics_by_name() {
        let m = Metrics::new();
        m.reconcile("written");
        m.error("apply");
        m.scope_bytes("default", "default.json.gz", 1234);
        m.render_seconds.observe(0.01);
        m.change_to_write_seconds.observe(0.2);
        let text = m.render();
        for name in [
            "rustmesh_operator_reconciles_total{result=\"written\"} 1",
            "rustmesh_operator_errors_total{kind=\"apply\"} 1",
            "rustmesh_operator_config_bytes{namespace=\"default\",scope=\"default.json.gz\"} 1234",
            "rustmesh_operator_render_seconds_count 1",
            "rustmesh_operator_change_to_write_seconds_count 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
