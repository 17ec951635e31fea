//! Answers the proxy makes itself (local replies): `text/plain` with a status, or trailers-only
//! gRPC answers for gRPC requests with Envoy's status mapping, and the reply and response flag
//! of each upstream error. Used by every stage that ends a request early: the request stage (431,
//! `NR` 404, fault aborts, direct responses) and the forwarding stage (timeouts, `DPE`, the
//! cluster's errors after the last attempt). The reply then goes to the recording stage
//! (`http/record.rs`) like any upstream answer.

use crate::body::{ProxyBody, empty, full};
use crate::http::UpstreamError;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

/// Envoy's mapping of a local reply's HTTP status to a gRPC status.
pub(super) fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

pub(super) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(super) fn grpc_reply(code: u32, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(empty());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        r.headers_mut().insert("grpc-message", v);
    }
    r
}

/// A reply made by the proxy itself (`text/plain`, or a trailers-only gRPC answer for gRPC requests).
pub(super) fn local_reply(code: u16, body: &str, grpc: bool) -> Response<ProxyBody> {
    if grpc {
        return grpc_reply(http_to_grpc(code), body);
    }
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status(code);
    if !body.is_empty() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

pub(super) const RESET_BEFORE_HEADERS: &str =
    "upstream connect error or disconnect/reset before headers";

/// The local reply and response flag for an upstream error.
pub(super) fn error_reply(e: &UpstreamError, grpc: bool) -> (Response<ProxyBody>, &'static str) {
    let (body, flag) = match e {
        UpstreamError::ClusterNotFound(_) => ("cluster not found".to_string(), "NC"),
        UpstreamError::NoHealthyUpstream => ("no healthy upstream".to_string(), "UH"),
        UpstreamError::Overflow => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: overflow"),
            "UO",
        ),
        UpstreamError::ConnectFailure { .. } => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: connection failure"),
            "UF",
        ),
        UpstreamError::Reset { .. } => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: connection termination"),
            "UC",
        ),
        UpstreamError::RefusedStream { .. } => (
            format!("{RESET_BEFORE_HEADERS}. reset reason: remote refused stream reset"),
            "UR",
        ),
    };
    let mut r = local_reply(503, &body, grpc);
    if matches!(e, UpstreamError::Overflow) {
        r.headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    (r, flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_mapping() {
        assert_eq!(http_to_grpc(503), 14);
        assert_eq!(http_to_grpc(404), 12);
        assert_eq!(http_to_grpc(418), 2);
        let r = local_reply(503, "no healthy upstream", true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
    }
}
