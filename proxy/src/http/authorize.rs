//! The authentication and authorization stage of an inbound request, where Envoy's `jwt_authn`
//! and RBAC filters sit in Istio's chain: after the request head is read, before routing. Only
//! connections of the inbound side carry an [`Authorizer`] (the listener hands the connection
//! manager a [`ConnAuthz`]); outbound ones skip this stage entirely, and so does a request to a
//! pod with neither RequestAuthentication nor AuthorizationPolicy.
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
//! Request authentication (RequestAuthentication, Envoy's `jwt_authn` filter, which Istio puts
//! before RBAC) runs here too, between normalization and the policies, with the pod's current
//! compiled JWT rules ([`crate::jwt::JwtVerifier`]): the headers a rule writes
//! (`outputPayloadToHeader`, `outputClaimToHeaders`) are first removed from the request, so only
//! a verified token's values reach the app; a request without a token goes on without a request
//! identity (an AuthorizationPolicy may still require one); an invalid token is answered here
//! (401, or 403 for a wrong audience, with Envoy's body text and `www-authenticate`) and never
//! reaches the policies or the app; a valid one gives the identity the policies see
//! ([`crate::authz::RequestAuth`], in the request's extensions), is taken off the request unless
//! its rule has `forwardOriginalToken` ([`crate::jwt::remove_tokens`]), and adds its output
//! headers.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Request, Uri};

use crate::authz::normalize::normalize;
use crate::authz::{Attributes, Authz, Connection, RequestAuth};
use crate::jwt::{JwtVerifier, Outcome, remove_tokens};
use crate::stats::RbacStats;

/// The pod's compiled policies in one configuration: its JWT rules and its AuthorizationPolicies
/// (each `None` when none applies).
#[derive(Clone, Debug, Default)]
pub struct PodPolicies {
    /// The JWT rules of the RequestAuthentications that select the pod.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// The AuthorizationPolicies that select the pod.
    pub authz: Option<Arc<Authz>>,
}

/// The policies that apply to this pod in the configuration current now.
pub type CurrentPolicies = Arc<dyn Fn() -> PodPolicies + Send + Sync>;

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
            .field("current", &(self.current)())
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
        /// 400, 401 or 403.
        status: u16,
        /// The body (`RBAC: access denied`, `Jwt is expired`).
        body: &'static str,
        /// Envoy's response code details.
        details: String,
        /// A JWT refusal's `www-authenticate` header.
        www_authenticate: Option<http::HeaderValue>,
    },
}

/// The body of a denial, as Envoy's RBAC filter answers.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Whether a rebuilt URI still has its path.
fn parts_ok(uri: &Uri) -> bool {
    uri.path_and_query().is_some()
}

/// Normalizes `req`'s path (in place), verifies its tokens and decides it with the pod's
/// current policies; with none (the pod has no policy now), the request passes untouched.
pub(super) fn check<B>(a: &Authorizer, req: &mut Request<B>) -> Verdict {
    let PodPolicies { jwt, authz } = (a.current)();
    if jwt.is_none() && authz.is_none() {
        return Verdict::Pass;
    }
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
            www_authenticate: None,
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
                www_authenticate: None,
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
                    www_authenticate: None,
                };
            }
        }
    }
    if let Some(jwt) = &jwt
        && let Some(refused) = authenticate(jwt, req)
    {
        return refused;
    }
    let Some(authz) = authz else {
        return Verdict::Pass;
    };
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
        www_authenticate: None,
    }
}

/// Request authentication (see the module doc): `None` when the request goes on (with the
/// identity of its valid tokens in its extensions, if it had any).
fn authenticate<B>(jwt: &JwtVerifier, req: &mut Request<B>) -> Option<Verdict> {
    for name in jwt.output_headers() {
        req.headers_mut().remove(name);
    }
    match jwt.verify(req.headers(), req.uri(), std::time::SystemTime::now()) {
        Outcome::NoToken => None,
        Outcome::Invalid(r) => {
            tracing::debug!(
                status = r.status.as_u16(),
                reason = r.message,
                detail = r.detail.as_deref().unwrap_or(""),
                method = %req.method(),
                path = %req.uri().path(),
                "JWT refused"
            );
            Some(Verdict::Refuse {
                status: r.status.as_u16(),
                body: r.message,
                details: format!("jwt_authn_access_denied{{{}}}", r.message.replace(' ', "_")),
                www_authenticate: Some(r.www_authenticate),
            })
        }
        Outcome::Valid(auth) => {
            let auth = *auth;
            if !auth.remove_from.is_empty() {
                let mut uri = req.uri().clone();
                remove_tokens(req.headers_mut(), &mut uri, &auth.remove_from);
                *req.uri_mut() = uri;
            }
            for (name, value) in auth.headers_to_add {
                req.headers_mut().insert(name, value);
            }
            req.extensions_mut().insert(RequestAuth {
                principal: auth.principal,
                audiences: auth.audiences,
                presenter: auth.presenter,
                claims: auth.claims,
            });
            None
        }
    }
}
