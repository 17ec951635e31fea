//! Span export: finished spans go into a bounded queue; a thread of their own (one per
//! provider, with a small runtime) batches them and sends each batch to the collector, in the
//! provider's protocol: Zipkin v2 JSON (`POST /api/v2/spans`), OTLP over gRPC
//! (`TraceService/Export`, tonic) or OTLP over HTTP (`POST /v1/traces`, protobuf).
//!
//! The data path never waits on the collector: [`Exporter::report`] only tries to queue the
//! span; a full queue ([`QUEUE_SPANS`]) drops it and counts it. Queuing a span does not wake
//! the export thread (a wake-up per span is a system call and a context switch on the core the
//! data path shares, which at a fixed rate cost more than the span itself): the thread wakes
//! when the queue reaches [`BATCH_SPANS`] spans, and otherwise every [`FLUSH_INTERVAL`], and
//! sends what is queued in batches of at most [`BATCH_SPANS`]. A send that fails or takes
//! longer than the provider's timeout is counted and dropped (never retried, so a dead
//! collector costs one timeout per batch and no memory). The counts are in [`Stats`], shown on
//! the admin port (`/stats`, `tracing.<provider>.*`, Envoy's names).

use super::context::SpanContext;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use rustmesh_xds::access_log::truncate;
use rustmesh_xds::trace::{Protocol, Provider};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Spans waiting for export, at most; more are dropped and counted.
pub const QUEUE_SPANS: usize = 8192;
/// Spans in one export request, at most: ≈ 60 KB of Zipkin JSON with Istio's tags, one
/// loopback segment. The send of a report is done at once, on a core the data path shares; 512
/// (≈ 0.5 MB per `POST`) made each flush a burst that requests arriving during it waited for.
pub const BATCH_SPANS: usize = 64;
/// How long a span waits for others, at most (Envoy's Zipkin flush interval is a second too).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// A span's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Outbound: this proxy called a server.
    Client,
    /// Inbound: this proxy served a client.
    Server,
}

/// A span as it is reported.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// Its ids and sampling.
    pub context: SpanContext,
    /// Its name (the route's decorator, or Envoy's default).
    pub name: String,
    /// Client (outbound) or server (inbound).
    pub kind: Kind,
    /// When the request arrived.
    pub start: SystemTime,
    /// Until the response's last byte.
    pub duration: Duration,
    /// Zipkin `localEndpoint.serviceName`, OTLP resource `service.name`.
    pub service_name: String,
    /// Zipkin `localEndpoint.ipv4`/`ipv6`: the pod's address (`INSTANCE_IP`), as Envoy's
    /// spans carry its node's.
    pub local_ip: Option<std::net::IpAddr>,
    /// Istio's tags, custom tags included.
    pub tags: Vec<(Cow<'static, str>, String)>,
}

/// An exporter's counters (Envoy's `tracing.zipkin.*` / `tracing.opentelemetry.*` names).
#[derive(Debug, Default)]
pub struct Stats {
    /// Spans sent in reports that the collector accepted.
    pub spans_sent: AtomicU64,
    /// Spans dropped because the queue was full.
    pub spans_dropped: AtomicU64,
    /// Reports (export requests) the collector accepted.
    pub reports_sent: AtomicU64,
    /// Reports that failed or timed out (their spans are lost).
    pub reports_failed: AtomicU64,
}

/// The spans waiting for one provider's export thread.
#[derive(Debug, Default)]
struct Queue {
    spans: Mutex<VecDeque<FinishedSpan>>,
    /// Told when the queue reaches a batch.
    batch: Notify,
}

impl Queue {
    /// At most `n` spans from the front.
    fn take(&self, n: usize) -> Vec<FinishedSpan> {
        let mut q = crate::sync::lock(&self.spans);
        let n = n.min(q.len());
        q.drain(..n).collect()
    }
}

/// The sending side of one provider's export thread.
#[derive(Debug)]
pub struct Exporter {
    provider: Provider,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
}

impl Exporter {
    /// Queues a span for export, or drops and counts it when the queue is full. Wakes the
    /// export thread only when the queue reaches a batch.
    pub fn report(&self, span: FinishedSpan) {
        let mut q = crate::sync::lock(&self.queue.spans);
        if q.len() >= QUEUE_SPANS {
            drop(q);
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(span);
        let full = q.len() == BATCH_SPANS;
        drop(q);
        if full {
            self.queue.batch.notify_one();
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The provider this exporter sends to.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }
}

type Registry = Mutex<HashMap<Provider, Arc<Exporter>>>;

/// Where exporters look collectors' names up first (the sidecar sets the mesh's name table).
static NAMES: OnceLock<crate::dns::NameTable> = OnceLock::new();

/// Collectors' names are looked up in `names` first (the mesh's name table: the sidecar's own
/// connections are not captured, so its DNS proxy would not see their queries). Set once.
pub fn set_name_table(names: crate::dns::NameTable) {
    let _ = NAMES.set(names);
}

/// The collector's address.
async fn collector(p: &Provider) -> Result<std::net::SocketAddr, String> {
    crate::dns::resolve(&p.service, p.port, NAMES.get()).await
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The exporter of `provider`, started at the first call (one per distinct provider for the
/// life of the process, so a new configuration with the same provider keeps its connection).
pub fn exporter(provider: &Provider) -> Arc<Exporter> {
    let mut r = crate::sync::lock(registry());
    if let Some(e) = r.get(provider) {
        return e.clone();
    }
    let queue = Arc::new(Queue::default());
    let stats = Arc::new(Stats::default());
    let e = Arc::new(Exporter {
        provider: provider.clone(),
        queue: queue.clone(),
        stats: stats.clone(),
    });
    let p = provider.clone();
    let spawned = std::thread::Builder::new()
        .name("rustmesh-trace-export".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(provider = %p.name, "tracing: no runtime for the exporter: {e}");
                    return;
                }
            };
            rt.block_on(run(p, queue, stats));
        });
    if let Err(err) = spawned {
        tracing::error!(provider = %provider.name, "tracing: exporter thread not started: {err}");
    }
    r.insert(provider.clone(), e.clone());
    e
}

/// Every exporter started so far (the admin port's `/stats`).
pub fn all() -> Vec<Arc<Exporter>> {
    crate::sync::lock(registry()).values().cloned().collect()
}

/// A batch being gathered: Zipkin spans encoded as they come ([`ZipkinBody`]), OTLP's kept
/// for the flush (grouped by service).
enum Batch {
    Zipkin(ZipkinBody),
    Otlp(Vec<FinishedSpan>),
}

impl Batch {
    fn new(p: &Provider) -> Batch {
        match p.protocol {
            Protocol::Zipkin => Batch::Zipkin(ZipkinBody {
                buf: Vec::with_capacity(64 * 1024),
                spans: 0,
            }),
            _ => Batch::Otlp(Vec::with_capacity(BATCH_SPANS)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Batch::Zipkin(b) => b.len(),
            Batch::Otlp(v) => v.len(),
        }
    }

    fn push(&mut self, s: FinishedSpan, max_tag: usize) {
        match self {
            Batch::Zipkin(b) => b.push(s, max_tag),
            Batch::Otlp(v) => v.push(s),
        }
    }

    /// The request: an HTTP body and its content type, or a gRPC message.
    fn finish(self, p: &Provider) -> Payload {
        let max_tag = p.max_tag_length as usize;
        match (self, p.protocol) {
            (Batch::Zipkin(b), _) => Payload::Http(b.finish(), "application/json"),
            (Batch::Otlp(v), Protocol::OtlpGrpc) => Payload::Grpc(otlp_request(&v, max_tag)),
            (Batch::Otlp(v), _) => Payload::Http(
                otlp_request(&v, max_tag).encode_to_vec(),
                "application/x-protobuf",
            ),
        }
    }
}

/// An export request's content.
enum Payload {
    Http(Vec<u8>, &'static str),
    Grpc(ExportTraceServiceRequest),
}

async fn run(p: Provider, queue: Arc<Queue>, stats: Arc<Stats>) {
    let mut client = Client::new(&p);
    let mut failing = false;
    let max_tag = p.max_tag_length as usize;
    loop {
        // A full batch, or the interval: whichever comes first.
        let _ = tokio::time::timeout(FLUSH_INTERVAL, queue.batch.notified()).await;
        // What is queued, a batch at a time; a last partial batch goes too (it has waited
        // an interval at most).
        loop {
            let spans = queue.take(BATCH_SPANS);
            if spans.is_empty() {
                break;
            }
            let last = spans.len() < BATCH_SPANS;
            send_batch(&p, &mut client, &mut failing, spans, max_tag, &stats).await;
            if last {
                break;
            }
        }
    }
}

/// Encodes and sends one batch, counting the outcome.
async fn send_batch(
    p: &Provider,
    client: &mut Client,
    failing: &mut bool,
    spans: Vec<FinishedSpan>,
    max_tag: usize,
    stats: &Stats,
) {
    let mut batch = Batch::new(p);
    for s in spans {
        batch.push(s, max_tag);
    }
    let n = batch.len() as u64;
    let payload = batch.finish(p);
    let sent = tokio::time::timeout(p.effective_timeout(), client.send(p, payload)).await;
    match sent {
        Ok(Ok(())) => {
            stats.reports_sent.fetch_add(1, Ordering::Relaxed);
            stats.spans_sent.fetch_add(n, Ordering::Relaxed);
            if *failing {
                tracing::info!(provider = %p.name, "tracing: the collector accepts spans again");
                *failing = false;
            }
        }
        Ok(Err(e)) => {
            stats.reports_failed.fetch_add(1, Ordering::Relaxed);
            if !*failing {
                tracing::warn!(provider = %p.name, collector = %p.authority(),
                    "tracing: {n} spans not exported: {e}");
                *failing = true;
            }
            client.reset();
        }
        Err(_) => {
            stats.reports_failed.fetch_add(1, Ordering::Relaxed);
            if !*failing {
                tracing::warn!(provider = %p.name, collector = %p.authority(),
                    "tracing: {n} spans not exported: no answer within {:?}", p.effective_timeout());
                *failing = true;
            }
            client.reset();
        }
    }
}

/// A connection to the collector, kept between batches.
enum Client {
    Http(Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>),
    Grpc(Option<TraceServiceClient<tonic::transport::Channel>>),
}

impl Client {
    fn new(p: &Provider) -> Client {
        match p.protocol {
            Protocol::OtlpGrpc => Client::Grpc(None),
            _ => Client::Http(None),
        }
    }

    fn reset(&mut self) {
        match self {
            Client::Http(c) => *c = None,
            Client::Grpc(c) => *c = None,
        }
    }

    async fn send(&mut self, p: &Provider, payload: Payload) -> Result<(), String> {
        match (self, payload) {
            (Client::Http(conn), Payload::Http(body, content_type)) => {
                if conn.as_ref().is_none_or(|c| c.is_closed()) {
                    *conn = Some(http_connect(p).await?);
                }
                let c = conn.as_mut().expect("connected above");
                c.ready().await.map_err(|e| e.to_string())?;
                let mut req = http::Request::post(p.effective_path())
                    .header(http::header::HOST, p.authority())
                    .header(http::header::CONTENT_TYPE, content_type);
                for (k, v) in &p.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let req = req
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                let resp = c.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                // Read the answer so the connection can carry the next batch.
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {status}"))
                }
            }
            (Client::Grpc(client), Payload::Grpc(message)) => {
                if client.is_none() {
                    let addr = collector(p).await?;
                    let endpoint =
                        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                            .map_err(|e| e.to_string())?
                            .connect_timeout(p.effective_timeout());
                    *client = Some(TraceServiceClient::new(endpoint.connect_lazy()));
                }
                let c = client.as_mut().expect("made above");
                let mut req = tonic::Request::new(message);
                for (k, v) in &p.headers {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                        v.parse(),
                    ) {
                        req.metadata_mut().insert(k, v);
                    }
                }
                c.export(req)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("gRPC status {:?}: {}", s.code(), s.message()))
            }
            _ => Err("the request does not fit the provider's protocol".to_string()),
        }
    }
}

async fn http_connect(
    p: &Provider,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let addr = collector(p).await?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {} ({addr}): {e}", p.authority()))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A batch as Zipkin's v2 JSON span list.
pub fn zipkin_json(batch: &[FinishedSpan], max_tag: usize) -> Vec<u8> {
    let mut body = ZipkinBody::default();
    for s in batch {
        body.push(s.clone(), max_tag);
    }
    body.finish()
}

/// A Zipkin v2 JSON span list being written: each span is encoded into the request body when
/// the exporter dequeues it, so the work of a batch is spread over its life in slices of a few
/// microseconds instead of done at once at the flush (the export thread shares the sidecar's
/// core with the data path: a request that arrived during a whole batch's encoding waited for
/// it). Written by hand (no `serde_json::Value` tree per span): keys in the order Zipkin
/// documents them, tags sorted by key with the last of equal keys kept, as a JSON object
/// built from them would be.
#[derive(Default)]
pub struct ZipkinBody {
    buf: Vec<u8>,
    spans: usize,
}

impl ZipkinBody {
    /// Spans written so far.
    pub fn len(&self) -> usize {
        self.spans
    }

    /// Whether no span was written.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Encodes `s` at the end of the list (its tags' values cut at `max_tag` bytes).
    pub fn push(&mut self, mut s: FinishedSpan, max_tag: usize) {
        let b = &mut self.buf;
        b.push(if self.spans == 0 { b'[' } else { b',' });
        self.spans += 1;
        let c = &s.context;
        b.extend_from_slice(b"{\"traceId\":\"");
        if c.trace_id_64bit {
            hex(b, c.trace_id as u64);
        } else {
            hex(b, (c.trace_id >> 64) as u64);
            hex(b, c.trace_id as u64);
        }
        if let Some(p) = c.parent_span_id {
            b.extend_from_slice(b"\",\"parentId\":\"");
            hex(b, p);
        }
        b.extend_from_slice(b"\",\"id\":\"");
        hex(b, c.span_id);
        b.extend_from_slice(b"\",\"kind\":\"");
        b.extend_from_slice(match s.kind {
            Kind::Client => b"CLIENT",
            Kind::Server => b"SERVER",
        });
        b.extend_from_slice(b"\",\"name\":");
        json_str(b, &s.name);
        b.extend_from_slice(b",\"timestamp\":");
        decimal(b, micros(s.start));
        b.extend_from_slice(b",\"duration\":");
        decimal(b, (s.duration.as_micros() as u64).max(1));
        b.extend_from_slice(b",\"localEndpoint\":{\"serviceName\":");
        json_str(b, &s.service_name);
        if let Some(ip) = s.local_ip {
            b.extend_from_slice(match ip {
                std::net::IpAddr::V4(_) => b",\"ipv4\":\"",
                std::net::IpAddr::V6(_) => b",\"ipv6\":\"",
            });
            // An address's text needs no JSON escaping.
            use std::io::Write;
            let _ = write!(b, "{ip}");
            b.push(b'"');
        }
        b.extend_from_slice(b"},\"tags\":{");
        // Sorted by key, stable: of equal keys the last one wins, as in a JSON object.
        s.tags.sort_by(|x, y| x.0.cmp(&y.0));
        let mut first = true;
        for (i, (k, v)) in s.tags.iter().enumerate() {
            if s.tags.get(i + 1).is_some_and(|next| next.0 == *k) {
                continue;
            }
            if !first {
                b.push(b',');
            }
            first = false;
            json_str(b, k);
            b.push(b':');
            json_str(b, truncate(v, max_tag));
        }
        b.extend_from_slice(b"}}");
    }

    /// The request body (`[]` when no span was written).
    pub fn finish(mut self) -> Vec<u8> {
        if self.spans == 0 {
            self.buf.push(b'[');
        }
        self.buf.push(b']');
        self.buf
    }
}

/// `v` as 16 lowercase hex digits.
fn hex(b: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    b.extend_from_slice(&out);
}

/// `v` in decimal.
fn decimal(b: &mut Vec<u8>, mut v: u64) {
    let mut out = [0u8; 20];
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    b.extend_from_slice(&out[i..]);
}

/// `s` as a JSON string: quotes, backslashes and control characters escaped, the rest (UTF-8
/// included) as is, as serde_json writes it.
fn json_str(b: &mut Vec<u8>, s: &str) {
    b.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        b.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            b.extend_from_slice(b"\\u00");
            b.push(DIGITS[(c >> 4) as usize]);
            b.push(DIGITS[(c & 0xf) as usize]);
        } else {
            b.extend_from_slice(esc);
        }
        start = i + 1;
    }
    b.extend_from_slice(&bytes[start..]);
    b.push(b'"');
}

/// A batch as an OTLP export request (spans grouped by service name).
pub fn otlp_request(batch: &[FinishedSpan], max_tag: usize) -> ExportTraceServiceRequest {
    let text = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    };
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for s in batch {
        let c = &s.context;
        let start = nanos(s.start);
        let error = s.tags.iter().any(|(k, v)| k == "error" && v == "true");
        by_service.entry(&s.service_name).or_default().push(Span {
            trace_id: c.trace_id.to_be_bytes().to_vec(),
            span_id: c.span_id.to_be_bytes().to_vec(),
            parent_span_id: c
                .parent_span_id
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default(),
            flags: 0x100 | u32::from(c.sampled),
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Client => span::SpanKind::Client as i32,
                Kind::Server => span::SpanKind::Server as i32,
            },
            start_time_unix_nano: start,
            end_time_unix_nano: start + s.duration.as_nanos() as u64,
            attributes: s
                .tags
                .iter()
                .map(|(k, v)| text(k, truncate(v, max_tag)))
                .collect(),
            status: error.then(|| Status {
                code: status::StatusCode::Error as i32,
                message: String::new(),
            }),
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "rustmesh".to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: Kind, parent: Option<u64>) -> FinishedSpan {
        FinishedSpan {
            context: SpanContext {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                trace_id_64bit: false,
                span_id: 0x00f067aa0ba902b7,
                parent_span_id: parent,
                sampled: true,
            },
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind,
            start: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123),
            duration: Duration::from_micros(1500),
            service_name: "productpage.default".into(),
            local_ip: Some("10.244.0.12".parse().unwrap()),
            tags: vec![
                ("http.status_code".into(), "503".into()),
                ("error".into(), "true".into()),
                ("http.url".into(), "x".repeat(300)),
            ],
        }
    }

    /// A collector that never answers costs one timeout per batch: spans are counted as
    /// failed, and past the queue's size dropped, while `report` returns at once.
    #[test]
    fn a_dead_collector_never_blocks_and_every_lost_span_is_counted() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let provider = Provider {
            name: "silent".into(),
            protocol: Protocol::Zipkin,
            service: "127.0.0.1".into(),
            port: silent.local_addr().unwrap().port(),
            path: String::new(),
            max_tag_length: 256,
            trace_id_64bit: false,
            timeout: Some(rustmesh_xds::duration::Duration(Duration::from_millis(300))),
            headers: vec![],
        };
        let e = exporter(&provider);
        assert!(
            Arc::ptr_eq(&e, &exporter(&provider)),
            "one exporter per provider"
        );
        let started = std::time::Instant::now();
        for _ in 0..QUEUE_SPANS + BATCH_SPANS + 100 {
            e.report(span(Kind::Client, None));
        }
        // Queuing never waited on the collector.
        assert!(started.elapsed() < Duration::from_secs(5));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while e.stats().reports_failed.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "no failed report");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(e.stats().spans_dropped.load(Ordering::Relaxed) >= 100);
        assert_eq!(e.stats().spans_sent.load(Ordering::Relaxed), 0);
        assert!(all().iter().any(|x| Arc::ptr_eq(x, &e)));
    }

    #[test]
    fn zipkin_spans_are_v2_json() {
        let json: serde_json::Value =
            serde_json::from_slice(&zipkin_json(&[span(Kind::Client, Some(7))], 256)).unwrap();
        let s = &json[0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["id"], "00f067aa0ba902b7");
        assert_eq!(s["parentId"], "0000000000000007");
        assert_eq!(s["kind"], "CLIENT");
        assert_eq!(s["timestamp"], 1_700_000_000_000_123u64);
        assert_eq!(s["duration"], 1500);
        assert_eq!(s["localEndpoint"]["serviceName"], "productpage.default");
        assert_eq!(s["localEndpoint"]["ipv4"], "10.244.0.12");
        assert_eq!(s["tags"]["http.status_code"], "503");
        assert_eq!(s["tags"]["http.url"].as_str().unwrap().len(), 256);
        let root: serde_json::Value =
            serde_json::from_slice(&zipkin_json(&[span(Kind::Server, None)], 256)).unwrap();
        assert!(root[0].get("parentId").is_none());
        assert_eq!(root[0]["kind"], "SERVER");
        let mut v6 = span(Kind::Server, None);
        v6.local_ip = Some("fd00::12".parse().unwrap());
        let v6: serde_json::Value = serde_json::from_slice(&zipkin_json(&[v6], 256)).unwrap();
        assert_eq!(v6[0]["localEndpoint"]["ipv6"], "fd00::12");
        let mut none = span(Kind::Server, None);
        none.local_ip = None;
        let none: serde_json::Value = serde_json::from_slice(&zipkin_json(&[none], 256)).unwrap();
        assert_eq!(
            none[0]["localEndpoint"],
            serde_json::json!({"serviceName": "productpage.default"})
        );
    }

    /// The encoder before the hand-written one (a `serde_json::Value` per span): the reference.
    fn zipkin_json_serde(batch: &[FinishedSpan], max_tag: usize) -> Vec<u8> {
        let spans: Vec<serde_json::Value> = batch
            .iter()
            .map(|s| {
                let c = &s.context;
                let tags: BTreeMap<&str, &str> = s
                    .tags
                    .iter()
                    .map(|(k, v)| (k.as_ref(), truncate(v, max_tag)))
                    .collect();
                let mut v = serde_json::json!({
                    "traceId": c.trace_id_hex(),
                    "id": format!("{:016x}", c.span_id),
                    "name": s.name,
                    "kind": match s.kind { Kind::Client => "CLIENT", Kind::Server => "SERVER" },
                    "timestamp": micros(s.start),
                    "duration": (s.duration.as_micros() as u64).max(1),
                    "localEndpoint": {"serviceName": s.service_name},
                    "tags": tags,
                });
                if let Some(ip) = s.local_ip {
                    let key = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                    v["localEndpoint"][key] = ip.to_string().into();
                }
                if let Some(p) = c.parent_span_id {
                    v["parentId"] = format!("{p:016x}").into();
                }
                v
            })
            .collect();
        serde_json::to_vec(&spans).unwrap()
    }

    /// A span as the bench's sidecars report them (Istio's tags).
    fn istio_span(i: u64) -> FinishedSpan {
        let mut s = span(Kind::Client, Some(i));
        s.context.span_id = i.wrapping_mul(0x9e3779b97f4a7c15);
        s.tags = [
            ("http.url", "http://server.bench.svc.cluster.local:9080/"),
            ("http.method", "GET"),
            ("http.protocol", "HTTP/1.1"),
            ("user_agent", "oha/1.4.6"),
            ("guid:x-request-id", "4f5c0e0a-9a8f-4b53-8c1e-2a0f5b7b7d11"),
            (
                "node_id",
                "sidecar~10.213.1.2~client.bench~bench.svc.cluster.local",
            ),
            ("component", "proxy"),
            ("downstream_cluster", "-"),
            ("istio.canonical_revision", "latest"),
            ("istio.canonical_service", "client"),
            ("istio.mesh_id", "cluster.local"),
            ("istio.namespace", "bench"),
            ("http.status_code", "200"),
            ("peer.address", "10.213.1.2"),
            ("request_size", "0"),
            ("response_size", "13"),
            ("response_flags", "-"),
            (
                "upstream_cluster",
                "outbound|9080||server.bench.svc.cluster.local",
            ),
            (
                "upstream_cluster.name",
                "outbound|9080||server.bench.svc.cluster.local",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (Cow::Borrowed(k), v.to_string()))
        .collect();
        s
    }

    #[test]
    fn zipkin_json_is_what_serde_json_wrote() {
        let mut odd = span(Kind::Server, None);
        odd.context.trace_id_64bit = true;
        odd.name = "a \"quoted\" \\ name\n\t\u{1}\u{1f}\u{7f} é ✓ 🦀".into();
        odd.service_name = "svc\r\u{8}\u{c}".into();
        odd.duration = Duration::ZERO;
        odd.tags.push(("http.status_code".into(), "200".into()));
        odd.tags.push(("\"k\"".into(), "é".repeat(200)));
        let batch = [
            span(Kind::Client, Some(7)),
            odd,
            istio_span(3),
            istio_span(u64::MAX),
        ];
        for n in 0..=batch.len() {
            let ours = zipkin_json(&batch[..n], 256);
            let theirs = zipkin_json_serde(&batch[..n], 256);
            let ours: serde_json::Value = serde_json::from_slice(&ours).unwrap();
            let theirs: serde_json::Value = serde_json::from_slice(&theirs).unwrap();
            assert_eq!(ours, theirs);
        }
        // Byte for byte, but for the keys' order.
        let one = String::from_utf8(zipkin_json(&batch[1..2], 256)).unwrap();
        assert!(
            one.contains(&format!(
                r#""name":"a \"quoted\" \\ name\n\t\u0001\u001f{} é ✓ 🦀""#,
                '\u{7f}'
            )),
            "{one}"
        );
        assert!(one.contains(r#""traceId":"a3ce929d0e0e4736""#), "{one}");
        assert!(one.contains(r#""duration":1,"#), "{one}");
        assert!(one.contains(r#""http.status_code":"200""#), "{one}");
        assert_eq!(zipkin_json(&[], 256), b"[]");
    }

    /// `cargo test --release -p rustmesh-proxy --lib zipkin_encoding_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn zipkin_encoding_cost() {
        let batch: Vec<FinishedSpan> = (0..512).map(istio_span).collect();
        for (name, f) in [
            (
                "serde_json::Value",
                zipkin_json_serde as fn(&[FinishedSpan], usize) -> Vec<u8>,
            ),
            ("ZipkinBody", zipkin_json),
        ] {
            let mut best = Duration::MAX;
            let mut bytes = 0;
            for _ in 0..50 {
                let t = std::time::Instant::now();
                bytes = std::hint::black_box(f(std::hint::black_box(&batch), 256)).len();
                best = best.min(t.elapsed());
            }
            println!(
                "{name}: 512 spans, {bytes} bytes, best of 50 {best:?} ({:?} per span)",
                best / 512
            );
        }
    }

    #[test]
    fn otlp_spans_carry_ids_kind_times_status_and_the_service() {
        let r = otlp_request(&[span(Kind::Server, Some(7))], 256);
        let rs = &r.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(
            s.trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()
        );
        assert_eq!(s.parent_span_id, 7u64.to_be_bytes());
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 1_500_000);
        assert_eq!(
            s.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let url = s.attributes.iter().find(|a| a.key == "http.url").unwrap();
        match &url.value.as_ref().unwrap().value {
            Some(any_value::Value::StringValue(v)) => assert_eq!(v.len(), 256),
            other => panic!("{other:?}"),
        }
    }
}
