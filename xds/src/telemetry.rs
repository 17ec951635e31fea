//! Istio's Telemetry API (`telemetry.istio.io` Telemetry) as a proxy receives it: the policies
//! that can apply to a scope's pods with the mesh's providers they name, and the pure
//! [`Telemetry::effective`] that a sidecar applies to its own labels, then [`Effective::apply`]
//! onto its listeners before compiling them.
//!
//! Why the sidecar picks: one configuration serves every pod of a scope, while a Telemetry may
//! select some of those pods by label (as for PeerAuthentication, [`crate::peer_authn`]). The
//! operator lists the mesh-wide policy (root namespace, no selector), the namespace-wide one and
//! the namespace's selector policies (oldest first; the first matching one applies, as in
//! Istio), each already checked, with every provider the mesh defines.
//!
//! The merge is Istio's (`pilot/pkg/model/telemetry.go`), level by level (mesh, namespace,
//! workload), each side (`CLIENT` = the outbound listeners, `SERVER` = the inbound one) apart:
//! - **Tracing**: the base is the first default tracing provider with the mesh's sampling;
//!   each rule whose `match.mode` covers the side replaces what it sets (providers: its first;
//!   `disableSpanReporting`, `randomSamplingPercentage`, `useRequestIdForTraceSampling`, and
//!   `customTags` as a whole). No provider at the end: no tracing on that side.
//!   `disableSpanReporting`: the context is propagated, no span is reported (Istio's documented
//!   behaviour). When no tracing rule applies to the pod at all, the listeners keep the mesh's
//!   legacy settings (`enableTracing` with the default provider): rustmesh's decision, so that
//!   `enableTracing: false` still means no tracing for a mesh without Telemetry tracing.
//! - **Access logging**: the providers in scope are the last level's that names some (else the
//!   default access log providers); each rule covering the side adds its providers (or its
//!   parent's when it names none), `disabled: true` removes them. An empty result (nothing
//!   configured, or everything disabled) leaves the mesh's `accessLogFile` in place, exactly as
//!   Istio falls back to it.
//! - **Metrics**: per Prometheus provider in scope (last level naming providers, else the
//!   defaults), overrides apply in order: `ALL_METRICS` disabled drops the provider, anything
//!   after re-enables it; otherwise each matched metric's `disabled` is the last one set. A
//!   metric is recorded on a side when some Prometheus provider in scope keeps it; with no
//!   Prometheus provider in scope nothing is recorded.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::access_log::AccessLog;
use crate::listener::{Listener, NetworkFilter, TrafficDirection};
use crate::trace::{CustomTag, Provider, Tracing};

/// `WorkloadMode`: which side of the workload's traffic a rule covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    #[default]
    ClientAndServer,
    /// Outbound: the workload as a client.
    Client,
    /// Inbound: the workload as a server.
    Server,
}

impl Mode {
    fn is_default(&self) -> bool {
        *self == Mode::ClientAndServer
    }

    /// Whether a rule with this mode covers `side`.
    pub fn covers(self, side: Side) -> bool {
        match self {
            Mode::ClientAndServer => true,
            Mode::Client => side == Side::Client,
            Mode::Server => side == Side::Server,
        }
    }
}

/// One side of a workload's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Outbound listeners (`reporter="source"`).
    Client,
    /// The inbound listener (`reporter="destination"`).
    Server,
}

const SIDES: [Side; 2] = [Side::Client, Side::Server];

/// Istio's standard metrics (`MetricSelector.IstioMetric`, without `ALL_METRICS`, which a
/// selector writes as no metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Metric {
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total` (rustmesh does not count gRPC messages).
    GrpcRequestMessages,
    /// `istio_response_messages_total` (rustmesh does not count gRPC messages).
    GrpcResponseMessages,
}

impl Metric {
    /// Every metric, in Istio's order.
    pub const ALL: [Metric; 10] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
        Metric::TcpOpenedConnections,
        Metric::TcpClosedConnections,
        Metric::TcpSentBytes,
        Metric::TcpReceivedBytes,
        Metric::GrpcRequestMessages,
        Metric::GrpcResponseMessages,
    ];
}

/// A provider of the mesh (`extensionProviders`, with Istio's built-in `envoy` and
/// `prometheus`), as the operator resolved it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ProviderKind {
    /// `zipkin` or `opentelemetry`.
    Tracing(Provider),
    /// `envoyFileAccessLog`.
    AccessLog(AccessLog),
    /// `prometheus`: the sidecar's Istio metrics.
    Prometheus,
}

impl ProviderKind {
    fn kind(&self) -> &'static str {
        match self {
            ProviderKind::Tracing(_) => "a tracing provider",
            ProviderKind::AccessLog(_) => "an access log provider",
            ProviderKind::Prometheus => "a metrics provider",
        }
    }
}

/// `meshConfig.defaultProviders`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultProviders {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
}

/// The Telemetry policies that can apply to a scope's pods, and the providers they name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    /// The mesh's providers by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, ProviderKind>,
    #[serde(default)]
    pub default_providers: DefaultProviders,
    /// The mesh's sampling percentage, for a tracing rule that sets none.
    #[serde(default)]
    pub default_sampling: f64,
    /// The mesh-wide policy (root namespace, no selector; the oldest if several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<Policy>,
    /// The namespace-wide policy (no selector; the oldest if several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Policy>,
    /// The namespace's policies with a selector, oldest first: the first whose selector matches
    /// the pod's labels applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload: Vec<Policy>,
}

// `defaultSampling` and rules' percentages are never NaN in a checked configuration.
impl Eq for Telemetry {}

/// One Telemetry, as far as a sidecar needs it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// `<namespace>/<name>`, for logs and `/config_dump`.
    pub name: String,
    /// `selector.matchLabels` (workload policies only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<TracingRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricsRule>,
}

/// One `tracing` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingRule {
    #[serde(default, skip_serializing_if = "Mode::is_default")]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    /// `customTags`, when set (replaces the parent's as a whole, as in Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_tags: Option<Vec<CustomTag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
}

/// One `accessLogging` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogRule {
    #[serde(default, skip_serializing_if = "Mode::is_default")]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// `filter.expression` (the CEL subset of [`crate::cel`]): which requests the rule's
    /// providers log on the sides it covers; a later rule covering a provider replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// One `metrics` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverride>,
}

/// One `metrics[].overrides` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverride {
    /// `match.metric`; none: `ALL_METRICS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    #[serde(default, skip_serializing_if = "Mode::is_default")]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// `tagOverrides`: label name -> what to do with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// One `tagOverrides` entry as the sidecar applies it: remove the label, or set it to a value
/// (Istio's `UPSERT` of a CEL string literal, which the operator has unquoted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Label edits per metric (Telemetry `tagOverrides`, merged).
pub type MetricTags = BTreeMap<Metric, BTreeMap<String, TagOverride>>;

/// Whether `name` is a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed).
pub fn is_label_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !name.starts_with("__")
}

/// Why a [`Telemetry`] is refused; each message names the policy and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    #[error("{policy}: {field}: provider {name:?} is not one of the mesh's extension providers")]
    UnknownProvider {
        policy: String,
        field: String,
        name: String,
    },
    #[error("{policy}: {field}: provider {name:?} is {is}, not {wanted}")]
    WrongKind {
        policy: String,
        field: String,
        name: String,
        is: &'static str,
        wanted: &'static str,
    },
    #[error("{policy}: {field}: {value} is not a percentage between 0 and 100")]
    Sampling {
        policy: String,
        field: String,
        value: String,
    },
    #[error("provider {name:?}: {message}")]
    Provider { name: String, message: String },
    #[error("{policy}: {field}: {message}")]
    Filter {
        policy: String,
        field: String,
        message: String,
    },
    #[error("defaultProviders.{field}: {message}")]
    Default {
        field: &'static str,
        message: String,
    },
}

/// What the Telemetry policies make of one side of a workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SideTelemetry {
    /// `None`: no tracing rule applies, the listeners keep the mesh's settings; `Some(None)`:
    /// no tracing on this side.
    pub tracing: Option<Option<Tracing>>,
    /// `None`: the listeners keep the mesh's access log (`accessLogFile`).
    pub access_logs: Option<Vec<AccessLog>>,
    /// The metrics not recorded on this side, sorted.
    pub disabled_metrics: Vec<Metric>,
    /// The label edits of the metrics recorded on this side.
    pub tag_overrides: MetricTags,
}

/// What the Telemetry policies make of a workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effective {
    /// The policies that applied, mesh first (`<namespace>/<name>`).
    pub policies: Vec<String>,
    pub client: SideTelemetry,
    pub server: SideTelemetry,
}

impl Policy {
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

impl Telemetry {
    /// The policies that apply to a pod with `labels`: the mesh's, the namespace's, and the
    /// first workload policy selecting it, in that order.
    pub fn applicable(&self, labels: &BTreeMap<String, String>) -> Vec<&Policy> {
        let mut out: Vec<&Policy> = self.mesh.iter().chain(self.namespace.iter()).collect();
        if let Some(w) = self
            .workload
            .iter()
            .find(|p| !p.selector.is_empty() && p.selects(labels))
        {
            out.push(w);
        }
        out
    }

    /// Checks every provider and rule (the operator before writing, the proxy before
    /// serving): every provider named exists and is of the right kind, percentages are
    /// percentages, tracing providers are usable.
    pub fn check(&self) -> Result<(), TelemetryError> {
        for (name, p) in &self.providers {
            let message = match p {
                ProviderKind::Tracing(t) => Tracing {
                    provider: t.clone(),
                    random_sampling: 0.0,
                    custom_tags: Vec::new(),
                    max_path_tag_length: crate::trace::DEFAULT_MAX_PATH_TAG_LENGTH,
                    disable_span_reporting: false,
                    use_request_id_for_sampling: true,
                }
                .check()
                .err()
                .map(|e| e.to_string()),
                ProviderKind::AccessLog(a) => a.compile().err().map(|e| e.to_string()),
                ProviderKind::Prometheus => None,
            };
            if let Some(message) = message {
                return Err(TelemetryError::Provider {
                    name: name.clone(),
                    message,
                });
            }
        }
        if !(0.0..=100.0).contains(&self.default_sampling) {
            return Err(TelemetryError::Default {
                field: "sampling",
                message: format!("{} is not a percentage", self.default_sampling),
            });
        }
        let d = &self.default_providers;
        for (field, names, wanted) in [
            ("tracing", &d.tracing, Want::Tracing),
            ("accessLogging", &d.access_logging, Want::AccessLog),
            ("metrics", &d.metrics, Want::Metrics),
        ] {
            for n in names {
                self.provider(n, wanted)
                    .map_err(|e| TelemetryError::Default {
                        field,
                        message: e.message(),
                    })?;
            }
        }
        for p in self
            .mesh
            .iter()
            .chain(self.namespace.iter())
            .chain(self.workload.iter())
        {
            self.check_policy(p)?;
        }
        Ok(())
    }

    fn check_policy(&self, p: &Policy) -> Result<(), TelemetryError> {
        let named = |field: String, name: &str, wanted: Want| {
            self.provider(name, wanted)
                .map_err(|e| e.into_error(&p.name, field))
        };
        for (i, t) in p.tracing.iter().enumerate() {
            for (j, n) in t.providers.iter().enumerate() {
                named(
                    format!("tracing[{i}].providers[{j}].name"),
                    n,
                    Want::Tracing,
                )?;
            }
            if let Some(s) = t.random_sampling_percentage
                && !(0.0..=100.0).contains(&s)
            {
                return Err(TelemetryError::Sampling {
                    policy: p.name.clone(),
                    field: format!("tracing[{i}].randomSamplingPercentage"),
                    value: s.to_string(),
                });
            }
        }
        for (i, a) in p.access_logging.iter().enumerate() {
            if let Some(f) = &a.filter
                && let Err(e) = crate::cel::Filter::compile(f)
            {
                return Err(TelemetryError::Filter {
                    policy: p.name.clone(),
                    field: format!("accessLogging[{i}].filter.expression"),
                    message: e.to_string(),
                });
            }
            for (j, n) in a.providers.iter().enumerate() {
                named(
                    format!("accessLogging[{i}].providers[{j}].name"),
                    n,
                    Want::AccessLog,
                )?;
            }
        }
        for (i, m) in p.metrics.iter().enumerate() {
            for (j, o) in m.overrides.iter().enumerate() {
                for (name, t) in &o.tag_overrides {
                    let bad = if !is_label_name(name) {
                        Some("not a Prometheus label name".to_string())
                    } else if t.remove == t.value.is_some() {
                        Some("exactly one of remove and value".to_string())
                    } else {
                        None
                    };
                    if let Some(message) = bad {
                        return Err(TelemetryError::Filter {
                            policy: p.name.clone(),
                            field: format!("metrics[{i}].overrides[{j}].tagOverrides.{name}"),
                            message,
                        });
                    }
                }
            }
            for (j, n) in m.providers.iter().enumerate() {
                named(
                    format!("metrics[{i}].providers[{j}].name"),
                    n,
                    Want::Metrics,
                )?;
            }
        }
        Ok(())
    }

    fn provider(&self, name: &str, wanted: Want) -> Result<&ProviderKind, Mismatch> {
        let p = self
            .providers
            .get(name)
            .ok_or_else(|| Mismatch::Unknown(name.to_string()))?;
        let fits = matches!(
            (p, wanted),
            (ProviderKind::Tracing(_), Want::Tracing)
                | (ProviderKind::AccessLog(_), Want::AccessLog)
                | (ProviderKind::Prometheus, Want::Metrics)
        );
        if fits {
            Ok(p)
        } else {
            Err(Mismatch::Kind(name.to_string(), p.kind(), wanted.kind()))
        }
    }

    /// What the policies that select a pod with `labels` make of its two sides.
    pub fn effective(&self, labels: &BTreeMap<String, String>) -> Effective {
        let policies = self.applicable(labels);
        let mut out = Effective {
            policies: policies.iter().map(|p| p.name.clone()).collect(),
            ..Effective::default()
        };
        let tracing = self.tracing(&policies);
        let logs = self.access_logs(&policies);
        let metrics = self.metrics(&policies);
        for (side, t) in SIDES.into_iter().zip([&mut out.client, &mut out.server]) {
            t.tracing = tracing.as_ref().map(|f| f(side));
            t.access_logs = logs(side);
            (t.disabled_metrics, t.tag_overrides) = metrics(side);
        }
        out
    }

    /// Istio's `Telemetries.Tracing`, per side; `None` when no tracing rule applies.
    #[allow(clippy::type_complexity)]
    fn tracing<'p>(
        &'p self,
        policies: &[&'p Policy],
    ) -> Option<impl Fn(Side) -> Option<Tracing> + 'p> {
        let rules: Vec<&TracingRule> = policies.iter().flat_map(|p| &p.tracing).collect();
        if rules.is_empty() {
            return None;
        }
        Some(move |side: Side| {
            let mut provider: Option<&str> =
                self.default_providers.tracing.first().map(String::as_str);
            let mut disabled = false;
            let mut sampling = self.default_sampling;
            let mut tags: Vec<CustomTag> = Vec::new();
            let mut by_request_id = true;
            for r in rules.iter().filter(|r| r.mode.covers(side)) {
                if let Some(first) = r.providers.first() {
                    provider = Some(first);
                }
                if let Some(d) = r.disable_span_reporting {
                    disabled = d;
                }
                if let Some(t) = &r.custom_tags {
                    tags = t.clone();
                }
                if let Some(s) = r.random_sampling_percentage {
                    sampling = s;
                }
                if let Some(u) = r.use_request_id_for_trace_sampling {
                    by_request_id = u;
                }
            }
            let provider = match self.providers.get(provider?)? {
                ProviderKind::Tracing(p) => p.clone(),
                _ => return None,
            };
            Some(Tracing {
                provider,
                random_sampling: sampling,
                custom_tags: tags,
                max_path_tag_length: crate::trace::DEFAULT_MAX_PATH_TAG_LENGTH,
                disable_span_reporting: disabled,
                use_request_id_for_sampling: by_request_id,
            })
        })
    }

    /// Istio's `mergeLogs` per side, resolved to the logs; `None` when it yields none.
    fn access_logs<'p>(
        &'p self,
        policies: &[&'p Policy],
    ) -> impl Fn(Side) -> Option<Vec<AccessLog>> + 'p {
        let levels: Vec<&[AccessLogRule]> = policies
            .iter()
            .map(|p| p.access_logging.as_slice())
            .filter(|l| !l.is_empty())
            .collect();
        let defaults = &self.default_providers.access_logging;
        move |side: Side| {
            let mut chosen: BTreeSet<&str> = BTreeSet::new();
            let mut filters: BTreeMap<&str, Option<&str>> = BTreeMap::new();
            if levels.is_empty() {
                chosen.extend(defaults.iter().map(String::as_str));
            } else {
                let mut in_scope: Vec<&str> = defaults.iter().map(String::as_str).collect();
                for level in &levels {
                    let named: Vec<&str> = level
                        .iter()
                        .flat_map(|r| r.providers.iter().map(String::as_str))
                        .collect();
                    if !named.is_empty() {
                        in_scope = named;
                    }
                }
                let mut parent: Vec<&str> = defaults.iter().map(String::as_str).collect();
                for r in levels.iter().flat_map(|l| l.iter()) {
                    let names: Vec<&str> = if r.providers.is_empty() {
                        parent.clone()
                    } else {
                        r.providers.iter().map(String::as_str).collect()
                    };
                    parent = names.clone();
                    for n in names {
                        if !in_scope.contains(&n) || !r.mode.covers(side) {
                            continue;
                        }
                        filters.insert(n, r.filter.as_deref());
                        if r.disabled == Some(true) {
                            chosen.remove(n);
                        } else {
                            chosen.insert(n);
                        }
                    }
                }
            }
            let logs: Vec<AccessLog> = chosen
                .into_iter()
                .filter_map(|n| match self.providers.get(n) {
                    Some(ProviderKind::AccessLog(a)) => Some(AccessLog {
                        filter: filters.get(n).copied().flatten().map(str::to_string),
                        ..a.clone()
                    }),
                    _ => None,
                })
                .collect();
            (!logs.is_empty()).then_some(logs)
        }
    }

    /// Istio's `mergeMetrics`, reduced to the metrics each side does not record and the label
    /// edits of the others (those of the first Prometheus provider in scope that records it).
    fn metrics<'p>(
        &'p self,
        policies: &[&'p Policy],
    ) -> impl Fn(Side) -> (Vec<Metric>, MetricTags) + 'p {
        let rules: Vec<&MetricsRule> = policies.iter().flat_map(|p| &p.metrics).collect();
        let defaults: Vec<&str> = self
            .default_providers
            .metrics
            .iter()
            .map(String::as_str)
            .collect();
        // provider -> (side, metric) -> (disabled, tag overrides)
        type Entry = (bool, BTreeMap<String, TagOverride>);
        let mut providers: BTreeMap<&str, BTreeMap<(u8, Metric), Entry>> = BTreeMap::new();
        let mut all_off: BTreeSet<&str> = BTreeSet::new();
        if rules.is_empty() {
            for d in &defaults {
                providers.entry(d).or_default();
            }
        }
        let mut in_scope = defaults.clone();
        for r in &rules {
            if !r.providers.is_empty() {
                in_scope = r.providers.iter().map(String::as_str).collect();
            }
        }
        let mut parent = defaults.clone();
        for r in &rules {
            let names: Vec<&str> = if r.providers.is_empty() {
                parent.clone()
            } else {
                r.providers.iter().map(String::as_str).collect()
            };
            parent = names.clone();
            for n in names {
                if !in_scope.contains(&n) {
                    continue;
                }
                let entry = providers.entry(n).or_default();
                for o in &r.overrides {
                    if o.metric.is_none() && o.disabled == Some(true) {
                        all_off.insert(n);
                        continue;
                    }
                    all_off.remove(n);
                    let metrics: &[Metric] = match &o.metric {
                        Some(m) => std::slice::from_ref(m),
                        None => &Metric::ALL,
                    };
                    for side in SIDES.into_iter().filter(|s| o.mode.covers(*s)) {
                        for m in metrics {
                            let e = entry.entry((side as u8, *m)).or_default();
                            if let Some(d) = o.disabled {
                                e.0 = d;
                            }
                            for (k, v) in &o.tag_overrides {
                                e.1.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
            }
        }
        let kept: Vec<BTreeMap<(u8, Metric), Entry>> = providers
            .into_iter()
            .filter(|(n, _)| {
                !all_off.contains(n)
                    && matches!(self.providers.get(*n), Some(ProviderKind::Prometheus))
            })
            .map(|(_, m)| m)
            .collect();
        move |side: Side| {
            let mut disabled = Vec::new();
            let mut tags = MetricTags::new();
            for m in Metric::ALL {
                let recording = kept
                    .iter()
                    .find(|p| !p.get(&(side as u8, m)).is_some_and(|e| e.0));
                match recording {
                    None => disabled.push(m),
                    Some(p) => {
                        if let Some((_, t)) = p.get(&(side as u8, m))
                            && !t.is_empty()
                        {
                            tags.insert(m, t.clone());
                        }
                    }
                }
            }
            (disabled, tags)
        }
    }
}

#[derive(Clone, Copy)]
enum Want {
    Tracing,
    AccessLog,
    Metrics,
}

impl Want {
    fn kind(self) -> &'static str {
        match self {
            Want::Tracing => "a tracing provider",
            Want::AccessLog => "an access log provider",
            Want::Metrics => "a metrics provider",
        }
    }
}

enum Mismatch {
    Unknown(String),
    Kind(String, &'static str, &'static str),
}

impl Mismatch {
    fn message(&self) -> String {
        match self {
            Mismatch::Unknown(n) => {
                format!("provider {n:?} is not one of the mesh's extension providers")
            }
            Mismatch::Kind(n, is, wanted) => format!("provider {n:?} is {is}, not {wanted}"),
        }
    }

    fn into_error(self, policy: &str, field: String) -> TelemetryError {
        match self {
            Mismatch::Unknown(name) => TelemetryError::UnknownProvider {
                policy: policy.to_string(),
                field,
                name,
            },
            Mismatch::Kind(name, is, wanted) => TelemetryError::WrongKind {
                policy: policy.to_string(),
                field,
                name,
                is,
                wanted,
            },
        }
    }
}

impl Effective {
    /// Puts each side's settings on the listeners of that side (the inbound listener is the
    /// server side, every other one the client side): tracing and access logs where a rule
    /// decided them, and the disabled metrics everywhere.
    pub fn apply(&self, listeners: &mut [Listener]) {
        for l in listeners {
            let side = match l.traffic_direction {
                TrafficDirection::Inbound => &self.server,
                _ => &self.client,
            };
            for fc in l
                .filter_chains
                .iter_mut()
                .chain(l.default_filter_chain.as_mut())
            {
                for f in &mut fc.filters {
                    match f {
                        NetworkFilter::TcpProxy(t) => {
                            if let Some(a) = &side.access_logs {
                                t.access_log = a.clone();
                            }
                            t.disabled_metrics = side.disabled_metrics.clone();
                            t.tag_overrides = side.tag_overrides.clone();
                        }
                        NetworkFilter::HttpConnectionManager(h) => {
                            if let Some(a) = &side.access_logs {
                                h.access_log = a.clone();
                            }
                            if let Some(t) = &side.tracing {
                                h.tracing = t.clone();
                            }
                            h.disabled_metrics = side.disabled_metrics.clone();
                            h.tag_overrides = side.tag_overrides.clone();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Encoding;
    use crate::trace::{Protocol, TagValue};

    fn zipkin(name: &str) -> ProviderKind {
        ProviderKind::Tracing(Provider {
            name: name.into(),
            protocol: Protocol::Zipkin,
            service: "zipkin.istio-system.svc.cluster.local".into(),
            port: 9411,
            path: String::new(),
            max_tag_length: 256,
            trace_id_64bit: false,
            timeout: None,
            headers: Vec::new(),
        })
    }

    fn log(encoding: Encoding) -> ProviderKind {
        ProviderKind::AccessLog(AccessLog {
            filter: None,
            path: "/dev/stdout".into(),
            encoding,
            format: None,
        })
    }

    /// Istio's built-in providers plus a zipkin, a second zipkin and a JSON log.
    fn mesh() -> Telemetry {
        Telemetry {
            providers: BTreeMap::from([
                ("envoy".into(), log(Encoding::Text)),
                ("json".into(), log(Encoding::Json)),
                ("prometheus".into(), ProviderKind::Prometheus),
                ("zipkin".into(), zipkin("zipkin")),
                ("other".into(), zipkin("other")),
            ]),
            default_providers: DefaultProviders {
                metrics: vec!["prometheus".into()],
                ..DefaultProviders::default()
            },
            default_sampling: 1.0,
            ..Telemetry::default()
        }
    }

    fn policy(name: &str) -> Policy {
        Policy {
            name: name.into(),
            ..Policy::default()
        }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), app.to_string())])
    }

    #[test]
    fn nothing_configured_changes_nothing() {
        let e = mesh().effective(&labels("a"));
        assert_eq!(e.client, SideTelemetry::default());
        assert_eq!(e.server, SideTelemetry::default());
        assert!(e.policies.is_empty());
    }

    #[test]
    fn the_first_workload_policy_selecting_the_pod_applies_after_mesh_and_namespace() {
        let mut t = mesh();
        t.mesh = Some(policy("istio-system/mesh"));
        t.namespace = Some(policy("ns/all"));
        t.workload = vec![
            Policy {
                selector: labels("b"),
                ..policy("ns/b")
            },
            Policy {
                selector: labels("a"),
                ..policy("ns/a-old")
            },
            Policy {
                selector: labels("a"),
                ..policy("ns/a-new")
            },
        ];
        assert_eq!(
            t.effective(&labels("a")).policies,
            ["istio-system/mesh", "ns/all", "ns/a-old"]
        );
        assert_eq!(
            t.effective(&labels("c")).policies,
            ["istio-system/mesh", "ns/all"]
        );
    }

    #[test]
    fn mesh_wide_envoy_access_logging_then_disabled_for_one_workload_and_one_side() {
        let mut t = mesh();
        t.mesh = Some(Policy {
            access_logging: vec![AccessLogRule {
                providers: vec!["envoy".into()],
                ..AccessLogRule::default()
            }],
            ..policy("istio-system/mesh-default")
        });
        t.workload = vec![
            Policy {
                selector: labels("quiet"),
                access_logging: vec![AccessLogRule {
                    disabled: Some(true),
                    ..AccessLogRule::default()
                }],
                ..policy("ns/quiet")
            },
            Policy {
                selector: labels("client-only"),
                access_logging: vec![AccessLogRule {
                    mode: Mode::Server,
                    disabled: Some(true),
                    ..AccessLogRule::default()
                }],
                ..policy("ns/client-only")
            },
        ];
        let ProviderKind::AccessLog(envoy) = &t.providers["envoy"] else {
            unreachable!()
        };
        let all = t.effective(&labels("x"));
        assert_eq!(all.client.access_logs, Some(vec![envoy.clone()]));
        assert_eq!(all.server.access_logs, Some(vec![envoy.clone()]));
        // Disabled everywhere: Istio falls back to the mesh's accessLogFile.
        let quiet = t.effective(&labels("quiet"));
        assert_eq!(quiet.client.access_logs, None);
        assert_eq!(quiet.server.access_logs, None);
        let c = t.effective(&labels("client-only"));
        assert_eq!(c.client.access_logs, Some(vec![envoy.clone()]));
        assert_eq!(c.server.access_logs, None);
    }

    #[test]
    fn a_lower_level_naming_providers_replaces_the_parents_and_defaults_apply_without_policies() {
        let mut t = mesh();
        t.default_providers.access_logging = vec!["envoy".into()];
        let ProviderKind::AccessLog(envoy) = t.providers["envoy"].clone() else {
            unreachable!()
        };
        let ProviderKind::AccessLog(json) = t.providers["json"].clone() else {
            unreachable!()
        };
        assert_eq!(
            t.effective(&labels("a")).server.access_logs,
            Some(vec![envoy.clone()])
        );
        t.namespace = Some(Policy {
            access_logging: vec![AccessLogRule {
                providers: vec!["json".into()],
                ..AccessLogRule::default()
            }],
            ..policy("ns/json")
        });
        assert_eq!(
            t.effective(&labels("a")).server.access_logs,
            Some(vec![json])
        );
    }

    #[test]
    fn an_access_log_filter_goes_with_the_providers_its_rule_covers() {
        let mut t = mesh();
        t.mesh = Some(Policy {
            access_logging: vec![AccessLogRule {
                providers: vec!["envoy".into()],
                filter: Some("response.code >= 400".into()),
                ..AccessLogRule::default()
            }],
            ..policy("istio-system/mesh")
        });
        t.workload = vec![Policy {
            selector: labels("all"),
            access_logging: vec![AccessLogRule {
                mode: Mode::Server,
                ..AccessLogRule::default()
            }],
            ..policy("ns/all")
        }];
        let e = t.effective(&labels("a"));
        let logs = e.server.access_logs.unwrap();
        assert_eq!(logs[0].filter.as_deref(), Some("response.code >= 400"));
        // A later rule covering the provider without a filter logs everything on its side.
        let all = t.effective(&labels("all"));
        assert_eq!(all.server.access_logs.unwrap()[0].filter, None);
        assert_eq!(
            all.client.access_logs.unwrap()[0].filter.as_deref(),
            Some("response.code >= 400")
        );
        t.mesh.as_mut().unwrap().access_logging[0].filter = Some("response.code".into());
        assert!(
            t.check()
                .unwrap_err()
                .to_string()
                .starts_with("istio-system/mesh: accessLogging[0].filter.expression: ")
        );
    }

    #[test]
    fn tracing_rules_override_field_by_field_per_side() {
        let mut t = mesh();
        t.default_providers.tracing = vec!["zipkin".into()];
        t.mesh = Some(Policy {
            tracing: vec![TracingRule {
                random_sampling_percentage: Some(10.0),
                custom_tags: Some(vec![CustomTag {
                    tag: "env".into(),
                    value: TagValue::Literal {
                        value: "prod".into(),
                    },
                }]),
                ..TracingRule::default()
            }],
            ..policy("istio-system/mesh")
        });
        t.workload = vec![Policy {
            selector: labels("a"),
            tracing: vec![
                TracingRule {
                    mode: Mode::Client,
                    providers: vec!["other".into()],
                    ..TracingRule::default()
                },
                TracingRule {
                    mode: Mode::Server,
                    disable_span_reporting: Some(true),
                    use_request_id_for_trace_sampling: Some(false),
                    ..TracingRule::default()
                },
            ],
            ..policy("ns/a")
        }];
        let b = t.effective(&labels("b"));
        let bt = b.client.tracing.clone().flatten().expect("traced");
        assert_eq!(bt.provider.name, "zipkin");
        assert_eq!(bt.random_sampling, 10.0);
        assert_eq!(bt.custom_tags.len(), 1);
        assert_eq!(b.client.tracing, b.server.tracing);

        let a = t.effective(&labels("a"));
        let client = a.client.tracing.flatten().expect("client traced");
        assert_eq!(client.provider.name, "other");
        assert_eq!(client.random_sampling, 10.0);
        assert!(!client.disable_span_reporting);
        let server = a.server.tracing.flatten().expect("server propagates");
        assert_eq!(server.provider.name, "zipkin");
        assert!(server.disable_span_reporting);
        assert!(!server.use_request_id_for_sampling);
    }

    #[test]
    fn a_tracing_rule_without_any_provider_turns_tracing_off_and_no_rule_leaves_the_mesh_setting() {
        let mut t = mesh();
        t.namespace = Some(Policy {
            tracing: vec![TracingRule {
                random_sampling_percentage: Some(100.0),
                ..TracingRule::default()
            }],
            ..policy("ns/all")
        });
        let e = t.effective(&labels("a"));
        assert_eq!(e.client.tracing, Some(None));
        t.namespace = None;
        assert_eq!(t.effective(&labels("a")).client.tracing, None);
    }

    #[test]
    fn metrics_overrides_disable_per_metric_and_side_and_all_metrics_drops_the_provider() {
        let mut t = mesh();
        t.mesh = Some(Policy {
            metrics: vec![MetricsRule {
                overrides: vec![MetricsOverride {
                    metric: Some(Metric::RequestCount),
                    mode: Mode::Client,
                    disabled: Some(true),
                    ..MetricsOverride::default()
                }],
                ..MetricsRule::default()
            }],
            ..policy("istio-system/mesh")
        });
        let e = t.effective(&labels("a"));
        assert_eq!(e.client.disabled_metrics, [Metric::RequestCount]);
        assert!(e.server.disabled_metrics.is_empty());

        t.workload = vec![Policy {
            selector: labels("off"),
            metrics: vec![MetricsRule {
                overrides: vec![MetricsOverride {
                    disabled: Some(true),
                    ..MetricsOverride::default()
                }],
                ..MetricsRule::default()
            }],
            ..policy("ns/off")
        }];
        let off = t.effective(&labels("off"));
        assert_eq!(off.client.disabled_metrics, Metric::ALL);
        assert_eq!(off.server.disabled_metrics, Metric::ALL);

        // A later override re-enables what an earlier one disabled.
        t.workload[0].metrics[0].overrides.push(MetricsOverride {
            metric: Some(Metric::RequestCount),
            disabled: Some(false),
            ..MetricsOverride::default()
        });
        let back = t.effective(&labels("off"));
        assert!(back.client.disabled_metrics.is_empty());
    }

    #[test]
    fn tag_overrides_merge_key_by_key_per_metric_and_side() {
        let mut t = mesh();
        let remove = TagOverride {
            remove: true,
            value: None,
        };
        let set = |v: &str| TagOverride {
            remove: false,
            value: Some(v.into()),
        };
        t.mesh = Some(Policy {
            metrics: vec![MetricsRule {
                overrides: vec![MetricsOverride {
                    tag_overrides: BTreeMap::from([
                        ("request_protocol".to_string(), remove.clone()),
                        ("team".to_string(), set("mesh")),
                    ]),
                    ..MetricsOverride::default()
                }],
                ..MetricsRule::default()
            }],
            ..policy("istio-system/mesh")
        });
        t.namespace = Some(Policy {
            metrics: vec![MetricsRule {
                overrides: vec![MetricsOverride {
                    metric: Some(Metric::RequestCount),
                    mode: Mode::Server,
                    tag_overrides: BTreeMap::from([("team".to_string(), set("bookinfo"))]),
                    ..MetricsOverride::default()
                }],
                ..MetricsRule::default()
            }],
            ..policy("ns/all")
        });
        let e = t.effective(&labels("a"));
        let count = &e.server.tag_overrides[&Metric::RequestCount];
        assert_eq!(count["team"], set("bookinfo"));
        assert_eq!(count["request_protocol"], remove);
        assert_eq!(
            e.client.tag_overrides[&Metric::RequestCount]["team"],
            set("mesh")
        );
        assert_eq!(
            e.server.tag_overrides[&Metric::TcpSentBytes]["team"],
            set("mesh")
        );
        t.namespace.as_mut().unwrap().metrics[0].overrides[0]
            .tag_overrides
            .insert("bad-name".into(), remove);
        assert!(
            t.check()
                .unwrap_err()
                .to_string()
                .contains("tagOverrides.bad-name: not a Prometheus label name")
        );
    }

    #[test]
    fn metrics_go_off_when_no_prometheus_provider_is_in_scope() {
        let mut t = mesh();
        t.default_providers.metrics.clear();
        t.mesh = Some(policy("istio-system/mesh"));
        t.mesh.as_mut().unwrap().metrics = vec![MetricsRule::default()];
        assert_eq!(
            t.effective(&labels("a")).server.disabled_metrics,
            Metric::ALL
        );
    }

    #[test]
    fn check_names_the_policy_field_and_provider() {
        let mut t = mesh();
        t.namespace = Some(Policy {
            tracing: vec![TracingRule {
                providers: vec!["envoy".into()],
                ..TracingRule::default()
            }],
            ..policy("ns/t")
        });
        assert_eq!(
            t.check().unwrap_err().to_string(),
            "ns/t: tracing[0].providers[0].name: provider \"envoy\" is an access log provider, not a tracing provider"
        );
        t.namespace.as_mut().unwrap().tracing[0].providers = vec!["nope".into()];
        assert_eq!(
            t.check().unwrap_err().to_string(),
            "ns/t: tracing[0].providers[0].name: provider \"nope\" is not one of the mesh's extension providers"
        );
        t.namespace.as_mut().unwrap().tracing[0].providers.clear();
        t.namespace.as_mut().unwrap().tracing[0].random_sampling_percentage = Some(101.0);
        assert!(
            t.check()
                .unwrap_err()
                .to_string()
                .contains("tracing[0].randomSamplingPercentage: 101")
        );
        let mut t = mesh();
        t.default_providers.metrics = vec!["envoy".into()];
        assert!(
            t.check()
                .unwrap_err()
                .to_string()
                .starts_with("defaultProviders.metrics")
        );
    }

    #[test]
    fn apply_sets_each_side_on_its_listeners() {
        use crate::listener::{FilterChain, HttpConnectionManager, TcpProxy};
        let chain = || FilterChain {
            filters: vec![
                NetworkFilter::HttpConnectionManager(Box::default()),
                NetworkFilter::TcpProxy(TcpProxy::default()),
            ],
            ..FilterChain::default()
        };
        let listener = |d, default| Listener {
            name: String::new(),
            address: crate::address::Address::new([0, 0, 0, 0].into(), 15001),
            traffic_direction: d,
            use_original_dst: false,
            bind_to_port: false,
            filter_chains: vec![chain()],
            default_filter_chain: default,
            listener_filters_timeout: None,
        };
        let mut ls = vec![
            listener(TrafficDirection::Inbound, None),
            listener(TrafficDirection::Outbound, Some(chain())),
        ];
        let ProviderKind::AccessLog(envoy) = mesh().providers["envoy"].clone() else {
            unreachable!()
        };
        let e = Effective {
            policies: vec![],
            client: SideTelemetry {
                tracing: Some(None),
                access_logs: Some(vec![envoy.clone()]),
                disabled_metrics: vec![Metric::RequestCount],
                tag_overrides: MetricTags::new(),
            },
            server: SideTelemetry::default(),
        };
        ls[0].filter_chains[0].filters[0] =
            NetworkFilter::HttpConnectionManager(Box::new(HttpConnectionManager {
                access_log: vec![envoy.clone()],
                ..HttpConnectionManager::default()
            }));
        e.apply(&mut ls);
        let NetworkFilter::HttpConnectionManager(inbound) = &ls[0].filter_chains[0].filters[0]
        else {
            unreachable!()
        };
        assert_eq!(inbound.access_log, vec![envoy.clone()], "server side kept");
        assert!(inbound.disabled_metrics.is_empty());
        let out = ls[1].default_filter_chain.as_ref().unwrap();
        let NetworkFilter::TcpProxy(tcp) = &out.filters[1] else {
            unreachable!()
        };
        assert_eq!(tcp.access_log, vec![envoy]);
        assert_eq!(tcp.disabled_metrics, [Metric::RequestCount]);
    }
}
