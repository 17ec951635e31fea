//! The authorization stage of an inbound request, where Envoy's RBAC filters sit in Istio's
//! chain: after the request head is read, before routing. Only connections of the inbound
//! side whose pod has AuthorizationPolicies carry an [`Authorizer`] (the listener hands the
//! connection manager a [`ConnAuthz`]); others skip this stage entirely.
//!
//! For such a request, first Istio's default normalization: a method with lower-case letters
//! and a path holding `%00` are refused (400), and the path is normalized
//! ([`crate::authz::normalize`]) and forwarded as normalized, so the application sees the path
//! that was authorized. Then the policies decide ([`crate::authz::Authz::evaluate`]) with the
//! connection's attributes (computed once per connection) and the request's: a denial is
//! answered `403` with `RBAC: access denied` (gRPC: `PERMISSION_DENIED`), never forwarded, and
//! carries Envoy's response code details naming the policy. The RBAC counters are recorded,
//! an AUDIT match is logged.
//!
//! The request's JWT identity is read from the request's extensions
//! ([`crate::authz::RequestAuth`]), where request authentication puts it.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Request, Uri};

use crate::authz::normalize::normalize;
use crate::authz::{Attributes, Authz, Connection, RequestAuth};
use crate::stats::RbacStats;

/// What the listener hands the connection manager for an inbound connection of a pod with
/// policies: the snapshot's compiled policies and the connection manager's RBAC counters.
#[derive(Clone, Debug)]
pub struct ConnAuthz {
    /// The policies that apply to this pod.
    pub authz: Arc<Authz>,
    /// `http.<statPrefix>.rbac.*`.
    pub stats: RbacStats,
}

/// The authorization of one connection's requests.
#[derive(Debug)]
pub struct Authorizer {
    authz: Arc<Authz>,
    stats: RbacStats,
    conn: Connection,
}

impl Authorizer {
    /// The authorizer of a connection with attributes `conn`.
    pub fn new(given: ConnAuthz, conn: Connection) -> Self {
        Authorizer {
            authz: given.authz,
            stats: given.stats,
            conn,
        }
    }
}

/// What the stage decided.
pub(super) enum Verdict {
    /// Go on (routing).
    Pass,
    /// Answer here.
    Refuse {
        /// 400 or 403.
        status: u16,
        /// The body (`RBAC: access denied`).
        body: &'static str,
        /// Envoy's response code details.
        details: String,
    },
}

/// The body of a denial, as Envoy's RBAC filter answers.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Whether a rebuilt URI still has its path.
fn parts_ok(uri: &Uri) -> bool {
    uri.path_and_query().is_some()
}

/// Normalizes `req`'s path (in place) and decides it.
pub(super) fn check<B>(a: &Authorizer, req: &mut Request<B>) -> Verdict {
    if req
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Verdict::Refuse {
            status: 400,
            body: "",
            details: "method_not_upper_case".to_string(),
        };
    }
    // Most paths need nothing: then nothing is copied.
    let normalized = match normalize(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(p)) => Some(p),
        Err(_) => {
            return Verdict::Refuse {
                status: 400,
                body: "",
                details: "path_normalization_failed".to_string(),
            };
        }
    };
    if let Some(normalized) = normalized {
        let pq = match req.uri().query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = PathAndQuery::try_from(pq).ok();
        match Uri::from_parts(parts) {
            Ok(uri) if parts_ok(&uri) => *req.uri_mut() = uri,
            // Never evaluate a path other than the one forwarded.
            _ => {
                return Verdict::Refuse {
                    status: 400,
                    body: "",
                    details: "path_normalization_failed".to_string(),
                };
            }
        }
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    let attrs = Attributes {
        conn: &a.conn,
        http: Some(crate::authz::Request {
            host,
            method: req.method().as_str(),
            path: req.uri().path(),
            headers: req.headers(),
            auth: req.extensions().get::<RequestAuth>(),
        }),
    };
    let d = a.authz.evaluate(&attrs);
    let t = d.tally;
    a.stats.record(t.allowed, t.denied, t.logged, t.not_logged);
    if let Some(r) = d.audit {
        tracing::info!(
            policy = %a.authz.rule_id(r),
            method = %req.method(),
            path = %req.uri().path(),
            source = ?a.conn.source,
            principal = a.conn.principal.as_deref().unwrap_or(""),
            "AUDIT: an AuthorizationPolicy matched the request"
        );
    }
    if d.allowed {
        return Verdict::Pass;
    }
    let details = a.authz.denial_details(&d);
    tracing::debug!(
        %details,
        method = %req.method(),
        path = %req.uri().path(),
        source = ?a.conn.source,
        principal = a.conn.principal.as_deref().unwrap_or(""),
        "RBAC: access denied"
    );
    Verdict::Refuse {
        status: 403,
        body: DENIED_BODY,
        details,
    }
}
