//! The HTTP connection manager's first stage: serves one downstream connection (HTTP/1.1 with
//! keep-alive, chunked bodies and upgrades, or h2c with prior knowledge) with hyper until it
//! closes or drains, handing every request hyper reads to the request stage
//! (`http/request.rs`). Comes after the listener's filter chain (`http::handler`, which calls
//! [`serve_connection_with_drain`]).
//!
//! The stages of a request, in order: `server.rs` (the connection), `request.rs` (head, route,
//! faults, redirect, direct response), `forward.rs` (the upstream request, mirrors, the answer's
//! headers, upgrades), [`retry`](crate::http::retry) (the attempts), `reply.rs` (local replies),
//! `record.rs` (metrics and the access log when the response body ends).

use crate::drive::{BatchIo, ConnExecutor, Driven, Queue};
use crate::http::record::Conn;
use crate::http::request::handle;
use crate::http::{ConnectionError, HttpContext};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long an HTTP/1.1 connection stays open once it drains, if it does not end by itself
/// (Envoy's connection manager `drain_timeout`, 5 s unless set). Meanwhile every answer carries
/// `Connection: close` and ends its connection. A client may already have written its next
/// request on a connection that is between two requests: closing it at once would reset that
/// request (hyper: "connection closed before message completed"), which no default retry
/// policy retries. By the end of the window the client's sidecar has the endpoint removed.
/// HTTP/2 connections send GOAWAY at once: a stream the server did not take is refused, and
/// that is retried.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one downstream connection until it closes.
///
/// `io` is the accepted (and, after sniffing, replayed) connection; `ctx` carries the routes,
/// the cluster manager, the connection's addresses and the connection manager's access logs. Returns when the client closes, after a
/// protocol error (bad HTTP/1.1 framing, invalid HTTP/2 frames) or when the request head is not
/// received within [`HttpSettings::header_read_timeout`](crate::http::HttpSettings).
pub async fn serve_connection<IO>(io: IO, ctx: HttpContext) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_with_drain(io, ctx, std::future::pending()).await
}

/// [`serve_connection`], draining gracefully once `drain` resolves (SIGTERM): requests in
/// flight finish, HTTP/1.1 answers carry `Connection: close` and end their connection (one
/// still open after [`DRAIN_TIMEOUT`] closes), HTTP/2 sends GOAWAY; then the connection ends.
pub async fn serve_connection_with_drain<IO, D>(
    io: IO,
    ctx: HttpContext,
    drain: D,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: std::future::Future<Output = ()>,
{
    serve(io, ctx, Some(drain)).await
}

/// [`serve_connection`] for a connection accepted while the sidecar drains (Envoy's drain
/// manager answering `drainClose()`): its first request is served, with `Connection: close`
/// (HTTP/1.1) or followed by GOAWAY (HTTP/2), then the connection ends. (A graceful shutdown
/// before the first request would drop the connection before hyper has read which protocol it
/// speaks, failing a request the client already sent.)
pub async fn serve_connection_draining<IO>(io: IO, ctx: HttpContext) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(io, ctx, None::<std::future::Pending<()>>).await
}

/// Serves `io`; drains once `drain` resolves, or, with `None`, once the first request arrives.
async fn serve<IO, D>(io: IO, ctx: HttpContext, drain: Option<D>) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: std::future::Future<Output = ()>,
{
    let peer = ctx.peer;
    let settings = ctx.settings.clone();
    let conn = Arc::new(Conn {
        ctx,
        metric_handles: Mutex::new(Vec::new()),
        peer_cache: Default::default(),
    });
    let first_request = drain
        .is_none()
        .then(|| Arc::new(tokio::sync::Notify::new()));
    let arrived = first_request.clone();
    // Set once the connection drains (from the start for one accepted while draining): HTTP/1
    // answers then carry `Connection: close`.
    let closing = Arc::new(AtomicBool::new(drain.is_none()));
    // Whether the client speaks HTTP/2 here: then draining sends GOAWAY at once.
    let h2 = Arc::new(AtomicBool::new(false));
    let (svc_closing, svc_h2) = (closing.clone(), h2.clone());
    let svc = hyper::service::service_fn(move |req| {
        let version = req.version();
        if version == hyper::Version::HTTP_2 {
            svc_h2.store(true, Ordering::Release);
        }
        if let Some(first) = &arrived {
            // Stores a permit if the connection task is not waiting yet.
            first.notify_one();
        }
        let conn = conn.clone();
        let closing = svc_closing.clone();
        async move {
            let mut answer = handle(conn, req).await;
            if closing.load(Ordering::Acquire)
                && version < hyper::Version::HTTP_2
                && answer.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
            {
                answer.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(answer)
        }
    });
    let drain = async move {
        match (drain, first_request) {
            (Some(d), _) => d.await,
            (None, Some(first)) => first.notified().await,
            (None, None) => std::future::pending().await,
        }
    };
    // HTTP/2 streams run in this connection's task, and what a turn of it writes goes out in
    // one system call (`drive`).
    let queue = Arc::new(Queue::default());
    let io = BatchIo::new(io);
    let flush = io.flusher();
    let mut builder = auto::Builder::new(ConnExecutor::for_connection(queue.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_request_headers_bytes.max(8192))
        .max_headers(settings.max_request_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_request_headers_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(settings.max_concurrent_streams);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let main = async move {
        tokio::pin!(conn);
        tokio::pin!(drain);
        tokio::select! {
            r = conn.as_mut() => r,
            () = &mut drain => {
                closing.store(true, Ordering::Release);
                if !h2.load(Ordering::Acquire) {
                    let ended = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
                    if let Ok(r) = ended {
                        return r;
                    }
                }
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    let result = Driven::new(main, queue, Some(flush), false).await;
    result.map_err(|source| ConnectionError { peer, source })
}
