//! `x authz check`: the AuthorizationPolicy objects a sidecar enforces, as `istioctl
//! experimental authz check` prints them.
//!
//! istioctl reads the RBAC filters of a pod's listeners; rustmesh's sidecar receives the policies
//! themselves (`rustmesh_xds::authz`) for its whole scope and applies those whose selector its
//! labels carry, so this view does the same selection with the pod's labels (read from the API
//! for a pod; `--labels` for `--admin-url`/`--file`; without labels every policy of the scope is
//! listed, and the output says so).
//!
//! Rules (istioctl's `authz/listener.go`):
//! - columns `ACTION AuthorizationPolicy RULES`, padding 3;
//! - DENY rows first, then ALLOW, then AUDIT (Envoy's `LOG`), each sorted by name; the name is
//!   `<name>.<namespace>`, RULES the policy's number of rules;
//! - a policy without rules generates no RBAC rule in Istio: when every policy of an action has
//!   none, istioctl shows one `_anonymous_match_nothing_` row with 1 rule (an ALLOW policy
//!   without rules denies everything); otherwise such policies are not listed.
//! - CUSTOM policies (which rustmesh enforces by denying what they match, see the proxy's README)
//!   are listed first with action `CUSTOM`.

use crate::table::Table;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::authz::{AuthzAction, AuthzPolicy};
use std::collections::BTreeMap;

/// Padding of istioctl's authz table.
pub const AUTHZ_PADDING: usize = 3;
/// The row istioctl shows for an action whose policies have no rules.
pub const ANONYMOUS: &str = "_anonymous_match_nothing_";

/// `ns/name` (the proxy model's) as istioctl names it: `name.ns`.
fn display_name(policy: &AuthzPolicy) -> String {
    match policy.name.split_once('/') {
        Some((ns, name)) => format!("{name}.{ns}"),
        None => policy.name.clone(),
    }
}

/// The policies that apply to a pod with `labels` (all of the scope's when `None`).
pub fn select<'a>(
    config: &'a ProxyConfig,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<&'a AuthzPolicy> {
    let Some(authz) = &config.authorization else {
        return Vec::new();
    };
    authz
        .policies
        .iter()
        .filter(|p| labels.is_none_or(|l| p.selects(l)))
        .collect()
}

/// The table; `labels: None` adds a first line saying every policy of the scope is listed.
pub fn render(config: &ProxyConfig, labels: Option<&BTreeMap<String, String>>) -> String {
    let policies = select(config, labels);
    let mut table = Table::new(AUTHZ_PADDING, &["ACTION", "AuthorizationPolicy", "RULES"]);
    for (action, shown) in [
        (AuthzAction::Custom, "CUSTOM"),
        (AuthzAction::Deny, "DENY"),
        (AuthzAction::Allow, "ALLOW"),
        (AuthzAction::Audit, "LOG"),
    ] {
        let of_action: Vec<_> = policies.iter().filter(|p| p.action == action).collect();
        if of_action.is_empty() {
            continue;
        }
        let mut rows: Vec<(String, usize)> = of_action
            .iter()
            .filter(|p| !p.rules.is_empty())
            .map(|p| (display_name(p), p.rules.len()))
            .collect();
        if rows.is_empty() {
            rows.push((ANONYMOUS.to_string(), 1));
        }
        rows.sort();
        for (name, rules) in rows {
            table.row(vec![shown.to_string(), name, rules.to_string()]);
        }
    }
    let note = if labels.is_none() {
        "# the pod's labels are unknown (give --labels): every policy of the configuration's scope\n"
    } else {
        ""
    };
    format!("{note}{}", table.render())
}

/// `--labels app=x,version=v1`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("label {pair:?} has no key"));
            }
            Ok((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::authz::{Authorization, AuthzRule};

    fn policy(
        name: &str,
        action: AuthzAction,
        rules: usize,
        selector: &[(&str, &str)],
    ) -> AuthzPolicy {
        AuthzPolicy {
            name: name.to_string(),
            action,
            rules: vec![AuthzRule::default(); rules],
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn config(policies: Vec<AuthzPolicy>) -> ProxyConfig {
        ProxyConfig {
            authorization: Some(Authorization { policies }),
            ..ProxyConfig::default()
        }
    }

    #[test]
    fn rows_as_istioctl_prints_them() {
        let c = config(vec![
            policy("foo/viewer", AuthzAction::Allow, 2, &[("app", "ratings")]),
            policy("istio-system/mesh-deny", AuthzAction::Deny, 1, &[]),
            policy("foo/allow-nothing", AuthzAction::Allow, 0, &[]),
            policy("foo/audit", AuthzAction::Audit, 1, &[]),
            policy("foo/other", AuthzAction::Allow, 1, &[("app", "web")]),
        ]);
        let ratings = parse_labels("app=ratings,version=v1").unwrap();
        let text = render(&c, Some(&ratings));
        assert_eq!(
            text,
            "ACTION   AuthorizationPolicy      RULES\n\
             DENY     mesh-deny.istio-system   1\n\
             ALLOW    viewer.foo               2\n\
             LOG      audit.foo                1\n"
        );
    }

    #[test]
    fn allow_nothing_alone_is_the_anonymous_row_and_unknown_labels_are_said() {
        let c = config(vec![policy(
            "foo/allow-nothing",
            AuthzAction::Allow,
            0,
            &[],
        )]);
        let text = render(&c, None);
        assert!(text.starts_with("# the pod's labels are unknown"), "{text}");
        assert!(
            text.ends_with("ALLOW    _anonymous_match_nothing_   1\n"),
            "{text}"
        );
        // No policy: the header only.
        assert_eq!(
            render(&ProxyConfig::default(), Some(&BTreeMap::new())),
            "ACTION   AuthorizationPolicy   RULES\n"
        );
    }

    #[test]
    fn labels_parse_or_say_what_is_wrong() {
        assert_eq!(parse_labels("").unwrap(), BTreeMap::new());
        assert!(parse_labels("app").unwrap_err().contains("key=value"));
        assert!(parse_labels("=x").unwrap_err().contains("no key"));
    }
}
