//! `RequestAuthentication` (`security.istio.io`, served as `v1` and `v1beta1`): which JSON Web
//! Tokens a workload's sidecar accepts, and where it finds them. Shapes follow
//! <https://istio.io/latest/docs/reference/config/security/request_authentication/> and
//! <https://istio.io/latest/docs/reference/config/security/jwt/>.
//!
//! Scope, as in Istio (and as for an AuthorizationPolicy): a policy without a selector (or
//! whose `selector.matchLabels` is empty) applies to every workload of its namespace, or of the
//! mesh in the root namespace; one with labels to the workloads of its namespace it selects,
//! and, in the root namespace, to the workloads of every namespace it selects. The rules of
//! every policy that applies to a workload are combined (`rustmesh_xds::request_authn`).
//!
//! Key sets ([`JwtRule::key_source`]): the rule's inline `jwks`; else its `jwksUri` (or
//! `jwks_uri`, the same field under protobuf's name, which Istio's CRD also serves), fetched by
//! the operator as istiod fetches it; else OpenID discovery: the `jwks_uri` of the issuer's
//! `/.well-known/openid-configuration`, as istiod resolves it.
//!
//! [`Validate`] reports Istio's errors (`ValidateRequestAuthentication`: issuer set, audiences
//! and token locations not empty, `jwksUri` an http(s) URL, `jwks` a key set, claim headers
//! strict header names, `timeout` at least 1 ms to the millisecond), the rules of Istio's CRD
//! (only one of `jwks`/`jwksUri`, `targetRef(s)` excluding a selector), and what rustmesh
//! refuses, naming the field:
//! - `targetRef`/`targetRefs` (no Gateway API, no waypoints: the policy would apply to no
//!   sidecar), through the field-support table;
//! - a `jwks` the sidecar could not use ([`jwks_problem`]: not a key set, or no key of a type
//!   it verifies with), since the sidecar refuses a configuration holding one;
//! - header names that are not header names (`fromHeaders[].name`, `outputPayloadToHeader`),
//!   and output headers the sidecar must not let a token set ([`RESERVED_OUTPUT_HEADERS`]);
//! - a `jwksUri` with credentials in it (`user:password@`), which would be copied into every
//!   ConfigMap and log line that shows the URI;
//! - two `outputClaimToHeaders` entries of a rule writing the same header (Istio's API says
//!   they must be unique).
//!
//! Decisions where Istio is silent or lenient:
//! - `issuer` is required, as Istio's API marks it (`REQUIRED`) and validated it until 1.22;
//!   newer Istio accepts a rule without issuer but with `jwksUri` (any `iss` then), which the
//!   sidecar does not implement;
//! - an empty `jwks` or `jwksUri` is as if it were not given (Istio's Go code tests `!= ""`);
//! - OpenID discovery needs an issuer that is an http(s) URL; a rule without `jwks`/`jwksUri`
//!   whose issuer is not one (`testing@secure.istio.io`) is accepted as Istio accepts it, with a
//!   warning: no key set can be found for it, so every token of that issuer is refused (istiod's
//!   fallback key set does the same);
//! - the discovery URL is the issuer without one trailing `/`, then
//!   `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4; istiod does not remove
//!   the slash).

use crate::authorization_policy::PolicyTargetReference;
use crate::common::WorkloadSelector;
use crate::error::FieldError;
use crate::status::IstioStatus;
use crate::validate::Validate;
use kube::CustomResource;
use rustmesh_xds::duration::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The versions `security.istio.io` serves this kind as, newest (stored) first.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// How long a key set fetch may take when the rule gives no `timeout` (Istio's default).
pub const DEFAULT_JWKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest `jwksUri` (Istio's CRD: `maxLength: 2048`).
pub const MAX_JWKS_URI_LEN: usize = 2048;

/// The path OpenID discovery appends to the issuer.
pub const OPENID_DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Headers a token may not write (`outputPayloadToHeader`, `outputClaimToHeaders`): the
/// request's target and framing (`host`; the hop-by-hop and length headers), which a claim must
/// never change on the way to the app, and `x-forwarded-client-cert`, through which the
/// sidecar tells the app who the mTLS peer is.
pub const RESERVED_OUTPUT_HEADERS: [&str; 10] = [
    "host",
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-client-cert",
];

/// The spec of a RequestAuthentication.
// Istio's CRD has no printer columns for this kind (kubectl shows NAME and AGE).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    plural = "requestauthentications",
    singular = "requestauthentication",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "IstioStatus",
    shortname = "ra",
    category = "istio-io",
    category = "security-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// The workloads of the policy's namespace it applies to (in the root namespace: of every
    /// namespace); without it (or without labels) every workload of the namespace, or of the
    /// mesh in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The gateway the policy is attached to (Gateway API). Not implemented: refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// The resources the policy is attached to (Gateway API gateways and waypoints, Services,
    /// ServiceEntries). Not implemented: refused by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The JSON Web Tokens the selected workloads' sidecars validate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// `JWTRule`: one issuer's tokens, where to find them and how to check them.
// Optional strings are `Option`s: schemars writes `default: ''` for a defaulted `String`, which
// the Helm install of Kubernetes 1.20 refuses (see `api/tests/crd_drift.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The issuer (`iss`) of the tokens; a token of another issuer is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The audiences a token must name one of (`aud`); none: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// URL of the issuer's public key set (http or https), fetched by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// `jwksUri` under its protobuf name, which Istio's CRD serves too.
    #[serde(rename = "jwks_uri", default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri_proto: Option<String>,
    /// The issuer's JSON Web Key Set, inline. Only one of `jwks` and `jwksUri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers the token is read from; with no header, parameter or cookie given,
    /// `Authorization: Bearer <token>` and the `access_token` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header the verified token's payload is copied to (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token on the request to the app (default: removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    /// Claims copied to headers of the request to the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long fetching the key set (`jwksUri`, or OpenID discovery) may take (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// `JWTHeader`: a header the token is read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// The header's name.
    pub name: String,
    /// Stripped before the token is read (`Bearer `); a value without it holds no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `ClaimToHeader`: a claim of the verified token copied to a header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The header (created, or overwritten).
    pub header: String,
    /// The claim (nested claims as `a.b`); only strings, numbers and booleans are copied.
    pub claim: String,
}

/// Where a rule's key set comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// The rule's own `jwks`.
    Inline(&'a str),
    /// Fetched from the rule's `jwksUri`.
    Uri(&'a str),
    /// Neither given: OpenID discovery of `issuer`, whose document is at `url`; `None` when the
    /// issuer is not an http(s) URL (no key set can be found: every token is refused).
    Discovery {
        issuer: &'a str,
        url: Option<String>,
    },
}

impl RequestAuthenticationSpec {
    /// `selector.matchLabels` when the policy is workload-specific (a selector with labels);
    /// `None` for a namespace-wide (or mesh-wide) policy.
    pub fn workload_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// Findings that do not make the policy invalid: Istio's warning (a selector without
    /// labels), a rule whose key set cannot be discovered (its tokens are all refused), and
    /// fields rustmesh accepts without implementing them ([`crate::support`]).
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if self
            .selector
            .as_ref()
            .is_some_and(|s| s.match_labels.is_empty())
        {
            out.push(FieldError::new(
                "spec.selector.matchLabels",
                "workload selector specified without labels: the policy applies to every \
                 workload of the namespace (of the mesh in the root namespace), as if it had no \
                 selector",
            ));
        }
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            if let KeySource::Discovery { issuer, url: None } = rule.key_source()
                && !issuer.is_empty()
            {
                out.push(FieldError::new(
                    format!("spec.jwtRules[{i}].issuer"),
                    format!(
                        "{}; every token of this issuer is refused",
                        no_discovery(issuer)
                    ),
                ));
            }
        }
        out.extend(crate::support::warned_fields("RequestAuthentication", self));
        out
    }
}

/// Why OpenID discovery cannot find a key set for `issuer` (not an http(s) URL).
pub fn no_discovery(issuer: &str) -> String {
    format!(
        "no jwks or jwksUri, and the issuer {issuer:?} is not an http(s) URL, so no key set can \
         be found by OpenID discovery ({OPENID_DISCOVERY_PATH})"
    )
}

impl JwtRule {
    /// The issuer, empty when not given.
    pub fn issuer(&self) -> &str {
        self.issuer.as_deref().unwrap_or_default()
    }

    /// `jwksUri` (or its protobuf name `jwks_uri`), when given and not empty.
    pub fn jwks_uri(&self) -> Option<&str> {
        self.jwks_uri
            .as_deref()
            .filter(|u| !u.is_empty())
            .or_else(|| self.jwks_uri_proto.as_deref().filter(|u| !u.is_empty()))
    }

    /// Where the key set comes from (see the module doc).
    pub fn key_source(&self) -> KeySource<'_> {
        if let Some(jwks) = self.jwks.as_deref().filter(|j| !j.is_empty()) {
            return KeySource::Inline(jwks);
        }
        if let Some(uri) = self.jwks_uri() {
            return KeySource::Uri(uri);
        }
        let issuer = self.issuer();
        KeySource::Discovery {
            issuer,
            url: discovery_url(issuer),
        }
    }

    /// The key set fetch's timeout: the rule's, else [`DEFAULT_JWKS_TIMEOUT`].
    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.timeout.map_or(DEFAULT_JWKS_TIMEOUT, |t| t.as_std())
    }

    /// `forwardOriginalToken` (false when absent).
    pub fn forward_original_token(&self) -> bool {
        self.forward_original_token.unwrap_or(false)
    }
}

/// The OpenID discovery document's URL for `issuer`, when the issuer is an http(s) URL.
pub fn discovery_url(issuer: &str) -> Option<String> {
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    let url = format!("{base}{OPENID_DISCOVERY_PATH}");
    jwks_uri_problem(&url).is_none().then_some(url)
}

/// Why `uri` cannot be fetched as a key set (Istio's `ParseJwksURI`, stricter): an absolute
/// `http://` or `https://` URL with a host, at most [`MAX_JWKS_URI_LEN`] bytes, without
/// credentials. `None` when it can.
pub fn jwks_uri_problem(uri: &str) -> Option<String> {
    if uri.len() > MAX_JWKS_URI_LEN {
        return Some(format!(
            "URI of {} bytes is longer than {MAX_JWKS_URI_LEN}",
            uri.len()
        ));
    }
    match uri.split_once("://").map(|(scheme, _)| scheme) {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(s) => return Some(format!("URI scheme {s:?} is not supported (http or https)")),
        None => {
            return Some(format!(
                "{uri:?} is not an absolute URL: url must have scheme http:// or https://"
            ));
        }
    }
    let parsed: http::Uri = match uri.parse() {
        Ok(u) => u,
        Err(e) => return Some(format!("{uri:?} is not a valid URL: {e}")),
    };
    let Some(authority) = parsed.authority() else {
        return Some(format!("{uri:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Some(format!(
            "{uri:?} holds credentials (user@): they would be shown wherever the URI is \
             (ConfigMaps, status, logs); serve the key set without them"
        ));
    }
    if authority.host().is_empty() || authority.host() == "[]" {
        return Some(format!("{uri:?} has no host"));
    }
    let text = authority.as_str();
    let after_host = &text[text.rfind(']').map_or(0, |i| i + 1)..];
    if let Some((_, port)) = after_host.rsplit_once(':') {
        match port.parse::<u16>() {
            Ok(0) => return Some(format!("{uri:?}: port 0")),
            Ok(_) if port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Some(format!("{uri:?} is not a valid URL: bad port {port:?}")),
        }
    }
    None
}

/// Whether `name` is a header name (RFC 9110 token characters).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Istio's `ValidateStrictHTTPHeaderName`: letters, digits and `-`.
fn is_strict_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Why a header may not be written with a token's content ([`RESERVED_OUTPUT_HEADERS`]).
fn reserved_output(name: &str) -> Option<String> {
    RESERVED_OUTPUT_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
        .then(|| {
            format!(
                "header {name} is reserved: a token may not set the request's host, framing \
                 (hop-by-hop, length) or x-forwarded-client-cert"
            )
        })
}

/// A key component as the sidecar decodes it (`jsonwebtoken`'s decoder: base64url without
/// padding, canonical trailing bits), so that a key set this check passes is one the sidecar
/// reads (the `jwks_document` fuzz target holds the two together).
fn base64url(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// Why one key of a set cannot be used by the sidecar (its `jwt` module's rules: RSA of 2048 to
/// 8192 bits with `e` 3 or 65537, EC on P-256 or P-384, Ed25519; no HMAC, no ES512/P-521, an
/// `alg` fitting the key).
fn key_problem(key: &Value) -> Option<String> {
    let Value::Object(fields) = key else {
        return Some("not a JSON object".into());
    };
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    let alg = match fields.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(_) => return Some("alg is not a string".into()),
    };
    if let Some(a) = alg {
        if a.starts_with("HS") {
            return Some(format!("alg {a} (HMAC, a shared secret) is refused"));
        }
        if a == "ES512" {
            return Some("alg ES512 (curve P-521) is not supported".into());
        }
    }
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let v = text(name).ok_or_else(|| format!("{name} is missing"))?;
        base64url(v).ok_or_else(|| format!("{name} is not base64url"))
    };
    let fits = |algs: &[&str]| alg.is_none_or(|a| algs.contains(&a));
    match text("kty") {
        None => Some("kty is missing or not a string".into()),
        Some("RSA") => {
            if !fits(&["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]) {
                return Some(format!("alg {:?} does not fit an RSA key", alg.unwrap()));
            }
            let n = match bytes("n") {
                Ok(n) => n,
                Err(e) => return Some(e),
            };
            let e = match bytes("e") {
                Ok(e) => e,
                Err(e) => return Some(e),
            };
            let n = &n[n.iter().take_while(|b| **b == 0).count()..];
            let n_bits = n.first().map_or(0, |top| {
                (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
            });
            if !(2048..=8192).contains(&n_bits) {
                return Some(format!(
                    "RSA modulus of {n_bits} bits (the sidecar verifies 2048 to 8192)"
                ));
            }
            let e = &e[e.iter().take_while(|b| **b == 0).count()..];
            if e != [3] && e != [1, 0, 1] {
                return Some("RSA exponent must be 3 or 65537".into());
            }
            None
        }
        Some("EC") => {
            let crv = text("crv").unwrap_or(match alg {
                Some("ES384") => "P-384",
                _ => "P-256",
            });
            let (size, want) = match crv {
                "P-256" => (32, "ES256"),
                "P-384" => (48, "ES384"),
                "P-521" => return Some("curve P-521 is not supported".into()),
                other => return Some(format!("curve {other:?} is not one for ECDSA")),
            };
            if !fits(&[want]) {
                return Some(format!(
                    "alg {:?} does not fit an EC key on {crv}",
                    alg.unwrap()
                ));
            }
            for c in ["x", "y"] {
                match bytes(c) {
                    Ok(v) if v.len() == size => {}
                    Ok(_) => return Some(format!("{c} must be {size} bytes on {crv}")),
                    Err(e) => return Some(e),
                }
            }
            None
        }
        Some("OKP") => {
            if text("crv") != Some("Ed25519") {
                return Some("OKP keys must be on curve Ed25519".into());
            }
            if !fits(&["EdDSA"]) {
                return Some(format!(
                    "alg {:?} does not fit an Ed25519 key",
                    alg.unwrap()
                ));
            }
            match bytes("x") {
                Ok(x) if x.len() == 32 => None,
                Ok(_) => Some("x must be 32 bytes".into()),
                Err(e) => Some(e),
            }
        }
        Some("oct") => Some("kty oct (HMAC, a shared secret) is refused".into()),
        Some(other) => Some(format!(
            "kty {other:?} is not a key type the sidecar verifies"
        )),
    }
}

/// Why `text` is not a key set the sidecar can verify tokens with: not JSON, not an object with
/// a `keys` array (a single key is refused: Envoy's reader wants a set), or no usable key (each
/// key's reason). `None` when at least one key is usable (the others are skipped, as Envoy skips
/// them). The same check the operator applies to a fetched set.
pub fn jwks_problem(text: &str) -> Option<String> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON: {e}")),
    };
    let Some(keys) = value.get("keys") else {
        return Some(if value.get("kty").is_some() {
            "a single key, not a key set: wrap it as {\"keys\": [<key>]}".to_string()
        } else {
            "not a key set: no \"keys\" field".to_string()
        });
    };
    let Value::Array(keys) = keys else {
        return Some("\"keys\" is not an array".into());
    };
    if keys.is_empty() {
        return Some("the key set has no key".into());
    }
    let problems: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| key_problem(k).map(|p| format!("keys[{i}]: {p}")))
        .collect::<Option<Vec<_>>>()?;
    Some(format!(
        "no key the sidecar can verify with ({})",
        problems.join("; ")
    ))
}

fn check_rule(at: &str, rule: &JwtRule, out: &mut Vec<FieldError>) {
    let mut err = |field: String, message: String| out.push(FieldError::new(field, message));
    if rule.issuer().is_empty() {
        err(format!("{at}.issuer"), "issuer must be set".into());
    }
    for (j, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            err(
                format!("{at}.audiences[{j}]"),
                "audience must be non-empty string".into(),
            );
        }
    }
    let uri = rule.jwks_uri.as_deref().filter(|u| !u.is_empty());
    let uri_proto = rule.jwks_uri_proto.as_deref().filter(|u| !u.is_empty());
    if uri.is_some() && uri_proto.is_some() {
        err(
            format!("{at}.jwks_uri"),
            "jwksUri and jwks_uri are one field (jwks_uri is its protobuf name): set it once"
                .into(),
        );
    }
    for (name, value) in [("jwksUri", uri), ("jwks_uri", uri_proto)] {
        if let Some(problem) = value.and_then(jwks_uri_problem) {
            err(format!("{at}.{name}"), problem);
        }
    }
    let jwks = rule.jwks.as_deref().filter(|j| !j.is_empty());
    if jwks.is_some() && (uri.is_some() || uri_proto.is_some()) {
        err(
            format!("{at}.jwks"),
            "only one of jwks or jwksUri can be set".into(),
        );
    }
    if let Some(problem) = jwks.and_then(jwks_problem) {
        err(format!("{at}.jwks"), format!("jwks parse error: {problem}"));
    }
    for (k, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            err(
                format!("{at}.fromHeaders[{k}].name"),
                "location header name must be non-empty string".into(),
            );
        } else if !is_header_name(&h.name) {
            err(
                format!("{at}.fromHeaders[{k}].name"),
                format!("header name {} is not a valid header name", h.name),
            );
        }
    }
    for (k, p) in rule.from_params.iter().enumerate() {
        if p.is_empty() {
            err(
                format!("{at}.fromParams[{k}]"),
                "location query must be non-empty string".into(),
            );
        }
    }
    for (k, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            err(
                format!("{at}.fromCookies[{k}]"),
                "cookie name must be non-empty string".into(),
            );
        }
    }
    if let Some(h) = rule
        .output_payload_to_header
        .as_deref()
        .filter(|h| !h.is_empty())
    {
        let field = format!("{at}.outputPayloadToHeader");
        if !is_header_name(h) {
            err(field, format!("header name {h} is not a valid header name"));
        } else if let Some(why) = reserved_output(h) {
            err(field, why);
        }
    }
    let mut written: Vec<(String, usize)> = Vec::new();
    for (k, c) in rule.output_claim_to_headers.iter().enumerate() {
        let at = format!("{at}.outputClaimToHeaders[{k}]");
        let empty = "outputClaimToHeaders header and claim value must be non-empty string";
        if c.header.is_empty() {
            err(format!("{at}.header"), empty.into());
        }
        if c.claim.is_empty() {
            err(format!("{at}.claim"), empty.into());
        }
        if c.header.is_empty() || c.claim.is_empty() {
            continue;
        }
        let lower = c.header.to_ascii_lowercase();
        if !is_strict_header_name(&c.header) {
            err(
                format!("{at}.header"),
                format!("header name {} is not a valid header name", c.header),
            );
        } else if let Some(why) = reserved_output(&c.header) {
            err(format!("{at}.header"), why);
        } else if let Some((_, first)) = written.iter().find(|(h, _)| *h == lower) {
            err(
                format!("{at}.header"),
                format!(
                    "header {} is already written by outputClaimToHeaders[{first}]: each \
                     header must be unique",
                    c.header
                ),
            );
        } else {
            written.push((lower, k));
        }
    }
    if let Some(t) = rule.timeout {
        let t = t.as_std();
        let field = format!("{at}.timeout");
        if t < std::time::Duration::from_millis(1) {
            err(field, "duration must be greater than 1ms".into());
        } else if t.subsec_nanos() % 1_000_000 != 0 {
            err(field, "only durations to ms precision are supported".into());
        }
    }
}

impl Validate for RequestAuthenticationSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if let Some(selector) = &self.selector {
            for (k, v) in &selector.match_labels {
                if k.is_empty() {
                    out.push(FieldError::new(
                        "spec.selector.matchLabels",
                        format!("empty key is not supported in selector: \"{k}={v}\""),
                    ));
                } else if k.contains('*') || v.contains('*') {
                    out.push(FieldError::new(
                        format!("spec.selector.matchLabels.{k}"),
                        format!("wildcard is not supported in selector: \"{k}={v}\""),
                    ));
                }
            }
            if self.target_ref.is_some() || !self.target_refs.is_empty() {
                out.push(FieldError::new(
                    "spec.selector",
                    "only one of targetRefs or workloadSelector can be set",
                ));
            }
        }
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            check_rule(&format!("spec.jwtRules[{i}]"), rule, &mut out);
        }
        out.extend(crate::support::refused_fields(
            "RequestAuthentication",
            self,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{IstioObject, load};

    /// The public keys of the proxy's JWT tests (`proxy/tests/data/jwt-jwks.json`): RSA 2048,
    /// EC P-256, Ed25519.
    pub(crate) const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"rsa-1","alg":"RS256","n":"k14eVF4JC6ktVM_Ygkuf4ICVbK4hA1TU3LWSMqqQRswiYgmVi78V_-A6nOej9J7gyLKLPS9DL-WWZANi-43MwLAOtAzMpDrfCKMqde9OBYVpESx9HDpu4RceJR8I829CkUrXufXzb54xykZTHUphD-1Bi4czWt1xEYWG9ou8PP2wy9GAUntgcBbcTd1sEPPLg_TEXwQpOAZZzp5gIl23yio7rkdC6qUcAZmIdK81Km786oKszB7-FXaZeuGOIBfBZNLEVJB3ljP3GyBDSWjiywzw1P0cZcrm8hypOItbPiyuuTLKh2JhGQroX5MlQcCS0kXwd02cIXDyz-skpgBCRw","e":"AQAB"},{"kty":"EC","kid":"ec-1","crv":"P-256","x":"gem6MeICc5zwyVkxMD0kf-W-UiiotfqfXA-E5ceRqD4","y":"zAQm6-AISfBYp8RwT8izNCgE1lIJN3QifCMgK8c7tJk"},{"kty":"OKP","kid":"ed-1","crv":"Ed25519","x":"keUzBvdTiZZTD82uAWEeMoYR9Ng_7-qrTQZGX6rvDu4"}]}"#;

    fn doc(version: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/{version}\nkind: RequestAuthentication\nmetadata:\n  name: r\n  namespace: foo\nspec:\n{spec}"
        )
    }

    fn one(text: &str) -> RequestAuthentication {
        match load(text).unwrap_or_else(|e| panic!("{e}")).remove(0) {
            IstioObject::RequestAuthentication(p) => *p,
            other => panic!("read as {}", other.kind()),
        }
    }

    /// (field, message) of each finding of a document that must be refused.
    fn refused(text: &str) -> Vec<(String, String)> {
        let err = load(text).expect_err("document should be refused");
        err.field_errors()
            .into_iter()
            .map(|e| (e.field.clone(), e.message.clone()))
            .collect()
    }

    fn fields(found: &[(String, String)]) -> Vec<&str> {
        found.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn istio_examples_read_as_v1_and_v1beta1() {
        for version in VERSIONS {
            // Istio's documented example: httpbin's tokens from issuer-foo, keys by URI.
            let r = one(&doc(
                version,
                "  selector:\n    matchLabels:\n      app: httpbin\n  jwtRules:\n  - issuer: \"issuer-foo\"\n    jwksUri: https://example.com/.well-known/jwks.json\n",
            ));
            assert_eq!(
                r.spec.workload_labels(),
                Some(&BTreeMap::from([(
                    "app".to_string(),
                    "httpbin".to_string()
                )]))
            );
            let rule = &r.spec.jwt_rules[0];
            assert_eq!(rule.issuer(), "issuer-foo");
            assert_eq!(
                rule.key_source(),
                KeySource::Uri("https://example.com/.well-known/jwks.json")
            );
            assert_eq!(rule.fetch_timeout(), DEFAULT_JWKS_TIMEOUT);
            assert!(!rule.forward_original_token());
            assert!(r.spec.warnings().is_empty(), "{:?}", r.spec.warnings());
        }
        // Every field of a rule, with the key set inline and `jwks_uri`'s protobuf spelling on
        // another rule.
        let r = one(&doc(
            "v1",
            &format!(
                r#"  jwtRules:
  - issuer: https://example.com
    audiences: [bookstore_android.apps.example.com, bookstore_web.apps.example.com]
    jwks: '{JWKS}'
    fromHeaders:
    - name: x-goog-iap-jwt-assertion
    - name: authorization
      prefix: "Bearer "
    fromParams: [my_token]
    fromCookies: [auth-token]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders:
    - {{header: x-my-company-jwt-group, claim: my-group}}
    - {{header: x-jwt-claim-group, claim: nested.key.group}}
    timeout: 2.5s
  - issuer: issuer-bar
    jwks_uri: http://jwks.bar.svc:8080/keys
"#
            ),
        ));
        let rule = &r.spec.jwt_rules[0];
        assert_eq!(rule.key_source(), KeySource::Inline(JWKS));
        assert_eq!(rule.from_headers[1].prefix.as_deref(), Some("Bearer "));
        assert_eq!(rule.fetch_timeout(), std::time::Duration::from_millis(2500));
        assert!(rule.forward_original_token());
        assert_eq!(
            r.spec.jwt_rules[1].key_source(),
            KeySource::Uri("http://jwks.bar.svc:8080/keys")
        );
        // Without jwks or jwksUri: OpenID discovery of the issuer (one trailing slash off).
        let r = one(&doc(
            "v1",
            "  jwtRules:\n  - issuer: https://accounts.example.com/\n",
        ));
        assert_eq!(
            r.spec.jwt_rules[0].key_source(),
            KeySource::Discovery {
                issuer: "https://accounts.example.com/",
                url: Some("https://accounts.example.com/.well-known/openid-configuration".into())
            }
        );
        assert!(r.spec.warnings().is_empty());
        // An issuer that is no URL cannot be discovered: accepted, with a warning naming it.
        let r = one(&doc(
            "v1",
            "  jwtRules:\n  - issuer: testing@secure.istio.io\n",
        ));
        let w = r.spec.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "spec.jwtRules[0].issuer");
        assert!(
            w[0].message
                .contains("every token of this issuer is refused")
        );
        // No rules at all: a policy that checks nothing (valid, as in Istio).
        assert!(one(&doc("v1", "  {}\n")).spec.jwt_rules.is_empty());
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let typo = refused(&doc(
            "v1",
            "  jwtRules:\n  - issuer: a\n    jwksUrl: https://x/keys\n",
        ));
        assert_eq!(typo[0].0, "spec.jwtRules[0].jwksUrl", "{typo:?}");
        // Newer Istio's failureMode is not known to rustmesh: refused, never dropped.
        let fm = refused(&doc(
            "v1",
            "  jwtRules:\n  - issuer: a\n    failureMode: STRICT\n",
        ));
        assert_eq!(fm[0].0, "spec.jwtRules[0].failureMode", "{fm:?}");
        let h = refused(&doc(
            "v1",
            "  jwtRules:\n  - issuer: a\n    fromHeaders: [{name: x, prefx: y}]\n",
        ));
        assert_eq!(h[0].0, "spec.jwtRules[0].fromHeaders[0].prefx", "{h:?}");
        let t = refused(&doc("v1", "  jwtRules:\n  - issuer: a\n    timeout: 5\n"));
        assert_eq!(t[0].0, "spec.jwtRules[0].timeout", "{t:?}");
        let v = refused(&doc("v1alpha1", "  {}\n"));
        assert_eq!(v[0].0, "apiVersion");
    }

    #[test]
    fn rules_are_checked_as_istio_checks_them_naming_the_field() {
        let e = refused(&doc(
            "v1",
            r#"  jwtRules:
  - audiences: [a, ""]
    fromHeaders: [{name: ""}, {name: "x y"}, {name: x-ok}]
    fromParams: [""]
    fromCookies: [ok, ""]
  - issuer: b
    jwksUri: ftp://example.com/keys
  - issuer: c
    jwksUri: https://example.com/keys
    jwks: '{"keys": []}'
  - issuer: d
    jwksUri: https://a.example/keys
    jwks_uri: https://b.example/keys
  - issuer: e
    outputClaimToHeaders:
    - {header: "", claim: sub}
    - {header: x_sub, claim: sub}
    - {header: Host, claim: sub}
    - {header: x-sub, claim: sub}
    - {header: X-Sub, claim: email}
    outputPayloadToHeader: transfer-encoding
    timeout: 0.5ms
  - issuer: f
    timeout: 1.0005s
"#,
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.jwtRules[0].issuer",
                "spec.jwtRules[0].audiences[1]",
                "spec.jwtRules[0].fromHeaders[0].name",
                "spec.jwtRules[0].fromHeaders[1].name",
                "spec.jwtRules[0].fromParams[0]",
                "spec.jwtRules[0].fromCookies[1]",
                "spec.jwtRules[1].jwksUri",
                "spec.jwtRules[2].jwks",
                "spec.jwtRules[2].jwks",
                "spec.jwtRules[3].jwks_uri",
                "spec.jwtRules[4].outputPayloadToHeader",
                "spec.jwtRules[4].outputClaimToHeaders[0].header",
                "spec.jwtRules[4].outputClaimToHeaders[1].header",
                "spec.jwtRules[4].outputClaimToHeaders[2].header",
                "spec.jwtRules[4].outputClaimToHeaders[4].header",
                "spec.jwtRules[4].timeout",
                "spec.jwtRules[5].timeout",
            ]
        );
        let message = |field: &str| -> Vec<&str> {
            e.iter()
                .filter(|(f, _)| f == field)
                .map(|(_, m)| m.as_str())
                .collect()
        };
        assert_eq!(message("spec.jwtRules[0].issuer"), ["issuer must be set"]);
        assert_eq!(
            message("spec.jwtRules[0].fromParams[0]"),
            ["location query must be non-empty string"]
        );
        assert!(
            message("spec.jwtRules[1].jwksUri")[0].contains("URI scheme \"ftp\" is not supported")
        );
        assert_eq!(
            message("spec.jwtRules[2].jwks"),
            [
                "only one of jwks or jwksUri can be set",
                "jwks parse error: the key set has no key"
            ]
        );
        assert!(message("spec.jwtRules[3].jwks_uri")[0].contains("set it once"));
        assert!(message("spec.jwtRules[4].outputPayloadToHeader")[0].contains("is reserved"));
        assert!(
            message("spec.jwtRules[4].outputClaimToHeaders[1].header")[0]
                .contains("x_sub is not a valid header name")
        );
        assert!(
            message("spec.jwtRules[4].outputClaimToHeaders[2].header")[0]
                .contains("header Host is reserved")
        );
        assert!(
            message("spec.jwtRules[4].outputClaimToHeaders[4].header")[0]
                .contains("already written by outputClaimToHeaders[3]")
        );
        assert_eq!(
            message("spec.jwtRules[4].timeout"),
            ["duration must be greater than 1ms"]
        );
        assert_eq!(
            message("spec.jwtRules[5].timeout"),
            ["only durations to ms precision are supported"]
        );
    }

    #[test]
    fn jwks_uris_are_absolute_http_urls_with_a_host() {
        for ok in [
            "https://example.com/.well-known/jwks.json",
            "http://jwks.default.svc.cluster.local:8080/keys?x=1",
            "HTTPS://EXAMPLE.COM/keys",
            "http://[::1]:8443/keys",
            "http://10.0.0.1/keys",
        ] {
            assert_eq!(jwks_uri_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("ftp://example.com/keys", "scheme \"ftp\""),
            ("file:///etc/keys", "scheme \"file\""),
            ("/keys", "not an absolute URL"),
            ("example.com/keys", "not an absolute URL"),
            ("https://user:pw@example.com/keys", "credentials"),
            ("https://example.com:0/keys", "port 0"),
            ("https://exa mple.com/keys", "not a valid URL"),
            ("https://example.com:99999/keys", "not a valid URL"),
        ] {
            let p = jwks_uri_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(p.contains(why), "{bad}: {p}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_JWKS_URI_LEN));
        assert!(
            jwks_uri_problem(&long)
                .unwrap()
                .contains("longer than 2048")
        );
    }

    #[test]
    fn a_key_set_needs_a_key_the_sidecar_verifies_with() {
        assert_eq!(jwks_problem(JWKS), None);
        let set = |keys: Value| serde_json::json!({ "keys": keys }).to_string();
        // One usable key among unusable ones is enough (the others are skipped).
        let mixed = set(serde_json::json!([
            {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"},
            serde_json::from_str::<Value>(JWKS).unwrap()["keys"][1].clone(),
        ]));
        assert_eq!(jwks_problem(&mixed), None);
        let b64 = |n: usize| "A".repeat(n);
        for (text, why) in [
            ("not json".to_string(), "not JSON"),
            (
                r#"{"kty": "RSA"}"#.to_string(),
                "a single key, not a key set",
            ),
            (r#"{"foo": 1}"#.to_string(), "no \"keys\" field"),
            (r#"{"keys": {}}"#.to_string(), "is not an array"),
            (set(serde_json::json!([])), "has no key"),
            (
                set(serde_json::json!([{"kty": "oct", "k": "c2VjcmV0"}])),
                "keys[0]: kty oct (HMAC",
            ),
            (
                // 1024-bit modulus: under the sidecar's 2048.
                set(
                    serde_json::json!([{"kty": "RSA", "n": format!("w{}", b64(170)), "e": "AQAB"}]),
                ),
                "RSA modulus of 1024 bits",
            ),
            (
                set(serde_json::json!([{"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"}])),
                "does not fit an RSA key",
            ),
            (
                set(serde_json::json!([{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}])),
                "P-521 is not supported",
            ),
            (
                set(serde_json::json!([{"kty": "EC", "crv": "P-256", "x": b64(43), "y": b64(42)}])),
                "y must be 32 bytes",
            ),
            (
                set(serde_json::json!([{"kty": "OKP", "crv": "X25519", "x": b64(43)}])),
                "Ed25519",
            ),
            (
                set(serde_json::json!([{"kty": "EC", "alg": "ES512"}])),
                "ES512",
            ),
            (set(serde_json::json!(["key"])), "not a JSON object"),
            (
                set(serde_json::json!([{"kty": "RSA", "n": "!!", "e": "AQAB"}])),
                "n is not base64url",
            ),
        ] {
            let p = jwks_problem(&text).unwrap_or_else(|| panic!("{text} accepted"));
            assert!(p.contains(why), "{text}: {p}");
        }
        assert_eq!(base64url("AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(base64url("_-8"), Some(vec![0xff, 0xef]));
        assert_eq!(base64url("A"), None);
        // As the sidecar decodes (found by the jwks_document fuzz target): no padding, and the
        // last symbol's unused bits must be zero (`D4u` ends in bits the decoder refuses).
        assert_eq!(base64url("AQAB=="), None);
        assert_eq!(base64url("_-9"), None);
        let x = "keUzBvdTiZZTD82uAWEeMoYR9Ng_7-qrTQZGX6rvD4u";
        let p = jwks_problem(&set(
            serde_json::json!([{"kty": "OKP", "crv": "Ed25519", "x": x}]),
        ));
        assert!(p.unwrap().contains("x is not base64url"));
    }

    #[test]
    fn target_refs_are_refused_by_name_and_exclude_a_selector() {
        let e = refused(&doc(
            "v1",
            "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}\n",
        ));
        assert_eq!(fields(&e), ["spec.targetRef"]);
        assert!(e[0].1.starts_with("not implemented by rustmesh"), "{e:?}");
        let e = refused(&doc(
            "v1",
            "  selector: {matchLabels: {app: a}}\n  targetRefs:\n  - {kind: Service, group: \"\", name: reviews}\n",
        ));
        assert_eq!(fields(&e), ["spec.selector", "spec.targetRefs"]);
        assert!(
            e[0].1
                .contains("only one of targetRefs or workloadSelector")
        );
    }

    #[test]
    fn selector_rules_and_warnings_are_istios() {
        let e = refused(&doc(
            "v1",
            "  selector: {matchLabels: {\"\": x, app: \"a*\"}}\n",
        ));
        assert_eq!(
            fields(&e),
            ["spec.selector.matchLabels", "spec.selector.matchLabels.app"]
        );
        let r = one(&doc("v1", "  selector: {}\n"));
        assert_eq!(r.spec.workload_labels(), None);
        assert_eq!(r.spec.warnings()[0].field, "spec.selector.matchLabels");
    }
}
