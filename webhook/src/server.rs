//! The thin HTTP layer: an axum router (`POST /inject`, `/healthz`, `/readyz`, `/metrics`) served
//! over rustls, with a body limit, a request timeout and graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
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

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The current injection settings (swapped by the settings watch).
    pub settings: Arc<ArcSwap<InjectionSettings>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Namespace label lookup, when configured.
    pub namespaces: Option<NamespaceLookup>,
    /// `/readyz` answers 200 once this is true (settings loaded, certificate in place).
    pub ready: Arc<AtomicBool>,
    /// Body limit of `POST /inject`; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Time to receive the body of `POST /inject`; slower ones get 408.
    pub request_timeout: Duration,
}

impl AppState {
    /// State with these settings, fresh metrics, no namespace lookup, ready, default limits.
    pub fn new(settings: InjectionSettings) -> Self {
        AppState {
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            metrics: Arc::new(Metrics::new()),
            namespaces: None,
            ready: Arc::new(AtomicBool::new(true)),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/inject", post(inject_handler))
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
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
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

async fn inject_inner(state: &AppState, req: Request) -> (&'static str, Response) {
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    let body: Bytes = match tokio::time::timeout(
        state.request_timeout,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await
    {
        Err(_) => {
            return (
                "timeout",
                plain(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body not received within {:?}",
                        state.request_timeout
                    ),
                ),
            );
        }
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(limit),
        Ok(Err(e)) => {
            return (
                "bad_request",
                plain(
                    StatusCode::BAD_REQUEST,
                    format!("reading request body: {e}"),
                ),
            );
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };

    let settings = state.settings.load_full();
    let lookup = |ns: &str| state.namespaces.as_ref().and_then(|f| f(ns));
    // `review_body` does not panic on any input (see tests/fuzz.rs); this is a last resort so that
    // a bug answers 500 instead of dropping the connection.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        review_body(&body, &settings, &lookup)
    }));
    match result {
        Ok(Ok(out)) => {
            let bytes = serde_json::to_vec(&out.review).unwrap_or_default();
            let mut resp = Response::new(Body::from(bytes));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (out.outcome.as_str(), resp)
        }
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

/// Serves `app` over TLS on `listener` until the returned handle is shut down.
pub fn serve_tls(listener: TcpListener, tls: rustls::ServerConfig, app: Router) -> ServerHandle {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        app,
        rx,
    ));
    ServerHandle {
        local_addr,
        shutdown: tx,
        task,
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. too many open files: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(DEFAULT_REQUEST_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}

/// Serves the health/metrics routes over plain HTTP until `shutdown` resolves.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
