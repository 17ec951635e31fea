//! Istio's standard metrics, with Istio's names, labels and buckets, so existing dashboards and
//! alerts work unchanged:
//!
//! | metric | type | recorded |
//! | --- | --- | --- |
//! | `istio_requests_total` | counter | once per HTTP/gRPC request, when its response ends |
//! | `istio_request_duration_milliseconds` | histogram | same time, request start to response end |
//! | `istio_request_bytes` | histogram | request body bytes |
//! | `istio_response_bytes` | histogram | response body bytes |
//! | `istio_tcp_connections_opened_total` | counter | TCP proxying: connection accepted |
//! | `istio_tcp_connections_closed_total` | counter | TCP proxying: connection closed |
//! | `istio_tcp_sent_bytes_total` | counter | TCP proxying: bytes sent to the downstream |
//! | `istio_tcp_received_bytes_total` | counter | TCP proxying: bytes received from the downstream |
//!
//! One [`Metrics`] per proxy owns the prometheus [`Registry`]; the HTTP code records through it,
//! the TCP proxy calls [`Metrics::tcp_opened`], [`Metrics::tcp_bytes`] and
//! [`Metrics::tcp_closed`], other parts register their own metrics with
//! [`Metrics::register`], and `/stats/prometheus` serves [`Metrics::encode`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::telemetry::Metric;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Istio's `istio_request_duration_milliseconds` buckets.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's `istio_request_bytes` / `istio_response_bytes` buckets.
pub const SIZE_BUCKETS: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

const UNKNOWN: &str = "unknown";

/// Which side of the call this proxy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's sidecar (outbound, 15001).
    Source,
    /// The server's sidecar (inbound, 15006).
    Destination,
}

impl Reporter {
    /// `source` or `destination`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// A workload: this proxy's own, or a peer's learned through metadata exchange
/// (`crate::peer`) or from the endpoint's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// Workload name (the Deployment's, like Istio's `source_workload`).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The pod's labels (of a peer: those the metadata exchange carries).
    pub labels: BTreeMap<String, String>,
    /// The cluster id (`ISTIO_META_CLUSTER_ID`; Istio's default `Kubernetes`), empty when unknown.
    pub cluster: String,
    /// The pod's name, empty when unknown.
    pub pod: String,
}

pub use rustmesh_xds::well_known::{LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION};

impl WorkloadInfo {
    /// The workload behind an endpoint, from the endpoint's metadata.
    pub fn from_endpoint(w: &rustmesh_xds::cluster::EndpointWorkload) -> WorkloadInfo {
        let mut labels = BTreeMap::new();
        for (k, v) in [
            (LABEL_CANONICAL_NAME, &w.canonical_service),
            (LABEL_CANONICAL_REVISION, &w.canonical_revision),
        ] {
            if !v.is_empty() {
                labels.insert(k.to_string(), v.clone());
            }
        }
        WorkloadInfo {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            labels,
            cluster: w.cluster.clone(),
            pod: String::new(),
        }
    }

    fn label_or_unknown(&self, keys: &[&str]) -> &str {
        keys.iter()
            .find_map(|k| self.labels.get(*k).filter(|v| !v.is_empty()))
            .map(String::as_str)
            .unwrap_or(UNKNOWN)
    }

    /// `app` label (or `app.kubernetes.io/name`), else `unknown`.
    pub fn app(&self) -> &str {
        self.label_or_unknown(&["app", "app.kubernetes.io/name"])
    }

    /// `version` label (or `app.kubernetes.io/version`), else `unknown`.
    pub fn version(&self) -> &str {
        self.label_or_unknown(&["version", "app.kubernetes.io/version"])
    }

    /// `service.istio.io/canonical-name` (the injector always sets it), else `unknown`.
    pub fn canonical_service(&self) -> &str {
        self.label_or_unknown(&[LABEL_CANONICAL_NAME])
    }

    /// `service.istio.io/canonical-revision` (the injector always sets it), else `unknown`.
    pub fn canonical_revision(&self) -> &str {
        self.label_or_unknown(&[LABEL_CANONICAL_REVISION])
    }

    /// The cluster id, else `unknown`.
    pub fn cluster_id(&self) -> &str {
        if self.cluster.is_empty() {
            UNKNOWN
        } else {
            &self.cluster
        }
    }

    /// Workload name, else `unknown`.
    pub fn workload(&self) -> &str {
        if self.name.is_empty() {
            UNKNOWN
        } else {
            &self.name
        }
    }

    /// Namespace, else `unknown`.
    pub fn workload_namespace(&self) -> &str {
        if self.namespace.is_empty() {
            UNKNOWN
        } else {
            &self.namespace
        }
    }
}

/// The service behind a cluster (from the cluster's metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationService {
    /// `reviews.default.svc.cluster.local`.
    pub host: String,
    /// `reviews`.
    pub name: String,
    /// `default`.
    pub namespace: String,
    /// DestinationRule subset (`v1`), used as `destination_version` when known.
    pub subset: Option<String>,
}

/// Cluster name → service, for the `destination_service*` labels; and endpoint → workload, for
/// the `destination_*` labels of a call whose server sent no metadata back (`crate::peer`).
#[derive(Debug, Clone, Default)]
pub struct Destinations(
    HashMap<String, DestinationService>,
    HashMap<std::net::SocketAddr, Arc<WorkloadInfo>>,
);

impl Destinations {
    /// Reads every cluster's metadata and every endpoint's. A cluster of several services (an
    /// inbound port several services share) stands for the one that selects this pod (`labels`),
    /// else its first.
    pub fn from_config(config: &ProxyConfig, labels: &BTreeMap<String, String>) -> Self {
        let mut workloads = HashMap::new();
        for ep in config
            .endpoints
            .iter()
            .flat_map(|a| a.endpoints.iter())
            .flat_map(|l| l.lb_endpoints.iter())
        {
            if let Some(w) = ep.workload()
                && let Some(addr) = ep.endpoint.address.socket_addr()
            {
                workloads
                    .entry(addr)
                    .or_insert_with(|| Arc::new(WorkloadInfo::from_endpoint(&w)));
            }
        }
        let mut map = HashMap::new();
        for c in &config.clusters {
            if let Some(md) = &c.metadata
                && let Some(s) = md
                    .services
                    .iter()
                    .find(|s| s.selects(labels))
                    .or(md.services.first())
            {
                map.insert(
                    c.name.clone(),
                    DestinationService {
                        host: s.host.clone(),
                        name: s.name.clone(),
                        namespace: s.namespace.clone(),
                        subset: md.subset.clone().filter(|s| !s.is_empty()),
                    },
                );
            }
        }
        Destinations(map, workloads)
    }

    /// The workload behind an endpoint, from its metadata.
    pub fn workload_at(&self, endpoint: std::net::SocketAddr) -> Option<&Arc<WorkloadInfo>> {
        self.1.get(&endpoint)
    }

    /// The service behind `cluster`.
    pub fn get(&self, cluster: &str) -> Option<&DestinationService> {
        self.0.get(cluster)
    }

    /// Adds or replaces one entry (tests, hand-made configs).
    pub fn insert(&mut self, cluster: impl Into<String>, service: DestinationService) {
        self.0.insert(cluster.into(), service);
    }
}

/// The labels of both sides of a call and of the destination service, which the HTTP and TCP
/// metrics share (encoded in place, between `reporter` and the protocol's own labels).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct PeerLabels {
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
}

/// Labels of the HTTP metrics (Istio's standard set), with a metric's Telemetry label edits.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct HttpLabels {
    pub reporter: String,
    pub peers: PeerLabels,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
    /// `tagOverrides` of the metric this set labels (none: Istio's set as it is).
    pub edit: Option<Arc<LabelEdit>>,
}

/// Labels of the TCP metrics (Istio's standard set), with a metric's Telemetry label edits.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct TcpLabels {
    pub reporter: String,
    pub peers: PeerLabels,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
    /// `tagOverrides` of the metric this set labels (none: Istio's set as it is).
    pub edit: Option<Arc<LabelEdit>>,
}

/// One metric's Telemetry `tagOverrides`: labels removed, labels set (an existing one keeps its
/// place with the new value, a new one comes last).
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct LabelEdit {
    remove: Vec<String>,
    set: Vec<(String, String)>,
}

/// A filter chain's label edits, per metric (`tagOverrides` in its configuration).
#[derive(Debug, Clone, Default)]
pub struct MetricLabels(Vec<(Metric, Arc<LabelEdit>)>);

impl MetricLabels {
    /// The edits of a chain's configuration.
    pub fn of(tags: &rustmesh_xds::telemetry::MetricTags) -> Self {
        MetricLabels(
            tags.iter()
                .map(|(m, t)| {
                    let mut e = LabelEdit::default();
                    for (name, o) in t {
                        match &o.value {
                            Some(v) if !o.remove => e.set.push((name.clone(), v.clone())),
                            _ => e.remove.push(name.clone()),
                        }
                    }
                    (*m, Arc::new(e))
                })
                .collect(),
        )
    }

    fn edit(&self, m: Metric) -> Option<Arc<LabelEdit>> {
        self.0.iter().find(|(x, _)| *x == m).map(|(_, e)| e.clone())
    }

    /// Whether no metric is edited.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PeerLabels {
    fn pairs(&self) -> [(&'static str, &str); 19] {
        [
            ("source_workload", &self.source_workload),
            ("source_canonical_service", &self.source_canonical_service),
            ("source_canonical_revision", &self.source_canonical_revision),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("source_app", &self.source_app),
            ("source_version", &self.source_version),
            ("source_cluster", &self.source_cluster),
            ("destination_workload", &self.destination_workload),
            (
                "destination_canonical_service",
                &self.destination_canonical_service,
            ),
            (
                "destination_canonical_revision",
                &self.destination_canonical_revision,
            ),
            (
                "destination_workload_namespace",
                &self.destination_workload_namespace,
            ),
            ("destination_principal", &self.destination_principal),
            ("destination_app", &self.destination_app),
            ("destination_version", &self.destination_version),
            ("destination_service", &self.destination_service),
            ("destination_service_name", &self.destination_service_name),
            (
                "destination_service_namespace",
                &self.destination_service_namespace,
            ),
            ("destination_cluster", &self.destination_cluster),
        ]
    }
}

/// Encodes Istio's labels in order, with a metric's edits.
fn encode_edited(
    pairs: &[(&str, &str)],
    edit: Option<&LabelEdit>,
    encoder: &mut prometheus_client::encoding::LabelSetEncoder,
) -> std::fmt::Result {
    let Some(e) = edit else {
        return pairs.encode(encoder);
    };
    let mut out: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(k, _)| !e.remove.iter().any(|r| r == k))
        .map(|(k, v)| {
            let v = e
                .set
                .iter()
                .find(|(n, _)| n == k)
                .map_or(*v, |(_, x)| x.as_str());
            (*k, v)
        })
        .collect();
    for (k, v) in &e.set {
        if !pairs.iter().any(|(p, _)| p == k) {
            out.push((k, v));
        }
    }
    out.encode(encoder)
}

impl EncodeLabelSet for HttpLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> std::fmt::Result {
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(26);
        pairs.push(("reporter", &self.reporter));
        pairs.extend(self.peers.pairs());
        pairs.extend([
            ("request_protocol", self.request_protocol.as_str()),
            ("response_code", &self.response_code),
            ("grpc_response_status", &self.grpc_response_status),
            ("response_flags", &self.response_flags),
            (
                "connection_security_policy",
                &self.connection_security_policy,
            ),
        ]);
        encode_edited(&pairs, self.edit.as_deref(), encoder)
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> std::fmt::Result {
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(24);
        pairs.push(("reporter", &self.reporter));
        pairs.extend(self.peers.pairs());
        pairs.extend([
            ("request_protocol", self.request_protocol.as_str()),
            ("response_flags", &self.response_flags),
            (
                "connection_security_policy",
                &self.connection_security_policy,
            ),
        ]);
        encode_edited(&pairs, self.edit.as_deref(), encoder)
    }
}

impl HttpLabels {
    /// The same labels with `m`'s edits of `tags`.
    fn for_metric(&self, tags: &MetricLabels, m: Metric) -> std::borrow::Cow<'_, HttpLabels> {
        match tags.edit(m) {
            None => std::borrow::Cow::Borrowed(self),
            Some(e) => std::borrow::Cow::Owned(HttpLabels {
                edit: Some(e),
                ..self.clone()
            }),
        }
    }
}

impl TcpLabels {
    /// The same labels with `m`'s edits of `tags`.
    fn for_metric(&self, tags: &MetricLabels, m: Metric) -> std::borrow::Cow<'_, TcpLabels> {
        match tags.edit(m) {
            None => std::borrow::Cow::Borrowed(self),
            Some(e) => std::borrow::Cow::Owned(TcpLabels {
                edit: Some(e),
                ..self.clone()
            }),
        }
    }
}

/// What a label set is made of: who reports, this workload, the peer's, the destination
/// service and the principals.
#[derive(Debug, Clone)]
pub struct Peers<'a> {
    /// Which side reports.
    pub reporter: Reporter,
    /// This proxy's workload.
    pub own: &'a WorkloadInfo,
    /// The service of the cluster used (outbound), or this workload's service (inbound).
    pub service: Option<&'a DestinationService>,
    /// `mutual_tls` or `none` (Istio's `connection_security_policy`; only the destination side
    /// knows it, the source side reports `unknown`).
    pub security_policy: &'a str,
    /// The client's SPIFFE id (destination side: the mTLS peer's; source side: this
    /// workload's when it has a certificate), `unknown` when `None`.
    pub source_principal: Option<&'a str>,
    /// The server's SPIFFE id (destination side: this workload's under mTLS; source side: the
    /// mTLS server's, when known), `unknown` when `None`.
    pub destination_principal: Option<&'a str>,
    /// The other side's workload, when known (`crate::peer`: metadata exchange, or the
    /// endpoint's metadata); its labels read `unknown` otherwise.
    pub peer: Option<&'a WorkloadInfo>,
}

/// One side of the call, as its labels read.
struct Side {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    canonical_service: String,
    canonical_revision: String,
    cluster: String,
}

impl Side {
    fn of(w: Option<&WorkloadInfo>) -> Side {
        let unknown = || UNKNOWN.to_string();
        match w {
            Some(w) => Side {
                workload: w.workload().into(),
                namespace: w.workload_namespace().into(),
                app: w.app().into(),
                version: w.version().into(),
                canonical_service: w.canonical_service().into(),
                canonical_revision: w.canonical_revision().into(),
                cluster: w.cluster_id().into(),
            },
            None => Side {
                workload: unknown(),
                namespace: unknown(),
                app: unknown(),
                version: unknown(),
                canonical_service: unknown(),
                canonical_revision: unknown(),
                cluster: unknown(),
            },
        }
    }
}

impl Peers<'_> {
    /// Both sides' labels and the destination service's, as the reporter sees them.
    fn peer_labels(&self) -> PeerLabels {
        let unknown = || UNKNOWN.to_string();
        let svc = self.service;
        let (host, name, ns) = match svc {
            Some(s) => (s.host.clone(), s.name.clone(), s.namespace.clone()),
            None => (unknown(), unknown(), unknown()),
        };
        let own = Side::of(Some(self.own));
        let peer = Side::of(self.peer);
        let (source, destination) = match self.reporter {
            Reporter::Source => {
                let mut destination = peer;
                if self.peer.is_none() {
                    // Without the server's metadata: the service's namespace and the subset.
                    destination.namespace = ns.clone();
                    if let Some(subset) = svc.and_then(|s| s.subset.clone()) {
                        destination.version = subset;
                    }
                }
                (own, destination)
            }
            Reporter::Destination => (peer, own),
        };
        PeerLabels {
            source_workload: source.workload,
            source_canonical_service: source.canonical_service,
            source_canonical_revision: source.canonical_revision,
            source_workload_namespace: source.namespace,
            source_principal: self.source_principal.unwrap_or(UNKNOWN).into(),
            source_app: source.app,
            source_version: source.version,
            source_cluster: source.cluster,
            destination_workload: destination.workload,
            destination_canonical_service: destination.canonical_service,
            destination_canonical_revision: destination.canonical_revision,
            destination_workload_namespace: destination.namespace,
            destination_principal: self.destination_principal.unwrap_or(UNKNOWN).into(),
            destination_app: destination.app,
            destination_version: destination.version,
            destination_service: host,
            destination_service_name: name,
            destination_service_namespace: ns,
            destination_cluster: destination.cluster,
        }
    }

    /// The HTTP label set for one finished request.
    pub fn http_labels(
        &self,
        protocol: &str,
        response_code: u16,
        response_flags: &str,
        grpc_status: Option<&str>,
    ) -> HttpLabels {
        HttpLabels {
            reporter: self.reporter.as_str().into(),
            peers: self.peer_labels(),
            request_protocol: protocol.into(),
            response_code: response_code.to_string(),
            grpc_response_status: grpc_status.unwrap_or("").into(),
            response_flags: flags_label(response_flags),
            connection_security_policy: self.security_policy.into(),
            edit: None,
        }
    }

    /// The TCP label set for one connection.
    pub fn tcp_labels(&self, response_flags: &str) -> TcpLabels {
        TcpLabels {
            reporter: self.reporter.as_str().into(),
            peers: self.peer_labels(),
            request_protocol: "tcp".into(),
            response_flags: flags_label(response_flags),
            connection_security_policy: self.security_policy.into(),
            edit: None,
        }
    }
}

/// `response_flags` as Istio writes it: the flags joined by `,`, or `-` for none.
fn flags_label(flags: &str) -> String {
    if flags.is_empty() {
        "-".into()
    } else {
        flags.into()
    }
}

/// Builds histograms with fixed buckets.
#[derive(Clone, Copy)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The proxy's metrics and the registry that serves them.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<HttpLabels, Counter>,
    duration: Family<HttpLabels, Histogram, Buckets>,
    request_bytes: Family<HttpLabels, Histogram, Buckets>,
    response_bytes: Family<HttpLabels, Histogram, Buckets>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What the Telemetry API says about a filter chain's Istio metrics (`metrics` overrides,
/// `rustmesh_xds::telemetry`): which are off (as a bit set: a disabled metric gets no series at
/// all) and how the others are labelled (`tagOverrides`).
#[derive(Clone, Debug, Default)]
pub struct ChainMetrics {
    disabled: u16,
    tags: MetricLabels,
}

impl ChainMetrics {
    /// The settings of a chain whose configuration disables `disabled` and edits `tags`.
    pub fn of(disabled: &[Metric], tags: &rustmesh_xds::telemetry::MetricTags) -> Self {
        ChainMetrics {
            disabled: disabled.iter().fold(0, |m, d| m | Self::bit(*d)),
            tags: MetricLabels::of(tags),
        }
    }

    fn bit(m: Metric) -> u16 {
        1 << Metric::ALL.iter().position(|x| *x == m).unwrap_or(15)
    }

    /// Whether `m` is recorded.
    pub fn records(&self, m: Metric) -> bool {
        self.disabled & Self::bit(m) == 0
    }
}

/// The request metrics of one label set (see [`Metrics::request_handles`]); `None` for a
/// metric the chain does not record.
#[derive(Debug, Clone)]
pub struct RequestHandles {
    requests: Option<Counter>,
    duration: Option<Histogram>,
    request_bytes: Option<Histogram>,
    response_bytes: Option<Histogram>,
}

impl RequestHandles {
    /// Records one finished request.
    pub fn record(&self, sample: RequestSample) {
        if let Some(c) = &self.requests {
            c.inc();
        }
        if let Some(h) = &self.duration {
            h.observe(sample.duration.as_secs_f64() * 1000.0);
        }
        if let Some(h) = &self.request_bytes {
            h.observe(sample.request_bytes as f64);
        }
        if let Some(h) = &self.response_bytes {
            h.observe(sample.response_bytes as f64);
        }
    }
}

/// One finished HTTP request, for [`Metrics::record_request`].
#[derive(Debug, Clone, Copy)]
pub struct RequestSample {
    /// Request start to response end.
    pub duration: std::time::Duration,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

impl Metrics {
    /// A registry with Istio's metric families registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let duration = Family::new_with_constructor(Buckets(&DURATION_BUCKETS_MS));
        let request_bytes = Family::new_with_constructor(Buckets(&SIZE_BUCKETS));
        let response_bytes = Family::new_with_constructor(Buckets(&SIZE_BUCKETS));
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        // Counters get `_total` appended by the encoder.
        registry.register(
            "istio_requests",
            "Requests handled by the proxy",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body size in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body size in bytes",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream of TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream of TCP connections",
            tcp_received.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
        }
    }

    /// Registers more metrics (admin, config swaps...) into the same registry.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.lock());
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        match self.registry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Everything, in the Prometheus/OpenMetrics text format (for `/stats/prometheus`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.lock());
        out
    }

    /// Records one finished HTTP request.
    pub fn record_request(&self, labels: &HttpLabels, sample: RequestSample) {
        self.request_handles(labels, &ChainMetrics::default())
            .record(sample);
    }

    /// The four request metrics of one label set, to record into without looking the label set
    /// up again (the HTTP server keeps them per connection: building Istio's 20-label set and
    /// hashing it four times per request was a visible share of the sidecar's CPU).
    /// Only the metrics `mask` records get a series, each labelled with its `tags` edits.
    pub fn request_handles(&self, labels: &HttpLabels, mask: &ChainMetrics) -> RequestHandles {
        let l = |m| labels.for_metric(&mask.tags, m);
        RequestHandles {
            requests: mask.records(Metric::RequestCount).then(|| {
                self.requests
                    .get_or_create(&l(Metric::RequestCount))
                    .clone()
            }),
            duration: mask.records(Metric::RequestDuration).then(|| {
                self.duration
                    .get_or_create(&l(Metric::RequestDuration))
                    .clone()
            }),
            request_bytes: mask.records(Metric::RequestSize).then(|| {
                self.request_bytes
                    .get_or_create(&l(Metric::RequestSize))
                    .clone()
            }),
            response_bytes: mask.records(Metric::ResponseSize).then(|| {
                self.response_bytes
                    .get_or_create(&l(Metric::ResponseSize))
                    .clone()
            }),
        }
    }

    /// `istio_requests_total` for exactly these labels.
    pub fn requests_total(&self, labels: &HttpLabels) -> u64 {
        self.requests.get_or_create(labels).get()
    }

    /// A TCP connection was accepted and is being proxied.
    pub fn tcp_opened(&self, labels: &TcpLabels, mask: &ChainMetrics) {
        if mask.records(Metric::TcpOpenedConnections) {
            let l = labels.for_metric(&mask.tags, Metric::TcpOpenedConnections);
            self.tcp_opened.get_or_create(&l).inc();
        }
    }

    /// Bytes moved on a proxied TCP connection since the last call (`sent` = to the downstream).
    pub fn tcp_bytes(&self, labels: &TcpLabels, sent: u64, received: u64, mask: &ChainMetrics) {
        if sent > 0 && mask.records(Metric::TcpSentBytes) {
            let l = labels.for_metric(&mask.tags, Metric::TcpSentBytes);
            self.tcp_sent.get_or_create(&l).inc_by(sent);
        }
        if received > 0 && mask.records(Metric::TcpReceivedBytes) {
            let l = labels.for_metric(&mask.tags, Metric::TcpReceivedBytes);
            self.tcp_received.get_or_create(&l).inc_by(received);
        }
    }

    /// A proxied TCP connection closed.
    pub fn tcp_closed(&self, labels: &TcpLabels, mask: &ChainMetrics) {
        if mask.records(Metric::TcpClosedConnections) {
            let l = labels.for_metric(&mask.tags, Metric::TcpClosedConnections);
            self.tcp_closed.get_or_create(&l).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbound_port_of_several_services_reports_the_one_selecting_this_pod() {
        let config = ProxyConfig::from_json(
            r#"{"clusters": [{"name": "inbound|9080||", "type": "ORIGINAL_DST",
                "lbPolicy": "CLUSTER_PROVIDED", "connectTimeout": "10s",
                "metadata": {"services": [
                  {"host": "productpage.bookinfo.svc.cluster.local", "name": "productpage",
                   "namespace": "bookinfo", "selector": {"app": "productpage"}},
                  {"host": "reviews.bookinfo.svc.cluster.local", "name": "reviews",
                   "namespace": "bookinfo", "selector": {"app": "reviews"}}]}}]}"#,
        )
        .unwrap();
        let labels = |app: &str| {
            BTreeMap::from([
                ("app".to_string(), app.to_string()),
                ("version".to_string(), "v1".to_string()),
            ])
        };
        let name = |app: &str| {
            Destinations::from_config(&config, &labels(app))
                .get("inbound|9080||")
                .map(|s| s.name.clone())
        };
        assert_eq!(name("reviews").as_deref(), Some("reviews"));
        assert_eq!(name("productpage").as_deref(), Some("productpage"));
        // No service selects the pod: the first, as before.
        assert_eq!(name("ratings").as_deref(), Some("productpage"));
    }

    #[test]
    fn names_and_labels_are_istios() {
        let m = Metrics::new();
        let own = WorkloadInfo {
            name: "productpage-v1".into(),
            namespace: "default".into(),
            labels: [("app", "productpage"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let svc = DestinationService {
            host: "reviews.default.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "default".into(),
            subset: Some("v2".into()),
        };
        let peers = Peers {
            reporter: Reporter::Source,
            own: &own,
            service: Some(&svc),
            security_policy: "unknown",
            source_principal: Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
            destination_principal: None,
            peer: None,
        };
        let l = peers.http_labels("http", 200, "", None);
        m.record_request(
            &l,
            RequestSample {
                duration: std::time::Duration::from_millis(3),
                request_bytes: 10,
                response_bytes: 20,
            },
        );
        let t = peers.tcp_labels("");
        m.tcp_opened(&t, &ChainMetrics::default());
        m.tcp_bytes(&t, 5, 7, &ChainMetrics::default());
        m.tcp_closed(&t, &ChainMetrics::default());
        let text = m.encode();
        for needle in [
            "istio_requests_total{reporter=\"source\",source_workload=\"productpage-v1\"",
            "source_app=\"productpage\",source_version=\"v1\"",
            "destination_service=\"reviews.default.svc.cluster.local\"",
            "destination_version=\"v2\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"",
            "destination_principal=\"unknown\"",
            "response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\"",
            "istio_request_duration_milliseconds_bucket{",
            "istio_request_duration_milliseconds_bucket{le=\"5.0\",reporter=\"source\"",
            "istio_request_bytes_sum{",
            "istio_response_bytes_count{",
            "istio_tcp_connections_opened_total{",
            "istio_tcp_connections_closed_total{",
            "istio_tcp_sent_bytes_total{",
            "istio_tcp_received_bytes_total{",
            "request_protocol=\"tcp\"",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(m.requests_total(&l), 1);
    }
}
