//! JWT verification for `RequestAuthentication` (`security.istio.io/v1`): what Envoy's
//! `jwt_authn` filter does in an Istio sidecar, as a pure function of the configuration, the
//! request's headers and URI, and the time.
//!
//! The semantics are those of [`rustmesh_xds::request_authn`] (Istio's `RequestAuthentication`
//! and `JWTRule` reference) with Envoy's behaviour where Istio leaves it to Envoy:
//!
//! * [`JwtVerifier::compile`] takes the JWT rules that apply to a pod (every policy's, combined)
//!   once per configuration: each key set is parsed into keys once (`keys.rs`), header names are
//!   checked, and a rule's [`JwtRule::jwks_error`] compiles to an issuer whose every token is
//!   refused ("Jwks remote fetch is failed", the error kept as the refusal's detail). A key set
//!   that is not JSON or has no usable key, an empty issuer or a bad header name is an error
//!   naming the policy, the rule and the field.
//! * [`JwtVerifier::verify`] looks for tokens in every rule's locations (`locate.rs`; a rule that
//!   names none reads `Authorization: Bearer <token>` and `?access_token=`). No token:
//!   [`Outcome::NoToken`] (the request goes on without a request identity; an
//!   AuthorizationPolicy may still require one). Otherwise every token found must be valid, as in
//!   Envoy since it stopped letting a good token cover a bad one; the first that is not refuses
//!   the request ([`Outcome::Invalid`]). A token is checked in Envoy's order: length and form
//!   (`token.rs`), then its `iss` must be the issuer of a rule that reads the location it came
//!   from ("Jwt issuer is not configured"), then `nbf`/`exp` with [`CLOCK_SKEW_SECS`] of skew,
//!   then `aud` against the rule's `audiences` when it has some (any one in common; a scheme
//!   `http://`/`https://` and a trailing `/` are ignored on both sides, as `jwt_verify_lib` does),
//!   then the signature with the issuer's keys. `alg: none` and HMAC (`HS*`) tokens are refused
//!   ("Jwt header [alg] is not supported"), and so are HMAC keys in a key set.
//! * A valid request gives [`Authenticated`]: the principal `<iss>/<sub>` Istio's authorization
//!   sees as `request.auth.principal`, the audiences, `azp`, every claim (with
//!   [`claim_strings`] for `request.auth.claims[a][b]`), where the tokens were (to take them off
//!   the request unless the rule has `forwardOriginalToken`) and the headers to add
//!   (`outputPayloadToHeader`: the payload section as sent, base64url without padding, as Envoy
//!   copies it; `outputClaimToHeaders`: see [`claim_header_value`]). With several valid tokens,
//!   the identity is the first one's; locations and headers are every token's.
//! * A refusal carries Envoy's body text and status (401; 403 when only the audience is wrong,
//!   as Envoy answers), and `www-authenticate: Bearer realm="<scheme>://<host><path>",
//!   error="invalid_token"` with the path (query included) cut at [`REALM_PATH_LIMIT`] bytes,
//!   as Envoy builds it. The scheme is the URI's, else `http`; the host the URI's authority,
//!   else the `Host` header.
//!
//! Limits (docs/limits.md): a token over [`MAX_TOKEN_BYTES`] is refused before decoding; at most
//! [`MAX_TOKENS_PER_REQUEST`] tokens are checked in one request, more are refused ("Found
//! multiple Jwt tokens"). Nothing here panics on any input (`fuzz/fuzz_targets/jwt_verify.rs`).
//!
//! Differences from Envoy, each on the safe side: a header with `crit` is refused (Envoy ignores
//! it); RSA keys under 2048 bits and P-521/ES512 are not supported (`ring` verifies neither);
//! HMAC is refused. The key model comes from `jsonwebtoken` (its JWK types and component
//! decoding); its signing and verifying functions must not be called, since the crate is built
//! without a crypto backend: signatures are checked with `ring` (`keys.rs`).
//!
//! Submodules, from the leaves: `status.rs` (refusal reasons and their texts), `claims.rs`,
//! `locate.rs`, `token.rs`, `keys.rs`; this file compiles rules and runs the checks.

#![forbid(unsafe_code)]

mod claims;
mod keys;
mod locate;
mod status;
mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Uri};
use rustmesh_xds::request_authn::{DEFAULT_HEADER, DEFAULT_HEADER_PREFIX, DEFAULT_PARAM, JwtRule};
use serde_json::{Map, Value};

pub use claims::{SPACE_DELIMITED_CLAIMS, claim_header_value, claim_strings};
pub use locate::{TokenLocation, remove_tokens};
pub use status::Status;
pub use token::{CLOCK_SKEW_SECS, MAX_TOKEN_BYTES};

use keys::KeySet;
use locate::{Found, Locations};
use token::{Refused, Token};

/// At most this many tokens are checked in one request; a request carrying more is refused
/// ("Found multiple Jwt tokens"). Legitimate requests carry one (a client sending the same token
/// in a header and a parameter, two).
pub const MAX_TOKENS_PER_REQUEST: usize = 8;

/// The path (with its query) in a refusal's `www-authenticate` realm is cut at this many bytes,
/// as Envoy's `jwt_authn` does (`MaximumUriLength`).
pub const REALM_PATH_LIMIT: usize = 256;

/// The compiled JWT rules of one pod: built once per configuration, shared by every request.
#[derive(Debug)]
pub struct JwtVerifier {
    rules: Vec<Rule>,
    locations: Locations,
    output_headers: Vec<HeaderName>,
}

/// One compiled `JWTRule`.
#[derive(Debug)]
struct Rule {
    policy: Arc<str>,
    issuer: String,
    /// `audiences`, without scheme and trailing slash.
    audiences: Vec<String>,
    keys: Keys,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
    forward_original_token: bool,
}

/// An issuer's keys, or why there are none.
#[derive(Debug)]
enum Keys {
    Set(KeySet),
    /// `jwksError`: every token of the issuer is refused.
    Unavailable(String),
}

/// A rule that does not compile: which policy, which of its rules, which field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("RequestAuthentication {policy}: jwtRules[{rule}] (issuer {issuer:?}): {field}: {reason}")]
pub struct CompileError {
    /// The policy (`<namespace>/<name>`).
    pub policy: String,
    /// The rule's position among that policy's rules.
    pub rule: usize,
    /// The rule's issuer.
    pub issuer: String,
    /// The field, as Istio names it (`jwks`, `fromHeaders[0].name`...).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What a request's tokens amount to.
#[derive(Debug)]
pub enum Outcome {
    /// No token in any rule's locations: the request has no request identity.
    NoToken,
    /// Every token found is valid.
    Valid(Box<Authenticated>),
    /// A token is not valid: the request is refused.
    Invalid(Refusal),
}

/// The request identity a valid token gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Authenticated {
    /// The policy whose rule accepted the token.
    pub policy: Arc<str>,
    /// `iss`.
    pub issuer: String,
    /// `sub` (empty when the token has none).
    pub subject: String,
    /// `<iss>/<sub>`: Istio's `request.auth.principal`.
    pub principal: String,
    /// `aud`: Istio's `request.auth.audiences`.
    pub audiences: Vec<String>,
    /// `azp`: Istio's `request.auth.presenter`.
    pub presenter: Option<String>,
    /// Every claim of the payload: Istio's `request.auth.claims` (see [`claim_strings`]).
    pub claims: Map<String, Value>,
    /// Every location a (valid) token was found in.
    pub found_in: Vec<TokenLocation>,
    /// The locations to take the token out of before forwarding: those of tokens whose rule
    /// does not have `forwardOriginalToken`. Envoy removes a header location's whole header.
    pub remove_from: Vec<TokenLocation>,
    /// Headers to set on the forwarded request (`outputPayloadToHeader`,
    /// `outputClaimToHeaders`). Strip [`JwtVerifier::output_headers`] from the incoming request
    /// first, so that a client cannot supply them.
    pub headers_to_add: Vec<(HeaderName, HeaderValue)>,
}

impl Authenticated {
    /// The strings of claim `path` (`request.auth.claims[a][b]` is `&["a", "b"]`).
    pub fn claim_strings(&self, path: &[&str]) -> Vec<&str> {
        claim_strings(&self.claims, path)
    }
}

/// A refused request: what to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 401, or 403 when only the audience is wrong.
    pub status: StatusCode,
    /// Why, as a reason.
    pub reason: Status,
    /// The response body Envoy sends (`Jwt is expired`...).
    pub message: &'static str,
    /// The `www-authenticate` response header.
    pub www_authenticate: HeaderValue,
    /// For logs: what the message does not say (the key set's error, the token's length...).
    pub detail: Option<String>,
}

impl JwtVerifier {
    /// Compiles the JWT rules that apply to a pod, each with the name of its policy
    /// (`<namespace>/<name>`), in the order [`rustmesh_xds::request_authn::RequestAuthentication::rules_for`]
    /// gives them.
    pub fn compile(rules: &[(&str, &JwtRule)]) -> Result<JwtVerifier, CompileError> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut locations = Locations::default();
        let mut output_headers: Vec<HeaderName> = Vec::new();
        let mut per_policy: HashMap<&str, usize> = HashMap::new();
        for (at, (policy, rule)) in rules.iter().enumerate() {
            let position = per_policy.entry(policy).or_default();
            let index = *position;
            *position += 1;
            let error = |field: &str, reason: String| CompileError {
                policy: policy.to_string(),
                rule: index,
                issuer: rule.issuer.clone(),
                field: field.to_string(),
                reason,
            };
            if rule.issuer.is_empty() {
                return Err(error("issuer", "must not be empty".into()));
            }
            let keys = match &rule.jwks_error {
                Some(why) => Keys::Unavailable(why.clone()),
                None if rule.jwks.trim().is_empty() => {
                    return Err(error("jwks", "no key set and no jwksError".into()));
                }
                None => Keys::Set(KeySet::parse(&rule.jwks).map_err(|e| error("jwks", e))?),
            };

            for (i, h) in rule.from_headers.iter().enumerate() {
                let name = header_name(&h.name)
                    .map_err(|e| error(&format!("fromHeaders[{i}].name"), e))?;
                let prefix = h.prefix.clone();
                locations.add(TokenLocation::Header { name, prefix }, at);
            }
            for (i, p) in rule.from_params.iter().enumerate() {
                if p.is_empty() {
                    return Err(error(
                        &format!("fromParams[{i}]"),
                        "must not be empty".into(),
                    ));
                }
                locations.add(TokenLocation::Param(p.clone()), at);
            }
            for (i, c) in rule.from_cookies.iter().enumerate() {
                if c.is_empty() {
                    return Err(error(
                        &format!("fromCookies[{i}]"),
                        "must not be empty".into(),
                    ));
                }
                locations.add(TokenLocation::Cookie(c.clone()), at);
            }
            if rule.from_headers.is_empty()
                && rule.from_params.is_empty()
                && rule.from_cookies.is_empty()
            {
                let default_header = TokenLocation::Header {
                    name: HeaderName::from_static(DEFAULT_HEADER),
                    prefix: DEFAULT_HEADER_PREFIX.to_string(),
                };
                locations.add(default_header, at);
                locations.add(TokenLocation::Param(DEFAULT_PARAM.to_string()), at);
            }

            let payload_header = if rule.output_payload_to_header.is_empty() {
                None
            } else {
                let name = header_name(&rule.output_payload_to_header)
                    .map_err(|e| error("outputPayloadToHeader", e))?;
                output_headers.push(name.clone());
                Some(name)
            };
            let mut claim_headers = Vec::new();
            for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
                let name = header_name(&c.header)
                    .map_err(|e| error(&format!("outputClaimToHeaders[{i}].header"), e))?;
                if c.claim.is_empty() {
                    return Err(error(
                        &format!("outputClaimToHeaders[{i}].claim"),
                        "must not be empty".into(),
                    ));
                }
                output_headers.push(name.clone());
                claim_headers.push((name, c.claim.clone()));
            }

            compiled.push(Rule {
                policy: Arc::from(*policy),
                issuer: rule.issuer.clone(),
                audiences: rule
                    .audiences
                    .iter()
                    .map(|a| sanitize_audience(a))
                    .collect(),
                keys,
                payload_header,
                claim_headers,
                forward_original_token: rule.forward_original_token,
            });
        }
        output_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        output_headers.dedup();
        Ok(JwtVerifier {
            rules: compiled,
            locations,
            output_headers,
        })
    }

    /// Whether there is no rule (every request is [`Outcome::NoToken`]).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The issuers, in rule order.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.issuer.as_str())
    }

    /// Every location tokens are looked for in.
    pub fn locations(&self) -> impl Iterator<Item = &TokenLocation> {
        self.locations.iter()
    }

    /// The headers this verifier may add to a request (`outputPayloadToHeader`,
    /// `outputClaimToHeaders`): a caller removes them from every incoming request, so that only
    /// values from a verified token reach the app (Envoy sanitizes the payload header so).
    pub fn output_headers(&self) -> &[HeaderName] {
        &self.output_headers
    }

    /// Checks the tokens of a request at time `now` (see the module doc).
    pub fn verify(&self, headers: &HeaderMap, uri: &Uri, now: SystemTime) -> Outcome {
        let found = self.locations.extract(headers, uri, MAX_TOKENS_PER_REQUEST);
        if found.is_empty() {
            return Outcome::NoToken;
        }
        let refuse = |(reason, detail): Refused| {
            Outcome::Invalid(Refusal {
                status: reason.http_status(),
                reason,
                message: reason.message(),
                www_authenticate: www_authenticate(headers, uri),
                detail,
            })
        };
        if found.len() > MAX_TOKENS_PER_REQUEST {
            return refuse((
                Status::MultipleTokens,
                Some(format!(
                    "more than {MAX_TOKENS_PER_REQUEST} tokens in one request"
                )),
            ));
        }
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut identity: Option<Authenticated> = None;
        for f in &found {
            let (rule, token) = match self.check(f, now) {
                Ok(accepted) => accepted,
                Err(refused) => return refuse(refused),
            };
            let outputs = rule.outputs(&token);
            match &mut identity {
                None => {
                    let mut first = Authenticated {
                        policy: rule.policy.clone(),
                        principal: format!("{}/{}", token.iss, token.sub),
                        issuer: token.iss,
                        subject: token.sub,
                        audiences: token.aud,
                        presenter: token.azp,
                        claims: token.claims,
                        found_in: Vec::new(),
                        remove_from: Vec::new(),
                        headers_to_add: Vec::new(),
                    };
                    first.add(f.location, rule.forward_original_token, outputs);
                    identity = Some(first);
                }
                Some(first) => first.add(f.location, rule.forward_original_token, outputs),
            }
        }
        match identity {
            Some(a) => Outcome::Valid(Box::new(a)),
            None => Outcome::NoToken,
        }
    }

    /// One token, against the rules of the location it came from.
    fn check<'a>(
        &'a self,
        found: &'a Found<'_>,
        now: u64,
    ) -> Result<(&'a Rule, Token<'a>), Refused> {
        let token = token::parse(&found.token)?;
        let Some(rule) = found
            .rules
            .iter()
            .map(|i| &self.rules[*i])
            .find(|r| r.issuer == token.iss)
        else {
            return Err((
                Status::UnknownIssuer,
                Some(format!("iss {:?} at {:?}", token.iss, found.location)),
            ));
        };
        token.check_time(now).map_err(|s| (s, None))?;
        if !rule.audiences.is_empty()
            && !token
                .aud
                .iter()
                .any(|a| rule.audiences.contains(&sanitize_audience(a)))
        {
            return Err((Status::AudienceNotAllowed, None));
        }
        match &rule.keys {
            Keys::Unavailable(why) => Err((
                Status::JwksFetchFail,
                Some(format!("issuer {:?}: {why}", rule.issuer)),
            )),
            Keys::Set(keys) => keys.verify(&token).map_err(|s| (s, None)),
        }?;
        Ok((rule, token))
    }
}

impl Rule {
    /// The headers a valid token of this rule adds.
    fn outputs(&self, token: &Token<'_>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Some(name) = &self.payload_header
            && let Ok(value) = HeaderValue::from_str(token.payload_b64)
        {
            out.push((name.clone(), value));
        }
        for (name, claim) in &self.claim_headers {
            // A claim with characters a header cannot carry (control characters) writes nothing.
            if let Some(value) = claim_header_value(&token.claims, claim)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                out.push((name.clone(), value));
            }
        }
        out
    }
}

impl Authenticated {
    fn add(
        &mut self,
        location: &TokenLocation,
        forward: bool,
        outputs: Vec<(HeaderName, HeaderValue)>,
    ) {
        if !self.found_in.contains(location) {
            self.found_in.push(location.clone());
        }
        if !forward && !self.remove_from.contains(location) {
            self.remove_from.push(location.clone());
        }
        for output in outputs {
            if !self.headers_to_add.contains(&output) {
                self.headers_to_add.push(output);
            }
        }
    }
}

/// A header name from configuration.
fn header_name(name: &str) -> Result<HeaderName, String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))
}

/// An audience as `jwt_verify_lib` compares it: without `http://`/`https://` and one trailing
/// slash.
fn sanitize_audience(aud: &str) -> String {
    let aud = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud).to_string()
}

/// `Bearer realm="<scheme>://<host><path>", error="invalid_token"`, as Envoy answers a refused
/// token.
fn www_authenticate(headers: &HeaderMap, uri: &Uri) -> HeaderValue {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let mut path = uri.path_and_query().map_or("", |p| p.as_str());
    if path.len() > REALM_PATH_LIMIT {
        let mut end = REALM_PATH_LIMIT;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path = &path[..end];
    }
    let value = format!("Bearer realm=\"{scheme}://{host}{path}\", error=\"invalid_token\"");
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

#[cfg(test)]
mod tests;
