//! Prometheus metrics: reviews by result and review latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `rustmesh_webhook_reviews_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `injected`, `skipped`, `invalid` (allowed with a warning), `refused` (denied: invalid
    /// traffic annotations), `bad_request` (400), `too_large` (413), `timeout` (408),
    /// `unavailable` (503: no valid settings yet).
    pub result: String,
}

/// Labels of `rustmesh_webhook_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    /// `https` or `ops`.
    pub port: String,
}

/// The webhook's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<ResultLabel, Counter>,
    validations: Family<ResultLabel, Counter>,
    duration: Histogram,
    refused: Family<PortLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rustmesh_webhook");
        let reviews = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reviews",
            "Admission reviews answered, by result",
            reviews.clone(),
        );
        let validations = Family::<ResultLabel, Counter>::default();
        registry.register(
            "validations",
            "Validating admission reviews of Istio objects answered (POST /validate), by result: \
             allowed, denied, skipped (not validated), bad_request, too_large, timeout, panic",
            validations.clone(),
        );
        // 100 µs .. ~1.6 s.
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register(
            "review_duration_seconds",
            "Time to answer an admission review, from body read to response",
            duration.clone(),
        );
        let refused = Family::<PortLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed as they were accepted because the port's connection limit was reached",
            refused.clone(),
        );
        Metrics {
            registry,
            reviews,
            validations,
            duration,
            refused,
        }
    }

    /// Counts one connection to `port` (`https`, `ops`) refused at the connection limit.
    pub fn refused(&self, port: &str) {
        self.refused
            .get_or_create(&PortLabel {
                port: port.to_owned(),
            })
            .inc();
    }

    /// Counts one review with this result.
    pub fn count(&self, result: &str) {
        self.reviews
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts one validation review with this result.
    pub fn count_validation(&self, result: &str) {
        self.validations
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Records a review's latency.
    pub fn observe(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::new();
        m.count("injected");
        m.count("injected");
        m.count("bad_request");
        m.observe(0.002);
        m.count_validation("denied");
        let text = m.encode();
        assert!(
            text.contains(r#"rustmesh_webhook_reviews_total{result="injected"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"rustmesh_webhook_reviews_total{result="bad_request"} 1"#));
        assert!(text.contains("rustmesh_webhook_review_duration_seconds_count 1"));
        assert!(text.contains(r#"rustmesh_webhook_validations_total{result="denied"} 1"#));
    }
}
