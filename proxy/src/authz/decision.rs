//! What a decision says ([`Decision`]): allowed or not, which action's policies and which rule
//! decided ([`RuleRef`], named as Envoy names it by [`policy_id`]), the AUDIT rule that
//! matched, and what Envoy's RBAC filters would count ([`Tally`]).
//!
//! A leaf: nothing else in the crate is used here.

use rustmesh_xds::authz::AuthzAction;

/// A rule of the configuration: the policy's index in `authorization.policies` and the rule's
/// in its `rules`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Index of the policy in the document's list.
    pub policy: u32,
    /// Index of the rule in the policy.
    pub rule: u32,
}

/// What Envoy's RBAC filters would count for one decision: each filter that ran counts
/// `allowed` or `denied` (CUSTOM, DENY and ALLOW policies each have theirs), the AUDIT filter
/// `logged` or `not_logged`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Filters that let the request through.
    pub allowed: u8,
    /// Filters that denied it (at most one: the first stops the request).
    pub denied: u8,
    /// The AUDIT filter matched.
    pub logged: u8,
    /// The AUDIT filter did not match.
    pub not_logged: u8,
}

/// The outcome of evaluating a request or connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether it may proceed.
    pub allowed: bool,
    /// The action whose policies decided: the CUSTOM or DENY that denied, the ALLOW that
    /// allowed or (no rule matching) denied; `None` when nothing but AUDIT applies or no
    /// ALLOW policy applies and nothing denied.
    pub by: Option<AuthzAction>,
    /// The rule that decided (`None` with `by` ALLOW and a denial: no ALLOW rule matched).
    pub rule: Option<RuleRef>,
    /// The first AUDIT rule that matched.
    pub audit: Option<RuleRef>,
    /// What the RBAC filters count.
    pub tally: Tally,
}

/// Envoy's name of a policy rule, as Istio generates it: `ns[<ns>]-policy[<name>]-rule[<i>]`,
/// from the configuration's `<namespace>/<name>`.
pub fn policy_id(name: &str, rule: u32) -> String {
    let (ns, name) = name.split_once('/').unwrap_or(("", name));
    format!("ns[{ns}]-policy[{name}]-rule[{rule}]")
}
