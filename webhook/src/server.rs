//! The thin HTTP layer: an axum router (`POST /inject`, `/healthz`, `/readyz`, `/metrics`) served
//! over rustls, with a body limit, a request timeout and graceful shutdown; connections are
//! capped and timed out by `rustmesh_xds::serve` (`docs/limits.md`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::service::TowerToHyperService;
use rustmesh_xds::serve::Gate;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::InjectionSettings;
use crate::metrics::Metrics;
use crate::review::review_body;

/// Looks a namespace's labels up (a reflector's store); `None` when unknown.
pub type NamespaceLookup = Arc<dyn Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync>;

/// Default limit of an admission request body: 8 MiB (the API server's own limit is 3 MiB of
/// object plus envelope).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default time to receive a whole request body (the API server's webhook timeout is 10 s at most
/// by default, 30 s at most ever).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the webhook is ready, and if not, why: the body of `/readyz`. Several conditions
/// each keep their own problem (the settings, the serving certificate, shutting down); it is
/// ready when none has one. [`Readiness::set_ready`] and [`Readiness::set_not_ready`] speak for
/// the settings; [`Readiness::set_condition`] for any other.
#[derive(Debug)]
pub struct Readiness(Mutex<BTreeMap<&'static str, String>>);

/// The condition [`Readiness::set_ready`] and [`Readiness::set_not_ready`] set.
pub const SETTINGS_CONDITION: &str = "settings";

impl Readiness {
    /// Ready.
    pub fn ready() -> Self {
        Readiness(Mutex::new(BTreeMap::new()))
    }

    /// Not ready, because of `why` (about the settings).
    pub fn not_ready(why: impl Into<String>) -> Self {
        let r = Self::ready();
        r.set_not_ready(why);
        r
    }

    /// The settings are fine.
    pub fn set_ready(&self) {
        self.set_condition(SETTINGS_CONDITION, None);
    }

    /// Not ready because of the settings: `why`.
    pub fn set_not_ready(&self, why: impl Into<String>) {
        self.set_condition(SETTINGS_CONDITION, Some(why.into()));
    }

    /// Sets (`Some(why)`) or clears (`None`) the problem of one condition.
    pub fn set_condition(&self, condition: &'static str, problem: Option<String>) {
        if let Ok(mut p) = self.0.lock() {
            match problem {
                Some(why) => {
                    p.insert(condition, why);
                }
                None => {
                    p.remove(condition);
                }
            }
        }
    }

    /// Why it is not ready (every condition's problem, `; `-separated); `None` when ready.
    pub fn problem(&self) -> Option<String> {
        match self.0.lock() {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(p.values().cloned().collect::<Vec<_>>().join("; ")),
            Err(_) => Some("readiness state poisoned".to_owned()),
        }
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.problem().is_none()
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The current injection settings (swapped by the settings watch); `None` until valid
    /// settings arrived: `/inject` then answers 503 and never injects a made-up image.
    pub settings: Arc<ArcSwapOption<InjectionSettings>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Namespace label lookup, when configured.
    pub namespaces: Option<NamespaceLookup>,
    /// `/readyz` answers 200 while this is ready (valid settings, certificate in place), else
    /// 503 with the reason.
    pub ready: Arc<Readiness>,
    /// Body limit of `POST /inject`; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Time to receive the body of `POST /inject`; slower ones get 408.
    pub request_timeout: Duration,
}

impl AppState {
    /// State with these settings, fresh metrics, no namespace lookup, ready, default limits.
    pub fn new(settings: InjectionSettings) -> Self {
        AppState {
            settings: Arc::new(ArcSwapOption::from_pointee(settings)),
            metrics: Arc::new(Metrics::new()),
            namespaces: None,
            ready: Arc::new(Readiness::ready()),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/inject", post(inject_handler))
        .route("/validate", post(validate_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Routes without `/inject`, for the optional plain-HTTP health/metrics listener.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.ready.problem() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

fn plain(status: StatusCode, msg: String) -> Response {
    (status, format!("{msg}\n")).into_response()
}

async fn inject_handler(State(state): State<AppState>, req: Request) -> Response {
    let start = Instant::now();
    let (status_label, resp) = inject_inner(&state, req).await;
    state.metrics.count(status_label);
    state.metrics.observe(start.elapsed().as_secs_f64());
    resp
}

/// Reads a review's body within the state's size and time limits; the metric label and the
/// HTTP answer when it could not.
async fn read_body(state: &AppState, req: Request) -> Result<Bytes, (&'static str, Response)> {
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    match tokio::time::timeout(
        state.request_timeout,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await
    {
        Err(_) => Err((
            "timeout",
            plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {:?}",
                    state.request_timeout
                ),
            ),
        )),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => Err((
            "bad_request",
            plain(
                StatusCode::BAD_REQUEST,
                format!("reading request body: {e}"),
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn json_response(doc: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn validate_handler(State(state): State<AppState>, req: Request) -> Response {
    let start = Instant::now();
    let (label, resp) = match read_body(&state, req).await {
        Err(answer) => answer,
        Ok(body) => {
            // The mesh CA is on when the injector settings give sidecars its address (the same
            // chart value, ca.enabled); without settings yet, assume it is (the lenient side).
            let has_ca = state
                .settings
                .load()
                .as_ref()
                .is_none_or(|s| !s.ca_address.is_empty());
            let result =
                std::panic::catch_unwind(|| crate::validation::validate_body(&body, has_ca));
            match result {
                Ok(Ok(out)) => (out.verdict.as_str(), json_response(&out.review)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "bad validation request");
                    ("bad_request", plain(StatusCode::BAD_REQUEST, e.to_string()))
                }
                Err(_) => {
                    tracing::error!("validation review panicked");
                    (
                        "panic",
                        plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal error".to_owned(),
                        ),
                    )
                }
            }
        }
    };
    state.metrics.count_validation(label);
    state.metrics.observe(start.elapsed().as_secs_f64());
    resp
}

async fn inject_inner(state: &AppState, req: Request) -> (&'static str, Response) {
    let body = match read_body(state, req).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };

    let Some(settings) = state.settings.load_full() else {
        let why = state
            .ready
            .problem()
            .unwrap_or_else(|| "no injection settings".to_owned());
        return (
            "unavailable",
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no valid injection settings: {why}"),
            ),
        );
    };
    let lookup = |ns: &str| state.namespaces.as_ref().and_then(|f| f(ns));
    // `review_body` does not panic on any input (see tests/fuzz.rs); this is a last resort so that
    // a bug answers 500 instead of dropping the connection.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        review_body(&body, &settings, &lookup)
    }));
    match result {
        Ok(Ok(out)) => (out.outcome.as_str(), json_response(&out.review)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bad admission request");
            ("bad_request", plain(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(_) => {
            tracing::error!("admission review panicked");
            (
                "panic",
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                ),
            )
        }
    }
}

fn too_large(limit: usize) -> (&'static str, Response) {
    (
        "too_large",
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        ),
    )
}

/// A running HTTPS server.
#[derive(Debug)]
pub struct ServerHandle {
    /// Where it listens.
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, lets in-flight requests finish (up to 10 s), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server stops (it only stops on [`ServerHandle::shutdown`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Connections to the HTTPS port at once, by default (`--max-connections`): the API server
/// sends reviews concurrently (one connection each over HTTP/1.1), several API servers may.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// A connection to the HTTPS port on which nothing moved this long is shut down (HTTP/2:
/// GOAWAY, which the API server's client handles without losing a request; an idle HTTP/1.1
/// connection is already closed after [`DEFAULT_REQUEST_TIMEOUT`] without a request head).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a connection to the HTTPS port lives before it is shut down gracefully, so that
/// the API server's connections spread over the replicas again after a rollout.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);

/// The limits of the HTTPS port's connections with `max_connections` at once.
pub fn https_limits(max_connections: usize) -> rustmesh_xds::serve::ConnLimits {
    rustmesh_xds::serve::ConnLimits {
        max_connections,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        request_head_timeout: DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        max_age: Some(MAX_CONNECTION_AGE),
    }
}

/// The limits of the plain ops port (`/healthz`, `/readyz`, `/metrics`): 64 connections, 5 s
/// for a request head and idle, 5 min at most (`rustmesh_xds::serve::ConnLimits::OPS`).
pub const OPS_LIMITS: rustmesh_xds::serve::ConnLimits = rustmesh_xds::serve::ConnLimits::OPS;

/// Serves `app` over TLS on `listener` under `limits` (connections over the cap closed at
/// accept and counted on `gate`) until the returned handle is shut down.
pub fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    limits: rustmesh_xds::serve::ConnLimits,
    gate: Arc<Gate>,
) -> ServerHandle {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, mut rx) = watch::channel(false);
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let handshake = move |tcp: TcpStream| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await }
    };
    let task = tokio::spawn(rustmesh_xds::serve::run_http(
        listener,
        gate,
        limits,
        handshake,
        TowerToHyperService::new(app),
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        },
    ));
    ServerHandle {
        local_addr,
        shutdown: tx,
        task,
    }
}

/// Serves the health/metrics routes over plain HTTP under [`OPS_LIMITS`] (connections over the
/// cap closed at accept and counted on `gate`) until `shutdown` resolves.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    rustmesh_xds::serve::run_http(
        listener,
        gate,
        OPS_LIMITS,
        |tcp: TcpStream| async move { Ok(tcp) },
        TowerToHyperService::new(app),
        shutdown,
    )
    .await;
    Ok(())
}
