//! A plain evaluator of an [`Authorization`], straight from the semantics written in
//! [`rustmesh_xds::authz`]: every policy, every rule, every value read from the configuration's
//! strings at each evaluation, path templates through a regular expression, no index. Slow on
//! purpose and kept apart from the compiled engine ([`super::Authz`]), which the unit tests and
//! the `authz_match` fuzz target hold to the same answers.
//!
//! It assumes a configuration that compiles ([`super::Authz::compile`] accepted it); a value
//! that does not parse matches nothing here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rustmesh_xds::authz::{
    Authorization, AuthzAction, AuthzCondition, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
};

use super::attrs::{Attributes, header_value};
use super::decision::{Decision, RuleRef, Tally};

/// Istio's reading of a string value against an attribute (`None`: absent).
fn string_matches(pattern: &str, value: Option<&[u8]>, ignore_case: bool) -> bool {
    let Some(value) = value else {
        return false;
    };
    let (p, v) = if ignore_case {
        (
            pattern.to_ascii_lowercase().into_bytes(),
            value.to_ascii_lowercase(),
        )
    } else {
        (pattern.as_bytes().to_vec(), value.to_vec())
    };
    if p == b"*" {
        !v.is_empty()
    } else if let Some(suffix) = p.strip_prefix(b"*") {
        v.ends_with(suffix)
    } else if let Some(prefix) = p.strip_suffix(b"*") {
        v.starts_with(prefix)
    } else {
        v == p
    }
}

/// A path template as a regular expression, as Envoy turns one into RE2.
fn template_matches(template: &str, path: &[u8]) -> bool {
    const CHARS: &str = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]";
    let mut re = String::from("^");
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{**}") {
            re.push_str(&format!("(?:{CHARS}|/)*"));
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{*}") {
            re.push_str(&format!("{CHARS}+"));
            rest = r;
        } else {
            let c = rest.chars().next().unwrap_or_default();
            re.push_str(&regex::escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    re.push('$');
    regex::bytes::Regex::new(&re).is_ok_and(|r| r.is_match(path))
}

fn path_matches(pattern: &str, path: Option<&str>) -> bool {
    match path {
        None => false,
        Some(p) if pattern.contains("{*}") || pattern.contains("{**}") => {
            template_matches(pattern, p.as_bytes())
        }
        Some(p) => string_matches(pattern, Some(p.as_bytes()), false),
    }
}

fn ip_matches(block: &str, ip: Option<IpAddr>) -> bool {
    let Some(ip) = ip else {
        return false;
    };
    let ip = ip.to_canonical();
    match block.split_once('/') {
        None => block.parse::<IpAddr>().is_ok_and(|b| b == ip),
        Some((addr, len)) => {
            let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u8>()) else {
                return false;
            };
            match (addr, ip) {
                (IpAddr::V4(a), IpAddr::V4(i)) if len <= 32 => {
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    u32::from(a) & mask == u32::from(i) & mask
                }
                (IpAddr::V6(a), IpAddr::V6(i)) if len <= 128 => {
                    let mask = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len)
                    };
                    u128::from(a) & mask == u128::from(i) & mask
                }
                _ => false,
            }
        }
    }
}

/// A field (values and their `not*` twin): the values, if any, must match, and none of the
/// `not*` values may.
fn field(values: &[String], not_values: &[String], one: impl Fn(&str) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| one(v))) && !not_values.iter().any(|v| one(v))
}

fn source_holds(s: &AuthzSource, a: &Attributes<'_>, tcp: bool) -> bool {
    let c = a.conn;
    let principal = c.principal.as_deref().map(str::as_bytes);
    let namespace = c.namespace.as_deref().map(str::as_bytes);
    let auth = a.http.and_then(|r| r.auth);
    let request_principal = auth.map(|j| j.principal.as_bytes());
    field(&s.principals, &s.not_principals, |v| {
        string_matches(v, principal, false)
    }) && (tcp
        || field(&s.request_principals, &s.not_request_principals, |v| {
            string_matches(v, request_principal, false)
        }))
        && field(&s.namespaces, &s.not_namespaces, |v| {
            string_matches(v, namespace, false)
        })
        && field(&s.ip_blocks, &s.not_ip_blocks, |v| {
            ip_matches(v, c.source_ip())
        })
        && field(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |v| {
            ip_matches(v, c.remote_ip())
        })
}

fn operation_holds(o: &AuthzOperation, a: &Attributes<'_>, tcp: bool) -> bool {
    let port = a.conn.destination_port();
    let ports_ok = (o.ports.is_empty() || port.is_some_and(|p| o.ports.contains(&p)))
        && !port.is_some_and(|p| o.not_ports.contains(&p));
    if tcp {
        return ports_ok;
    }
    let host = a.http.map(|r| r.host.as_bytes());
    let method = a.http.map(|r| r.method.as_bytes());
    let path = a.http.map(|r| r.path);
    ports_ok
        && field(&o.hosts, &o.not_hosts, |v| string_matches(v, host, true))
        && field(&o.methods, &o.not_methods, |v| {
            string_matches(v, method, false)
        })
        && field(&o.paths, &o.not_paths, |v| path_matches(v, path))
}

/// The names in `[a][b]` after `prefix`.
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<Vec<&'k str>> {
    let rest = key
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let names: Vec<&str> = rest.split("][").collect();
    names
        .iter()
        .all(|n| !n.is_empty() && !n.contains(['[', ']']))
        .then_some(names)
}

fn condition_holds(c: &AuthzCondition, a: &Attributes<'_>) -> bool {
    let conn = a.conn;
    let auth = a.http.and_then(|r| r.auth);
    // Every value the attribute has (none: absent); `one` says whether a value matches one of
    // them.
    let strings: Option<Vec<Vec<u8>>> = if let Some(names) = bracketed(&c.key, "request.headers") {
        let name = names
            .first()
            .filter(|_| names.len() == 1)
            .copied()
            .unwrap_or("");
        let header = http::HeaderName::from_bytes(name.as_bytes()).ok();
        Some(
            a.http
                .zip(header)
                .and_then(|(r, h)| header_value(r.headers, &h).map(|v| v.into_owned()))
                .into_iter()
                .collect(),
        )
    } else if let Some(names) = bracketed(&c.key, "request.auth.claims") {
        let names: Vec<String> = names.into_iter().map(str::to_string).collect();
        Some(
            auth.map(|j| {
                j.claim(&names)
                    .into_iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default(),
        )
    } else {
        match c.key.as_str() {
            "source.principal" => Some(
                conn.principal
                    .iter()
                    .map(|p| p.clone().into_bytes())
                    .collect(),
            ),
            "source.namespace" => Some(
                conn.namespace
                    .iter()
                    .map(|p| p.clone().into_bytes())
                    .collect(),
            ),
            "connection.sni" => Some(conn.sni.iter().map(|p| p.clone().into_bytes()).collect()),
            "request.auth.principal" => Some(
                auth.iter()
                    .map(|j| j.principal.clone().into_bytes())
                    .collect(),
            ),
            "request.auth.audiences" => Some(
                auth.map(|j| j.audiences.iter().map(|x| x.clone().into_bytes()).collect())
                    .unwrap_or_default(),
            ),
            "request.auth.presenter" => Some(
                auth.and_then(|j| j.presenter.clone())
                    .map(String::into_bytes)
                    .into_iter()
                    .collect(),
            ),
            _ => None,
        }
    };
    let one: Box<dyn Fn(&str) -> bool> = match strings {
        Some(values) => {
            Box::new(move |v: &str| values.iter().any(|x| string_matches(v, Some(x), false)))
        }
        None => match c.key.as_str() {
            "source.ip" => Box::new(|v: &str| ip_matches(v, conn.source_ip())),
            "remote.ip" => Box::new(|v: &str| ip_matches(v, conn.remote_ip())),
            "destination.ip" => Box::new(|v: &str| ip_matches(v, conn.destination_ip())),
            "destination.port" => Box::new(|v: &str| {
                conn.destination_port()
                    .is_some_and(|p| v.parse::<u16>().is_ok_and(|x| x == p))
            }),
            _ => Box::new(|_: &str| false),
        },
    };
    field(&c.values, &c.not_values, one)
}

fn uses_http(rule: &AuthzRule) -> bool {
    let source =
        |s: &AuthzSource| !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
    let op = |o: &AuthzOperation| {
        [
            &o.hosts,
            &o.not_hosts,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ]
        .iter()
        .any(|l| !l.is_empty())
    };
    rule.from.iter().any(source)
        || rule.to.iter().any(op)
        || rule.when.iter().any(|c| c.key.starts_with("request."))
}

/// Whether `rule` of a policy with `action` matches.
pub fn rule_matches(rule: &AuthzRule, action: AuthzAction, a: &Attributes<'_>) -> bool {
    let tcp = a.http.is_none();
    if tcp && action == AuthzAction::Allow && uses_http(rule) {
        return false;
    }
    (rule.from.is_empty() || rule.from.iter().any(|s| source_holds(s, a, tcp)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_holds(o, a, tcp)))
        && rule
            .when
            .iter()
            .filter(|c| !(tcp && c.key.starts_with("request.")))
            .all(|c| condition_holds(c, a))
}

/// The first rule of the `action` policies that matches, and whether any such policy applies.
fn first(
    policies: &[(usize, &AuthzPolicy)],
    action: AuthzAction,
    a: &Attributes<'_>,
) -> (bool, Option<RuleRef>) {
    let mut present = false;
    for (pi, p) in policies.iter().filter(|(_, p)| p.action == action) {
        present = true;
        for (ri, r) in p.rules.iter().enumerate() {
            if rule_matches(r, action, a) {
                return (
                    true,
                    Some(RuleRef {
                        policy: *pi as u32,
                        rule: ri as u32,
                    }),
                );
            }
        }
    }
    (present, None)
}

/// Decides as the compiled engine must: CUSTOM, then AUDIT, DENY, ALLOW.
pub fn evaluate(
    auth: &Authorization,
    labels: &BTreeMap<String, String>,
    a: &Attributes<'_>,
) -> Decision {
    let policies: Vec<(usize, &AuthzPolicy)> = auth
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.selects(labels))
        .collect();
    let mut tally = Tally::default();
    let denied = |by, rule, audit, mut tally: Tally| {
        tally.denied += 1;
        Decision {
            allowed: false,
            by: Some(by),
            rule,
            audit,
            tally,
        }
    };
    let (custom, hit) = first(&policies, AuthzAction::Custom, a);
    if hit.is_some() {
        return denied(AuthzAction::Custom, hit, None, tally);
    }
    if custom {
        tally.allowed += 1;
    }
    let (audit_present, audit) = first(&policies, AuthzAction::Audit, a);
    if audit.is_some() {
        tally.logged += 1;
    } else if audit_present {
        tally.not_logged += 1;
    }
    let (deny, hit) = first(&policies, AuthzAction::Deny, a);
    if hit.is_some() {
        return denied(AuthzAction::Deny, hit, audit, tally);
    }
    if deny {
        tally.allowed += 1;
    }
    let (allow, hit) = first(&policies, AuthzAction::Allow, a);
    if !allow {
        return Decision {
            allowed: true,
            by: None,
            rule: None,
            audit,
            tally,
        };
    }
    if hit.is_none() {
        return denied(AuthzAction::Allow, None, audit, tally);
    }
    tally.allowed += 1;
    Decision {
        allowed: true,
        by: Some(AuthzAction::Allow),
        rule: hit,
        audit,
        tally,
    }
}
