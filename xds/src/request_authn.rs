//! Request authentication as a proxy receives it: the `RequestAuthentication` objects
//! (`security.istio.io/v1`) that can apply to the pods of a configuration's scope, each with its
//! JWT rules and the key sets resolved by the operator, selected by the pod's labels as
//! [`crate::authz`] policies are.
//!
//! Semantics, from Istio's documentation
//! (<https://istio.io/latest/docs/reference/config/security/request_authentication/>,
//! <https://istio.io/latest/docs/reference/config/security/jwt/>): the JWT rules of every policy
//! that applies to a pod are combined. A request that carries no token in any rule's locations
//! passes without a request identity (an AuthorizationPolicy may still require one). A request
//! whose token is not valid for the rule of its issuer (signature, `exp`/`nbf`, `aud` when
//! `audiences` is set, an issuer no rule names) is refused with 401. A valid token gives the
//! request principal `<iss>/<sub>` and its claims to authorization, is removed from the request
//! unless `forwardOriginalToken`, and can be copied out (`outputPayloadToHeader`,
//! `outputClaimToHeaders`).
//!
//! Key sets: the operator fetches `jwksUri` (as istiod does, with a size limit, a timeout and a
//! cache) and passes the JSON Web Key Set inline in [`JwtRule::jwks`]; the sidecar makes no call
//! of its own. When a key set cannot be had, [`JwtRule::jwks_error`] says why and the sidecar
//! refuses every token of that issuer (fail closed, as Istio's fallback key set does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The default token location: `Authorization: Bearer <token>`.
pub const DEFAULT_HEADER: &str = "authorization";
/// The prefix of the default header location.
pub const DEFAULT_HEADER_PREFIX: &str = "Bearer ";
/// The default query parameter location.
pub const DEFAULT_PARAM: &str = "access_token";

/// The policies that can apply to a scope's pods (root namespace first, then by namespace,
/// creation time and name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<RequestAuthnPolicy>,
}

impl RequestAuthentication {
    /// The JWT rules that apply to a pod with `labels`, with the policy each comes from.
    pub fn rules_for<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a RequestAuthnPolicy, &'a JwtRule)> + 'a {
        self.policies
            .iter()
            .filter(move |p| p.selects(labels))
            .flat_map(|p| p.jwt_rules.iter().map(move |r| (p, r)))
    }
}

/// One policy, as far as a sidecar needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthnPolicy {
    /// `<namespace>/<name>`, for logs and `/config_dump`.
    pub name: String,
    /// `selector.matchLabels`; empty: every pod of the scope.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

impl RequestAuthnPolicy {
    /// Whether the policy applies to a pod with `labels`.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// `JWTRule`, with its key set resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// When set, the token's `aud` must name one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The JSON Web Key Set (RFC 7517) the signature is checked with: the object's `jwks`, or
    /// what the operator fetched from `jwksUri`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Where `jwks` came from (shown by `/config_dump`), when fetched.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// Why there is no key set (fetch failed, too large, not JSON): every token of this issuer
    /// is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_error: Option<String>,
    /// Header locations; with no header, parameter or cookie location given, the defaults
    /// ([`DEFAULT_HEADER`] with [`DEFAULT_HEADER_PREFIX`], and [`DEFAULT_PARAM`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header to put the token's payload in (base64url, as Envoy does).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    /// Keep the token on the request forwarded to the app.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_original_token: bool,
    /// Claims copied into headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `JWTHeader`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    /// Stripped before the token is read (e.g. `Bearer `).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// `ClaimToHeader`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_of_every_policy_that_selects_the_pod_combine() {
        let text = r#"{"policies":[
            {"name":"istio-system/mesh","jwtRules":[{"issuer":"mesh-issuer","jwks":"{}"}]},
            {"name":"foo/httpbin","selector":{"app":"httpbin"},"jwtRules":[
                {"issuer":"testing@secure.istio.io","jwksUri":"http://jwks/keys","jwksError":"timed out",
                 "fromHeaders":[{"name":"x-jwt-assertion"}],"forwardOriginalToken":true,
                 "outputClaimToHeaders":[{"header":"x-sub","claim":"sub"}]}]}]}"#;
        let r: RequestAuthentication = serde_json::from_str(text).unwrap();
        let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        let httpbin = labels("httpbin");
        let issuers: Vec<_> = r.rules_for(&httpbin).map(|(_, j)| &j.issuer).collect();
        assert_eq!(issuers, ["mesh-issuer", "testing@secure.istio.io"]);
        let other = labels("web");
        assert_eq!(r.rules_for(&other).count(), 1);
        let (p, j) = r.rules_for(&httpbin).nth(1).unwrap();
        assert_eq!(p.name, "foo/httpbin");
        assert_eq!(j.jwks_error.as_deref(), Some("timed out"));
        assert!(j.forward_original_token);
        let again: RequestAuthentication =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        assert!(serde_json::from_str::<JwtRule>(r#"{"issuer":"x","jwks_uri":"y"}"#).is_err());
    }
}
