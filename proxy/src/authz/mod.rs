//! Authorization: Istio's `AuthorizationPolicy`, enforced on inbound traffic as Envoy's RBAC
//! filters enforce what Istio generates (the semantics are written down once, in
//! [`rustmesh_xds::authz`]).
//!
//! [`Authz::compile`] takes a configuration's [`Authorization`] and this pod's labels, once per
//! configuration (the snapshot holds the result), and compiles the policies that apply into two
//! engines: one for HTTP chains, evaluated per request with the request's attributes, and one
//! for TCP chains, evaluated per connection with Istio's TCP semantics (HTTP-only fields never
//! match in ALLOW rules and are left out of DENY, AUDIT and CUSTOM rules). A value that does
//! not compile (a bad CIDR, a bad path template, an unknown `when` key) refuses the whole
//! configuration, naming the policy and the field, so the previous one keeps serving.
//!
//! [`Authz::evaluate`] decides in Istio's order: CUSTOM (rustmesh has no external authorizer,
//! so what a CUSTOM policy matches is denied), AUDIT (logged, never deciding), DENY, ALLOW. The
//! [`Decision`] names the deciding rule (Envoy's `ns[<ns>]-policy[<name>]-rule[<i>]`) and
//! tallies what Envoy's RBAC filters would count (`allowed`, `denied`, `logged`,
//! `not_logged`).
//!
//! Files, from the leaves: [`matcher`] (string forms, path templates, CIDR blocks), [`attrs`]
//! (what a decision reads), [`decision`] (what it says), [`rule`] (a rule compiled and matched), [`index`] (the rules of an
//! action, indexed by the exact values they require), [`mod@reference`] (a plain evaluator the
//! tests and the fuzz target hold the engine to), [`normalize`] (Istio's default path
//! normalization, applied before the path is read).

pub mod attrs;
pub mod decision;
pub mod index;
pub mod matcher;
pub mod normalize;
pub mod reference;
pub mod rule;

use std::collections::BTreeMap;
use std::sync::Arc;

use rustmesh_xds::authz::{Authorization, AuthzAction};

pub use attrs::{Attributes, Connection, Request, RequestAuth};
pub use decision::{Decision, RuleRef, Tally, policy_id};
use index::Stage;
use rule::{Mode, Rule};

/// The engine of one mode: one stage per action.
#[derive(Debug, Default)]
struct Engine {
    custom: Stage,
    audit: Stage,
    deny: Stage,
    allow: Stage,
}

impl Engine {
    fn stage(&mut self, action: AuthzAction) -> &mut Stage {
        match action {
            AuthzAction::Custom => &mut self.custom,
            AuthzAction::Audit => &mut self.audit,
            AuthzAction::Deny => &mut self.deny,
            AuthzAction::Allow => &mut self.allow,
        }
    }

    fn evaluate(&self, a: &Attributes<'_>) -> Decision {
        let mut d = Decision {
            allowed: true,
            by: None,
            rule: None,
            audit: None,
            tally: Tally::default(),
        };
        let deny = |mut d: Decision, by, rule| {
            d.allowed = false;
            d.by = Some(by);
            d.rule = rule;
            d.tally.denied += 1;
            d
        };
        if self.custom.present {
            match self.custom.first_match(a) {
                Some(r) => return deny(d, AuthzAction::Custom, Some(r)),
                None => d.tally.allowed += 1,
            }
        }
        if self.audit.present {
            d.audit = self.audit.first_match(a);
            match d.audit {
                Some(_) => d.tally.logged += 1,
                None => d.tally.not_logged += 1,
            }
        }
        if self.deny.present {
            match self.deny.first_match(a) {
                Some(r) => return deny(d, AuthzAction::Deny, Some(r)),
                None => d.tally.allowed += 1,
            }
        }
        if self.allow.present {
            match self.allow.first_match(a) {
                Some(r) => {
                    d.by = Some(AuthzAction::Allow);
                    d.rule = Some(r);
                    d.tally.allowed += 1;
                }
                None => return deny(d, AuthzAction::Allow, None),
            }
        }
        d
    }
}

/// The policies that apply to this pod, compiled; `None` from [`Authz::compile`] when none
/// does (nothing is checked, as Istio generates no RBAC filter then).
#[derive(Debug)]
pub struct Authz {
    http: Engine,
    tcp: Engine,
    /// Every policy's `<namespace>/<name>`, by its index in the document.
    names: Vec<String>,
}

/// Why an authorization does not compile: the field (from the configuration's root) and the
/// reason, naming the policy.
pub type CompileError = (String, String);

impl Authz {
    /// Compiles the policies of `auth` that select a pod with `labels`; `Ok(None)` when none
    /// does.
    pub fn compile(
        auth: &Authorization,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Arc<Authz>>, CompileError> {
        let mut out = Authz {
            http: Engine::default(),
            tcp: Engine::default(),
            names: auth.policies.iter().map(|p| p.name.clone()).collect(),
        };
        let mut any = false;
        for (pi, policy) in auth.policies.iter().enumerate() {
            if !policy.selects(labels) {
                continue;
            }
            any = true;
            let policy_index = u32::try_from(pi).expect("fewer than 2^32 policies");
            for (mode, engine) in [(Mode::Http, &mut out.http), (Mode::Tcp, &mut out.tcp)] {
                let stage = engine.stage(policy.action);
                stage.present = true;
                for (ri, rule) in policy.rules.iter().enumerate() {
                    let compiled = Rule::compile(rule, policy.action, mode).map_err(|(f, m)| {
                        (
                            format!("authorization.policies[{pi}].rules[{ri}].{f}"),
                            format!("AuthorizationPolicy {:?}: {m}", policy.name),
                        )
                    })?;
                    if let Some(c) = compiled {
                        let at = RuleRef {
                            policy: policy_index,
                            rule: u32::try_from(ri).expect("fewer than 2^32 rules"),
                        };
                        stage.push(c, at);
                    }
                }
            }
        }
        Ok(any.then(|| Arc::new(out)))
    }

    /// Decides a request (`a.http` set) or a TCP connection (`a.http` unset).
    pub fn evaluate(&self, a: &Attributes<'_>) -> Decision {
        match a.http {
            Some(_) => self.http.evaluate(a),
            None => self.tcp.evaluate(a),
        }
    }

    /// The `<namespace>/<name>` of the policy a rule belongs to.
    pub fn policy_name(&self, r: RuleRef) -> &str {
        self.names.get(r.policy as usize).map_or("", String::as_str)
    }

    /// Envoy's name of a rule (`ns[foo]-policy[deny-path]-rule[0]`).
    pub fn rule_id(&self, r: RuleRef) -> String {
        policy_id(self.policy_name(r), r.rule)
    }

    /// Envoy's response code details of a denial:
    /// `rbac_access_denied_matched_policy[ns[<ns>]-policy[<name>]-rule[<i>]]`, or
    /// `rbac_access_denied_matched_policy[none]` when no ALLOW rule matched.
    pub fn denial_details(&self, d: &Decision) -> String {
        match d.rule {
            Some(r) => format!("rbac_access_denied_matched_policy[{}]", self.rule_id(r)),
            None => "rbac_access_denied_matched_policy[none]".to_string(),
        }
    }

    /// Rules compiled for HTTP and for TCP, and of those, how many every evaluation checks
    /// (not indexed), for logs.
    pub fn sizes(&self) -> [(usize, usize); 2] {
        let count = |e: &Engine| {
            [&e.custom, &e.audit, &e.deny, &e.allow]
                .iter()
                .fold((0, 0), |(n, u), s| (n + s.len(), u + s.unindexed()))
        };
        [count(&self.http), count(&self.tcp)]
    }
}

#[cfg(test)]
mod tests;
