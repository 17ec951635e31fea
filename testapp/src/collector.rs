//! A trace collector for tests: it receives spans the way a real tracing backend does and keeps
//! them in memory, so the proxy's tracing tests and the end-to-end suite can check what the proxy
//! sent.
//!
//! Three receivers share one [`Store`]:
//! - **Zipkin v2 JSON** ([`serve_zipkin`]): `POST /api/v2/spans`, a JSON array of Zipkin v2
//!   spans, answered 202. The same port answers a subset of Zipkin's query API, so a test queries
//!   it like a real Zipkin: `GET /api/v2/traces` (`serviceName=`, `spanName=`, `limit=`, default 10
//!   like Zipkin), `GET /api/v2/trace/{traceId}`, `GET /api/v2/services`,
//!   `GET /api/v2/spans?serviceName=`, and `GET /health`.
//! - **OTLP/gRPC** ([`serve_otlp_grpc`]):
//!   `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//! - **OTLP/HTTP** with binary protobuf ([`serve_otlp_http`]): `POST /v1/traces`, answered 200 with
//!   an `ExportTraceServiceResponse`.
//!
//! Every span becomes a [`ReceivedSpan`]. OTLP spans map as a Zipkin exporter maps them: ids to
//! lower-case hex, the kind without its `SPAN_KIND_` prefix, start and end nanoseconds to a
//! timestamp and duration in microseconds (truncated), attributes to tags (strings as they are;
//! integers, booleans and doubles as their text; arrays and maps as JSON; bytes as base64), a
//! status of OK or ERROR to the tag `otel.status_code` (ERROR's message to `error`), and the
//! resource attribute `service.name` to the service. Span events, links and the scope are dropped.
//! OTLP spans show up in the query API too, converted to Zipkin's shape (`kind` only when it is
//! one Zipkin knows: CLIENT, SERVER, PRODUCER, CONSUMER).
//!
//! It checks what it receives as strictly as the protocols say, because catching a proxy that
//! sends something a real backend would refuse is the point:
//! - Zipkin: ids must be lower-case hex (trace id 16 or 32 characters, span and parent ids 16)
//!   and `kind` one of the four; one bad span refuses the whole batch with 400 naming it. Unlike
//!   Zipkin, names are kept as received (not lower-cased); the `serviceName` query matches them
//!   ignoring case, as Zipkin's does.
//! - OTLP: a span whose trace id is not 16 bytes, whose span id is not 8 bytes (or either all
//!   zero), or whose parent id is neither empty nor 8 bytes is rejected through the response's
//!   `partial_success`, and the others are kept.
//! - Bodies over 4 MiB ([`MAX_BODY`]) are refused with 413 (gRPC: `OUT_OF_RANGE`, tonic's
//!   answer). Compressed bodies, Zipkin's proto3 and thrift encodings and OTLP/HTTP's JSON
//!   encoding are not supported: 415 says so.
//!
//! The store keeps the last [`MAX_SPANS`] spans; the query API has no time window (`endTs` and
//! `lookback` are ignored). Only errors are logged: a refused request or rejected OTLP spans, one
//! line each (the `collector` command adds its startup line).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode as OtelCode};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// [`ReceivedSpan::protocol`] of a span received as Zipkin v2 JSON.
pub const ZIPKIN: &str = "zipkin";
/// [`ReceivedSpan::protocol`] of a span received over OTLP/gRPC.
pub const OTLP_GRPC: &str = "otlp-grpc";
/// [`ReceivedSpan::protocol`] of a span received over OTLP/HTTP.
pub const OTLP_HTTP: &str = "otlp-http";

/// The largest request body (or gRPC message) accepted: 4 MiB.
pub const MAX_BODY: usize = 4 << 20;

/// How many spans the [`Store`] keeps; past that the oldest are dropped.
pub const MAX_SPANS: usize = 100_000;

/// Past [`MAX_BODY`], how much of a body is still read (and thrown away) before the 413, so a
/// client that writes its whole body before reading gets the answer instead of a reset.
const DRAIN_MAX: usize = 64 << 20;

/// The `limit` of `GET /api/v2/traces` when none is given, as in Zipkin.
pub const DEFAULT_TRACE_LIMIT: usize = 10;

/// One span as received, whatever the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceivedSpan {
    /// Lower-case hex: 16 or 32 characters (Zipkin), 32 (OTLP).
    pub trace_id: String,
    /// Lower-case hex, 16 characters.
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    /// `CLIENT`, `SERVER`, `PRODUCER`, `CONSUMER`; over OTLP also `INTERNAL` or `UNSPECIFIED`;
    /// empty for a Zipkin span without a kind.
    pub kind: String,
    /// Zipkin's `localEndpoint.serviceName`, OTLP's resource attribute `service.name`; empty
    /// without one.
    pub service: String,
    /// Start, microseconds since the Unix epoch (0 if the span had none).
    pub timestamp_us: u64,
    pub duration_us: u64,
    pub tags: BTreeMap<String, String>,
    /// [`ZIPKIN`] ("zipkin"), [`OTLP_GRPC`] ("otlp-grpc") or [`OTLP_HTTP`] ("otlp-http").
    /// Serialized as that text; deserializing any other text is an error.
    #[serde(deserialize_with = "protocol_from_text")]
    pub protocol: Protocol,
}

/// `&'static str`, under a name so that serde's derive does not take the field for text borrowed
/// from the input (which would make [`ReceivedSpan`] deserializable only from `'static` data).
pub type Protocol = &'static str;

fn protocol_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    let text = String::deserialize(d)?;
    [ZIPKIN, OTLP_GRPC, OTLP_HTTP]
        .into_iter()
        .find(|p| *p == text)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "protocol {text:?} is not {ZIPKIN}, {OTLP_GRPC} or {OTLP_HTTP}"
            ))
        })
}

/// A span in Zipkin's v2 JSON shape: what `POST /api/v2/spans` takes and the query API answers.
/// Empty fields are left out when serialized, as Zipkin does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZipkinSpan {
    pub trace_id: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Microseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// A Zipkin endpoint: who sent the span (`localEndpoint`) or who was on the other side
/// (`remoteEndpoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A Zipkin annotation: an event at a time (microseconds) in the span.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub timestamp: u64,
    pub value: String,
}

const ZIPKIN_KINDS: [&str; 4] = ["CLIENT", "SERVER", "PRODUCER", "CONSUMER"];

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ZipkinSpan {
    /// What Zipkin requires of a span: lower-case hex ids of the right lengths and a known kind.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.trace_id;
        if !(t.len() == 16 || t.len() == 32) || !is_lower_hex(t) {
            return Err(format!(
                "traceId {t:?} is not 16 or 32 lower-case hex characters"
            ));
        }
        let id_ok = |s: &str| s.len() == 16 && is_lower_hex(s);
        if !id_ok(&self.id) {
            return Err(format!(
                "id {:?} is not 16 lower-case hex characters",
                self.id
            ));
        }
        if let Some(p) = self.parent_id.as_deref().filter(|p| !id_ok(p)) {
            return Err(format!(
                "parentId {p:?} is not 16 lower-case hex characters"
            ));
        }
        if let Some(k) = self.kind.as_deref().filter(|k| !ZIPKIN_KINDS.contains(k)) {
            return Err(format!(
                "kind {k:?} is not CLIENT, SERVER, PRODUCER or CONSUMER"
            ));
        }
        Ok(())
    }

    fn service(&self) -> Option<&str> {
        self.local_endpoint.as_ref()?.service_name.as_deref()
    }

    fn received(&self) -> ReceivedSpan {
        ReceivedSpan {
            trace_id: self.trace_id.clone(),
            id: self.id.clone(),
            parent_id: self.parent_id.clone(),
            name: self.name.clone().unwrap_or_default(),
            kind: self.kind.clone().unwrap_or_default(),
            service: self.service().unwrap_or_default().to_string(),
            timestamp_us: self.timestamp.unwrap_or(0),
            duration_us: self.duration.unwrap_or(0),
            tags: self.tags.clone(),
            protocol: ZIPKIN,
        }
    }
}

/// A JSON array of Zipkin v2 spans, each checked by [`ZipkinSpan::validate`]; the error names
/// what is wrong (serde's message with line and column, or the span and field).
pub fn parse_zipkin(body: &[u8]) -> Result<Vec<ZipkinSpan>, String> {
    let spans: Vec<ZipkinSpan> = serde_json::from_slice(body)
        .map_err(|e| format!("not a JSON array of Zipkin v2 spans: {e}"))?;
    for (i, s) in spans.iter().enumerate() {
        s.validate().map_err(|e| format!("span {i}: {e}"))?;
    }
    Ok(spans)
}

/// A stored span: Zipkin's are kept whole (endpoints, annotations and `shared` are only in the
/// query API's answers), OTLP's as mapped.
enum Stored {
    Zipkin(ZipkinSpan),
    Otlp(ReceivedSpan),
}

impl Stored {
    fn received(&self) -> ReceivedSpan {
        match self {
            Stored::Zipkin(z) => z.received(),
            Stored::Otlp(r) => r.clone(),
        }
    }

    fn zipkin(&self) -> ZipkinSpan {
        let r = match self {
            Stored::Zipkin(z) => return z.clone(),
            Stored::Otlp(r) => r,
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ZipkinSpan {
            trace_id: r.trace_id.clone(),
            id: r.id.clone(),
            parent_id: r.parent_id.clone(),
            name: some(&r.name),
            kind: ZIPKIN_KINDS
                .contains(&r.kind.as_str())
                .then(|| r.kind.clone()),
            timestamp: (r.timestamp_us != 0).then_some(r.timestamp_us),
            duration: (r.duration_us != 0).then_some(r.duration_us),
            local_endpoint: some(&r.service).map(|s| Endpoint {
                service_name: Some(s),
                ..Endpoint::default()
            }),
            tags: r.tags.clone(),
            ..ZipkinSpan::default()
        }
    }

    fn trace_id(&self) -> &str {
        match self {
            Stored::Zipkin(z) => &z.trace_id,
            Stored::Otlp(r) => &r.trace_id,
        }
    }

    fn service(&self) -> &str {
        match self {
            Stored::Zipkin(z) => z.service().unwrap_or_default(),
            Stored::Otlp(r) => &r.service,
        }
    }

    fn name(&self) -> &str {
        match self {
            Stored::Zipkin(z) => z.name.as_deref().unwrap_or_default(),
            Stored::Otlp(r) => &r.name,
        }
    }

    fn timestamp_us(&self) -> u64 {
        match self {
            Stored::Zipkin(z) => z.timestamp.unwrap_or(0),
            Stored::Otlp(r) => r.timestamp_us,
        }
    }
}

/// What `GET /api/v2/traces` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceQuery {
    /// Traces with a span of this local service (ignoring case, as Zipkin does).
    pub service_name: Option<String>,
    /// Traces with a span of this name (of `service_name`'s service, if given).
    pub span_name: Option<String>,
    /// At most this many traces, the newest first.
    pub limit: usize,
}

impl Default for TraceQuery {
    fn default() -> Self {
        TraceQuery {
            service_name: None,
            span_name: None,
            limit: DEFAULT_TRACE_LIMIT,
        }
    }
}

#[derive(Default)]
struct State {
    spans: VecDeque<Stored>,
    batches: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken on every batch, for [`Store::wait_for`].
    added: tokio::sync::Notify,
}

/// The spans all receivers write to: the last [`MAX_SPANS`], oldest dropped first. Clones share
/// the same spans.
#[derive(Clone, Default)]
pub struct Store {
    shared: Arc<Shared>,
}

impl Store {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: still good to read.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One accepted export request (possibly empty).
    fn record(&self, spans: impl IntoIterator<Item = Stored>) {
        {
            let mut state = self.state();
            state.batches += 1;
            state.spans.extend(spans);
            let excess = state.spans.len().saturating_sub(MAX_SPANS);
            state.spans.drain(..excess);
        }
        self.shared.added.notify_waiters();
    }

    /// The spans held, oldest first.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state().spans.iter().map(Stored::received).collect()
    }

    /// How many export requests were accepted, all protocols together (refused ones not counted).
    pub fn batches(&self) -> usize {
        self.state().batches
    }

    /// Forgets all spans and batches (a collector shared by several test cases).
    pub fn clear(&self) {
        let mut state = self.state();
        state.spans.clear();
        state.batches = 0;
    }

    /// The spans as soon as there are at least `n`, or what there is after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let added = self.shared.added.notified();
            tokio::pin!(added);
            // Registered before the count is read, so a batch in between still wakes us.
            added.as_mut().enable();
            if self.state().spans.len() >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                break;
            }
        }
        self.spans()
    }

    /// The spans of one trace in Zipkin's shape, in the order received; empty if unknown.
    /// `trace_id` is compared ignoring case.
    pub fn trace(&self, trace_id: &str) -> Vec<ZipkinSpan> {
        let id = trace_id.to_ascii_lowercase();
        self.state()
            .spans
            .iter()
            .filter(|s| s.trace_id() == id)
            .map(Stored::zipkin)
            .collect()
    }

    /// Traces (each its spans in the order received) matching `query`, the newest first (by
    /// their earliest span's timestamp), at most `query.limit`.
    pub fn traces(&self, query: &TraceQuery) -> Vec<Vec<ZipkinSpan>> {
        let state = self.state();
        let mut order: Vec<&str> = Vec::new();
        let mut by_trace: HashMap<&str, Vec<&Stored>> = HashMap::new();
        for s in &state.spans {
            by_trace
                .entry(s.trace_id())
                .or_insert_with(|| {
                    order.push(s.trace_id());
                    Vec::new()
                })
                .push(s);
        }
        let matches = |s: &Stored| {
            query
                .service_name
                .as_deref()
                .is_none_or(|want| s.service().eq_ignore_ascii_case(want))
                && query
                    .span_name
                    .as_deref()
                    .is_none_or(|want| s.name() == want)
        };
        let mut traces: Vec<&Vec<&Stored>> = order
            .iter()
            .map(|id| &by_trace[id])
            .filter(|spans| spans.iter().any(|s| matches(s)))
            .collect();
        let start = |spans: &Vec<&Stored>| spans.iter().map(|s| s.timestamp_us()).min();
        // Stable: traces starting at the same time stay in the order they arrived.
        traces.sort_by_key(|spans| std::cmp::Reverse(start(spans)));
        traces
            .into_iter()
            .take(query.limit)
            .map(|spans| spans.iter().map(|s| s.zipkin()).collect())
            .collect()
    }

    /// The distinct non-empty service names, sorted.
    pub fn services(&self) -> Vec<String> {
        let state = self.state();
        let names: BTreeSet<&str> = state
            .spans
            .iter()
            .map(Stored::service)
            .filter(|s| !s.is_empty())
            .collect();
        names.into_iter().map(str::to_string).collect()
    }

    /// The distinct non-empty span names of a service (ignoring case), sorted.
    pub fn span_names(&self, service: &str) -> Vec<String> {
        let state = self.state();
        let names: BTreeSet<&str> = state
            .spans
            .iter()
            .filter(|s| s.service().eq_ignore_ascii_case(service))
            .map(Stored::name)
            .filter(|s| !s.is_empty())
            .collect();
        names.into_iter().map(str::to_string).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// OTLP mapping

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Standard base64 with padding (RFC 4648), for bytes attributes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// An attribute value as JSON (inside arrays and maps).
fn any_value_json(v: &AnyValue) -> serde_json::Value {
    use any_value::Value as V;
    use serde_json::Value as J;
    match &v.value {
        Some(V::StringValue(s)) => J::String(s.clone()),
        Some(V::BoolValue(b)) => J::Bool(*b),
        Some(V::IntValue(i)) => J::from(*i),
        Some(V::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(J::Number)
            .unwrap_or_else(|| J::String(d.to_string())),
        Some(V::BytesValue(b)) => J::String(base64(b)),
        Some(V::ArrayValue(a)) => J::Array(a.values.iter().map(any_value_json).collect()),
        Some(V::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map(any_value_json).unwrap_or(J::Null);
                    (kv.key.clone(), v)
                })
                .collect(),
        ),
        // A profiles-only string table reference: the spec says treat it as absent.
        Some(V::StringValueStrindex(_)) | None => J::Null,
    }
}

/// An attribute value as a tag: strings as they are, numbers and booleans as text, arrays and
/// maps as JSON, bytes as base64, nothing as "".
fn any_value_text(v: Option<&AnyValue>) -> String {
    use any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        Some(V::StringValue(s)) => s.clone(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
        Some(V::BytesValue(b)) => base64(b),
        Some(V::ArrayValue(_) | V::KvlistValue(_)) => {
            any_value_json(v.expect("matched a value")).to_string()
        }
        Some(V::StringValueStrindex(_)) | None => String::new(),
    }
}

fn kind_name(kind: i32) -> String {
    match SpanKind::try_from(kind) {
        Ok(k) => k.as_str_name().trim_start_matches("SPAN_KIND_").to_string(),
        Err(_) => format!("UNKNOWN({kind})"),
    }
}

/// Why OTLP says this span is invalid, if it is.
fn invalid_ids(span: &Span) -> Option<String> {
    let zero = |b: &[u8]| b.iter().all(|b| *b == 0);
    if span.trace_id.len() != 16 || zero(&span.trace_id) {
        return Some(format!(
            "trace_id {} is not 16 bytes, not all zero",
            hex(&span.trace_id)
        ));
    }
    if span.span_id.len() != 8 || zero(&span.span_id) {
        return Some(format!(
            "span_id {} is not 8 bytes, not all zero",
            hex(&span.span_id)
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Some(format!(
            "parent_span_id {} is neither empty nor 8 bytes",
            hex(&span.parent_span_id)
        ));
    }
    None
}

fn otlp_span(span: &Span, service: &str, protocol: &'static str) -> ReceivedSpan {
    let mut tags: BTreeMap<String, String> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
        .collect();
    if let Some(status) = &span.status {
        match OtelCode::try_from(status.code) {
            Ok(OtelCode::Ok) => {
                tags.entry("otel.status_code".into())
                    .or_insert_with(|| "OK".into());
            }
            Ok(OtelCode::Error) => {
                tags.entry("otel.status_code".into())
                    .or_insert_with(|| "ERROR".into());
                tags.entry("error".into())
                    .or_insert_with(|| status.message.clone());
            }
            _ => {}
        }
    }
    ReceivedSpan {
        trace_id: hex(&span.trace_id),
        id: hex(&span.span_id),
        parent_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
        name: span.name.clone(),
        kind: kind_name(span.kind),
        service: service.to_string(),
        timestamp_us: span.start_time_unix_nano / 1000,
        duration_us: span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano)
            / 1000,
        tags,
        protocol,
    }
}

fn service_name(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .map(|kv| any_value_text(kv.value.as_ref()))
        .unwrap_or_default()
}

/// Records the valid spans of an OTLP export as one batch and answers it: a partial success
/// counting (and explaining) the spans refused, if any.
fn record_otlp(
    store: &Store,
    request: &ExportTraceServiceRequest,
    protocol: &'static str,
) -> ExportTraceServiceResponse {
    let mut spans = Vec::new();
    let mut rejected = 0i64;
    let mut first_reason = None;
    for rs in &request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .map(|r| service_name(&r.attributes))
            .unwrap_or_default();
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            match invalid_ids(span) {
                None => spans.push(Stored::Otlp(otlp_span(span, &service, protocol))),
                Some(reason) => {
                    rejected += 1;
                    first_reason.get_or_insert(reason);
                }
            }
        }
    }
    store.record(spans);
    let partial_success = first_reason.map(|reason| {
        let error_message = format!("{rejected} span(s) rejected, the first because its {reason}");
        eprintln!("testapp: collector: {protocol}: {error_message}");
        ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message,
        }
    });
    ExportTraceServiceResponse { partial_success }
}

// ---------------------------------------------------------------------------------------------
// Receivers

/// Serves Zipkin's `POST /api/v2/spans` and query API (and `GET /health`) on `listener`, HTTP/1.1
/// and h2c, until the task is dropped.
pub async fn serve_zipkin(listener: TcpListener, store: Store) -> std::io::Result<()> {
    serve_http(listener, store, Port::Zipkin).await
}

/// Serves OTLP/HTTP's `POST /v1/traces` (binary protobuf; and `GET /health`) on `listener`,
/// HTTP/1.1 and h2c, until the task is dropped.
pub async fn serve_otlp_http(listener: TcpListener, store: Store) -> std::io::Result<()> {
    serve_http(listener, store, Port::OtlpHttp).await
}

/// Serves OTLP/gRPC's trace service on `listener` until the task is dropped.
pub async fn serve_otlp_grpc(listener: TcpListener, store: Store) -> anyhow::Result<()> {
    let service = TraceServiceServer::new(Grpc { store }).max_decoding_message_size(MAX_BODY);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

struct Grpc {
    store: Store,
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let response = record_otlp(&self.store, request.get_ref(), OTLP_GRPC);
        Ok(tonic::Response::new(response))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Zipkin,
    OtlpHttp,
}

async fn serve_http(listener: TcpListener, store: Store, port: Port) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let store = store.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(req, store.clone(), port, peer));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allow}"),
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

/// OTLP/HTTP's error answer: a `google.rpc.Status` in the request's encoding.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC's `INVALID_ARGUMENT`, the code of a request OTLP/HTTP refuses.
const INVALID_ARGUMENT: i32 = 3;

fn otlp_error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let body = RpcStatus {
        code: INVALID_ARGUMENT,
        message,
    }
    .encode_to_vec();
    respond(status, "application/x-protobuf", body)
}

/// A request refused: status and a message naming why.
struct Refusal(StatusCode, String);

/// The media type of the request, lower-cased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(http::header::CONTENT_TYPE)?;
    let ct = String::from_utf8_lossy(ct.as_bytes());
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn check_encoding(headers: &HeaderMap) -> Result<(), Refusal> {
    match headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.to_str())
    {
        None => Ok(()),
        Some(Ok(e)) if e.trim().eq_ignore_ascii_case("identity") => Ok(()),
        Some(e) => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-encoding {:?} is not supported; send the body uncompressed",
                e.unwrap_or("?")
            ),
        )),
    }
}

/// The body, up to `limit` bytes. Past it, a little more is read and thrown away (up to
/// [`DRAIN_MAX`]) so the 413 reaches a client still writing.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, Refusal> {
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_MAX {
                break;
            }
        }
    }
    if total > limit {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body ({total} bytes or more) is over the limit of {limit} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn receive_zipkin(req: Request<Incoming>, store: &Store) -> Result<(), Refusal> {
    // Like Zipkin, anything but a binary encoding is read as JSON (`curl -d` sends a form type).
    match media_type(req.headers()) {
        Some(other) if other.contains("protobuf") || other.contains("thrift") => {
            return Err(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-type {other:?} is not supported; send Zipkin v2 JSON"),
            ));
        }
        _ => {}
    }
    let body = checked_body(req).await?;
    let spans = parse_zipkin(&body).map_err(|e| Refusal(StatusCode::BAD_REQUEST, e))?;
    store.record(spans.into_iter().map(Stored::Zipkin));
    Ok(())
}

/// An export's body: uncompressed, and within [`MAX_BODY`] (refused before reading when its
/// `content-length` says it is far over).
async fn checked_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    check_encoding(req.headers())?;
    if content_length(req.headers()).is_some_and(|n| n > DRAIN_MAX as u64) {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {MAX_BODY} bytes"),
        ));
    }
    read_body(req.into_body(), MAX_BODY).await
}

async fn receive_otlp_http(
    req: Request<Incoming>,
    store: &Store,
) -> Result<ExportTraceServiceResponse, Refusal> {
    match media_type(req.headers()).as_deref() {
        Some("application/x-protobuf") => {}
        Some("application/json") => {
            return Err(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "OTLP/HTTP JSON is not supported; send application/x-protobuf".into(),
            ));
        }
        other => {
            return Err(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-type {other:?} is not supported; send application/x-protobuf"),
            ));
        }
    }
    let body = checked_body(req).await?;
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("not an ExportTraceServiceRequest: {e}"),
        )
    })?;
    Ok(record_otlp(store, &request, OTLP_HTTP))
}

/// `name=value` pairs of a query string, percent-decoded (`+` is a space).
fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_byte = || {
            let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            u8::from_str_radix(h, 16).ok()
        };
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if hex_byte().is_some() => {
                out.push(hex_byte().expect("checked"));
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn trace_query(query: &str) -> Result<TraceQuery, String> {
    let mut q = TraceQuery::default();
    for (k, v) in query_params(query) {
        match k.as_str() {
            "serviceName" if !v.is_empty() => q.service_name = Some(v),
            "spanName" if !v.is_empty() && v != "all" => q.span_name = Some(v),
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("limit {v:?} is not a positive number"))?;
            }
            _ => {}
        }
    }
    Ok(q)
}

async fn handle(
    req: Request<Incoming>,
    store: Store,
    port: Port,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = *req.method() == Method::POST;
    let refused = |what: &str, r: &Refusal| {
        eprintln!(
            "testapp: collector: refused {what} from {peer}: {}: {}",
            r.0, r.1
        );
    };
    let resp = match (port, path.as_str()) {
        (_, "/health") if get => json(&serde_json::json!({"status": "UP"})),
        (_, "/health") => method_not_allowed("GET"),
        (Port::Zipkin, "/api/v2/spans") if post => match receive_zipkin(req, &store).await {
            Ok(()) => respond(StatusCode::ACCEPTED, "text/plain", Bytes::new()),
            Err(r) => {
                refused("Zipkin spans", &r);
                text(r.0, &r.1)
            }
        },
        (Port::Zipkin, "/api/v2/spans") if get => {
            let service = query_params(&query)
                .into_iter()
                .find(|(k, v)| k == "serviceName" && !v.is_empty());
            match service {
                Some((_, s)) => json(&store.span_names(&s)),
                None => text(StatusCode::BAD_REQUEST, "serviceName is required"),
            }
        }
        (Port::Zipkin, "/api/v2/spans") => method_not_allowed("GET, POST"),
        (Port::Zipkin, "/api/v2/traces") if get => match trace_query(&query) {
            Ok(q) => json(&store.traces(&q)),
            Err(e) => text(StatusCode::BAD_REQUEST, &e),
        },
        (Port::Zipkin, "/api/v2/services") if get => json(&store.services()),
        (Port::Zipkin, p) if p.starts_with("/api/v2/trace/") && get => {
            let id = p.trim_start_matches("/api/v2/trace/").to_ascii_lowercase();
            if !(id.len() == 16 || id.len() == 32) || !is_lower_hex(&id) {
                text(
                    StatusCode::BAD_REQUEST,
                    &format!("trace id {id:?} is not 16 or 32 hex characters"),
                )
            } else {
                match store.trace(&id) {
                    spans if spans.is_empty() => {
                        text(StatusCode::NOT_FOUND, &format!("trace {id} not found"))
                    }
                    spans => json(&spans),
                }
            }
        }
        (Port::Zipkin, p)
            if p == "/api/v2/traces"
                || p == "/api/v2/services"
                || p.starts_with("/api/v2/trace/") =>
        {
            method_not_allowed("GET")
        }
        (Port::OtlpHttp, "/v1/traces") if post => match receive_otlp_http(req, &store).await {
            Ok(answer) => respond(
                StatusCode::OK,
                "application/x-protobuf",
                answer.encode_to_vec(),
            ),
            Err(r) => {
                refused("OTLP/HTTP spans", &r);
                otlp_error(r.0, r.1)
            }
        },
        (Port::OtlpHttp, "/v1/traces") => method_not_allowed("POST"),
        _ => text(StatusCode::NOT_FOUND, &format!("no {path} here")),
    };
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use serde_json::json;

    /// A store with all three receivers on 127.0.0.1.
    struct Collector {
        store: Store,
        zipkin: String,
        grpc: String,
        otlp_http: String,
    }

    async fn start() -> Collector {
        let store = Store::default();
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (z, g, h) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let url = |l: &TcpListener| format!("http://{}", l.local_addr().unwrap());
        let c = Collector {
            store: store.clone(),
            zipkin: url(&z),
            grpc: url(&g),
            otlp_http: url(&h),
        };
        tokio::spawn(serve_zipkin(z, store.clone()));
        tokio::spawn(serve_otlp_grpc(g, store.clone()));
        tokio::spawn(serve_otlp_http(h, store));
        c
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    async fn request(
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Answer {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let resp = client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(url: &str) -> Answer {
        request(Method::GET, url, None, Bytes::new()).await
    }

    async fn post_zipkin(c: &Collector, body: impl Into<Bytes>) -> Answer {
        let url = format!("{}/api/v2/spans", c.zipkin);
        request(Method::POST, &url, Some("application/json"), body).await
    }

    async fn post_otlp(c: &Collector, content_type: &str, body: impl Into<Bytes>) -> Answer {
        let url = format!("{}/v1/traces", c.otlp_http);
        request(Method::POST, &url, Some(content_type), body).await
    }

    const TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";

    /// An Envoy-like client span and the server span sharing its id (B3), with endpoints,
    /// annotations and `shared`.
    fn zipkin_batch() -> serde_json::Value {
        json!([
            {
                "traceId": TRACE,
                "id": "a2fb4a1d1a96d312",
                "parentId": "0020000000000001",
                "name": "reviews.default.svc.cluster.local:9080/*",
                "kind": "CLIENT",
                "timestamp": 1_700_000_000_000_100u64,
                "duration": 2500,
                "localEndpoint": {"serviceName": "productpage.default", "ipv4": "10.1.0.5"},
                "remoteEndpoint": {"ipv4": "10.1.0.9", "port": 9080},
                "tags": {"http.status_code": "200", "upstream_cluster": "outbound|9080||reviews"}
            },
            {
                "traceId": TRACE,
                "id": "a2fb4a1d1a96d312",
                "parentId": "0020000000000001",
                "name": "reviews.default.svc.cluster.local:9080/*",
                "kind": "SERVER",
                "timestamp": 1_700_000_000_000_400u64,
                "duration": 1800,
                "localEndpoint": {"serviceName": "reviews.default"},
                "annotations": [{"timestamp": 1_700_000_000_000_500u64, "value": "ws"}],
                "shared": true
            }
        ])
    }

    #[tokio::test]
    async fn zipkin_spans_are_stored_and_answered_by_the_query_api() {
        let c = start().await;
        let batch = zipkin_batch();
        let a = post_zipkin(&c, serde_json::to_vec(&batch).unwrap()).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text());

        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let expected = vec![
            ReceivedSpan {
                trace_id: TRACE.into(),
                id: "a2fb4a1d1a96d312".into(),
                parent_id: Some("0020000000000001".into()),
                name: "reviews.default.svc.cluster.local:9080/*".into(),
                kind: "CLIENT".into(),
                service: "productpage.default".into(),
                timestamp_us: 1_700_000_000_000_100,
                duration_us: 2500,
                tags: tags(&[
                    ("http.status_code", "200"),
                    ("upstream_cluster", "outbound|9080||reviews"),
                ]),
                protocol: ZIPKIN,
            },
            ReceivedSpan {
                trace_id: TRACE.into(),
                id: "a2fb4a1d1a96d312".into(),
                parent_id: Some("0020000000000001".into()),
                name: "reviews.default.svc.cluster.local:9080/*".into(),
                kind: "SERVER".into(),
                service: "reviews.default".into(),
                timestamp_us: 1_700_000_000_000_400,
                duration_us: 1800,
                tags: BTreeMap::new(),
                protocol: ZIPKIN,
            },
        ];
        assert_eq!(c.store.spans(), expected);
        assert_eq!(c.store.batches(), 1);

        // The query API gives the spans back as sent, endpoints, annotations and `shared` too;
        // the trace id is matched ignoring case.
        let a = get(&format!(
            "{}/api/v2/trace/{}",
            c.zipkin,
            TRACE.to_uppercase()
        ))
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.headers[http::header::CONTENT_TYPE], "application/json");
        assert_eq!(a.json(), batch);

        let a = get(&format!("{}/api/v2/services", c.zipkin)).await;
        assert_eq!(a.json(), json!(["productpage.default", "reviews.default"]));
        let a = get(&format!(
            "{}/api/v2/spans?serviceName=reviews.default",
            c.zipkin
        ))
        .await;
        assert_eq!(
            a.json(),
            json!(["reviews.default.svc.cluster.local:9080/*"])
        );
        let a = get(&format!("{}/health", c.zipkin)).await;
        assert_eq!(a.status, StatusCode::OK);

        // Unknown and malformed trace ids.
        let a = get(&format!("{}/api/v2/trace/{}", c.zipkin, "0".repeat(32))).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        let a = get(&format!("{}/api/v2/trace/xyz", c.zipkin)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
    }

    /// A one-span Zipkin batch of exactly `len` bytes (padded in a tag).
    fn zipkin_body_of(len: usize) -> Vec<u8> {
        let head = format!(r#"[{{"traceId":"{TRACE}","id":"a2fb4a1d1a96d312","tags":{{"pad":""#);
        let tail = r#""}}]"#;
        let mut body = head.into_bytes();
        body.resize(len - tail.len(), b'x');
        body.extend_from_slice(tail.as_bytes());
        assert_eq!(body.len(), len);
        body
    }

    #[tokio::test]
    async fn zipkin_refuses_a_body_over_4_mib() {
        let c = start().await;
        let a = post_zipkin(&c, zipkin_body_of(MAX_BODY + 1)).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
        assert!(a.text().contains("limit"), "{}", a.text());
        assert!(c.store.spans().is_empty());
        assert_eq!(c.store.batches(), 0, "a refused request is not a batch");

        // Exactly at the limit is fine.
        let a = post_zipkin(&c, zipkin_body_of(MAX_BODY)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text());
        let spans = c.store.spans();
        assert_eq!(spans.len(), 1);
        assert!(spans[0].tags["pad"].len() > MAX_BODY - 100);
    }

    #[tokio::test]
    async fn zipkin_refuses_malformed_batches_naming_the_problem() {
        let c = start().await;
        let ok = r#""traceId":"463ac35c9f6413ad48485a3953bb6124","id":"a2fb4a1d1a96d312""#;
        let cases = [
            ("[{", "EOF"),
            (r#"{"traceId":"463ac35c9f6413ad"}"#, "expected a sequence"),
            (r#"[{"id":"a2fb4a1d1a96d312"}]"#, "missing field `traceId`"),
            (
                r#"[{"traceId":"463AC35C9F6413AD","id":"a2fb4a1d1a96d312"}]"#,
                "traceId \"463AC35C9F6413AD\"",
            ),
            (
                r#"[{"traceId":"463ac35c9f6413ad4","id":"a2fb4a1d1a96d312"}]"#,
                "traceId",
            ),
            (
                r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d"}]"#,
                "id \"a2fb4a1d\"",
            ),
            (&format!(r#"[{{{ok},"parentId":"zz"}}]"#), "parentId \"zz\""),
            (
                &format!(r#"[{{{ok},"kind":"SERVERR"}}]"#),
                "kind \"SERVERR\"",
            ),
            (
                &format!(r#"[{{{ok},"tags":{{"n":1}}}}]"#),
                "invalid type: integer",
            ),
            (
                &format!(r#"[{{{ok}}},{{{ok},"timestamp":-1}}]"#),
                "invalid value: integer `-1`",
            ),
        ];
        for (body, names) in cases {
            let a = post_zipkin(&c, body.to_string()).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text());
            assert!(
                a.text().contains(names),
                "{body}: {:?} lacks {names:?}",
                a.text()
            );
        }
        // One bad span refuses the batch, and the answer says which.
        let a = post_zipkin(&c, format!(r#"[{{{ok}}},{{{ok},"kind":"x"}}]"#)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.text().starts_with("span 1: kind"), "{}", a.text());
        assert!(c.store.spans().is_empty());
        assert_eq!(c.store.batches(), 0);

        // A binary Zipkin encoding is not JSON: 415.
        let url = format!("{}/api/v2/spans", c.zipkin);
        let a = request(Method::POST, &url, Some("application/x-protobuf"), "x").await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn otlp_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("k8s.pod.name", any_value::Value::StringValue("p-1".into())),
                        kv(
                            "service.name",
                            any_value::Value::StringValue(service.into()),
                        ),
                    ],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    const OTLP_TRACE: [u8; 16] = [
        0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6, 0xd7, 0xe8,
        0xf9,
    ];
    const OTLP_TRACE_HEX: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const START_NS: u64 = 1_700_000_000_123_456_789;

    /// A SERVER span with a parent, every kind of attribute and an error status; a CLIENT span
    /// without a parent; an INTERNAL one.
    fn otlp_spans() -> Vec<Span> {
        use any_value::Value as V;
        let server = Span {
            trace_id: OTLP_TRACE.to_vec(),
            span_id: vec![0x00, 0x01, 0xab, 0xcd, 0xef, 0x10, 0x20, 0x30],
            parent_span_id: vec![0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x09, 0x08],
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: START_NS,
            end_time_unix_nano: START_NS + 2_500_999,
            attributes: vec![
                kv("http.method", V::StringValue("GET".into())),
                kv("http.status_code", V::IntValue(503)),
                kv("offset", V::IntValue(-7)),
                kv("retried", V::BoolValue(true)),
                kv("ratio", V::DoubleValue(0.25)),
                kv("raw", V::BytesValue(vec![0xde, 0xad, 0xbe, 0xef])),
                kv(
                    "list",
                    V::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(V::StringValue("a".into())),
                            },
                            AnyValue {
                                value: Some(V::IntValue(1)),
                            },
                        ],
                    }),
                ),
            ],
            status: Some(Status {
                message: "upstream reset".into(),
                code: OtelCode::Error as i32,
            }),
            ..Span::default()
        };
        let client = Span {
            span_id: vec![0x11; 8],
            parent_span_id: vec![],
            name: "ratings".into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: START_NS + 1_000_000,
            end_time_unix_nano: START_NS + 1_900_000,
            attributes: vec![],
            status: None,
            ..server.clone()
        };
        let internal = Span {
            span_id: vec![0x22; 8],
            name: "work".into(),
            kind: SpanKind::Internal as i32,
            ..client.clone()
        };
        vec![server, client, internal]
    }

    /// What [`otlp_spans`] must become.
    fn otlp_expected(protocol: &'static str) -> Vec<ReceivedSpan> {
        let tags: BTreeMap<String, String> = [
            ("http.method", "GET"),
            ("http.status_code", "503"),
            ("offset", "-7"),
            ("retried", "true"),
            ("ratio", "0.25"),
            ("raw", "3q2+7w=="),
            ("list", r#"["a",1]"#),
            ("otel.status_code", "ERROR"),
            ("error", "upstream reset"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let server = ReceivedSpan {
            trace_id: OTLP_TRACE_HEX.into(),
            id: "0001abcdef102030".into(),
            parent_id: Some("ffeeddccbbaa0908".into()),
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: "SERVER".into(),
            service: "reviews".into(),
            timestamp_us: 1_700_000_000_123_456,
            duration_us: 2_500,
            tags,
            protocol,
        };
        let client = ReceivedSpan {
            id: "1111111111111111".into(),
            parent_id: None,
            name: "ratings".into(),
            kind: "CLIENT".into(),
            timestamp_us: 1_700_000_000_124_456,
            duration_us: 900,
            tags: BTreeMap::new(),
            ..server.clone()
        };
        let internal = ReceivedSpan {
            id: "2222222222222222".into(),
            name: "work".into(),
            kind: "INTERNAL".into(),
            ..client.clone()
        };
        vec![server, client, internal]
    }

    /// The query API shows OTLP spans in Zipkin's shape.
    async fn assert_zipkin_shape(c: &Collector) {
        let a = get(&format!("{}/api/v2/trace/{OTLP_TRACE_HEX}", c.zipkin)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        let spans = a.json();
        assert_eq!(
            spans[0],
            json!({
                "traceId": OTLP_TRACE_HEX,
                "id": "0001abcdef102030",
                "parentId": "ffeeddccbbaa0908",
                "name": "reviews.default.svc.cluster.local:9080/*",
                "kind": "SERVER",
                "timestamp": 1_700_000_000_123_456u64,
                "duration": 2500,
                "localEndpoint": {"serviceName": "reviews"},
                "tags": {
                    "http.method": "GET", "http.status_code": "503", "offset": "-7",
                    "retried": "true", "ratio": "0.25", "raw": "3q2+7w==", "list": "[\"a\",1]",
                    "otel.status_code": "ERROR", "error": "upstream reset"
                }
            })
        );
        assert_eq!(spans[1]["kind"], "CLIENT");
        assert!(spans[1].get("parentId").is_none(), "{}", spans[1]);
        // Zipkin has no INTERNAL kind: left out.
        assert!(spans[2].get("kind").is_none(), "{}", spans[2]);
        assert_eq!(spans.as_array().unwrap().len(), 3);
        let a = get(&format!("{}/api/v2/services", c.zipkin)).await;
        assert_eq!(a.json(), json!(["reviews"]));
    }

    #[tokio::test]
    async fn otlp_grpc_spans_are_mapped_and_answered_by_the_query_api() {
        let c = start().await;
        let mut client = TraceServiceClient::connect(c.grpc.clone()).await.unwrap();
        let answer = client
            .export(otlp_request("reviews", otlp_spans()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.partial_success, None);
        assert_eq!(c.store.spans(), otlp_expected(OTLP_GRPC));
        assert_eq!(c.store.batches(), 1);
        assert_zipkin_shape(&c).await;

        // An empty export is a batch with no spans.
        client
            .export(otlp_request("reviews", vec![]))
            .await
            .unwrap();
        assert_eq!(c.store.batches(), 2);
        assert_eq!(c.store.spans().len(), 3);
    }

    #[tokio::test]
    async fn otlp_grpc_rejects_spans_with_invalid_ids_and_messages_over_4_mib() {
        let c = start().await;
        let good = otlp_spans().remove(1);
        let short_trace = Span {
            trace_id: vec![1, 2, 3],
            ..good.clone()
        };
        let zero_span = Span {
            span_id: vec![0; 8],
            ..good.clone()
        };
        let mut client = TraceServiceClient::connect(c.grpc.clone()).await.unwrap();
        let answer = client
            .export(otlp_request("reviews", vec![short_trace, good, zero_span]))
            .await
            .unwrap()
            .into_inner();
        let partial = answer.partial_success.expect("a partial success");
        assert_eq!(partial.rejected_spans, 2);
        assert!(
            partial.error_message.contains("trace_id 010203"),
            "{}",
            partial.error_message
        );
        let spans = c.store.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].id, "1111111111111111");

        let big = Span {
            name: "x".repeat(MAX_BODY),
            ..otlp_spans().remove(1)
        };
        let err = client
            .export(otlp_request("reviews", vec![big]))
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
        assert_eq!(c.store.spans().len(), 1);
        assert_eq!(c.store.batches(), 1);
    }

    #[tokio::test]
    async fn otlp_http_spans_are_mapped_and_answered_by_the_query_api() {
        let c = start().await;
        let body = otlp_request("reviews", otlp_spans()).encode_to_vec();
        let a = post_otlp(&c, "application/x-protobuf", body).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(
            a.headers[http::header::CONTENT_TYPE],
            "application/x-protobuf"
        );
        let answer = ExportTraceServiceResponse::decode(a.body).unwrap();
        assert_eq!(answer.partial_success, None);
        assert_eq!(c.store.spans(), otlp_expected(OTLP_HTTP));
        assert_eq!(c.store.batches(), 1);
        assert_zipkin_shape(&c).await;
    }

    #[tokio::test]
    async fn otlp_http_refuses_big_malformed_and_json_bodies() {
        let c = start().await;
        let a = post_otlp(&c, "application/x-protobuf", vec![0u8; MAX_BODY + 1]).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
        let status = RpcStatus::decode(a.body).unwrap();
        assert!(status.message.contains("limit"), "{}", status.message);

        let a = post_otlp(&c, "application/x-protobuf", vec![0xffu8; 3]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let status = RpcStatus::decode(a.body).unwrap();
        assert_eq!(status.code, INVALID_ARGUMENT);
        assert!(
            status.message.contains("not an ExportTraceServiceRequest"),
            "{}",
            status.message
        );

        let a = post_otlp(&c, "application/json", "{}").await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let url = format!("{}/v1/traces", c.otlp_http);
        assert_eq!(get(&url).await.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(c.store.spans().is_empty());
        assert_eq!(c.store.batches(), 0);
    }

    /// A Zipkin span of `service` in trace `trace` (16 hex) starting at `ts`.
    fn span(trace: &str, id: u64, service: &str, name: &str, ts: u64) -> serde_json::Value {
        json!({
            "traceId": trace, "id": format!("{id:016x}"), "name": name, "timestamp": ts,
            "localEndpoint": {"serviceName": service}
        })
    }

    #[tokio::test]
    async fn traces_are_filtered_by_service_name_newest_first() {
        let c = start().await;
        let (a, b) = ("000000000000000a", "000000000000000b");
        let batch = json!([
            span(a, 1, "productpage.default", "get /productpage", 100),
            span(b, 3, "ratings.default", "get /ratings", 300),
            span(a, 2, "reviews.default", "get /reviews", 200),
        ]);
        let r = post_zipkin(&c, serde_json::to_vec(&batch).unwrap()).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        // A newer trace over OTLP.
        let mut client = TraceServiceClient::connect(c.grpc.clone()).await.unwrap();
        client
            .export(otlp_request("details", otlp_spans()))
            .await
            .unwrap();

        let ids = |v: serde_json::Value| -> Vec<(String, usize)> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let t = t.as_array().unwrap();
                    (t[0]["traceId"].as_str().unwrap().to_string(), t.len())
                })
                .collect()
        };
        let query = |q: &'static str| {
            let url = format!("{}/api/v2/traces{q}", c.zipkin);
            async move { get(&url).await }
        };
        let all = vec![
            (OTLP_TRACE_HEX.to_string(), 3),
            (b.to_string(), 1),
            (a.to_string(), 2),
        ];
        assert_eq!(ids(query("").await.json()), all);
        // A trace is found by any of its services, and comes whole.
        assert_eq!(
            ids(query("?serviceName=reviews.default").await.json()),
            vec![(a.to_string(), 2)]
        );
        assert_eq!(
            ids(query("?serviceName=productpage%2Edefault").await.json()),
            vec![(a.to_string(), 2)]
        );
        // Case does not matter, as in Zipkin.
        assert_eq!(
            ids(query("?serviceName=RATINGS.default").await.json()),
            vec![(b.to_string(), 1)]
        );
        assert_eq!(
            ids(query("?serviceName=details").await.json()),
            vec![(OTLP_TRACE_HEX.to_string(), 3)]
        );
        assert_eq!(ids(query("?serviceName=nobody").await.json()), vec![]);
        assert_eq!(
            ids(
                query("?serviceName=reviews.default&spanName=get%20/reviews")
                    .await
                    .json()
            ),
            vec![(a.to_string(), 2)]
        );
        assert_eq!(
            ids(
                query("?serviceName=reviews.default&spanName=get%20/ratings")
                    .await
                    .json()
            ),
            vec![]
        );
        assert_eq!(ids(query("?limit=2").await.json()), all[..2].to_vec());
        assert_eq!(query("?limit=0").await.status, StatusCode::BAD_REQUEST);

        let r = get(&format!("{}/api/v2/services", c.zipkin)).await;
        assert_eq!(
            r.json(),
            json!([
                "details",
                "productpage.default",
                "ratings.default",
                "reviews.default"
            ])
        );
    }

    fn received(i: usize) -> Stored {
        Stored::Otlp(ReceivedSpan {
            trace_id: TRACE.into(),
            id: format!("{i:016x}"),
            parent_id: None,
            name: String::new(),
            kind: "SERVER".into(),
            service: "s".into(),
            timestamp_us: i as u64,
            duration_us: 1,
            tags: BTreeMap::new(),
            protocol: OTLP_GRPC,
        })
    }

    #[test]
    fn the_store_keeps_the_newest_spans() {
        let store = Store::default();
        store.record((0..MAX_SPANS).map(received));
        store.record((MAX_SPANS..MAX_SPANS + 3).map(received));
        let spans = store.spans();
        assert_eq!(spans.len(), MAX_SPANS);
        assert_eq!(spans[0].id, format!("{:016x}", 3));
        assert_eq!(spans[MAX_SPANS - 1].id, format!("{:016x}", MAX_SPANS + 2));
        assert_eq!(store.batches(), 2);
        store.clear();
        assert!(store.spans().is_empty());
        assert_eq!(store.batches(), 0);
    }

    #[tokio::test]
    async fn wait_for_returns_once_enough_spans_arrived_or_at_the_timeout() {
        let store = Store::default();
        let writer = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.record([received(1)]);
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.record([received(2)]);
        });
        let started = std::time::Instant::now();
        let spans = store.wait_for(2, Duration::from_secs(20)).await;
        assert_eq!(spans.len(), 2);
        assert!(started.elapsed() < Duration::from_secs(10));

        let started = std::time::Instant::now();
        let spans = store.wait_for(3, Duration::from_millis(200)).await;
        assert_eq!(spans.len(), 2, "what is there at the timeout");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn received_spans_round_trip_through_json() {
        let span = otlp_expected(OTLP_HTTP).remove(0);
        let text = serde_json::to_string(&span).unwrap();
        assert!(text.contains(r#""protocol":"otlp-http""#), "{text}");
        assert_eq!(serde_json::from_str::<ReceivedSpan>(&text).unwrap(), span);
        let bad = text.replace("otlp-http", "carrier-pigeon");
        let err = serde_json::from_str::<ReceivedSpan>(&bad).unwrap_err();
        assert!(err.to_string().contains("carrier-pigeon"), "{err}");
    }
}
