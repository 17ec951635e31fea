//! The authorization stage of an inbound request, where Envoy's RBAC filters sit in Istio's
//! chain: after the request head is read, before routing. Only connections of the inbound
//! side whose pod has AuthorizationPolicies carry an [`Authorizer`] (the listener hands the
//! connection manager a [`ConnAuthz`]); others skip this stage entirely.
//!
//! The policies are those of the configuration current when the request arrives, not when its
//! connection was accepted: a client sidecar keeps its pooled connections open for as long as it
//! sends on them, so a policy applied to a connection's first snapshot would never reach the
//! requests of a busy pool (Envoy drains such connections when a policy changes its listener;
//! deciding each request on the current policies gives the same result at once). Found by e2e
//! scenario 13: `allow-nothing` left a busy client served for 90 s.
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

/// The policies that apply to this pod in the configuration current now (`None`: none).
pub type CurrentPolicies = Arc<dyn Fn() -> Option<Arc<Authz>> + Send + Sync>;

/// What the listener hands the connection manager for an inbound connection: where to find the
/// pod's current compiled policies, and the connection manager's RBAC counters.
#[derive(Clone)]
pub struct ConnAuthz {
    /// The policies current when a request arrives.
    pub current: CurrentPolicies,
    /// `http.<statPrefix>.rbac.*`.
    pub stats: RbacStats,
}

impl std::fmt::Debug for ConnAuthz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnAuthz")
            .field("current", &(self.current)().is_some())
            .finish_non_exhaustive()
    }
}

/// The authorization of one connection's requests.
pub struct Authorizer {
    current: CurrentPolicies,
    stats: RbacStats,
    conn: Connection,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// The authorizer of a connection with attributes `conn`.
    pub fn new(given: ConnAuthz, conn: Connection) -> Self {
        Authorizer {
            current: given.current,
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

/// Normalizes `req`'s path (in place) and decides it with the pod's current policies; with
/// none (the pod has no policy now), the request passes untouched.
pub(super) fn check<B>(a: &Authorizer, req: &mut Request<B>) -> Verdict {
    let Some(authz) = (a.current)() else {
        return Verdict::Pass;
    };
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
    let d = authz.evaluate(&attrs);
    let t = d.tally;
    a.stats.record(t.allowed, t.denied, t.logged, t.not_logged);
    if let Some(r) = d.audit {
        tracing::info!(
            policy = %authz.rule_id(r),
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
    let details = authz.denial_details(&d);
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
