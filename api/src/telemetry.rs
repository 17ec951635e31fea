//! `Telemetry` (`telemetry.istio.io`, served as `v1` and `v1alpha1`): how the sidecars of the
//! selected workloads trace, count and log requests. Shapes follow
//! <https://istio.io/latest/docs/reference/config/telemetry/>.
//!
//! Scope, as in Istio: a Telemetry without a selector (or whose `selector.matchLabels` is
//! empty) configures every workload of its namespace, or of the mesh in the root namespace; one
//! with labels the workloads of its namespace it selects. A workload gets the most specific
//! configuration (workload, then namespace, then root namespace), missing values filled in from
//! the broader ones ([`TelemetrySpec::workload_labels`]). Istio's rules that a namespace has at
//! most one Telemetry without a selector, and that a workload is selected by at most one, need
//! the other objects: they are the operator's to check, not this module's.
//!
//! [`Validate`] reports Istio's errors (`ValidateTelemetry`: provider names set,
//! `randomSamplingPercentage` within [0, 100], custom tags with a name and a non-empty literal
//! value, environment variable or header name, `customMetric` not empty, a tag override's value
//! set for UPSERT only), the rules of Istio's CRD (one source per custom tag, only one of
//! `metric`/`customMetric`, `reportingInterval` a duration of at least 1ms, an access log filter
//! with an expression, `targetRef(s)` excluding a selector), and, through the field-support
//! table ([`crate::support`]), what rustmesh refuses, naming the field:
//! - `targetRef`/`targetRefs` (no Gateway API, no waypoints: the policy would apply to no
//!   sidecar);
//! - `metrics[].overrides[].match.customMetric` (the sidecar has Istio's standard metrics only);
//! - `metrics[].overrides[].tagOverrides{}.value` other than a CEL string literal (`'v1'`):
//!   rustmesh sets labels to fixed values and removes them, it does not evaluate CEL for them;
//!   `accessLogging[].filter.expression` outside the CEL subset the sidecar evaluates
//!   (`rustmesh_xds::cel`: Envoy's request/response attributes, comparisons, `&&`, `||`, `!`,
//!   `in`, string methods) is refused naming it;
//! - newer Istio's `tracing[].customTags{}.formatter`, and `tracing[].enableIstioTags: false`
//!   and `tracing[].disableContextPropagation: true` (the sidecar always tags spans with
//!   Istio's tags and always propagates the trace context; the other values are what it does
//!   anyway, and are accepted).
//!
//! [`TelemetrySpec::warnings`] reports Istio's warnings (a selector without labels, more than
//! one tracing entry, more than one provider in a tracing entry, a tag override without a name)
//! and `metrics[].reportingInterval`, which does nothing in rustmesh (the sidecar's metrics are
//! scraped, not pushed).
//!
//! Decisions where Istio is silent or lenient:
//! - a custom tag needs exactly one source: Istio's CRD also accepts a tag with none, which adds
//!   nothing to any span and so is a mistake;
//! - a tag override without `operation` is an UPSERT (protobuf's default, as Istio's Go check
//!   reads it), so it needs a value; a REMOVE may have no `value` at all, not even an empty one
//!   (Istio's CRD rule; its Go check only refuses a non-empty one);
//! - a provider or tag name of spaces only is accepted, as Istio accepts it (only an empty name
//!   is refused); whether the mesh has a provider of that name is the operator's to check
//!   (it needs meshConfig's `extensionProviders`);
//! - `reportingInterval` is read as the other durations of the API are (protobuf's `5s` and
//!   Go's `1m30s` forms);
//! - `filter.expression` is required: Istio's CRD has it optional, but Istio's check parses it as
//!   CEL, which an empty expression fails.

use crate::authorization_policy::PolicyTargetReference;
use crate::common::WorkloadSelector;
use crate::error::FieldError;
use crate::status::IstioStatus;
use crate::validate::Validate;
use kube::CustomResource;
use rustmesh_xds::duration::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The versions `telemetry.istio.io` serves this kind as, newest (stored) first.
pub const VERSIONS: [&str; 2] = ["v1", "v1alpha1"];

/// The shortest `metrics[].reportingInterval` (Istio's CRD: at least 1ms).
pub const MIN_REPORTING_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// The spec of a Telemetry.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "telemetry.istio.io",
    version = "v1",
    kind = "Telemetry",
    plural = "telemetries",
    singular = "telemetry",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "IstioStatus",
    shortname = "telemetry",
    category = "istio-io",
    category = "telemetry-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The workloads of the Telemetry's namespace it applies to; without it (or without labels)
    /// every workload of the namespace, or of the mesh in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The gateway the Telemetry is attached to (Gateway API). Not implemented: refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// The resources the Telemetry is attached to (Gateway API gateways and waypoints,
    /// Services, ServiceEntries). Not implemented: refused by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// How the selected workloads trace requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    /// Which metrics the selected workloads generate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    /// How the selected workloads log requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

/// `WorkloadMode`: the direction of the traffic a setting applies to, seen from the workload:
/// `SERVER` its inbound traffic, `CLIENT` its outbound traffic, `CLIENT_AND_SERVER` (the
/// default) both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    #[default]
    ClientAndServer,
    Client,
    Server,
}

impl WorkloadMode {
    /// Whether the setting applies to the workload's outbound traffic (it is the client).
    pub fn client(self) -> bool {
        self != WorkloadMode::Server
    }

    /// Whether the setting applies to the workload's inbound traffic (it is the server).
    pub fn server(self) -> bool {
        self != WorkloadMode::Client
    }

    /// Istio's name: `CLIENT_AND_SERVER`, `CLIENT`, `SERVER`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadMode::ClientAndServer => "CLIENT_AND_SERVER",
            WorkloadMode::Client => "CLIENT",
            WorkloadMode::Server => "SERVER",
        }
    }
}

/// `ProviderRef`: an extension provider of the mesh configuration (meshConfig's
/// `extensionProviders`, or a built-in one: `envoy`, `prometheus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// The provider's name.
    pub name: String,
}

/// `Tracing`: the tracing of the selected workloads. `providers`, `randomSamplingPercentage`,
/// `disableSpanReporting` and `customTags` not given are inherited from the broader
/// configuration; `customTags`, when given, replace the inherited ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// The traffic the entry applies to (default: both directions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<TracingSelector>,
    /// The provider spans are reported to (Istio supports one); none: the mesh's default
    /// tracing provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// The percentage (0 to 100) of requests traced when no earlier decision was made (an
    /// incoming `x-b3-sampled` or `traceparent` decides otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    /// No span is reported (the trace context is still propagated and sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    /// Tags added to every span, by tag name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Whether the sampling decision may come from the request id (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Whether spans carry Istio's tags (default true). Only `true` is implemented: `false` is
    /// refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
    /// Istio 1.30: the trace context headers are not propagated (default false). Only `false`
    /// is implemented: `true` is refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_context_propagation: Option<bool>,
}

/// `Tracing.TracingSelector`: the traffic a tracing entry applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSelector {
    /// The direction of the traffic (default `CLIENT_AND_SERVER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// `Tracing.CustomTag`: where a span tag's value comes from (exactly one of the sources).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    /// The same value on every span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    /// An environment variable of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentTag>,
    /// A header of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTag>,
    /// Newer Istio: an access log command operator (`%REQ(:path)%`). Not implemented: refused
    /// by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatter: Option<FormatterTag>,
}

/// `Tracing.Literal`: a fixed tag value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiteralTag {
    /// The value.
    pub value: String,
}

/// `Tracing.Environment`: a tag from an environment variable of the sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentTag {
    /// The variable's name.
    pub name: String,
    /// The value when the variable is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

/// `Tracing.RequestHeader`: a tag from a header of the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderTag {
    /// The header's name.
    pub name: String,
    /// The value when the request has no such header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

/// `Tracing.Formatter` (newer Istio): a tag from an access log command operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FormatterTag {
    /// The format, as an access log's (`%REQ(:path)%`).
    pub value: String,
}

/// `Metrics`: the metrics of the selected workloads, for some providers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// The providers the entry applies to; none: the mesh's default metrics provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Overrides applied in order, after the inherited ones (root namespace, namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
    /// How often metrics are reported to a provider that is pushed to (a duration). Ignored
    /// with a warning: the sidecar's metrics are scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<String>,
}

/// `MetricsOverrides`: a change to the metrics `match` selects (without `match`: every metric
/// in both directions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    /// The metrics and direction the override applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<MetricSelector>,
    /// `true` turns the metrics off; `false` turns them back on after an inherited `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Changes to the metrics' labels, by label name. Not implemented: refused by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `MetricSelector`: one of Istio's standard metrics (or a custom one), and a direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's standard metrics (`ALL_METRICS`: every one). Only one of `metric` and
    /// `customMetric`; neither: every standard metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    /// A metric by name. Not implemented: refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    /// The direction of the traffic (default `CLIENT_AND_SERVER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// `MetricSelector.IstioMetric`: Istio's standard metrics
/// (<https://istio.io/latest/docs/reference/config/metrics/>).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    #[default]
    AllMetrics,
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

impl IstioMetric {
    /// The name Prometheus sees the metric under; `None` for `ALL_METRICS`.
    pub fn prometheus_name(self) -> Option<&'static str> {
        Some(match self {
            IstioMetric::AllMetrics => return None,
            IstioMetric::RequestCount => "istio_requests_total",
            IstioMetric::RequestDuration => "istio_request_duration_milliseconds",
            IstioMetric::RequestSize => "istio_request_bytes",
            IstioMetric::ResponseSize => "istio_response_bytes",
            IstioMetric::TcpOpenedConnections => "istio_tcp_connections_opened_total",
            IstioMetric::TcpClosedConnections => "istio_tcp_connections_closed_total",
            IstioMetric::TcpSentBytes => "istio_tcp_sent_bytes_total",
            IstioMetric::TcpReceivedBytes => "istio_tcp_received_bytes_total",
            IstioMetric::GrpcRequestMessages => "istio_request_messages_total",
            IstioMetric::GrpcResponseMessages => "istio_response_messages_total",
        })
    }

    /// Whether an override of `self` applies to `metric` (`ALL_METRICS` to every one).
    pub fn covers(self, metric: IstioMetric) -> bool {
        self == IstioMetric::AllMetrics || self == metric
    }
}

/// `MetricsOverrides.TagOverride`: add, change or remove one label of the selected metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (the default) or `REMOVE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<TagOperation>,
    /// The label's value for an UPSERT, a CEL expression (`request.host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `MetricsOverrides.TagOverride.Operation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    #[default]
    Upsert,
    Remove,
}

/// `AccessLogging`: the access logs of the selected workloads, for some providers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// The traffic the entry applies to (default: both directions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<LogSelector>,
    /// The providers the entry applies to; none: the mesh's default access log provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// `true`: no access log for these providers; `false` turns it back on after an inherited
    /// `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Which requests are logged (a CEL expression). Not implemented: refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

/// `AccessLogging.LogSelector`: the traffic an access logging entry applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSelector {
    /// The direction of the traffic (default `CLIENT_AND_SERVER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// `AccessLogging.Filter`: the requests that are logged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    /// A CEL expression over the request's attributes (`response.code >= 400`).
    pub expression: String,
}

impl TelemetrySpec {
    /// `selector.matchLabels` when the Telemetry is workload-specific (a selector with
    /// labels); `None` for a namespace-wide (or mesh-wide) one.
    pub fn workload_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// Findings that do not make the Telemetry invalid: Istio's warnings (a selector without
    /// labels, more than one tracing entry, more than one provider in one, a tag override
    /// without a name) and fields rustmesh accepts without implementing them
    /// ([`crate::support`]).
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if self
            .selector
            .as_ref()
            .is_some_and(|s| s.match_labels.is_empty())
        {
            out.push(FieldError::new(
                "spec.selector.matchLabels",
                "workload selector specified without labels: the Telemetry applies to every \
                 workload of the namespace (of the mesh in the root namespace), as if it had no \
                 selector",
            ));
        }
        if self.tracing.len() > 1 {
            out.push(FieldError::new(
                "spec.tracing",
                format!(
                    "multiple tracing is not currently supported (Istio's warning): {} entries",
                    self.tracing.len()
                ),
            ));
        }
        for (i, t) in self.tracing.iter().enumerate() {
            if t.providers.len() > 1 {
                out.push(FieldError::new(
                    format!("spec.tracing[{i}].providers"),
                    "multiple providers is not currently supported (Istio's warning): spans \
                     are reported to one provider",
                ));
            }
        }
        for (i, m) in self.metrics.iter().enumerate() {
            for (j, o) in m.overrides.iter().enumerate() {
                if o.tag_overrides.contains_key("") {
                    out.push(FieldError::new(
                        format!("spec.metrics[{i}].overrides[{j}].tagOverrides"),
                        "tagOverrides.name may not be empty",
                    ));
                }
            }
        }
        out.extend(crate::support::warned_fields("Telemetry", self));
        out
    }
}

impl Tracing {
    /// The direction the entry applies to (`CLIENT_AND_SERVER` when not given).
    pub fn mode(&self) -> WorkloadMode {
        self.r#match.and_then(|m| m.mode).unwrap_or_default()
    }
}

impl AccessLogging {
    /// The direction the entry applies to (`CLIENT_AND_SERVER` when not given).
    pub fn mode(&self) -> WorkloadMode {
        self.r#match.and_then(|m| m.mode).unwrap_or_default()
    }
}

impl MetricsOverrides {
    /// The direction the override applies to (`CLIENT_AND_SERVER` when not given).
    pub fn mode(&self) -> WorkloadMode {
        self.r#match
            .as_ref()
            .and_then(|m| m.mode)
            .unwrap_or_default()
    }

    /// The standard metric(s) the override applies to (`ALL_METRICS` when neither `metric`
    /// nor `customMetric` is given); `None` for a custom metric.
    pub fn metric(&self) -> Option<IstioMetric> {
        match &self.r#match {
            Some(m) if m.custom_metric.is_some() => None,
            Some(m) => Some(m.metric.unwrap_or_default()),
            None => Some(IstioMetric::AllMetrics),
        }
    }
}

impl CustomTag {
    /// The names of the sources given (`literal`, `environment`, `header`, `formatter`).
    pub fn sources(&self) -> Vec<&'static str> {
        [
            ("literal", self.literal.is_some()),
            ("environment", self.environment.is_some()),
            ("header", self.header.is_some()),
            ("formatter", self.formatter.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

fn check_providers(at: &str, providers: &[ProviderRef], out: &mut Vec<FieldError>) {
    for (j, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            out.push(FieldError::new(
                format!("{at}.providers[{j}].name"),
                "providers.name may not be empty",
            ));
        }
    }
}

fn check_tracing(at: &str, t: &Tracing, out: &mut Vec<FieldError>) {
    check_providers(at, &t.providers, out);
    if let Some(p) = t.random_sampling_percentage
        && !(0.0..=100.0).contains(&p)
    {
        out.push(FieldError::new(
            format!("{at}.randomSamplingPercentage"),
            format!("randomSamplingPercentage must be in range [0.0, 100.0], got {p}"),
        ));
    }
    for (name, tag) in &t.custom_tags {
        if name.is_empty() {
            out.push(FieldError::new(
                format!("{at}.customTags"),
                "tag name may not be empty",
            ));
        }
        let tag_at = format!("{at}.customTags.{name}");
        let sources = tag.sources();
        if sources.len() != 1 {
            let got = if sources.is_empty() {
                "none".to_string()
            } else {
                sources.join(" and ")
            };
            out.push(FieldError::new(
                tag_at.clone(),
                format!(
                    "a custom tag needs exactly one of literal, environment or header (got {got})"
                ),
            ));
        }
        if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
            out.push(FieldError::new(
                format!("{tag_at}.literal.value"),
                "literal tag value may not be empty",
            ));
        }
        if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
            out.push(FieldError::new(
                format!("{tag_at}.environment.name"),
                "environment tag name may not be empty",
            ));
        }
        if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
            out.push(FieldError::new(
                format!("{tag_at}.header.name"),
                "header tag name may not be empty",
            ));
        }
        if tag.formatter.as_ref().is_some_and(|f| f.value.is_empty()) {
            out.push(FieldError::new(
                format!("{tag_at}.formatter.value"),
                "formatter tag value may not be empty",
            ));
        }
    }
}

fn check_metrics(at: &str, m: &Metrics, out: &mut Vec<FieldError>) {
    check_providers(at, &m.providers, out);
    for (j, o) in m.overrides.iter().enumerate() {
        let o_at = format!("{at}.overrides[{j}]");
        if let Some(sel) = &o.r#match {
            if sel.metric.is_some() && sel.custom_metric.is_some() {
                out.push(FieldError::new(
                    format!("{o_at}.match"),
                    "only one of metric or customMetric can be set",
                ));
            }
            if sel.custom_metric.as_deref() == Some("") {
                out.push(FieldError::new(
                    format!("{o_at}.match.customMetric"),
                    "customMetric may not be empty",
                ));
            }
        }
        for (name, t) in &o.tag_overrides {
            if !name.is_empty() && !rustmesh_xds::telemetry::is_label_name(name) {
                out.push(FieldError::new(
                    format!("{o_at}.tagOverrides.{name}"),
                    "not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
                ));
            }
            let field = format!("{o_at}.tagOverrides.{name}.value");
            match t.operation.unwrap_or_default() {
                TagOperation::Upsert if t.value.as_deref().is_none_or(str::is_empty) => {
                    out.push(FieldError::new(
                        field,
                        "tagOverrides.value must be set when operation is UPSERT",
                    ));
                }
                TagOperation::Upsert
                    if t.value
                        .as_deref()
                        .and_then(rustmesh_xds::cel::string_literal)
                        .is_none() =>
                {
                    out.push(FieldError::new(
                        field,
                        "not implemented by rustmesh: a tag value must be a CEL string literal \
                         ('v1'); rustmesh does not evaluate other CEL expressions for metric labels",
                    ));
                }
                TagOperation::Remove if t.value.is_some() => {
                    out.push(FieldError::new(
                        field,
                        "tagOverrides.value may only be set when operation is UPSERT",
                    ));
                }
                _ => {}
            }
        }
    }
    if let Some(interval) = &m.reporting_interval {
        let field = format!("{at}.reportingInterval");
        match interval.parse::<Duration>() {
            Ok(d) if d.as_std() >= MIN_REPORTING_INTERVAL => {}
            Ok(_) => out.push(FieldError::new(
                field,
                "must be a valid duration greater than 1ms",
            )),
            Err(e) => out.push(FieldError::new(
                field,
                format!("must be a valid duration greater than 1ms: {e}"),
            )),
        }
    }
}

fn check_access_logging(at: &str, l: &AccessLogging, out: &mut Vec<FieldError>) {
    check_providers(at, &l.providers, out);
    if let Some(f) = &l.filter {
        if f.expression.is_empty() {
            out.push(FieldError::new(
                format!("{at}.filter.expression"),
                "must be a valid CEL expression: the expression is empty",
            ));
        } else if let Err(e) = rustmesh_xds::cel::Filter::compile(&f.expression) {
            out.push(FieldError::new(
                format!("{at}.filter.expression"),
                format!("not in the CEL subset rustmesh evaluates: {e}"),
            ));
        }
    }
}

impl Validate for TelemetrySpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if let Some(selector) = &self.selector {
            for (k, v) in &selector.match_labels {
                if k.is_empty() {
                    out.push(FieldError::new(
                        "spec.selector.matchLabels",
                        format!("empty key is not supported in selector: \"{k}={v}\""),
                    ));
                } else if k.contains('*') || v.contains('*') {
                    out.push(FieldError::new(
                        format!("spec.selector.matchLabels.{k}"),
                        format!("wildcard is not supported in selector: \"{k}={v}\""),
                    ));
                }
            }
            if self.target_ref.is_some() || !self.target_refs.is_empty() {
                out.push(FieldError::new(
                    "spec.selector",
                    "only one of targetRefs or workloadSelector can be set",
                ));
            }
        } else if self.target_ref.is_some() && !self.target_refs.is_empty() {
            out.push(FieldError::new(
                "spec.targetRefs",
                "only one of targetRef or targetRefs can be set",
            ));
        }
        for (i, t) in self.tracing.iter().enumerate() {
            check_tracing(&format!("spec.tracing[{i}]"), t, &mut out);
        }
        for (i, m) in self.metrics.iter().enumerate() {
            check_metrics(&format!("spec.metrics[{i}]"), m, &mut out);
        }
        for (i, l) in self.access_logging.iter().enumerate() {
            check_access_logging(&format!("spec.accessLogging[{i}]"), l, &mut out);
        }
        out.extend(crate::support::refused_fields("Telemetry", self));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{IstioObject, load};

    fn doc(version: &str, spec: &str) -> String {
        format!(
            "apiVersion: telemetry.istio.io/{version}\nkind: Telemetry\nmetadata:\n  name: t\n  namespace: foo\nspec:\n{spec}"
        )
    }

    fn one(text: &str) -> Telemetry {
        match load(text).unwrap_or_else(|e| panic!("{e}")).remove(0) {
            IstioObject::Telemetry(t) => *t,
            other => panic!("read as {}", other.kind()),
        }
    }

    /// (field, message) of each finding of a document that must be refused.
    fn refused(text: &str) -> Vec<(String, String)> {
        let err = load(text).expect_err("document should be refused");
        err.field_errors()
            .into_iter()
            .map(|e| (e.field.clone(), e.message.clone()))
            .collect()
    }

    fn fields(found: &[(String, String)]) -> Vec<&str> {
        found.iter().map(|(f, _)| f.as_str()).collect()
    }

    fn warned(t: &Telemetry) -> Vec<String> {
        t.spec.warnings().into_iter().map(|w| w.field).collect()
    }

    #[test]
    fn istio_examples_read_as_v1_and_v1alpha1() {
        for version in VERSIONS {
            // Istio's mesh-wide access logging with the built-in envoy provider.
            let t = one(&doc(
                version,
                "  accessLogging:\n  - providers:\n    - name: envoy\n",
            ));
            assert_eq!(t.spec.workload_labels(), None);
            let log = &t.spec.access_logging[0];
            assert_eq!(log.providers[0].name, "envoy");
            assert_eq!(log.mode(), WorkloadMode::ClientAndServer);
            assert_eq!(log.disabled, None);
            assert!(warned(&t).is_empty(), "{:?}", warned(&t));
        }
        // A workload's access log turned off, for its inbound traffic only.
        let t = one(&doc(
            "v1",
            "  selector:\n    matchLabels:\n      app: details\n  accessLogging:\n  - providers:\n    - name: envoy\n    match:\n      mode: SERVER\n    disabled: true\n",
        ));
        assert_eq!(
            t.spec.workload_labels(),
            Some(&BTreeMap::from([(
                "app".to_string(),
                "details".to_string()
            )]))
        );
        let log = &t.spec.access_logging[0];
        assert_eq!(log.mode(), WorkloadMode::Server);
        assert!(log.mode().server() && !log.mode().client());
        assert_eq!(log.disabled, Some(true));
        // Sampling and the three kinds of custom tag.
        let t = one(&doc(
            "v1",
            r#"  tracing:
  - providers:
    - name: zipkin
    randomSamplingPercentage: 10.00
    disableSpanReporting: false
    useRequestIdForTraceSampling: true
    customTags:
      my_new_foo_tag:
        literal:
          value: foo
      cluster_id:
        environment:
          name: ISTIO_META_CLUSTER_ID
          defaultValue: Kubernetes
      group:
        header:
          name: x-group
"#,
        ));
        let tracing = &t.spec.tracing[0];
        assert_eq!(tracing.random_sampling_percentage, Some(10.0));
        assert_eq!(tracing.mode(), WorkloadMode::ClientAndServer);
        assert_eq!(
            tracing.custom_tags["my_new_foo_tag"].literal,
            Some(LiteralTag {
                value: "foo".into()
            })
        );
        assert_eq!(
            tracing.custom_tags["cluster_id"]
                .environment
                .as_ref()
                .and_then(|e| e.default_value.as_deref()),
            Some("Kubernetes")
        );
        assert_eq!(tracing.custom_tags["group"].sources(), ["header"]);
        assert!(warned(&t).is_empty(), "{:?}", warned(&t));
        // REQUEST_COUNT off for the client side; without match, every metric both ways.
        let t = one(&doc(
            "v1alpha1",
            "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    - match:\n        metric: REQUEST_COUNT\n        mode: CLIENT\n      disabled: true\n    - disabled: false\n",
        ));
        let overrides = &t.spec.metrics[0].overrides;
        assert_eq!(overrides[0].metric(), Some(IstioMetric::RequestCount));
        assert_eq!(overrides[0].mode(), WorkloadMode::Client);
        assert_eq!(overrides[0].disabled, Some(true));
        assert_eq!(overrides[1].metric(), Some(IstioMetric::AllMetrics));
        assert_eq!(overrides[1].mode(), WorkloadMode::ClientAndServer);
        // An empty Telemetry changes nothing (valid, as in Istio).
        assert_eq!(one(&doc("v1", "  {}\n")).spec, TelemetrySpec::default());
    }

    #[test]
    fn modes_and_metrics_are_istios_names() {
        for (mode, text, client, server) in [
            (
                WorkloadMode::ClientAndServer,
                "CLIENT_AND_SERVER",
                true,
                true,
            ),
            (WorkloadMode::Client, "CLIENT", true, false),
            (WorkloadMode::Server, "SERVER", false, true),
        ] {
            assert_eq!(mode.as_str(), text);
            assert_eq!(serde_json::to_value(mode).unwrap(), text);
            assert_eq!((mode.client(), mode.server()), (client, server), "{text}");
        }
        assert_eq!(
            serde_json::from_value::<IstioMetric>(serde_json::json!("TCP_OPENED_CONNECTIONS"))
                .unwrap(),
            IstioMetric::TcpOpenedConnections
        );
        assert_eq!(
            IstioMetric::GrpcResponseMessages.prometheus_name(),
            Some("istio_response_messages_total")
        );
        assert_eq!(
            IstioMetric::RequestDuration.prometheus_name(),
            Some("istio_request_duration_milliseconds")
        );
        assert_eq!(IstioMetric::AllMetrics.prometheus_name(), None);
        assert!(IstioMetric::AllMetrics.covers(IstioMetric::TcpSentBytes));
        assert!(!IstioMetric::RequestCount.covers(IstioMetric::RequestSize));
        // A mode or metric Istio does not know is refused by name.
        let e = refused(&doc(
            "v1",
            "  accessLogging:\n  - match:\n      mode: INBOUND\n",
        ));
        assert_eq!(fields(&e), ["spec.accessLogging[0].match.mode"]);
        let e = refused(&doc(
            "v1",
            "  metrics:\n  - overrides:\n    - match:\n        metric: REQUEST_TOTAL\n",
        ));
        assert_eq!(fields(&e), ["spec.metrics[0].overrides[0].match.metric"]);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let typo = refused(&doc("v1", "  tracing:\n  - randomSamplingPercent: 10\n"));
        assert_eq!(
            typo[0].0, "spec.tracing[0].randomSamplingPercent",
            "{typo:?}"
        );
        // Istio 1.11's v1alpha1 logFormat, long gone from Istio's API.
        let old = refused(&doc(
            "v1alpha1",
            "  accessLogging:\n  - logFormat:\n      body: {stringValue: x}\n",
        ));
        assert_eq!(old[0].0, "spec.accessLogging[0].logFormat", "{old:?}");
        let tag = refused(&doc(
            "v1",
            "  tracing:\n  - customTags:\n      t:\n        metadata: {kind: {request: {}}}\n",
        ));
        assert_eq!(tag[0].0, "spec.tracing[0].customTags.t.metadata", "{tag:?}");
        // A provider without its name, a literal without its value: required fields.
        let p = refused(&doc("v1", "  metrics:\n  - providers:\n    - {}\n"));
        assert_eq!(p[0].0, "spec.metrics[0].providers[0]", "{p:?}");
        assert!(p[0].1.contains("missing field `name`"), "{p:?}");
        let s = refused(&doc(
            "v1",
            "  tracing:\n  - randomSamplingPercentage: ten\n",
        ));
        assert_eq!(s[0].0, "spec.tracing[0].randomSamplingPercentage", "{s:?}");
        let v = refused(&doc("v1beta1", "  {}\n"));
        assert_eq!(v[0].0, "apiVersion");
        assert!(
            v[0].1.contains("telemetry.istio.io/v1 or /v1alpha1"),
            "{v:?}"
        );
    }

    #[test]
    fn telemetry_is_checked_as_istio_checks_it_naming_the_field() {
        let e = refused(&doc(
            "v1",
            r#"  tracing:
  - providers:
    - name: ""
    randomSamplingPercentage: 100.5
    customTags:
      "":
        literal: {value: x}
      both:
        literal: {value: x}
        header: {name: x-b}
      empty-env:
        environment: {name: ""}
      empty-header:
        header: {name: ""}
      empty-literal:
        literal: {value: ""}
      none: {}
  - randomSamplingPercentage: -1
  metrics:
  - providers:
    - name: prometheus
    - name: ""
    reportingInterval: 0.5ms
    overrides:
    - match:
        metric: REQUEST_COUNT
        customMetric: my_metric
    - match:
        customMetric: ""
  - reportingInterval: soon
  accessLogging:
  - providers:
    - name: ""
  - filter:
      expression: ""
  - filter:
      expression: response.flags > 0
  - filter:
      expression: response.code >= 400
"#,
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.tracing[0].providers[0].name",
                "spec.tracing[0].randomSamplingPercentage",
                "spec.tracing[0].customTags",
                "spec.tracing[0].customTags.both",
                "spec.tracing[0].customTags.empty-env.environment.name",
                "spec.tracing[0].customTags.empty-header.header.name",
                "spec.tracing[0].customTags.empty-literal.literal.value",
                "spec.tracing[0].customTags.none",
                "spec.tracing[1].randomSamplingPercentage",
                "spec.metrics[0].providers[1].name",
                "spec.metrics[0].overrides[0].match",
                "spec.metrics[0].overrides[1].match.customMetric",
                "spec.metrics[0].reportingInterval",
                "spec.metrics[1].reportingInterval",
                "spec.accessLogging[0].providers[0].name",
                "spec.accessLogging[1].filter.expression",
                "spec.accessLogging[2].filter.expression",
                // What rustmesh does not implement comes last, from the support table (in the
                // schema's field order).
                "spec.metrics[0].overrides[0].match.customMetric",
                "spec.metrics[0].overrides[1].match.customMetric",
            ]
        );
        let message = |field: &str| -> Vec<&str> {
            e.iter()
                .filter(|(f, _)| f == field)
                .map(|(_, m)| m.as_str())
                .collect()
        };
        assert_eq!(
            message("spec.tracing[0].providers[0].name"),
            ["providers.name may not be empty"]
        );
        assert_eq!(
            message("spec.tracing[0].randomSamplingPercentage"),
            ["randomSamplingPercentage must be in range [0.0, 100.0], got 100.5"]
        );
        assert_eq!(
            message("spec.tracing[1].randomSamplingPercentage"),
            ["randomSamplingPercentage must be in range [0.0, 100.0], got -1"]
        );
        assert_eq!(
            message("spec.tracing[0].customTags"),
            ["tag name may not be empty"]
        );
        assert!(message("spec.tracing[0].customTags.both")[0].contains("(got literal and header)"));
        assert!(message("spec.tracing[0].customTags.none")[0].contains("exactly one of"));
        assert_eq!(
            message("spec.metrics[0].overrides[0].match"),
            ["only one of metric or customMetric can be set"]
        );
        assert_eq!(
            message("spec.metrics[0].reportingInterval"),
            ["must be a valid duration greater than 1ms"]
        );
        assert!(message("spec.metrics[1].reportingInterval")[0].contains("invalid duration"));
        assert!(
            message("spec.accessLogging[2].filter.expression")[0]
                .contains("the attribute `response.flags` is not supported")
        );
    }

    #[test]
    fn sampling_bounds_are_inclusive() {
        for p in ["0", "0.01", "100", "100.00"] {
            let t = one(&doc(
                "v1",
                &format!("  tracing:\n  - randomSamplingPercentage: {p}\n"),
            ));
            assert!(
                t.spec.tracing[0].random_sampling_percentage.is_some(),
                "{p}"
            );
        }
        for p in ["100.0001", "-0.01", "1e3"] {
            let e = refused(&doc(
                "v1",
                &format!("  tracing:\n  - randomSamplingPercentage: {p}\n"),
            ));
            assert_eq!(
                fields(&e),
                ["spec.tracing[0].randomSamplingPercentage"],
                "{p}"
            );
        }
    }

    #[test]
    fn tag_overrides_are_checked_as_istio_and_values_must_be_literals() {
        let e = refused(&doc(
            "v1",
            r#"  metrics:
  - overrides:
    - tagOverrides:
        request_host:
          value: request.host
        bad-name:
          operation: REMOVE
        no_value: {}
        upsert_empty:
          operation: UPSERT
          value: ""
        response_code:
          operation: REMOVE
        removed_with_value:
          operation: REMOVE
          value: ""
"#,
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.metrics[0].overrides[0].tagOverrides.bad-name",
                "spec.metrics[0].overrides[0].tagOverrides.no_value.value",
                "spec.metrics[0].overrides[0].tagOverrides.removed_with_value.value",
                "spec.metrics[0].overrides[0].tagOverrides.request_host.value",
                "spec.metrics[0].overrides[0].tagOverrides.upsert_empty.value",
            ]
        );
        assert!(e[0].1.contains("not a Prometheus label name"));
        assert_eq!(
            e[1].1,
            "tagOverrides.value must be set when operation is UPSERT"
        );
        assert_eq!(
            e[2].1,
            "tagOverrides.value may only be set when operation is UPSERT"
        );
        assert!(e[3].1.contains("CEL string literal"), "{e:?}");
        // Istio's documented REMOVE, and an UPSERT of a literal, are accepted.
        let t = one(&doc(
            "v1",
            "  metrics:\n  - overrides:\n    - match:\n        metric: REQUEST_COUNT\n      tagOverrides:\n        response_code:\n          operation: REMOVE\n        team:\n          value: \"'bookinfo'\"\n",
        ));
        assert!(t.spec.validate().is_empty(), "{:?}", t.spec.validate());
    }

    #[test]
    fn fields_rustmesh_does_not_implement_are_refused_or_warned_by_name() {
        let e = refused(&doc(
            "v1",
            "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}\n",
        ));
        assert_eq!(fields(&e), ["spec.targetRef"]);
        assert!(e[0].1.starts_with("not implemented by rustmesh"), "{e:?}");
        let e = refused(&doc(
            "v1",
            "  metrics:\n  - overrides:\n    - match: {customMetric: my_metric}\n      disabled: true\n",
        ));
        assert_eq!(
            fields(&e),
            ["spec.metrics[0].overrides[0].match.customMetric"]
        );
        assert!(e[0].1.contains("no custom metrics"), "{e:?}");
        let e = refused(&doc(
            "v1",
            "  tracing:\n  - customTags:\n      path:\n        formatter: {value: \"%REQ(:path)%\"}\n",
        ));
        assert_eq!(fields(&e), ["spec.tracing[0].customTags.path.formatter"]);
        // enableIstioTags: true and disableContextPropagation: false are what the sidecar
        // does: accepted without a word. The other values are refused.
        let t = one(&doc(
            "v1",
            "  tracing:\n  - enableIstioTags: true\n    disableContextPropagation: false\n",
        ));
        assert!(t.spec.warnings().is_empty());
        let e = refused(&doc(
            "v1",
            "  tracing:\n  - enableIstioTags: false\n    disableContextPropagation: true\n",
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.tracing[0].disableContextPropagation",
                "spec.tracing[0].enableIstioTags"
            ]
        );
        // reportingInterval is accepted with a warning naming it.
        let t = one(&doc(
            "v1",
            "  metrics:\n  - providers: [{name: prometheus}]\n    reportingInterval: 15s\n",
        ));
        let w = t.spec.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "spec.metrics[0].reportingInterval");
        assert!(w[0].message.contains("scraped, not pushed"), "{w:?}");
    }

    #[test]
    fn istios_warnings_name_the_field() {
        let t = one(&doc(
            "v1",
            r#"  selector: {}
  tracing:
  - match: {mode: CLIENT}
    providers: [{name: zipkin}, {name: otel}]
  - match: {mode: SERVER}
  metrics:
  - overrides:
    - tagOverrides: {}
"#,
        ));
        assert_eq!(
            warned(&t),
            [
                "spec.selector.matchLabels",
                "spec.tracing",
                "spec.tracing[0].providers"
            ]
        );
        assert_eq!(t.spec.workload_labels(), None);
        assert_eq!(t.spec.tracing[1].mode(), WorkloadMode::Server);
    }

    #[test]
    fn selector_and_target_refs_are_checked_as_istio() {
        let e = refused(&doc(
            "v1",
            "  selector: {matchLabels: {\"\": x, app: \"a*\"}}\n",
        ));
        assert_eq!(
            fields(&e),
            ["spec.selector.matchLabels", "spec.selector.matchLabels.app"]
        );
        assert!(e[0].1.contains("empty key is not supported"), "{e:?}");
        let e = refused(&doc(
            "v1",
            "  selector: {matchLabels: {app: a}}\n  targetRefs:\n  - {kind: Service, group: \"\", name: reviews}\n",
        ));
        assert_eq!(fields(&e), ["spec.selector", "spec.targetRefs"]);
        assert!(
            e[0].1
                .contains("only one of targetRefs or workloadSelector")
        );
    }
}
