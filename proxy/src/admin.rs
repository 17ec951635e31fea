//! The sidecar's HTTP endpoints (hyper, HTTP/1.1):
//!
//! | port | path | what |
//! | --- | --- | --- |
//! | 127.0.0.1:15000 | `/config_dump` | the current `ProxyConfig` JSON (503 before the first) |
//! | | `/listeners` | `name::address` lines; `?format=json`: `{"listenerStatuses": [...]}` |
//! | | `/clusters` | Envoy's `cluster::host::stat::value` lines; `?format=json`: `{"clusterStatuses": [...]}` |
//! | | `/stats` | `name: value` lines (`?filter=<regex>`); `/stats/prometheus` |
//! | | `/ready` | `LIVE` 200 once a configuration is loaded; `PRE_INITIALIZING` / `DRAINING` 503 |
//! | | `/certs` | the workload certificate and the mesh root (Envoy's shape; never the key) |
//! | | `/quitquitquit` (POST) | drain and exit, like SIGTERM |
//! | | `/logging` | log levels (`active loggers:` lines); POST `?level=L`, `?<logger>=L`, `?paths=a:L,b:L` changes them ([`crate::logging`]) |
//! | | `/server_info` | `{"version", "state", "configVersion"}`: the build, readiness word and the `versionInfo` serving |
//! | 0.0.0.0:15021 | `/healthz/ready` | 200 once a configuration is loaded (and, with a mesh CA, a valid workload certificate is held) and while not draining |
//! | 0.0.0.0:15090 | `/stats/prometheus` | every metric, Prometheus text |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rustmesh_xds::serve::{self, ConnLimits, Gate};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::cluster::{Kind, UpstreamCluster};
use crate::drain;
use crate::snapshot::{Snapshot, Store};
use crate::stats::Metrics;
use crate::{Error, Result};

/// What the endpoints read.
pub struct AdminState {
    /// The current configuration.
    pub store: Arc<Store>,
    /// Counters.
    pub metrics: Metrics,
    /// Istio's metrics and the registry every metric is in (`/stats/prometheus`).
    pub prometheus: Arc<crate::metrics::Metrics>,
    /// Whether draining has started.
    pub draining: drain::Flag,
    /// Notified by `POST /quitquitquit`.
    pub quit: Arc<Notify>,
    /// The capture listeners' bound addresses (name, address), for `/listeners`.
    pub bound: Vec<(String, SocketAddr)>,
    /// A router's listeners (`proxy run --type router`): what is bound now and what could not
    /// be, for `/listeners`; `None` for a sidecar.
    pub router: Option<crate::listener::bound::BindStatus>,
    /// The workload certificate, when the sidecar has a mesh CA (`CA_ADDR`): readiness waits
    /// for a valid one, `/certs` shows it.
    pub identity: Option<Arc<crate::identity::Store>>,
}

/// Which endpoints a port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything (15000, localhost only).
    Admin,
    /// `/healthz/ready` (15021).
    Health,
    /// `/stats/prometheus` (15090).
    Prometheus,
}

/// Connection limits of the admin, readiness and metrics ports (`rustmesh_xds::serve`, shared
/// with the control plane's health and metrics ports): at most 64 connections at once (more are
/// closed as they are accepted, so idle connections cannot use up the process's file
/// descriptors, the data listeners' too), 5 s for a request head and 5 s idle, 5 min at most.
pub const LIMITS: ConnLimits = ConnLimits::OPS;

/// One bound HTTP endpoint server.
pub struct Server {
    what: &'static str,
    listener: std::net::TcpListener,
    endpoints: Endpoints,
    state: Arc<AdminState>,
    limits: ConnLimits,
}

impl Server {
    /// Binds `addr`. Fails at once when it cannot be used.
    pub fn bind(
        what: &'static str,
        addr: SocketAddr,
        endpoints: Endpoints,
        state: Arc<AdminState>,
    ) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| Error::Bind { what, addr, source })?;
        Ok(Server {
            what,
            listener,
            endpoints,
            state,
            limits: LIMITS,
        })
    }

    /// The same server with other connection limits (tests): `connections` at once, and
    /// `timeout` for a request head and for idleness.
    pub fn with_limits(mut self, connections: usize, timeout: std::time::Duration) -> Self {
        self.limits.max_connections = connections;
        self.limits.request_head_timeout = timeout;
        self.limits.idle_timeout = timeout;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until the process exits.
    pub async fn run(self) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(what = self.what, "cannot serve: {e}");
                return;
            }
        };
        let (state, endpoints) = (self.state, self.endpoints);
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, endpoints, &req)) }
        });
        let gate = Arc::new(Gate::new(self.what, self.limits.max_connections));
        serve::run_http(
            listener,
            gate,
            self.limits,
            |stream| async move { Ok(stream) },
            service,
            std::future::pending(),
        )
        .await;
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn json_response(v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(v).unwrap_or_default();
    body.push('\n');
    response(StatusCode::OK, "application/json", body)
}

/// A query parameter, percent-decoded (`+` is a space), as Envoy's admin reads them: a client
/// that encodes `/stats?filter=^cluster%5C.` means `^cluster\.`.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Answers one request (the routing of every port).
pub fn handle(
    state: &AdminState,
    endpoints: Endpoints,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let json = query_param(req, "format").as_deref() == Some("json");
    match (endpoints, req.method(), path) {
        (Endpoints::Prometheus | Endpoints::Admin, &Method::GET, "/stats/prometheus") => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.prometheus.encode(),
        ),
        (Endpoints::Health | Endpoints::Admin, &Method::GET, "/healthz/ready") => {
            let (status, word) = readiness(state);
            text(status, format!("{word}\n"))
        }
        (Endpoints::Admin, &Method::GET, "/ready") => {
            let (status, word) = readiness(state);
            text(status, format!("{word}\n"))
        }
        (Endpoints::Admin, &Method::GET, "/config_dump") => match state.store.load() {
            Some(s) => match config_dump(
                &s,
                query_param(req, "include_eds").is_some(),
                query_param(req, "mask").as_deref(),
            ) {
                Ok(doc) => json_response(&doc),
                Err(field) => text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "mask: unknown field {field:?} (listeners, routes, clusters, endpoints, dns)\n"
                    ),
                ),
            },
            None => not_loaded(),
        },
        (Endpoints::Admin, &Method::GET, "/listeners") => {
            let snapshot = state.store.load();
            if json {
                json_response(&listeners_json(state, snapshot.as_deref()))
            } else {
                text(StatusCode::OK, listeners_text(state, snapshot.as_deref()))
            }
        }
        (Endpoints::Admin, &Method::GET, "/clusters") => match state.store.load() {
            Some(s) if json => json_response(&clusters_json(Some(&s))),
            Some(s) => text(StatusCode::OK, clusters_text(Some(&s))),
            None => not_loaded(),
        },
        (Endpoints::Admin, &Method::GET, "/stats") => {
            let filter = match query_param(req, "filter").map(|f| {
                // Bounded like every configured regex (loopback only, but still input).
                rustmesh_xds::regex::compile(&f, rustmesh_xds::regex::Anchor::Search)
                    .map(|c| c.regex)
            }) {
                None => None,
                Some(Ok(re)) => Some(re),
                Some(Err(e)) => {
                    return text(StatusCode::BAD_REQUEST, format!("invalid filter: {e}\n"));
                }
            };
            let lines = stats_lines(state);
            let body: String = lines
                .into_iter()
                .filter(|(name, _)| filter.as_ref().is_none_or(|re| re.is_match(name)))
                .map(|(name, value)| format!("{name}: {value}\n"))
                .collect();
            text(StatusCode::OK, body)
        }
        (Endpoints::Admin, &Method::GET, "/certs") => json_response(&certs_json(
            state.identity.as_deref(),
            std::time::SystemTime::now(),
        )),
        (Endpoints::Admin, &Method::GET | &Method::POST, "/logging") => logging(req),
        (Endpoints::Admin, &Method::GET, "/server_info") => json_response(&server_info(state)),
        (Endpoints::Admin, &Method::POST, "/quitquitquit") => {
            state.quit.notify_one();
            text(StatusCode::OK, "OK\n")
        }
        (Endpoints::Admin, &Method::GET, "/") => text(
            StatusCode::OK,
            "rustmesh sidecar admin\n  /config_dump\n  /listeners[?format=json]\n  /clusters[?format=json]\n  \
             /stats[?filter=<regex>]\n  /stats/prometheus\n  /ready\n  /certs\n  /server_info\n  \
             /logging (POST ?level=<level> or ?<logger>=<level> to change)\n  POST /quitquitquit\n",
        ),
        (_, &Method::GET, _) => text(StatusCode::NOT_FOUND, "not found\n"),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// `/logging`, as Envoy's: without a query the levels (GET or POST); with one (POST only) the
/// changes it asks for, all or none, then the levels. An unknown level or logger is a 400
/// naming it.
fn logging(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(control) = crate::logging::installed() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "log levels cannot be read or changed: this process installed no logging control \
             (the proxy binary does at start)\n",
        );
    };
    let params: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if params.is_empty() {
        return text(StatusCode::OK, control.listing());
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "changing log levels needs POST (POST /logging?level=<level> or ?<logger>=<level>)\n",
        );
    }
    let changes =
        match crate::logging::parse_changes(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Ok(c) => c,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("error: {e}\n")),
        };
    match control.apply(&changes) {
        Ok(()) => {
            tracing::info!(filter = control.filter(), "log levels changed");
            text(StatusCode::OK, control.listing())
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("error: {e}\n")),
    }
}

/// `/server_info`, a subset of Envoy's: this build's version, the readiness word (`LIVE`,
/// `DRAINING`, `PRE_INITIALIZING`, `NO_CERTIFICATE`) and, a rustmesh addition, the `versionInfo`
/// of the configuration serving (`null` before the first), which `rustmeshctl proxy-status`
/// compares with what the operator wrote.
pub fn server_info(state: &AdminState) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "state": readiness(state).1,
        "configVersion": state.store.load().map(|s| s.version().to_string()),
    })
}

fn not_loaded() -> Response<Full<Bytes>> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "no configuration loaded yet\n",
    )
}

/// `/config_dump`: the `ProxyConfig` being served, bare (as `ProxyConfig::to_json` writes it).
/// As in Envoy, endpoints (`endpoints`) only with `include_eds`; `mask=a,b` keeps only those
/// top-level fields (and `versionInfo`; an unknown name is the `Err`). The contract
/// `rustmeshctl` reads: `ctl/README.md`, "Admin API contract".
fn config_dump(
    snapshot: &Snapshot,
    include_eds: bool,
    mask: Option<&str>,
) -> std::result::Result<Value, String> {
    const FIELDS: [&str; 5] = ["listeners", "routes", "clusters", "endpoints", "dns"];
    let mut doc = serde_json::to_value(&*snapshot.config).unwrap_or_default();
    let keep: Option<Vec<&str>> = mask.map(|m| m.split(',').filter(|f| !f.is_empty()).collect());
    if let Some(unknown) = keep.iter().flatten().find(|f| !FIELDS.contains(f)) {
        return Err(unknown.to_string());
    }
    if let Some(obj) = doc.as_object_mut() {
        if !include_eds {
            obj.remove("endpoints");
        }
        if let Some(keep) = keep {
            obj.retain(|k, _| k == "versionInfo" || keep.contains(&k.as_str()));
        }
    }
    Ok(doc)
}

/// The sidecar's readiness (`/healthz/ready` on 15021 and 15020, `/ready` on 15000).
pub(crate) fn readiness(state: &AdminState) -> (StatusCode, &'static str) {
    if state.draining.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "DRAINING")
    } else if state.identity.as_ref().is_some_and(|id| !id.ready()) {
        (StatusCode::SERVICE_UNAVAILABLE, "NO_CERTIFICATE")
    } else if state.store.is_loaded() {
        (StatusCode::OK, "LIVE")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING")
    }
}

/// Envoy's `/certs` shape: the trust bundle (`ca_cert`) and the workload chain (`cert_chain`),
/// each with serial, SANs, validity (RFC 3339 in UTC, `2026-12-05T05:00:00Z`, as Envoy writes
/// its protobuf timestamps) and days left; then one set per `credentialName` resource held
/// (`kubernetes://<secret>` a chain, `kubernetes://<secret>-cacert` a bundle). Never a key.
pub fn certs_json(identity: Option<&crate::identity::Store>, now: std::time::SystemTime) -> Value {
    let describe = |der: &[u8], path: &str| -> Value {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let Ok((_, c)) = X509Certificate::from_der(der) else {
            return json!({"path": path, "error": "unparsable"});
        };
        let sans: Vec<Value> = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::URI(u) => json!({"uri": u}),
                        GeneralName::DNSName(d) => json!({"dns": d}),
                        other => json!({"other": other.to_string()}),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let not_after = c.validity().not_after.timestamp();
        let now_secs = now
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        json!({
            "path": path,
            "serial_number": c.raw_serial_as_string().replace(':', ""),
            "subject_alt_names": sans,
            "days_until_expiration": ((not_after - now_secs).max(0) / 86400).to_string(),
            "valid_from": rfc3339(c.validity().not_before),
            "expiration_time": rfc3339(c.validity().not_after),
        })
    };
    let mut sets = Vec::new();
    if let Some(cert) = identity.and_then(|i| i.current()) {
        sets.push(json!({
            "ca_cert": cert.roots.iter().map(|r| describe(r, "ROOTCA")).collect::<Vec<_>>(),
            "cert_chain": cert.chain.iter().map(|c| describe(c, "default")).collect::<Vec<_>>(),
        }));
    }
    for (name, c) in identity.map(|i| i.credentials().held()).unwrap_or_default() {
        let path = format!("{}{name}", rustmesh_xds::tls::SDS_KUBERNETES);
        sets.push(json!({
            "ca_cert": c.roots.iter().map(|r| describe(r, &path)).collect::<Vec<_>>(),
            "cert_chain": c.chain.iter().map(|r| describe(r, &path)).collect::<Vec<_>>(),
        }));
    }
    json!({"certificates": sets})
}

/// A certificate time as RFC 3339 in UTC (`2026-12-05T05:00:00Z`); RFC 5280 times are UTC.
fn rfc3339(t: x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

fn listeners_text(state: &AdminState, snapshot: Option<&Snapshot>) -> String {
    let mut out = String::new();
    let bound = bound_now(state);
    for (name, addr) in &bound {
        out.push_str(&format!("{name}::{addr}\n"));
    }
    for l in snapshot.iter().flat_map(|s| &s.listeners) {
        if !bound.iter().any(|(n, _)| *n == l.name) {
            out.push_str(&format!("{}::{}\n", l.name, l.address));
        }
    }
    out
}

/// The sockets bound now (name, address): the capture listeners', or a router's.
fn bound_now(state: &AdminState) -> Vec<(String, SocketAddr)> {
    let mut out = state.bound.clone();
    for l in state.router.iter().flat_map(|r| r.get()) {
        out.extend(l.local.iter().map(|a| (l.name.clone(), *a)));
    }
    out
}

fn socket_address(a: SocketAddr) -> Value {
    json!({"socketAddress": {"address": a.ip().to_string(), "portValue": a.port()}})
}

/// Envoy's `listenerStatuses`; a router's listener that could not be bound has its `error`
/// (rustmesh's field) and its configured address.
fn listeners_json(state: &AdminState, snapshot: Option<&Snapshot>) -> Value {
    let bound = bound_now(state);
    let mut statuses: Vec<Value> = bound
        .iter()
        .map(|(name, addr)| json!({"name": name, "localAddress": socket_address(*addr)}))
        .collect();
    let failed: Vec<crate::listener::bound::ListenerState> = state
        .router
        .iter()
        .flat_map(|r| r.get())
        .filter(|l| l.error.is_some())
        .collect();
    for l in snapshot.iter().flat_map(|s| &s.listeners) {
        if bound.iter().any(|(n, _)| *n == l.name) {
            continue;
        }
        let mut status = json!({"name": l.name, "localAddress": socket_address(l.address)});
        if let Some(e) = failed
            .iter()
            .find(|f| f.name == l.name)
            .and_then(|f| f.error.clone())
        {
            status["error"] = json!(e);
        }
        statuses.push(status);
    }
    json!({"listenerStatuses": statuses})
}

fn health_word(e: &crate::cluster::Endpoint) -> &'static str {
    use rustmesh_xds::cluster::HealthStatus;
    match e.health {
        HealthStatus::Healthy => "HEALTHY",
        HealthStatus::Unhealthy => "UNHEALTHY",
        HealthStatus::Draining => "DRAINING",
        HealthStatus::Unknown => "UNKNOWN",
    }
}

fn clusters_text(snapshot: Option<&Snapshot>) -> String {
    let mut out = String::new();
    let Some(s) = snapshot else {
        return out;
    };
    for c in s.clusters.sorted() {
        // A DNS cluster's endpoints: as last resolved.
        let c = &c.resolved();
        let n = &c.name;
        out.push_str(&format!("{n}::observability_name::{n}\n"));
        if let Some(t) = c
            .def
            .circuit_breakers
            .as_ref()
            .and_then(|cb| cb.thresholds.first())
        {
            for (k, v) in [
                ("max_connections", t.max_connections),
                ("max_pending_requests", t.max_pending_requests),
                ("max_requests", t.max_requests),
                ("max_retries", t.max_retries),
            ] {
                if let Some(v) = v {
                    out.push_str(&format!("{n}::default_priority::{k}::{v}\n"));
                }
            }
        }
        out.push_str(&format!("{n}::added_via_api::true\n"));
        for e in &c.endpoints {
            let h = format!("{n}::{}", e.addr);
            for (stat, value, _) in e.stats.snapshot() {
                out.push_str(&format!("{h}::{stat}::{value}\n"));
            }
            out.push_str(&format!(
                "{h}::hostname::{}\n",
                e.hostname.as_deref().unwrap_or("")
            ));
            // Envoy's flags: `healthy`, or each reason a host is out joined by '/'.
            let mut out_because = Vec::new();
            if c.is_ejected(e) {
                out_because.push("/failed_outlier_check".to_string());
            }
            if !e.usable() {
                out_because.push(format!("/eds_{}", health_word(e).to_ascii_lowercase()));
            }
            let flags = if out_because.is_empty() {
                "healthy".to_string()
            } else {
                out_because.concat()
            };
            out.push_str(&format!("{h}::health_flags::{flags}\n"));
            out.push_str(&format!("{h}::weight::{}\n", e.weight));
            let loc = e.locality.clone().unwrap_or_default();
            out.push_str(&format!("{h}::region::{}\n", loc.region));
            out.push_str(&format!("{h}::zone::{}\n", loc.zone));
            out.push_str(&format!("{h}::sub_zone::{}\n", loc.sub_zone));
            out.push_str(&format!("{h}::canary::false\n"));
            out.push_str(&format!("{h}::priority::{}\n", e.priority));
            out.push_str(&format!("{h}::success_rate::-1\n"));
            out.push_str(&format!("{h}::local_origin_success_rate::-1\n"));
        }
    }
    out
}

fn cluster_json(c: &UpstreamCluster) -> Value {
    let hosts: Vec<Value> = c
        .endpoints
        .iter()
        .map(|e| {
            let stats: Vec<Value> = e
                .stats
                .snapshot()
                .iter()
                .map(|(name, value, gauge)| {
                    if *gauge {
                        json!({"type": "GAUGE", "name": name, "value": value.to_string()})
                    } else {
                        json!({"name": name, "value": value.to_string()})
                    }
                })
                .collect();
            let loc = e.locality.clone().unwrap_or_default();
            json!({
                "address": socket_address(e.addr),
                "stats": stats,
                "healthStatus": {"edsHealthStatus": health_word(e), "failedOutlierCheck": c.is_ejected(e)},
                "weight": e.weight,
                "priority": e.priority,
                "hostname": e.hostname.clone().unwrap_or_default(),
                "locality": {"region": loc.region, "zone": loc.zone, "subZone": loc.sub_zone},
            })
        })
        .collect();
    let mut v = json!({
        "name": c.name,
        "observabilityName": c.name,
        "addedViaApi": true,
        "hostStatuses": hosts,
    });
    if c.kind == Kind::OriginalDst {
        v["type"] = json!("ORIGINAL_DST");
    }
    v
}

fn clusters_json(snapshot: Option<&Snapshot>) -> Value {
    let statuses: Vec<Value> = snapshot
        .map(|s| {
            s.clusters
                .sorted()
                .into_iter()
                .map(|c| cluster_json(&c.resolved()))
                .collect()
        })
        .unwrap_or_default();
    json!({"clusterStatuses": statuses})
}

fn stats_lines(state: &AdminState) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    if let Some(s) = state.store.load() {
        for c in s.clusters.sorted() {
            let c = &c.resolved();
            let p = format!("cluster.{}", c.name);
            let st = &c.stats;
            for (k, v) in [
                ("upstream_cx_total", st.cx_total.get()),
                ("upstream_cx_active", st.cx_active.get().max(0) as u64),
                ("upstream_cx_connect_fail", st.cx_connect_fail.get()),
                ("upstream_cx_connect_timeout", st.cx_connect_timeout.get()),
                ("upstream_cx_none_healthy", st.cx_none_healthy.get()),
                ("upstream_cx_rx_bytes_total", st.cx_rx_bytes.get()),
                ("upstream_cx_tx_bytes_total", st.cx_tx_bytes.get()),
                ("upstream_cx_idle_timeout", st.cx_idle_timeout.get()),
                ("update_success", st.update_success.get()),
                ("update_failure", st.update_failure.get()),
                ("membership_healthy", c.usable_endpoints().len() as u64),
                ("membership_total", c.endpoints.len() as u64),
            ] {
                lines.push((format!("{p}.{k}"), v.to_string()));
            }
        }
        for l in &s.listeners {
            let p = format!("listener.{}", l.name);
            let st = &l.stats;
            for (k, v) in [
                ("downstream_cx_total", st.cx_total.get()),
                ("downstream_cx_active", st.cx_active.get().max(0) as u64),
                ("downstream_cx_rx_bytes_total", st.cx_rx_bytes.get()),
                ("downstream_cx_tx_bytes_total", st.cx_tx_bytes.get()),
            ] {
                lines.push((format!("{p}.{k}"), v.to_string()));
            }
        }
    }
    // Span exporters (Envoy's `tracing.zipkin.*`, named by provider here).
    for e in crate::trace::export::all() {
        let p = format!("tracing.{}", e.provider().name);
        let st = e.stats();
        for (k, v) in [
            ("spans_sent", &st.spans_sent),
            ("spans_dropped", &st.spans_dropped),
            ("reports_sent", &st.reports_sent),
            ("reports_failed", &st.reports_failed),
        ] {
            lines.push((
                format!("{p}.{k}"),
                v.load(std::sync::atomic::Ordering::Relaxed).to_string(),
            ));
        }
    }
    let (applied, rejected) = state.metrics.config_reload_counts();
    lines.push((
        "rustmesh.config_reloads.applied".into(),
        applied.to_string(),
    ));
    lines.push((
        "rustmesh.config_reloads.rejected".into(),
        rejected.to_string(),
    ));
    lines.push((
        "rustmesh.config.version".into(),
        state
            .store
            .load()
            .map(|s| s.version().to_string())
            .unwrap_or_default(),
    ));
    // Envoy's server.state: 0 live, 1 draining, 2 pre-initializing.
    let server_state = match readiness(state).1 {
        "LIVE" => 0,
        "DRAINING" => 1,
        _ => 2,
    };
    lines.push(("server.state".into(), server_state.to_string()));
    lines.sort();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterManager;
    use crate::http::handler::ConnectionManager;
    use rustmesh_xds::ProxyConfig;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[tokio::test]
    async fn idle_connections_cannot_take_the_readiness_port() {
        let prometheus = Arc::new(crate::metrics::Metrics::new());
        let (signal, _watch) = drain::channel();
        let state = Arc::new(AdminState {
            store: Arc::new(Store::new()),
            metrics: Metrics::default(),
            prometheus,
            draining: signal.flag(),
            quit: Arc::new(Notify::new()),
            bound: vec![],
            router: None,
            identity: None,
        });
        let health = Server::bind(
            "health",
            "127.0.0.1:0".parse().unwrap(),
            Endpoints::Health,
            state,
        )
        .unwrap()
        .with_limits(8, std::time::Duration::from_millis(300));
        let h = health.local_addr().unwrap();
        tokio::spawn(health.run());
        // An attacker opens far more connections than the cap and sends nothing.
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(h).await.unwrap());
        }
        // Those over the cap are closed at once, the others when the head does not come.
        use tokio::io::AsyncReadExt;
        for (i, s) in idle.iter_mut().enumerate() {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut b))
                .await
                .unwrap_or_else(|_| panic!("idle connection {i} was never closed"));
            assert!(matches!(n, Ok(0) | Err(_)), "connection {i}: {n:?}");
        }
        // The port still answers (503: no configuration yet).
        assert_eq!(get(h, "/healthz/ready").await.0, 503);
    }

    #[tokio::test]
    async fn endpoints_before_and_after_the_first_configuration() {
        let prometheus = Arc::new(crate::metrics::Metrics::new());
        let mut metrics = Metrics::default();
        prometheus.register(|r| metrics = Metrics::register(r));
        let store = Arc::new(Store::new());
        let (signal, _watch) = drain::channel();
        let state = Arc::new(AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
            prometheus,
            draining: signal.flag(),
            quit: Arc::new(Notify::new()),
            bound: vec![("virtualOutbound".into(), "0.0.0.0:15001".parse().unwrap())],
            router: None,
            identity: None,
        });
        let admin = Server::bind(
            "admin",
            "127.0.0.1:0".parse().unwrap(),
            Endpoints::Admin,
            state.clone(),
        )
        .unwrap();
        let health = Server::bind(
            "health",
            "127.0.0.1:0".parse().unwrap(),
            Endpoints::Health,
            state.clone(),
        )
        .unwrap();
        let (a, h) = (admin.local_addr().unwrap(), health.local_addr().unwrap());
        tokio::spawn(admin.run());
        tokio::spawn(health.run());

        assert_eq!(get(a, "/ready").await, (503, "PRE_INITIALIZING\n".into()));
        assert_eq!(get(h, "/healthz/ready").await.0, 503);
        assert_eq!(get(a, "/config_dump").await.0, 503);
        assert_eq!(get(a, "/clusters?format=json").await.0, 503);
        assert_eq!(
            get(h, "/config_dump").await.0,
            404,
            "only readiness on 15021"
        );

        let doc = serde_json::json!({
            "versionInfo": "v7",
            "clusters": [{"name": "outbound|80||web", "type": "STATIC", "loadAssignment": {"clusterName": "outbound|80||web",
                "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "10.0.0.9", "portValue": 80}}}}]}]}}],
        });
        let config = ProxyConfig::from_json(&doc.to_string()).unwrap();
        let snapshot = Snapshot::compile(
            config,
            &ClusterManager::new(metrics.clone()),
            &metrics,
            &ConnectionManager::default(),
        )
        .unwrap();
        snapshot.clusters.get("outbound|80||web").unwrap().endpoints[0]
            .stats
            .cx_total
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        store.swap(Arc::new(snapshot));

        assert_eq!(get(a, "/ready").await, (200, "LIVE\n".into()));
        assert_eq!(get(h, "/healthz/ready").await.0, 200);
        let (status, dump) = get(a, "/config_dump?include_eds").await;
        assert_eq!(status, 200);
        assert_eq!(ProxyConfig::from_json(&dump).unwrap().version_info, "v7");
        let (_, masked) = get(a, "/config_dump?mask=listeners").await;
        let v: Value = serde_json::from_str(&masked).unwrap();
        assert_eq!(v, json!({"versionInfo": "v7", "listeners": []}));
        let (status, body) = get(a, "/config_dump?mask=listeners,lisenters").await;
        assert_eq!(status, 400);
        assert!(body.contains("\"lisenters\""), "{body}");
        let (_, dump) = get(a, "/config_dump").await;
        let v: Value = serde_json::from_str(&dump).unwrap();
        assert!(v.get("endpoints").is_none(), "EDS only with include_eds");

        let (_, clusters) = get(a, "/clusters?format=json").await;
        let v: Value = serde_json::from_str(&clusters).unwrap();
        let host = &v["clusterStatuses"][0]["hostStatuses"][0];
        assert_eq!(v["clusterStatuses"][0]["name"], "outbound|80||web");
        assert_eq!(host["address"]["socketAddress"]["address"], "10.0.0.9");
        assert_eq!(host["address"]["socketAddress"]["portValue"], 80);
        assert_eq!(host["healthStatus"]["edsHealthStatus"], "HEALTHY");
        assert!(
            host["stats"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "cx_total", "value": "3"}))
        );
        let (_, text) = get(a, "/clusters").await;
        assert!(
            text.contains("outbound|80||web::10.0.0.9:80::cx_total::3\n"),
            "{text}"
        );
        assert!(text.contains("outbound|80||web::10.0.0.9:80::health_flags::healthy\n"));

        let (_, listeners) = get(a, "/listeners").await;
        assert_eq!(listeners, "virtualOutbound::0.0.0.0:15001\n");
        let (_, stats) = get(a, "/stats?filter=^server").await;
        // Percent-encoded, as clients send it: `^server%5C.` is `^server\.`.
        assert_eq!(get(a, "/stats?filter=%5Eserver%5C.").await.1, stats);
        assert_eq!(stats, "server.state: 0\n");
        let (_, prom) = get(a, "/stats/prometheus").await;
        assert!(
            prom.contains("# TYPE rustmesh_config_reloads counter"),
            "{prom}"
        );

        signal.start();
        assert_eq!(get(a, "/ready").await, (503, "DRAINING\n".into()));
        assert_eq!(get(h, "/healthz/ready").await.0, 503);
    }

    #[test]
    fn with_a_mesh_ca_readiness_waits_for_a_certificate() {
        let prometheus = Arc::new(crate::metrics::Metrics::new());
        let (signal, _watch) = drain::channel();
        let mut state = AdminState {
            store: Arc::new(Store::new()),
            metrics: Metrics::default(),
            prometheus,
            draining: signal.flag(),
            quit: Arc::new(Notify::new()),
            bound: vec![],
            router: None,
            identity: Some(Arc::new(crate::identity::Store::default())),
        };
        assert_eq!(readiness(&state).1, "NO_CERTIFICATE");
        assert_eq!(
            certs_json(state.identity.as_deref(), std::time::SystemTime::now()),
            json!({"certificates": []})
        );
        state.identity = None;
        assert_eq!(readiness(&state).1, "PRE_INITIALIZING");
    }
}
