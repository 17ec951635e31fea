//! The Telemetry policies of a scope ([`rustmesh_xds::telemetry::Telemetry`]): which policies can
//! apply to the scope's pods, with the mesh's providers. The sidecar, which knows its own
//! labels, picks among them and merges them as Istio does (`rustmesh_xds::telemetry`).
//!
//! For a scope of namespace `ns`, as Istio's `applicableTelemetries`:
//! - `mesh`: the oldest Telemetry without a selector (or with an empty `matchLabels`) in the root
//!   namespace;
//! - `namespace`: the oldest such Telemetry in `ns` (none in the root namespace itself, whose
//!   selector-less Telemetry is already `mesh`);
//! - `workload`: the Telemetries of `ns` with a selector, oldest first (creation time, then
//!   name): the sidecar takes the first that selects it. In Istio a root-namespace Telemetry with
//!   a selector selects only root-namespace workloads; so here.
//!
//! Which version: the current one when accepted; after an invalid update of a Telemetry
//! accepted before, that last accepted version; a conflicting one (a second Telemetry without
//! selector in a namespace) is left out (validation says so in its status).
//!
//! `None` when nothing would change what every sidecar does anyway: no policy, no default
//! access log provider, and a Prometheus provider among the default metrics providers.

use super::{MeshView, Scope};
use crate::index::ObjKey;
use rustmesh_api::Telemetry as Object;
use rustmesh_api::telemetry::{CustomTag as ApiTag, IstioMetric, WorkloadMode};
use rustmesh_xds::telemetry::{
    AccessLogRule, Metric, MetricsOverride, MetricsRule, Mode, Policy, ProviderKind, Telemetry,
    TracingRule,
};
use rustmesh_xds::trace::{CustomTag, TagValue};

/// The policies that can apply to the pods of `scope` with the mesh's providers; `None` when
/// they change nothing.
pub(super) fn telemetry(view: &MeshView<'_>, scope: &Scope) -> Option<Telemetry> {
    let root = view.index.mesh.root_namespace.as_str();
    let ns = scope.namespace.as_str();
    let without_selector = |objs: &[(&ObjKey, &Object)]| {
        objs.iter()
            .find(|(_, t)| t.spec.workload_labels().is_none())
            .map(|(k, t)| policy(k, t))
    };
    let root_objs = rendered(view, root);
    let mesh = without_selector(&root_objs);
    let own = if ns == root {
        root_objs
    } else {
        rendered(view, ns)
    };
    let namespace = if ns == root {
        None
    } else {
        without_selector(&own)
    };
    let workload = own
        .iter()
        .filter(|(_, t)| t.spec.workload_labels().is_some())
        .map(|(k, t)| policy(k, t))
        .collect::<Vec<_>>();
    let base = &view.index.mesh.telemetry;
    let metrics_by_default = base
        .default_providers
        .metrics
        .iter()
        .any(|n| base.providers.get(n) == Some(&ProviderKind::Prometheus));
    if mesh.is_none()
        && namespace.is_none()
        && workload.is_empty()
        && base.default_providers.access_logging.is_empty()
        && metrics_by_default
    {
        return None;
    }
    Some(Telemetry {
        mesh,
        namespace,
        workload,
        ..base.clone()
    })
}

fn rendered<'a>(view: &MeshView<'a>, ns: &str) -> Vec<(&'a ObjKey, &'a Object)> {
    super::rendered_in(view, ns)
}

fn mode(m: WorkloadMode) -> Mode {
    match m {
        WorkloadMode::ClientAndServer => Mode::ClientAndServer,
        WorkloadMode::Client => Mode::Client,
        WorkloadMode::Server => Mode::Server,
    }
}

/// `None` for `ALL_METRICS`.
fn metric(m: IstioMetric) -> Option<Metric> {
    Some(match m {
        IstioMetric::AllMetrics => return None,
        IstioMetric::RequestCount => Metric::RequestCount,
        IstioMetric::RequestDuration => Metric::RequestDuration,
        IstioMetric::RequestSize => Metric::RequestSize,
        IstioMetric::ResponseSize => Metric::ResponseSize,
        IstioMetric::TcpOpenedConnections => Metric::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections => Metric::TcpClosedConnections,
        IstioMetric::TcpSentBytes => Metric::TcpSentBytes,
        IstioMetric::TcpReceivedBytes => Metric::TcpReceivedBytes,
        IstioMetric::GrpcRequestMessages => Metric::GrpcRequestMessages,
        IstioMetric::GrpcResponseMessages => Metric::GrpcResponseMessages,
    })
}

/// A custom tag as the sidecar's tracer takes it; `None` for a source validation refuses
/// (`formatter`, none or several).
fn tag(name: &str, t: &ApiTag) -> Option<CustomTag> {
    let value = match (&t.literal, &t.environment, &t.header) {
        (Some(l), None, None) => TagValue::Literal {
            value: l.value.clone(),
        },
        (None, Some(e), None) => TagValue::Environment {
            name: e.name.clone(),
            default_value: e.default_value.clone().unwrap_or_default(),
        },
        (None, None, Some(h)) => TagValue::Header {
            name: h.name.clone(),
            default_value: h.default_value.clone().unwrap_or_default(),
        },
        _ => return None,
    };
    Some(CustomTag {
        tag: name.to_string(),
        value,
    })
}

/// A `tagOverrides` entry as the sidecar applies it: `REMOVE`, or `UPSERT` of the string
/// literal its value is (validation refused any other value).
fn tag_override(t: &rustmesh_api::telemetry::TagOverride) -> rustmesh_xds::telemetry::TagOverride {
    match t.operation.unwrap_or_default() {
        rustmesh_api::telemetry::TagOperation::Remove => rustmesh_xds::telemetry::TagOverride {
            remove: true,
            value: None,
        },
        rustmesh_api::telemetry::TagOperation::Upsert => rustmesh_xds::telemetry::TagOverride {
            remove: false,
            value: Some(
                t.value
                    .as_deref()
                    .and_then(rustmesh_xds::cel::string_literal)
                    .unwrap_or_default(),
            ),
        },
    }
}

/// One accepted Telemetry as the sidecar merges it. Validation refused what cannot be
/// rendered (custom metrics, tag overrides, filters outside rustmesh's CEL subset, formatter
/// tags, unknown providers).
pub(crate) fn policy(key: &ObjKey, t: &Object) -> Policy {
    let names = |p: &[rustmesh_api::telemetry::ProviderRef]| -> Vec<String> {
        p.iter().map(|p| p.name.clone()).collect()
    };
    let s = &t.spec;
    Policy {
        name: key.to_string(),
        selector: s.workload_labels().cloned().unwrap_or_default(),
        tracing: s
            .tracing
            .iter()
            .map(|r| TracingRule {
                mode: mode(r.mode()),
                providers: names(&r.providers),
                random_sampling_percentage: r.random_sampling_percentage,
                disable_span_reporting: r.disable_span_reporting,
                custom_tags: (!r.custom_tags.is_empty()).then(|| {
                    r.custom_tags
                        .iter()
                        .filter_map(|(n, t)| tag(n, t))
                        .collect()
                }),
                use_request_id_for_trace_sampling: r.use_request_id_for_trace_sampling,
            })
            .collect(),
        access_logging: s
            .access_logging
            .iter()
            .map(|r| AccessLogRule {
                mode: mode(r.mode()),
                providers: names(&r.providers),
                disabled: r.disabled,
                filter: r.filter.as_ref().map(|f| f.expression.clone()),
            })
            .collect(),
        metrics: s
            .metrics
            .iter()
            .map(|m| MetricsRule {
                providers: names(&m.providers),
                overrides: m
                    .overrides
                    .iter()
                    .filter_map(|o| {
                        Some(MetricsOverride {
                            metric: metric(o.metric()?),
                            mode: mode(o.mode()),
                            disabled: o.disabled,
                            tag_overrides: o
                                .tag_overrides
                                .iter()
                                .map(|(name, t)| (name.clone(), tag_override(t)))
                                .collect(),
                        })
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configmap::render;
    use crate::fixtures::{bookinfo, istio, verdict};
    use crate::index::{Index, Kind};
    use rustmesh_xds::telemetry::Side;
    use std::collections::BTreeMap;

    fn tel(ns: &str, name: &str, created: &str, spec: &str) -> String {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\", generation: 1}}\nspec:\n{spec}---\n"
        )
    }

    fn rendered(index: &Index) -> Option<Telemetry> {
        let config = render(index, &Scope::namespace("default"));
        config.validate().expect("renders a valid configuration");
        config.telemetry
    }

    fn app(a: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), a.to_string())])
    }

    #[test]
    fn without_telemetry_nothing_is_rendered() {
        assert_eq!(rendered(&bookinfo()), None);
    }

    #[test]
    fn istios_documented_examples_reach_the_sidecars_that_they_select() {
        let mut index = bookinfo();
        let mut yaml = String::new();
        yaml += &tel(
            "istio-system",
            "mesh-default",
            "2024-01-01T00:00:00Z",
            "  accessLogging:\n  - providers:\n    - name: envoy\n",
        );
        yaml += &tel(
            "default",
            "reviews-quiet",
            "2024-01-02T00:00:00Z",
            "  selector: {matchLabels: {app: reviews}}\n  accessLogging:\n  - disabled: true\n  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: CLIENT}\n      disabled: true\n",
        );
        istio(&mut index, &yaml);
        let t = rendered(&index).expect("rendered");
        assert_eq!(t.mesh.as_ref().unwrap().name, "istio-system/mesh-default");
        assert_eq!(t.workload.len(), 1);
        assert!(t.providers.contains_key("envoy"));

        let productpage = t.effective(&app("productpage"));
        let logs = productpage.server.access_logs.expect("logged");
        assert_eq!(logs[0].path, "/dev/stdout");
        let reviews = t.effective(&app("reviews"));
        assert_eq!(reviews.server.access_logs, None);
        assert_eq!(reviews.client.disabled_metrics, [Metric::RequestCount]);
        assert!(reviews.server.disabled_metrics.is_empty());
        assert!(Mode::Client.covers(Side::Client));
    }

    #[test]
    fn unknown_or_mistyped_providers_are_refused_naming_the_field() {
        let mut index = bookinfo();
        istio(
            &mut index,
            &tel(
                "default",
                "bad",
                "2024-01-01T00:00:00Z",
                "  tracing:\n  - providers:\n    - name: envoy\n  accessLogging:\n  - providers:\n    - name: splunk\n",
            ),
        );
        let v = verdict(&index, Kind::Telemetry, "default", "bad");
        assert!(!v.accepted);
        let fields: Vec<&str> = v.findings.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.tracing[0].providers[0].name",
                "spec.accessLogging[0].providers[0].name"
            ]
        );
        assert!(
            v.findings[0]
                .message
                .contains("access log provider, not a tracing")
        );
        assert!(v.findings[1].message.contains("\"splunk\" is not one of"));
        assert_eq!(rendered(&index), None);
    }

    #[test]
    fn a_second_namespace_wide_telemetry_conflicts_and_the_oldest_applies() {
        let mut index = bookinfo();
        let mut yaml = tel(
            "default",
            "older",
            "2024-01-01T00:00:00Z",
            "  tracing:\n  - randomSamplingPercentage: 10\n",
        );
        yaml += &tel(
            "default",
            "newer",
            "2024-02-01T00:00:00Z",
            "  tracing:\n  - randomSamplingPercentage: 50\n",
        );
        istio(&mut index, &yaml);
        let v = verdict(&index, Kind::Telemetry, "default", "newer");
        assert_eq!((v.accepted, v.reason), (false, "Conflict"));
        assert!(verdict(&index, Kind::Telemetry, "default", "older").accepted);
        let t = rendered(&index).unwrap();
        assert_eq!(t.namespace.unwrap().name, "default/older");
    }
}
