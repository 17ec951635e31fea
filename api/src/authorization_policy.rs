//! `AuthorizationPolicy` (`security.istio.io`, served as `v1` and `v1beta1`): which requests a
//! workload's sidecar lets through. Shapes follow
//! <https://istio.io/latest/docs/reference/config/security/authorization-policy/>.
//!
//! Scope, as in Istio: a policy without a selector (or whose `selector.matchLabels` is empty)
//! applies to every workload of its namespace, or of the mesh in the root namespace; one with
//! labels applies to the workloads of its namespace it selects, and, in the root namespace, to
//! the workloads of every namespace it selects. The action names are the proxy model's
//! [`AuthzAction`] (one type for both).
//!
//! [`Validate`] reports Istio's errors, naming the field (Istio's `ValidateAuthorizationPolicy`
//! rules, plus what rustmesh refuses: `targetRef`/`targetRefs`, `*` inside a path, `when` keys
//! rustmesh does not evaluate); [`AuthorizationPolicySpec::warnings`] Istio's warnings and the
//! CUSTOM action, which rustmesh cannot delegate (no external authorizer): it is rendered so
//! that the requests it matches are denied, and the operator reports it (`Accepted=False`,
//! reason `Unsupported`).
//!
//! Decisions where Istio's documentation is silent or lenient:
//! - a path value may use `*` only as Istio documents it (`*`, `abc*`, `*abc`); Istio would take
//!   `/a*b` or `*a*` literally, which is never what was meant, so they are refused;
//! - `when` keys are the ones Istio documents and the sidecar evaluates; Istio's
//!   `experimental.envoy.filters.*`, `request.experimental.inline.headers[...]` and
//!   `source.serviceAccount` are refused by name (Envoy filter metadata and inline headers do
//!   not exist in rustmesh's sidecar; use `request.headers[...]`, `source.principal`);
//! - `request.headers[<name>]` takes exactly one `[name]`; `request.auth.claims[...]` one or
//!   more (nested claims), none empty;
//! - Istio's `istio.io/dry-run: "true"` annotation (ALLOW and DENY only, a Go boolean, as Istio
//!   validates it): the policy is never enforced, as in Istio, by rendering it as AUDIT; Istio's
//!   shadow-rule metadata and statistics are not produced, which a warning says
//!   ([`AuthorizationPolicy::dry_run`]).

use crate::common::WorkloadSelector;
use crate::error::FieldError;
use crate::status::IstioStatus;
use crate::validate::Validate;
use kube::CustomResource;
pub use rustmesh_xds::authz::AuthzAction;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The versions `security.istio.io` serves this kind as, newest (stored) first.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The spec of an AuthorizationPolicy.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    singular = "authorizationpolicy",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "IstioStatus",
    shortname = "ap",
    category = "istio-io",
    category = "security-istio-io",
    printcolumn = r#"{"name":"Action","type":"string","description":"The operation to take.","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
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
    /// The rules; a match occurs when at least one matches. None: the policy never matches
    /// (an ALLOW policy without rules denies every request of its workloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// `ALLOW` (the default), `DENY`, `AUDIT` or `CUSTOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "action_schema")]
    pub action: Option<AuthzAction>,
    /// The extension provider of a CUSTOM policy (only with CUSTOM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// Istio's schema of the action (the proxy model's type carries no schema).
fn action_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Optional. The action to take if the request is matched with the rules. Default is ALLOW if not specified.",
        "type": "string",
        "nullable": true,
        "enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"],
    })
}

/// `AuthorizationPolicy.ExtensionProvider`: `{name: my-ext-authz}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The name of an extension provider of the mesh configuration.
    // An `Option`, not a defaulted `String`: schemars writes `default: ''` for the latter, which
    // the Helm install of Kubernetes 1.20 refused (`default: Invalid value: "null"`); Istio's
    // CRD has no default either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ExtensionProvider {
    /// The provider's name, empty when not given.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// Istio's `PolicyTargetReference` (GEP-2648).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// The group of the target resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The kind of the target resource.
    pub kind: String,
    /// The name of the target resource.
    pub name: String,
    /// The namespace of the referent (the policy's when unspecified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `Rule`: matches when some `from` (or none is given), some `to` (or none is given) and
/// every `when` condition match. An empty rule `{}` matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The sources of the request; if not set, any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<RuleFrom>>,
    /// The operations of the request; if not set, any operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<RuleTo>>,
    /// Additional conditions, all of which must hold; if not set, any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `Rule.From`: `{source: {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// `Rule.To`: `{operation: {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// `Source`: every field that is set must match (a field matches when any of its values does,
/// its `not*` twin when none does).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities from the peer certificate, `<TRUST_DOMAIN>/ns/<NAMESPACE>/sa/<SA>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Request identities from the JWT, `<ISS>/<SUB>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces derived from the peer certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// IP blocks (an address or a CIDR) of the source address of the IP packet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// IP blocks of the original client (X-Forwarded-For with the trusted hops, or the
    /// connection's source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `Operation`: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts as specified in the HTTP request, matched without case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Ports of the connection (Istio writes them as strings: `"8080"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// Methods as specified in the HTTP request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths as specified in the HTTP request (with Istio's `{*}`/`{**}` templates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `Condition`: an Istio attribute and the values it may (`values`) or may not (`notValues`)
/// have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The name of an Istio attribute (`request.headers[x-token]`, `source.ip`, ...).
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// Istio's annotation asking for a policy to be evaluated without being enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Go's `strconv.ParseBool`, which Istio reads the annotation with.
fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl AuthorizationPolicy {
    /// Whether the policy is a dry run (`istio.io/dry-run` true on an ALLOW or DENY policy):
    /// rendered as AUDIT, so that it is evaluated and never enforced.
    pub fn dry_run(&self) -> bool {
        let value = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DRY_RUN_ANNOTATION));
        matches!(self.spec.action(), AuthzAction::Allow | AuthzAction::Deny)
            && value.and_then(|v| go_bool(v)).unwrap_or(false)
    }

    /// Istio's rules on the `istio.io/dry-run` annotation: only on ALLOW and DENY policies, and
    /// its value a boolean.
    pub fn dry_run_errors(&self) -> Vec<FieldError> {
        let field = format!("metadata.annotations.{DRY_RUN_ANNOTATION}");
        let Some(value) = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        else {
            return Vec::new();
        };
        let action = self.spec.action();
        if !matches!(action, AuthzAction::Allow | AuthzAction::Deny) {
            return vec![FieldError::new(
                field,
                format!(
                    "the annotation {DRY_RUN_ANNOTATION} is currently not supported for action {}",
                    action.as_str()
                ),
            )];
        }
        if go_bool(value).is_none() {
            return vec![FieldError::new(
                field,
                format!("invalid value ({value}): a boolean (true or false)"),
            )];
        }
        Vec::new()
    }

    /// [`AuthorizationPolicySpec::warnings`], and the dry run's ([`Self::dry_run`]).
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = self.spec.warnings();
        if self.dry_run() {
            out.push(FieldError::new(
                format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                format!(
                    "dry run: rendered as AUDIT, so the policy is never enforced (as in Istio) and \
                     the requests it matches are marked audited; Istio's shadow-rule metadata and \
                     statistics (istio_dry_run_{}_shadow_*) are not implemented",
                    self.spec.action().as_str().to_lowercase()
                ),
            ));
        }
        out
    }
}

impl AuthorizationPolicySpec {
    /// `selector.matchLabels` when the policy is workload-specific (a selector with labels);
    /// `None` for a namespace-wide (or mesh-wide) policy.
    pub fn workload_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// The action, `ALLOW` when absent.
    pub fn action(&self) -> AuthzAction {
        self.action.unwrap_or_default()
    }

    /// The finding the CUSTOM action gets: rustmesh has no external authorizer, so the policy is
    /// rendered as CUSTOM and the sidecar denies the requests it matches (fail closed). `None`
    /// for the other actions.
    pub fn custom_unsupported(&self) -> Option<FieldError> {
        if self.action() != AuthzAction::Custom {
            return None;
        }
        let provider = self.provider.as_ref().map(|p| p.name());
        Some(FieldError::new(
            "spec.provider",
            format!(
                "CUSTOM action is not supported: requests it matches are denied (rustmesh has no \
                 external authorizer; provider {:?} is never called)",
                provider.unwrap_or_default()
            ),
        ))
    }

    /// Findings that do not make the policy invalid: Istio's warnings (a selector without
    /// labels; a DENY rule of HTTP-only attributes, which denies all TCP traffic of its
    /// workloads), the CUSTOM action ([`Self::custom_unsupported`]), and fields rustmesh accepts
    /// without implementing them ([`crate::support`]).
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
        if self.action() == AuthzAction::Deny {
            for (i, rule) in self.rules.iter().enumerate() {
                if rule.denies_all_tcp() {
                    out.push(FieldError::new(
                        format!("spec.rules[{i}]"),
                        "configured AuthorizationPolicy will deny all traffic to TCP ports under \
                         its scope due to the use of only HTTP attributes in a DENY rule; it is \
                         recommended to explicitly specify the port",
                    ));
                }
            }
        }
        out.extend(self.custom_unsupported());
        out.extend(crate::support::warned_fields("AuthorizationPolicy", self));
        out
    }
}

impl Rule {
    /// Istio's test for its warning: a rule whose sources set only HTTP attributes and that has
    /// no operation, or whose operations set no port, matches every TCP connection (HTTP-only
    /// fields are left out for TCP in a DENY policy).
    fn denies_all_tcp(&self) -> bool {
        let sources: Vec<&Source> = self
            .from
            .iter()
            .flatten()
            .filter_map(|f| f.source.as_ref())
            .collect();
        let operations: Vec<&Operation> = self
            .to
            .iter()
            .flatten()
            .filter_map(|t| t.operation.as_ref())
            .collect();
        let tcp_in_from = sources.iter().any(|s| {
            [
                &s.principals,
                &s.not_principals,
                &s.namespaces,
                &s.not_namespaces,
                &s.ip_blocks,
                &s.not_ip_blocks,
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
            ]
            .iter()
            .any(|v| !v.is_empty())
        });
        let tcp_in_to = operations
            .iter()
            .any(|o| !o.ports.is_empty() || !o.not_ports.is_empty());
        (!sources.is_empty() && operations.is_empty() && !tcp_in_from)
            || (!operations.is_empty() && !tcp_in_to)
    }
}

/// A `when` key rustmesh evaluates, as Istio names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.headers[<name>]`.
    RequestHeader(String),
    /// `source.ip`, `remote.ip`, `destination.ip`: addresses or CIDRs.
    Ip,
    /// `destination.port`: ports.
    Port,
    /// `source.namespace`, `source.principal`, `connection.sni`.
    Plain,
    /// `request.auth.principal`, `request.auth.audiences`, `request.auth.presenter`.
    RequestAuth,
    /// `request.auth.claims[<name>]...` (nested claims as several `[...]`).
    RequestClaim(Vec<String>),
}

/// Reads a `when` key; `Err` says why it is refused.
pub fn condition_key(key: &str) -> Result<ConditionKey, String> {
    /// `[a][b]...` after a prefix: the names, none empty, none holding a bracket.
    fn bracketed(rest: &str) -> Option<Vec<String>> {
        let mut names = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let end = inner.find(']')?;
            let name = &inner[..end];
            if name.is_empty() || name.contains('[') {
                return None;
            }
            names.push(name.to_string());
            rest = &inner[end + 1..];
        }
        (!names.is_empty()).then_some(names)
    }
    let map_key =
        |prefix: &str| format!("bad key ({key}): should have the format {prefix}[<name>]");
    if let Some(rest) = key.strip_prefix("request.headers") {
        return match bracketed(rest) {
            Some(mut names) if names.len() == 1 => Ok(ConditionKey::RequestHeader(names.remove(0))),
            _ => Err(map_key("request.headers")),
        };
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return bracketed(rest)
            .map(ConditionKey::RequestClaim)
            .ok_or_else(|| map_key("request.auth.claims"));
    }
    if key.starts_with("experimental.envoy.filters.") {
        return Err(format!(
            "attribute {key} is not supported by rustmesh: experimental.envoy.filters.* reads \
             Envoy filter metadata, which rustmesh's sidecar does not have"
        ));
    }
    if key.starts_with("request.experimental.inline.headers") {
        return Err(format!(
            "attribute {key} is not supported by rustmesh: use request.headers[<name>]"
        ));
    }
    if key.starts_with("destination.labels") {
        return Err(format!(
            "attribute {key} is replaced by the workload selector"
        ));
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => Ok(ConditionKey::Ip),
        "destination.port" => Ok(ConditionKey::Port),
        "source.namespace" | "source.principal" | "connection.sni" => Ok(ConditionKey::Plain),
        "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
            Ok(ConditionKey::RequestAuth)
        }
        "source.serviceAccount" => Err(format!(
            "attribute {key} is not supported by rustmesh: use source.principal \
             (<trust domain>/ns/<namespace>/sa/<service account>)"
        )),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        _ => Err(format!(
            "unknown attribute: {key} (supported: request.headers[<name>], source.ip, remote.ip, \
             source.namespace, source.principal, request.auth.principal, request.auth.audiences, \
             request.auth.presenter, request.auth.claims[<name>], destination.ip, \
             destination.port, connection.sni)"
        )),
    }
}

/// Why `value` is not an IP address or CIDR block, as Istio's `ValidateIPs` checks it.
pub fn ip_block_problem(value: &str) -> Option<String> {
    match value.split_once('/') {
        Some((addr, len)) => {
            let ok = addr.parse::<IpAddr>().ok().is_some_and(|ip| {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                !len.is_empty()
                    && len.len() <= 3
                    && len.bytes().all(|b| b.is_ascii_digit())
                    && len.parse::<u8>().is_ok_and(|l| l <= max)
            });
            (!ok).then(|| format!("bad CIDR range ({value})"))
        }
        None => value
            .parse::<IpAddr>()
            .is_err()
            .then(|| format!("bad IP address ({value})")),
    }
}

/// A port as Istio writes it in a policy (`"8080"`): digits, 0..65535.
pub fn port_number(value: &str) -> Option<u16> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u16>().ok()
}

/// Why a `paths`/`notPaths` value is refused: `*` other than as Istio documents it (`*`,
/// `abc*`, `*abc`), or an invalid `{*}`/`{**}` template (Istio's rules: a template segment is
/// exactly `{*}` or `{**}`, `{**}` is the last operator, no `{`/`}` elsewhere, and in a template
/// every other segment is a non-empty run of RFC 3986 path characters, so no `*`).
pub fn path_problem(value: &str) -> Option<String> {
    let template = value.contains("{*}") || value.contains("{**}");
    let mut any_seen = false;
    for segment in value.trim_matches('/').split('/') {
        match segment {
            "{*}" | "{**}" if any_seen => {
                return Some(format!(
                    "invalid or unsupported path {value}: {{**}} is not the last operator"
                ));
            }
            "{*}" => continue,
            "{**}" => {
                any_seen = true;
                continue;
            }
            _ => {}
        }
        if segment.contains(['{', '}']) {
            return Some(format!(
                "invalid or unsupported path {value}: contains '{{' or '}}' beyond a supported \
                 path template ({{*}} or {{**}} as a whole segment)"
            ));
        }
        if template && !valid_literal(segment) {
            return Some(format!(
                "invalid or unsupported path {value}: contains segment {segment:?} with invalid \
                 string literal (a template's other segments are non-empty runs of path \
                 characters, without `*`)"
            ));
        }
    }
    if !template {
        let stars = value.matches('*').count();
        let ok = stars == 0
            || value == "*"
            || (stars == 1 && (value.starts_with('*') || value.ends_with('*')));
        if !ok {
            return Some(format!(
                "invalid path {value}: `*` is only supported alone (presence), at the end \
                 (prefix match: /api/*) or at the start (suffix match: *.png); use {{*}} or \
                 {{**}} templates for segments"
            ));
        }
    }
    None
}

/// Envoy's valid path characters (RFC 3986 `pchar`), as Istio checks a template's literals.
fn valid_literal(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b))
}

/// Empty values refused, naming each.
fn no_empty(field: &str, values: &[String], out: &mut Vec<FieldError>) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            out.push(FieldError::new(
                format!("{field}[{i}]"),
                "empty value not allowed",
            ));
        }
    }
}

fn check_source(at: &str, s: &Source, custom: bool, out: &mut Vec<FieldError>) {
    let lists: [(&str, &Vec<String>); 10] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        out.push(FieldError::new(
            at,
            "`from.source` must not be empty: set at least one field",
        ));
    }
    for (name, values) in lists {
        let field = format!("{at}.{name}");
        no_empty(&field, values, out);
        if name.ends_with("pBlocks") {
            for (i, v) in values.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
                if let Some(problem) = ip_block_problem(v) {
                    out.push(FieldError::new(format!("{field}[{i}]"), problem));
                }
            }
        }
        // Istio's CUSTOM action takes no identities (its ext_authz filter runs before them).
        let identity = !name.ends_with("pBlocks");
        if custom && identity && !values.is_empty() {
            out.push(FieldError::new(
                field,
                format!("{name} is currently not supported with CUSTOM action"),
            ));
        }
    }
}

fn check_operation(at: &str, o: &Operation, out: &mut Vec<FieldError>) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        out.push(FieldError::new(
            at,
            "`to.operation` must not be empty: set at least one field",
        ));
    }
    for (name, values) in lists {
        let field = format!("{at}.{name}");
        no_empty(&field, values, out);
        for (i, v) in values.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            let problem = match name {
                "ports" | "notPorts" => port_number(v)
                    .is_none()
                    .then(|| format!("bad port ({v}): a number in range 0..65535")),
                "paths" | "notPaths" => path_problem(v),
                _ => None,
            };
            if let Some(problem) = problem {
                out.push(FieldError::new(format!("{field}[{i}]"), problem));
            }
        }
    }
}

fn check_condition(at: &str, c: &Condition, custom: bool, out: &mut Vec<FieldError>) {
    if c.key.is_empty() {
        out.push(FieldError::new(
            format!("{at}.key"),
            "`key` must not be empty",
        ));
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        out.push(FieldError::new(
            at,
            format!(
                "at least one of `values` or `notValues` must be set for key {}",
                c.key
            ),
        ));
        return;
    }
    let kind = match condition_key(&c.key) {
        Ok(kind) => kind,
        Err(why) => {
            out.push(FieldError::new(format!("{at}.key"), why));
            return;
        }
    };
    let identity = matches!(
        kind,
        ConditionKey::RequestAuth | ConditionKey::RequestClaim(_)
    ) || c.key == "source.namespace"
        || c.key == "source.principal";
    if custom && identity {
        out.push(FieldError::new(
            format!("{at}.key"),
            format!("{} is currently not supported with CUSTOM action", c.key),
        ));
    }
    for (name, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        let field = format!("{at}.{name}");
        no_empty(&field, values, out);
        for (i, v) in values.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            let problem = match kind {
                ConditionKey::Ip => ip_block_problem(v),
                ConditionKey::Port => port_number(v)
                    .is_none()
                    .then(|| format!("bad port ({v}): a number in range 0..65535")),
                _ => None,
            };
            if let Some(problem) = problem {
                out.push(FieldError::new(format!("{field}[{i}]"), problem));
            }
        }
    }
}

impl Validate for AuthorizationPolicySpec {
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
        let action = self.action();
        let custom = action == AuthzAction::Custom;
        match (&self.provider, custom) {
            (Some(_), false) => out.push(FieldError::new(
                "spec.provider",
                format!(
                    "`provider` must not be with non CUSTOM action, found {}",
                    action.as_str()
                ),
            )),
            (None, true) if !self.rules.is_empty() => out.push(FieldError::new(
                "spec.provider",
                "`provider.name` must not be empty: CUSTOM needs a provider",
            )),
            (Some(p), true) if p.name().is_empty() && !self.rules.is_empty() => out.push(
                FieldError::new("spec.provider.name", "`provider.name` must not be empty"),
            ),
            _ => {}
        }
        if self.rules.is_empty() && (custom || action == AuthzAction::Deny) {
            out.push(FieldError::new(
                "spec.rules",
                format!(
                    "{} action without `rules` is meaningless as it will never be triggered, \
                     add an empty rule `{{}}` if you want it be triggered for every request",
                    action.as_str()
                ),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            if let Some(from) = &rule.from {
                if from.is_empty() {
                    out.push(FieldError::new(
                        format!("{at}.from"),
                        "`from` must not be empty",
                    ));
                }
                for (j, f) in from.iter().enumerate() {
                    let at = format!("{at}.from[{j}].source");
                    match &f.source {
                        None => out.push(FieldError::new(at, "`from.source` must be set")),
                        Some(s) => check_source(&at, s, custom, &mut out),
                    }
                }
            }
            if let Some(to) = &rule.to {
                if to.is_empty() {
                    out.push(FieldError::new(
                        format!("{at}.to"),
                        "`to` must not be empty",
                    ));
                }
                for (j, t) in to.iter().enumerate() {
                    let at = format!("{at}.to[{j}].operation");
                    match &t.operation {
                        None => out.push(FieldError::new(at, "`to.operation` must be set")),
                        Some(o) => check_operation(&at, o, &mut out),
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                check_condition(&format!("{at}.when[{j}]"), c, custom, &mut out);
            }
        }
        out.extend(crate::support::refused_fields("AuthorizationPolicy", self));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{IstioObject, load};

    fn doc(version: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/{version}\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\nspec:\n{spec}"
        )
    }

    fn one(text: &str) -> AuthorizationPolicy {
        match load(text).unwrap_or_else(|e| panic!("{e}")).remove(0) {
            IstioObject::AuthorizationPolicy(p) => *p,
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
            // Istio's documented ALLOW example.
            let p = one(&doc(
                version,
                r#"  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
"#,
            ));
            assert_eq!(p.spec.action(), AuthzAction::Allow);
            assert_eq!(p.spec.workload_labels(), None);
            let rule = &p.spec.rules[0];
            assert_eq!(rule.from.as_ref().unwrap().len(), 2);
            assert_eq!(
                rule.to.as_ref().unwrap()[0]
                    .operation
                    .as_ref()
                    .unwrap()
                    .paths,
                ["/info*"]
            );
            assert!(p.spec.warnings().is_empty(), "{:?}", p.spec.warnings());
        }
        // The DENY example scoped to a port, allow-nothing, allow-all, and a root-namespace
        // selector policy.
        let deny = one(&doc(
            "v1",
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"POST\"]\n        ports: [\"8080\"]\n",
        ));
        assert_eq!(deny.spec.action(), AuthzAction::Deny);
        assert!(deny.spec.warnings().is_empty());
        let nothing = one(&doc("v1", "  {}\n"));
        assert!(nothing.spec.rules.is_empty());
        let all = one(&doc("v1beta1", "  rules:\n  - {}\n"));
        assert_eq!(all.spec.rules, [Rule::default()]);
        let selected = one(&doc(
            "v1",
            "  selector:\n    matchLabels:\n      version: v1\n",
        ));
        assert_eq!(
            selected.spec.workload_labels(),
            Some(&BTreeMap::from([("version".to_string(), "v1".to_string())]))
        );
        let audit = one(&doc(
            "v1",
            "  action: AUDIT\n  rules:\n  - to:\n    - operation:\n        paths: [\"/user/profile/*\"]\n",
        ));
        assert_eq!(audit.spec.action(), AuthzAction::Audit);
    }

    #[test]
    fn unknown_fields_and_actions_are_refused_by_name() {
        let typo = refused(&doc("v1", "  rules:\n  - form: []\n"));
        assert_eq!(typo[0].0, "spec.rules[0].form", "{typo:?}");
        let src = refused(&doc(
            "v1",
            "  rules:\n  - from:\n    - source:\n        principal: [a]\n",
        ));
        assert_eq!(
            src[0].0, "spec.rules[0].from[0].source.principal",
            "{src:?}"
        );
        let action = refused(&doc("v1", "  action: REJECT\n"));
        assert_eq!(action[0].0, "spec.action", "{action:?}");
        // Newer Istio's serviceAccounts is not known to rustmesh: refused, never dropped.
        let sa = refused(&doc(
            "v1",
            "  rules:\n  - from:\n    - source:\n        serviceAccounts: [foo/bar]\n",
        ));
        assert_eq!(
            sa[0].0, "spec.rules[0].from[0].source.serviceAccounts",
            "{sa:?}"
        );
        let v = refused(&doc("v1alpha1", "  {}\n"));
        assert_eq!(v[0].0, "apiVersion");
        assert!(v[0].1.contains("security.istio.io/v1 or /v1beta1"), "{v:?}");
    }

    #[test]
    fn provider_goes_with_custom_only_and_custom_and_deny_need_rules() {
        let e = refused(&doc(
            "v1",
            "  action: DENY\n  provider: {name: ext}\n  rules: [{}]\n",
        ));
        assert_eq!(fields(&e), ["spec.provider"]);
        assert!(e[0].1.contains("non CUSTOM action, found DENY"), "{e:?}");
        // ALLOW is the default action: a provider there is refused too.
        let e = refused(&doc("v1", "  provider: {name: ext}\n  rules: [{}]\n"));
        assert!(e[0].1.contains("found ALLOW"), "{e:?}");
        let e = refused(&doc("v1", "  action: CUSTOM\n  rules: [{}]\n"));
        assert_eq!(fields(&e), ["spec.provider"]);
        let e = refused(&doc(
            "v1",
            "  action: CUSTOM\n  provider: {name: \"\"}\n  rules: [{}]\n",
        ));
        assert_eq!(fields(&e), ["spec.provider.name"]);
        for action in ["CUSTOM", "DENY"] {
            let e = refused(&doc(
                "v1",
                &format!("  action: {action}\n  provider: {{name: ext}}\n"),
            ));
            let e: Vec<_> = e.into_iter().filter(|(f, _)| f == "spec.rules").collect();
            assert_eq!(e.len(), 1, "{action}");
            assert!(e[0].1.contains("without `rules` is meaningless"), "{e:?}");
        }
        // CUSTOM takes no identities, as in Istio.
        let e = refused(&doc(
            "v1",
            r#"  action: CUSTOM
  provider: {name: ext}
  rules:
  - from:
    - source: {namespaces: [a], ipBlocks: [10.0.0.0/8]}
    when:
    - {key: "request.auth.claims[iss]", values: [x]}
    - {key: "request.headers[x-a]", values: [b]}
"#,
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.rules[0].from[0].source.namespaces",
                "spec.rules[0].when[0].key"
            ]
        );
        assert!(e[0].1.contains("not supported with CUSTOM"), "{e:?}");
        // A valid CUSTOM policy reads, with its finding as a warning.
        let p = one(&doc(
            "v1",
            "  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules:\n  - to:\n    - operation: {paths: [\"/admin/*\"]}\n",
        ));
        let w = p.spec.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "spec.provider");
        assert!(
            w[0].message
                .starts_with("CUSTOM action is not supported: requests it matches are denied")
                && w[0].message.contains("my-ext-authz"),
            "{w:?}"
        );
    }

    #[test]
    fn from_and_to_entries_must_say_something() {
        let e = refused(&doc(
            "v1",
            "  rules:\n  - from: []\n    to: []\n  - from: [{}]\n    to: [{}]\n  - from: [{source: {}}]\n    to: [{operation: {}}]\n",
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.rules[0].from",
                "spec.rules[0].to",
                "spec.rules[1].from[0].source",
                "spec.rules[1].to[0].operation",
                "spec.rules[2].from[0].source",
                "spec.rules[2].to[0].operation",
            ]
        );
        assert!(e[4].1.contains("at least one field"), "{e:?}");
    }

    #[test]
    fn values_are_checked_naming_each() {
        let e = refused(&doc(
            "v1",
            r#"  rules:
  - from:
    - source:
        principals: [""]
        ipBlocks: ["10.0.0.0/8", "10.0.0.1", "2001:db8::/32", "10.0.0.0/33", "10.0.0.300", "x/8", "10.0.0.0/"]
        notRemoteIpBlocks: [""]
    to:
    - operation:
        ports: ["8080", "0", "65535", "65536", "http", "+80", "-1"]
        notHosts: [""]
"#,
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.rules[0].from[0].source.principals[0]",
                "spec.rules[0].from[0].source.ipBlocks[3]",
                "spec.rules[0].from[0].source.ipBlocks[4]",
                "spec.rules[0].from[0].source.ipBlocks[5]",
                "spec.rules[0].from[0].source.ipBlocks[6]",
                "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
                "spec.rules[0].to[0].operation.notHosts[0]",
                "spec.rules[0].to[0].operation.ports[3]",
                "spec.rules[0].to[0].operation.ports[4]",
                "spec.rules[0].to[0].operation.ports[5]",
                "spec.rules[0].to[0].operation.ports[6]",
            ]
        );
        assert_eq!(e[0].1, "empty value not allowed");
        assert!(e[1].1.contains("bad CIDR range (10.0.0.0/33)"), "{e:?}");
        assert!(e[2].1.contains("bad IP address (10.0.0.300)"), "{e:?}");
        assert!(e[7].1.contains("bad port (65536)"), "{e:?}");
        assert_eq!(port_number("0"), Some(0));
        assert_eq!(port_number("08080"), Some(8080));
    }

    #[test]
    fn paths_take_star_and_templates_only_as_istio_documents_them() {
        for ok in [
            "*",
            "/info*",
            "*.png",
            "/data",
            "/foo/{*}",
            "/foo/{**}/",
            "/foo/{*}/bar/{**}",
            "/{**}",
            "/foo/{**}/bar",
            "/package.service/method",
        ] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("/a*b", "`*` is only supported"),
            ("*a*", "`*` is only supported"),
            ("**", "`*` is only supported"),
            ("/*/baz/{*}", "invalid string literal"),
            ("/**/baz/{*}", "invalid string literal"),
            ("/{**}/foobar/{*}", "{**} is not the last operator"),
            ("/{**}/{**}", "{**} is not the last operator"),
            ("/foo/{*}.txt", "beyond a supported path template"),
            ("/foo/{x}", "beyond a supported path template"),
            ("/a//{*}", "invalid string literal"),
        ] {
            let problem = path_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.contains(why), "{bad}: {problem}");
        }
        let e = refused(&doc(
            "v1",
            "  rules:\n  - to:\n    - operation:\n        paths: [\"/ok\", \"/a*b\"]\n        notPaths: [\"/{**}/{*}\"]\n",
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.rules[0].to[0].operation.paths[1]",
                "spec.rules[0].to[0].operation.notPaths[0]"
            ]
        );
    }

    #[test]
    fn when_keys_are_istios_and_values_fit_them() {
        for key in [
            "request.headers[x-token]",
            "source.ip",
            "remote.ip",
            "source.namespace",
            "source.principal",
            "request.auth.principal",
            "request.auth.audiences",
            "request.auth.presenter",
            "request.auth.claims[iss]",
            "request.auth.claims[nested][key]",
            "destination.ip",
            "destination.port",
            "connection.sni",
        ] {
            assert!(condition_key(key).is_ok(), "{key}");
        }
        assert_eq!(
            condition_key("request.auth.claims[a][b]"),
            Ok(ConditionKey::RequestClaim(vec!["a".into(), "b".into()]))
        );
        for (key, why) in [
            (
                "experimental.envoy.filters.network.mysql_proxy[db.table]",
                "not supported by rustmesh",
            ),
            (
                "request.experimental.inline.headers[x]",
                "not supported by rustmesh",
            ),
            ("source.serviceAccount", "not supported by rustmesh"),
            ("request.headers", "should have the format"),
            ("request.headers[]", "should have the format"),
            ("request.headers[a][b]", "should have the format"),
            ("request.headersx[a]", "should have the format"),
            ("request.auth.claims[a]x", "should have the format"),
            ("destination.labels[app]", "workload selector"),
            ("destination.namespace", "metadata.namespace"),
            ("destination.user", "v1alpha1"),
            ("source.ips", "unknown attribute"),
        ] {
            let e = condition_key(key).expect_err(key);
            assert!(e.contains(why), "{key}: {e}");
        }
        let e = refused(&doc(
            "v1",
            r#"  rules:
  - when:
    - {key: "", values: [a]}
    - {key: source.ip}
    - {key: "experimental.envoy.filters.a[b]", values: [c]}
    - {key: source.ip, values: ["10.0.0.0/8", "nope"], notValues: [""]}
    - {key: destination.port, notValues: ["99999"]}
    - {key: "request.headers[x-a]", values: ["*"]}
"#,
        ));
        assert_eq!(
            fields(&e),
            [
                "spec.rules[0].when[0].key",
                "spec.rules[0].when[1]",
                "spec.rules[0].when[2].key",
                "spec.rules[0].when[3].values[1]",
                "spec.rules[0].when[3].notValues[0]",
                "spec.rules[0].when[4].notValues[0]",
            ]
        );
        assert!(e[1].1.contains("at least one of `values` or `notValues`"));
        assert!(e[2].1.contains("experimental.envoy.filters"), "{e:?}");
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
    fn dry_run_is_allow_or_deny_only_and_a_boolean() {
        let with = |value: &str, spec: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\n  annotations: {{\"istio.io/dry-run\": \"{value}\"}}\nspec:\n{spec}"
            )
        };
        let deny = "  action: DENY\n  rules:\n  - to: [{operation: {ports: [\"8080\"]}}]\n";
        for (value, dry) in [
            ("true", true),
            ("True", true),
            ("1", true),
            ("false", false),
        ] {
            let p = one(&with(value, deny));
            assert_eq!(p.dry_run(), dry, "{value}");
            let w = p.warnings();
            assert_eq!(
                w.iter()
                    .any(|w| w.field == "metadata.annotations.istio.io/dry-run"),
                dry,
                "{w:?}"
            );
        }
        let p = one(&with("true", "  rules: [{}]\n"));
        assert!(p.dry_run(), "ALLOW is the default action");
        assert!(
            p.warnings()[0].message.contains("rendered as AUDIT"),
            "{:?}",
            p.warnings()
        );
        let e = refused(&with("yes", deny));
        assert_eq!(fields(&e), ["metadata.annotations.istio.io/dry-run"]);
        assert!(e[0].1.contains("invalid value (yes)"), "{e:?}");
        let e = refused(&with("true", "  action: AUDIT\n  rules: [{}]\n"));
        assert_eq!(fields(&e), ["metadata.annotations.istio.io/dry-run"]);
        assert!(e[0].1.contains("not supported for action AUDIT"), "{e:?}");
        // Without the annotation: no dry run.
        assert!(!one(&doc("v1", deny)).dry_run());
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
        let p = one(&doc("v1", "  selector: {}\n  rules: [{}]\n"));
        assert_eq!(p.spec.workload_labels(), None);
        let w = p.spec.warnings();
        assert_eq!(w[0].field, "spec.selector.matchLabels");
        // A DENY rule of HTTP attributes only denies every TCP connection: Istio warns.
        let p = one(&doc(
            "v1",
            r#"  action: DENY
  rules:
  - to: [{operation: {methods: [POST]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
  - from: [{source: {namespaces: [dev]}}]
  - to: [{operation: {methods: [POST], ports: ["8080"]}}]
"#,
        ));
        let fields: Vec<String> = p.spec.warnings().into_iter().map(|w| w.field).collect();
        assert_eq!(fields, ["spec.rules[0]", "spec.rules[1]"]);
    }
}
