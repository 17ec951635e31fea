//! The rules of one action, indexed ([`Stage`]), so a request is checked against the few rules
//! that can match it rather than all of them.
//!
//! Rules are numbered in configuration order (policy, then rule). Each rule is filed under one
//! attribute whose value it requires to be one of a known set of exact values, when it has
//! one: the path, a `when` header, the principal, the host, the namespace, the method or the
//! destination port (in that order of preference, the most selective first). A rule requires
//! a value when every one of its `to` operations (or `from` sources) has a field of that
//! attribute with exact values only, or one of its `when` conditions does; the rule is then
//! filed under each of those values. Rules without such an attribute (prefixes, templates,
//! CIDR blocks, negations only, `{}`) stay in one list that is always checked.
//!
//! A request looks its own value up in each attribute's map; the lists found and the
//! always-checked list are sorted by rule number, so the first matching rule (the one a
//! straight scan of the configuration would find) is the smallest number that matches in any
//! list, found by scanning each list only below the best match so far. No allocation per
//! request; a host with upper-case letters is lowercased once.

use std::collections::HashMap;

use http::HeaderName;

use super::attrs::Attributes;
use super::decision::RuleRef;
use super::rule::{Fields, Rule, StrAttr, Test};

/// The compiled rules of one action (CUSTOM, AUDIT, DENY or ALLOW) for one mode, and whether
/// any policy of that action applies (an ALLOW policy whose rules cannot match still denies
/// what it does not allow).
#[derive(Debug, Default)]
pub struct Stage {
    /// Some policy of this action applies.
    pub present: bool,
    rules: Vec<Rule>,
    refs: Vec<RuleRef>,
    index: Index,
}

type Lists = HashMap<Box<[u8]>, Vec<u32>>;

#[derive(Debug, Default)]
struct Index {
    always: Vec<u32>,
    path: Lists,
    header: Vec<(HeaderName, Lists)>,
    principal: Lists,
    host: Lists,
    namespace: Lists,
    method: Lists,
    port: HashMap<u16, Vec<u32>>,
}

/// The exact values a rule requires of one attribute.
enum Required {
    Path(Vec<Box<[u8]>>),
    Header(HeaderName, Vec<Box<[u8]>>),
    Principal(Vec<Box<[u8]>>),
    Host(Vec<Box<[u8]>>),
    Namespace(Vec<Box<[u8]>>),
    Method(Vec<Box<[u8]>>),
    Port(Vec<u16>),
}

/// The exact values of a test of the attribute `want` picks, if all its values are exact.
fn exact_values(test: &Test, want: &impl Fn(&Test) -> bool) -> Option<Vec<Box<[u8]>>> {
    if !want(test) {
        return None;
    }
    let values: Option<Vec<Box<[u8]>>> = match test {
        Test::Str(_, ms) | Test::Host(ms) => ms.iter().map(|m| m.exact().map(Box::from)).collect(),
        Test::Path(ms) => ms.iter().map(|m| m.exact().map(Box::from)).collect(),
        _ => None,
    };
    values.filter(|v| !v.is_empty())
}

/// The values some positive field of `fields` requires.
fn required_by<K>(fields: &Fields, pick: &impl Fn(&Test) -> Option<Vec<K>>) -> Option<Vec<K>> {
    fields
        .0
        .iter()
        .filter(|f| !f.negate)
        .find_map(|f| pick(&f.test))
}

/// The values every alternative requires (their union), if each requires some.
fn required_by_all<K>(alts: &[Fields], pick: &impl Fn(&Test) -> Option<Vec<K>>) -> Option<Vec<K>> {
    if alts.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for alt in alts {
        all.extend(required_by(alt, pick)?);
    }
    Some(all)
}

fn required(rule: &Rule) -> Option<Required> {
    let strs = |want: fn(&Test) -> bool| move |t: &Test| exact_values(t, &want);
    let path = strs(|t| matches!(t, Test::Path(_)));
    if let Some(v) = required_by_all(&rule.to, &path) {
        return Some(Required::Path(v));
    }
    for f in rule.when.0.iter().filter(|f| !f.negate) {
        if let Test::Str(StrAttr::Header(name), _) = &f.test
            && let Some(v) = exact_values(&f.test, &|_| true)
        {
            return Some(Required::Header(name.clone(), v));
        }
    }
    let principal = strs(|t| matches!(t, Test::Str(StrAttr::Principal, _)));
    if let Some(v) =
        required_by_all(&rule.from, &principal).or_else(|| required_by(&rule.when, &principal))
    {
        return Some(Required::Principal(v));
    }
    let host = strs(|t| matches!(t, Test::Host(_)));
    if let Some(v) = required_by_all(&rule.to, &host) {
        return Some(Required::Host(v));
    }
    let namespace = strs(|t| matches!(t, Test::Str(StrAttr::Namespace, _)));
    if let Some(v) =
        required_by_all(&rule.from, &namespace).or_else(|| required_by(&rule.when, &namespace))
    {
        return Some(Required::Namespace(v));
    }
    let method = strs(|t| matches!(t, Test::Str(StrAttr::Method, _)));
    if let Some(v) = required_by_all(&rule.to, &method) {
        return Some(Required::Method(v));
    }
    let port = |t: &Test| match t {
        Test::Port(p) if !p.is_empty() => Some(p.clone()),
        _ => None,
    };
    required_by_all(&rule.to, &port)
        .or_else(|| required_by(&rule.when, &port))
        .map(Required::Port)
}

fn file<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u32>>, keys: Vec<K>, n: u32) {
    for k in keys {
        let list = map.entry(k).or_default();
        // Rules are filed in order, so a repeated key only ever repeats the last entry.
        if list.last() != Some(&n) {
            list.push(n);
        }
    }
}

impl Stage {
    /// Adds a rule (in configuration order).
    pub fn push(&mut self, rule: Rule, at: RuleRef) {
        let n = u32::try_from(self.rules.len()).expect("fewer than 2^32 rules");
        let ix = &mut self.index;
        match required(&rule) {
            Some(Required::Path(k)) => file(&mut ix.path, k, n),
            Some(Required::Header(name, k)) => {
                let pos = match ix.header.iter().position(|(h, _)| *h == name) {
                    Some(p) => p,
                    None => {
                        ix.header.push((name, HashMap::new()));
                        ix.header.len() - 1
                    }
                };
                file(&mut ix.header[pos].1, k, n);
            }
            Some(Required::Principal(k)) => file(&mut ix.principal, k, n),
            Some(Required::Host(k)) => file(&mut ix.host, k, n),
            Some(Required::Namespace(k)) => file(&mut ix.namespace, k, n),
            Some(Required::Method(k)) => file(&mut ix.method, k, n),
            Some(Required::Port(k)) => file(&mut ix.port, k, n),
            None => ix.always.push(n),
        }
        self.rules.push(rule);
        self.refs.push(at);
    }

    /// How many rules are compiled.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule is compiled.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules are checked for every request (not filed under an attribute).
    pub fn unindexed(&self) -> usize {
        self.index.always.len()
    }

    /// The first rule, in configuration order, that matches.
    pub fn first_match(&self, a: &Attributes<'_>) -> Option<RuleRef> {
        let mut best = u32::MAX;
        let rules = &self.rules;
        let mut scan = |list: &[u32]| {
            for &n in list {
                if n >= best {
                    break;
                }
                if rules[n as usize].matches(a) {
                    best = n;
                    break;
                }
            }
        };
        let ix = &self.index;
        scan(&ix.always);
        if let Some(r) = a.http {
            if let Some(l) = ix.path.get(r.path.as_bytes()) {
                scan(l);
            }
            for (name, lists) in &ix.header {
                if let Some(v) = r.header(name)
                    && let Some(l) = lists.get(&*v)
                {
                    scan(l);
                }
            }
            if !ix.host.is_empty() {
                let host = r.host.as_bytes();
                let found = if host.iter().any(u8::is_ascii_uppercase) {
                    ix.host.get(&host.to_ascii_lowercase()[..])
                } else {
                    ix.host.get(host)
                };
                if let Some(l) = found {
                    scan(l);
                }
            }
            if let Some(l) = ix.method.get(r.method.as_bytes()) {
                scan(l);
            }
        }
        let c = a.conn;
        if let Some(l) = c
            .principal
            .as_ref()
            .and_then(|p| ix.principal.get(p.as_bytes()))
        {
            scan(l);
        }
        if let Some(l) = c
            .namespace
            .as_ref()
            .and_then(|n| ix.namespace.get(n.as_bytes()))
        {
            scan(l);
        }
        if let Some(l) = c.destination_port().and_then(|p| ix.port.get(&p)) {
            scan(l);
        }
        (best != u32::MAX).then(|| self.refs[best as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rule::Mode;
    use rustmesh_xds::authz::{AuthzAction, AuthzRule};

    fn stage(rules: serde_json::Value) -> Stage {
        let rules: Vec<AuthzRule> = serde_json::from_value(rules).unwrap();
        let mut s = Stage::default();
        for (i, r) in rules.iter().enumerate() {
            let c = Rule::compile(r, AuthzAction::Allow, Mode::Http)
                .unwrap()
                .unwrap();
            s.push(
                c,
                RuleRef {
                    policy: 0,
                    rule: i as u32,
                },
            );
        }
        s
    }

    #[test]
    fn rules_are_filed_under_their_most_selective_exact_attribute() {
        let s = stage(serde_json::json!([
            {"to": [{"methods": ["GET"], "paths": ["/a", "/b"]}]},
            {"to": [{"methods": ["GET"], "paths": ["/a*"]}]},
            {"to": [{"paths": ["/c"]}, {"paths": ["/d"], "hosts": ["x"]}]},
            {"to": [{"paths": ["/c"]}, {"hosts": ["x"]}]},
            {"from": [{"principals": ["cluster.local/ns/a/sa/b"]}], "to": [{"ports": [80]}]},
            {"when": [{"key": "request.headers[x-user]", "values": ["alice"]}]},
            {"when": [{"key": "request.headers[x-user]", "notValues": ["alice"]}]},
            {"to": [{"ports": [80, 81]}]},
            {},
            {"from": [{"ipBlocks": ["10.0.0.0/8"]}]},
            {"when": [{"key": "destination.port", "values": ["80"]}]},
        ]));
        let ix = &s.index;
        assert_eq!(ix.path.get(&b"/a"[..]).unwrap(), &[0]);
        assert_eq!(ix.path.get(&b"/b"[..]).unwrap(), &[0]);
        assert_eq!(ix.path.get(&b"/c"[..]).unwrap(), &[2]);
        assert_eq!(ix.path.get(&b"/d"[..]).unwrap(), &[2]);
        assert_eq!(ix.method.get(&b"GET"[..]).unwrap(), &[1]);
        assert_eq!(
            ix.principal.get(&b"cluster.local/ns/a/sa/b"[..]).unwrap(),
            &[4]
        );
        assert_eq!(ix.header[0].1.get(&b"alice"[..]).unwrap(), &[5]);
        assert_eq!(ix.port.get(&80).unwrap(), &[7, 10]);
        assert_eq!(ix.port.get(&81).unwrap(), &[7]);
        assert_eq!(
            ix.always,
            [3, 6, 8, 9],
            "no exact value every alternative requires"
        );
        assert_eq!(s.unindexed(), 4);
    }
}
