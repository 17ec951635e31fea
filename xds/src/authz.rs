//! Authorization as a proxy receives it: the `AuthorizationPolicy` objects
//! (`security.istio.io/v1`) that can apply to the pods of a configuration's scope, and the pure
//! selection [`Authorization::applicable`] the sidecar applies to its own labels.
//!
//! Why the sidecar selects: one configuration serves every pod of a scope, while a policy may
//! select some of those pods by label (as with [`crate::peer_authn`]). The operator lists, for a
//! scope of namespace `ns`, the root namespace's policies (without a selector: every workload of
//! the mesh; with one: the matching workloads of every namespace, as Istio documents) and `ns`'s
//! own (without a selector: every workload of `ns`; with one: the matching ones), each already
//! validated. The operator passes the rules through in Istio's own terms (strings as the user
//! wrote them); the proxy compiles them once per configuration (`proxy/src/authz/`), refusing the
//! whole document, naming the field, if one does not compile, so the previous one keeps serving.
//!
//! Semantics the proxy implements, from Istio's documentation
//! (<https://istio.io/latest/docs/reference/config/security/authorization-policy/>):
//! - evaluation order CUSTOM → DENY → ALLOW: a request any applicable DENY (or CUSTOM, see
//!   [`AuthzAction::Custom`]) policy matches is denied; else, if no ALLOW policy applies, it is
//!   allowed; else it is allowed only when some ALLOW policy matches. AUDIT policies never change
//!   the decision.
//! - a policy matches when any of its rules matches; a policy with no rules matches nothing
//!   (so an ALLOW policy without rules, `spec: {}`, denies everything), a rule `{}` matches
//!   everything;
//! - in a rule, `from` entries are alternatives (any), as are `to` entries; `when` conditions
//!   must all hold; inside a `source`/`operation`, every field that is set must match, a field
//!   matches when any of its values does, and its `not*` twin when none does;
//! - strings match exactly, or by prefix (`abc*`), suffix (`*abc`) or presence (`*`); `hosts` are
//!   compared without case; `paths` also take Istio's templates `{*}` (one segment) and `{**}`;
//!   ports are the destination (container) port;
//! - for TCP traffic, a rule that uses an HTTP-only field (`hosts`, `methods`, `paths`,
//!   `requestPrincipals`, `request.*` conditions) never matches in an ALLOW policy (the policy
//!   fails closed) and matches without those fields in a DENY (or CUSTOM) policy (it denies
//!   more, never less).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `AuthorizationPolicy.Action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    /// Allow a request only if it matches the rules (the default).
    #[default]
    Allow,
    /// Deny a request if it matches any of the rules.
    Deny,
    /// Audit a request if it matches any of the rules: logged, never denied.
    Audit,
    /// An external authorizer decides. rustmesh has none: the operator reports the policy as not
    /// supported and renders it so that what it matches is denied (fail closed, as Istio does
    /// for a CUSTOM policy whose provider it cannot use).
    Custom,
}

impl AuthzAction {
    /// The name Istio writes.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
            AuthzAction::Custom => "CUSTOM",
        }
    }
}

/// The policies that can apply to a scope's pods, in the order the operator lists them (root
/// namespace first, then by namespace, creation time and name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AuthzPolicy>,
}

impl Authorization {
    /// The policies that apply to a pod with `labels`.
    pub fn applicable<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a AuthzPolicy> + 'a {
        self.policies.iter().filter(move |p| p.selects(labels))
    }
}

/// One policy, as far as a sidecar needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzPolicy {
    /// `<namespace>/<name>`, for logs, `/config_dump` and the denial's details
    /// (`rbac_access_denied_matched_policy[ns[<namespace>]-policy[<name>]-rule[<i>]]`).
    pub name: String,
    /// `selector.matchLabels`; empty: every pod of the scope.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub action: AuthzAction,
    /// `rules`; empty: the policy matches nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

impl AuthzPolicy {
    /// Whether the policy applies to a pod with `labels`.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// `Rule`: matches when some `from` entry (or none is given), some `to` entry (or none is
/// given) and every `when` condition match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    /// `from[].source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzSource>,
    /// `to[].operation`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzOperation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthzCondition>,
}

/// `Source`: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzSource {
    /// Peer identities from mutual TLS, without `spiffe://` (`cluster.local/ns/foo/sa/bar`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// `<iss>/<sub>` of the request's validated JWT (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// The peer's namespace, from its mutual-TLS identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// CIDRs or addresses of the connection's source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// CIDRs or addresses of the original client (`X-Forwarded-For` with the mesh's trusted
    /// hops; with none, as in a sidecar by default, the connection's source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `Operation`: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzOperation {
    /// The request's `:authority`/`Host` (HTTP only; compared without case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// The destination (container) port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    /// HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// The request path without its query (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `Condition`: `key` is one of Istio's (`request.headers[<name>]`, `source.ip`, `remote.ip`,
/// `source.namespace`, `source.principal`, `request.auth.principal`,
/// `request.auth.audiences`, `request.auth.presenter`, `request.auth.claims[<name>]...`,
/// `destination.ip`, `destination.port`, `connection.sni`); holds when any of `values` (if
/// given) matches and none of `notValues` does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzCondition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_pod_gets_the_policies_whose_selector_it_carries() {
        let policy = |name: &str, selector: &[(&str, &str)]| AuthzPolicy {
            name: name.to_string(),
            selector: labels(selector),
            ..AuthzPolicy::default()
        };
        let a = Authorization {
            policies: vec![
                policy("istio-system/all", &[]),
                policy("foo/httpbin", &[("app", "httpbin")]),
                policy("foo/v2", &[("app", "httpbin"), ("version", "v2")]),
            ],
        };
        fn names(a: &Authorization, l: &BTreeMap<String, String>) -> Vec<String> {
            a.applicable(l).map(|p| p.name.clone()).collect()
        }
        assert_eq!(names(&a, &labels(&[])), ["istio-system/all"]);
        let v1 = labels(&[("app", "httpbin"), ("version", "v1")]);
        assert_eq!(names(&a, &v1), ["istio-system/all", "foo/httpbin"]);
        let v2 = labels(&[("app", "httpbin"), ("version", "v2")]);
        assert_eq!(
            names(&a, &v2),
            ["istio-system/all", "foo/httpbin", "foo/v2"]
        );
    }

    #[test]
    fn reads_and_writes_the_json_shape() {
        let text = r#"{"policies":[{"name":"foo/deny-get","action":"DENY","rules":[
            {"from":[{"principals":["cluster.local/ns/foo/sa/sleep"]}],
             "to":[{"operation":null,"methods":["GET"],"ports":[8000]}],
             "when":[{"key":"request.headers[x-token]","notValues":["admin"]}]}]}]}"#;
        // `operation` is not a field of the model (the operator flattens `to[].operation`).
        assert!(serde_json::from_str::<Authorization>(text).is_err());
        let text = text.replace(r#""operation":null,"#, "");
        let a: Authorization = serde_json::from_str(&text).unwrap();
        let p = &a.policies[0];
        assert_eq!(p.action, AuthzAction::Deny);
        assert_eq!(p.rules[0].to[0].ports, [8000]);
        assert_eq!(p.rules[0].when[0].not_values, ["admin"]);
        let again: Authorization =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(again, a);
        // An empty policy is ALLOW with no rules: it denies everything.
        let empty: AuthzPolicy = serde_json::from_str(r#"{"name":"foo/deny-all"}"#).unwrap();
        assert_eq!(empty.action, AuthzAction::Allow);
        assert!(empty.rules.is_empty());
    }
}
