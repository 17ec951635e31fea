//! A route's CORS policy, as Envoy's CORS filter applies it (Istio's `corsPolicy`): compiled
//! once with the route table ([`Cors`]), decided per request ([`Cors::check`]) after the fault
//! stage and before the request goes upstream, and applied to the response where its headers
//! are finalised ([`CorsAllowed::apply`]).
//!
//! Envoy's rules: a request without `Origin` is untouched. An `Origin` that an allowed-origin
//! matcher accepts (a matcher that accepts `*` accepts every origin) makes a CORS request: an
//! `OPTIONS` with `Access-Control-Request-Method` (a preflight) is answered here with 200,
//! `access-control-allow-origin: <the origin>`, the methods, headers and max age when set, and
//! `access-control-allow-credentials: true` when allowed; any other request goes on and its
//! response gets the origin, the credentials and `access-control-expose-headers` (overwriting the
//! app's). An origin that is not allowed adds nothing; its preflight goes on to the app
//! (`forwardNotMatchingPreflights`, Istio's `FORWARD`) or is answered here with 200 and no CORS
//! headers (Istio's `IGNORE`). Envoy adds no `vary`, and neither does this.

use super::StringMatch;
use crate::body::{ProxyBody, empty};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, HeaderValue, ORIGIN,
};
use http::{HeaderMap, Method, Response};

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    /// The allowed origins.
    pub origins: Vec<StringMatch>,
    /// `access-control-allow-methods` (preflight answers).
    pub allow_methods: Option<HeaderValue>,
    /// `access-control-allow-headers` (preflight answers).
    pub allow_headers: Option<HeaderValue>,
    /// `access-control-expose-headers` (responses of allowed requests).
    pub expose_headers: Option<HeaderValue>,
    /// `access-control-max-age` (preflight answers).
    pub max_age: Option<HeaderValue>,
    /// `access-control-allow-credentials: true` on allowed answers.
    pub allow_credentials: bool,
    /// A preflight from an origin that is not allowed goes on to the app.
    pub forward_not_matching_preflights: bool,
}

/// What the policy decides for one request.
#[derive(Debug)]
pub enum CorsCheck<'a> {
    /// Not a CORS request (no `Origin`), or one whose origin is not allowed: untouched.
    Pass,
    /// Answered here (a preflight).
    Answer(Response<ProxyBody>),
    /// An allowed CORS request: forwarded, its response gets the headers.
    Allowed(CorsAllowed<'a>),
}

/// An allowed request's origin and the policy, to finish its response with.
#[derive(Debug)]
pub struct CorsAllowed<'a> {
    cors: &'a Cors,
    origin: HeaderValue,
}

impl Cors {
    /// Whether `origin` is allowed (Envoy: a matcher matching `*` allows any origin).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// Decides a request with `method` and `headers`.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> CorsCheck<'_> {
        let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
            return CorsCheck::Pass;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let preflight = method == Method::OPTIONS
            && headers
                .get(ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| !m.is_empty());
        if !preflight {
            return if allowed {
                CorsCheck::Allowed(CorsAllowed {
                    cors: self,
                    origin: origin.clone(),
                })
            } else {
                CorsCheck::Pass
            };
        }
        if !allowed && self.forward_not_matching_preflights {
            return CorsCheck::Pass;
        }
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        if allowed {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if self.allow_credentials {
                h.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            for (name, value) in [
                (ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
                (ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
                (ACCESS_CONTROL_MAX_AGE, &self.max_age),
            ] {
                if let Some(v) = value {
                    h.insert(name, v.clone());
                }
            }
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from(0));
        CorsCheck::Answer(resp)
    }
}

impl CorsAllowed<'_> {
    /// Adds the allowed request's headers to its response (overwriting the app's, as Envoy).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.cors.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.cors.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: Vec<StringMatch>) -> Cors {
        Cors {
            origins,
            allow_methods: Some(HeaderValue::from_static("GET,POST")),
            allow_headers: None,
            expose_headers: None,
            max_age: None,
            allow_credentials: false,
            forward_not_matching_preflights: true,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn a_matcher_accepting_star_allows_every_origin() {
        let c = cors(vec![StringMatch::Exact("*".into(), false)]);
        assert!(c.allows("https://anything.example"));
        let c = cors(vec![StringMatch::Exact("https://a".into(), false)]);
        assert!(!c.allows("https://b"));
    }

    #[test]
    fn only_options_with_a_request_method_is_a_preflight() {
        let c = cors(vec![StringMatch::Exact("https://a".into(), false)]);
        let opts = headers(&[("origin", "https://a")]);
        assert!(matches!(
            c.check(&Method::OPTIONS, &opts),
            CorsCheck::Allowed(_)
        ));
        let pre = headers(&[
            ("origin", "https://a"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(matches!(
            c.check(&Method::OPTIONS, &pre),
            CorsCheck::Answer(_)
        ));
        assert!(matches!(c.check(&Method::GET, &pre), CorsCheck::Allowed(_)));
        assert!(matches!(
            c.check(&Method::GET, &HeaderMap::new()),
            CorsCheck::Pass
        ));
    }
}
