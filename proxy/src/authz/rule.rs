//! One policy rule, compiled ([`Rule::compile`]) for HTTP or for TCP ([`Mode`]) and evaluated
//! ([`Rule::matches`]).
//!
//! A rule is `from` alternatives (each a source: [`Fields`] that all hold), `to` alternatives (each
//! an operation: fields all hold) and `when` conditions (all hold). Every set field of the
//! configuration becomes a [`Field`]: a [`Test`] of one attribute against the field's values
//! (any value matching), negated for the `not*` twins and `notValues`. An attribute that is
//! absent (no peer identity, no JWT, a header not sent) matches no value, so its negation
//! holds.
//!
//! For TCP ([`Mode::Tcp`]) the HTTP-only fields are left out of a DENY, AUDIT or CUSTOM rule
//! (it denies more, never less) and an ALLOW rule that has any is not compiled at all (it never
//! matches): Istio's generation of its network RBAC filter.

use http::HeaderName;
use ipnet::IpNet;
use rustmesh_xds::authz::{AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource};

use super::attrs::Attributes;
use super::matcher::{PathMatch, StrMatch, cidr, in_block};

/// Which filter chain a rule is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HTTP chains: every field.
    Http,
    /// TCP chains: no HTTP-only field.
    Tcp,
}

/// The attribute a string test reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrAttr {
    /// The peer's principal.
    Principal,
    /// The peer's namespace.
    Namespace,
    /// `connection.sni`.
    Sni,
    /// `:method`.
    Method,
    /// A request header.
    Header(HeaderName),
    /// The JWT's `<iss>/<sub>`.
    RequestPrincipal,
    /// Any of the JWT's audiences.
    Audience,
    /// The JWT's `azp`.
    Presenter,
    /// Any string value of a JWT claim (nested names).
    Claim(Vec<String>),
    /// A header no request can carry (`request.headers[<not a header name>]`): never present.
    Absent,
}

/// The address a block test reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpAttr {
    /// `source.ip`, `ipBlocks`.
    Source,
    /// `remote.ip`, `remoteIpBlocks` (the source, in a sidecar).
    Remote,
    /// `destination.ip`.
    Destination,
}

/// One attribute against a list of values: holds when any value matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    /// A string attribute.
    Str(StrAttr, Vec<StrMatch>),
    /// The host, without case.
    Host(Vec<StrMatch>),
    /// The path.
    Path(Vec<PathMatch>),
    /// An address.
    Ip(IpAttr, Vec<IpNet>),
    /// The destination port.
    Port(Vec<u16>),
}

/// A test, negated or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// What is tested.
    pub test: Test,
    /// `not*` fields and `notValues`: holds when the test does not.
    pub negate: bool,
}

/// Fields that must all hold: one `from` source or one `to` operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<Field>);

/// A compiled rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `from` alternatives; empty: any source.
    pub from: Vec<Fields>,
    /// `to` alternatives; empty: any operation.
    pub to: Vec<Fields>,
    /// `when`, all holding.
    pub when: Fields,
}

fn any_str(ms: &[StrMatch], v: &[u8]) -> bool {
    ms.iter().any(|m| m.matches(v))
}

impl Test {
    /// Whether the attribute is there and some value matches it.
    pub fn holds(&self, a: &Attributes<'_>) -> bool {
        let c = a.conn;
        match self {
            Test::Str(attr, ms) => match attr {
                StrAttr::Principal => c
                    .principal
                    .as_ref()
                    .is_some_and(|p| any_str(ms, p.as_bytes())),
                StrAttr::Namespace => c
                    .namespace
                    .as_ref()
                    .is_some_and(|n| any_str(ms, n.as_bytes())),
                StrAttr::Sni => c.sni.as_ref().is_some_and(|s| any_str(ms, s.as_bytes())),
                StrAttr::Method => a.http.is_some_and(|r| any_str(ms, r.method.as_bytes())),
                StrAttr::Header(name) => a
                    .http
                    .and_then(|r| r.header(name).map(|v| any_str(ms, &v)))
                    .unwrap_or(false),
                StrAttr::RequestPrincipal => a
                    .http
                    .and_then(|r| r.auth)
                    .is_some_and(|j| any_str(ms, j.principal.as_bytes())),
                StrAttr::Audience => a
                    .http
                    .and_then(|r| r.auth)
                    .is_some_and(|j| j.audiences.iter().any(|aud| any_str(ms, aud.as_bytes()))),
                StrAttr::Presenter => a
                    .http
                    .and_then(|r| r.auth)
                    .and_then(|j| j.presenter.as_ref())
                    .is_some_and(|p| any_str(ms, p.as_bytes())),
                StrAttr::Claim(names) => a.http.and_then(|r| r.auth).is_some_and(|j| {
                    j.claim(names)
                        .into_iter()
                        .any(|v| any_str(ms, v.as_bytes()))
                }),
                StrAttr::Absent => false,
            },
            Test::Host(ms) => a
                .http
                .is_some_and(|r| ms.iter().any(|m| m.matches_ignore_case(r.host.as_bytes()))),
            Test::Path(ms) => a
                .http
                .is_some_and(|r| ms.iter().any(|m| m.matches(r.path.as_bytes()))),
            Test::Ip(which, blocks) => {
                let ip = match which {
                    IpAttr::Source => c.source_ip(),
                    IpAttr::Remote => c.remote_ip(),
                    IpAttr::Destination => c.destination_ip(),
                };
                ip.is_some_and(|ip| blocks.iter().any(|b| in_block(b, ip)))
            }
            Test::Port(ports) => c.destination_port().is_some_and(|p| ports.contains(&p)),
        }
    }
}

impl Fields {
    /// Whether every field holds.
    pub fn hold(&self, a: &Attributes<'_>) -> bool {
        self.0.iter().all(|f| f.test.holds(a) != f.negate)
    }
}

impl Rule {
    /// Whether the rule matches: some source (or none given), some operation (or none given),
    /// every condition.
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.hold(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.hold(a)))
            && self.when.hold(a)
    }
}

/// Why a rule does not compile: the field (relative to the rule) and the reason.
pub type FieldError = (String, String);

/// Whether an xds rule uses a field that only HTTP has (`hosts`, `methods`, `paths`,
/// `requestPrincipals`, their `not*` twins, `request.*` conditions).
pub fn uses_http_only(rule: &AuthzRule) -> bool {
    rule.from
        .iter()
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
        || rule.to.iter().any(|o| {
            !o.hosts.is_empty()
                || !o.not_hosts.is_empty()
                || !o.methods.is_empty()
                || !o.not_methods.is_empty()
                || !o.paths.is_empty()
                || !o.not_paths.is_empty()
        })
        || rule.when.iter().any(|c| is_http_only_key(&c.key))
}

/// Whether a `when` key reads the HTTP request (`request.headers[...]`, `request.auth.*`).
pub fn is_http_only_key(key: &str) -> bool {
    key.starts_with("request.")
}

impl Rule {
    /// Compiles `rule` of a policy with `action` for `mode`. `Ok(None)`: the rule never
    /// matches in this mode (an ALLOW rule with HTTP-only fields on TCP).
    pub fn compile(
        rule: &AuthzRule,
        action: AuthzAction,
        mode: Mode,
    ) -> Result<Option<Rule>, FieldError> {
        let tcp = mode == Mode::Tcp;
        if tcp && action == AuthzAction::Allow && uses_http_only(rule) {
            return Ok(None);
        }
        let mut out = Rule::default();
        for (i, s) in rule.from.iter().enumerate() {
            out.from
                .push(source(s, tcp).map_err(|(f, m)| (format!("from[{i}].{f}"), m))?);
        }
        for (i, o) in rule.to.iter().enumerate() {
            out.to
                .push(operation(o, tcp).map_err(|(f, m)| (format!("to[{i}].{f}"), m))?);
        }
        for (i, c) in rule.when.iter().enumerate() {
            if tcp && is_http_only_key(&c.key) {
                continue;
            }
            condition(c, &mut out.when.0).map_err(|(f, m)| (format!("when[{i}].{f}"), m))?;
        }
        Ok(Some(out))
    }
}

/// Adds the positive and negative fields of `values`/`not_values` read by `read`.
fn pair<T>(
    out: &mut Vec<Field>,
    names: (&str, &str),
    values: (&[String], &[String]),
    read: impl Fn(&str) -> Result<T, String>,
    make: impl Fn(Vec<T>) -> Test,
) -> Result<(), FieldError> {
    for (name, list, negate) in [(names.0, values.0, false), (names.1, values.1, true)] {
        if list.is_empty() {
            continue;
        }
        let parsed = list
            .iter()
            .enumerate()
            .map(|(i, v)| read(v).map_err(|m| (format!("{name}[{i}]"), m)))
            .collect::<Result<Vec<T>, _>>()?;
        out.push(Field {
            test: make(parsed),
            negate,
        });
    }
    Ok(())
}

fn strs(v: &str) -> Result<StrMatch, String> {
    Ok(StrMatch::parse(v, false))
}

fn source(s: &AuthzSource, tcp: bool) -> Result<Fields, FieldError> {
    let mut f = Vec::new();
    let principal = |m| Test::Str(StrAttr::Principal, m);
    pair(
        &mut f,
        ("principals", "notPrincipals"),
        (&s.principals, &s.not_principals),
        strs,
        principal,
    )?;
    if !tcp {
        pair(
            &mut f,
            ("requestPrincipals", "notRequestPrincipals"),
            (&s.request_principals, &s.not_request_principals),
            strs,
            |m| Test::Str(StrAttr::RequestPrincipal, m),
        )?;
    }
    pair(
        &mut f,
        ("namespaces", "notNamespaces"),
        (&s.namespaces, &s.not_namespaces),
        strs,
        |m| Test::Str(StrAttr::Namespace, m),
    )?;
    pair(
        &mut f,
        ("ipBlocks", "notIpBlocks"),
        (&s.ip_blocks, &s.not_ip_blocks),
        cidr,
        |b| Test::Ip(IpAttr::Source, b),
    )?;
    pair(
        &mut f,
        ("remoteIpBlocks", "notRemoteIpBlocks"),
        (&s.remote_ip_blocks, &s.not_remote_ip_blocks),
        cidr,
        |b| Test::Ip(IpAttr::Remote, b),
    )?;
    Ok(Fields(f))
}

fn operation(o: &AuthzOperation, tcp: bool) -> Result<Fields, FieldError> {
    let mut f = Vec::new();
    if !tcp {
        pair(
            &mut f,
            ("hosts", "notHosts"),
            (&o.hosts, &o.not_hosts),
            |v| Ok(StrMatch::parse(v, true)),
            Test::Host,
        )?;
    }
    for (list, negate) in [(&o.ports, false), (&o.not_ports, true)] {
        if !list.is_empty() {
            f.push(Field {
                test: Test::Port(list.clone()),
                negate,
            });
        }
    }
    if !tcp {
        pair(
            &mut f,
            ("methods", "notMethods"),
            (&o.methods, &o.not_methods),
            strs,
            |m| Test::Str(StrAttr::Method, m),
        )?;
        pair(
            &mut f,
            ("paths", "notPaths"),
            (&o.paths, &o.not_paths),
            PathMatch::parse,
            Test::Path,
        )?;
    }
    Ok(Fields(f))
}

/// A `when` key, read: what attribute it tests and how its values are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A string attribute.
    Str(StrAttr),
    /// An address attribute (values are addresses or CIDR blocks).
    Ip(IpAttr),
    /// `destination.port` (values are ports).
    Port,
}

/// Reads a `when` key as Istio names its attributes; `Err` says why it is refused.
pub fn read_key(key: &str) -> Result<Key, String> {
    /// `[a][b]...`: the names, none empty.
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
    if let Some(rest) = key.strip_prefix("request.headers") {
        return match bracketed(rest).as_deref() {
            // A name no header can have is never present (as Envoy's header matcher).
            Some([name]) => Ok(Key::Str(
                HeaderName::from_bytes(name.as_bytes()).map_or(StrAttr::Absent, StrAttr::Header),
            )),
            _ => Err(format!(
                "{key}: should have the format request.headers[<name>]"
            )),
        };
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return bracketed(rest)
            .map(|n| Key::Str(StrAttr::Claim(n)))
            .ok_or_else(|| format!("{key}: should have the format request.auth.claims[<name>]"));
    }
    Ok(match key {
        "source.ip" => Key::Ip(IpAttr::Source),
        "remote.ip" => Key::Ip(IpAttr::Remote),
        "destination.ip" => Key::Ip(IpAttr::Destination),
        "destination.port" => Key::Port,
        "source.namespace" => Key::Str(StrAttr::Namespace),
        "source.principal" => Key::Str(StrAttr::Principal),
        "connection.sni" => Key::Str(StrAttr::Sni),
        "request.auth.principal" => Key::Str(StrAttr::RequestPrincipal),
        "request.auth.audiences" => Key::Str(StrAttr::Audience),
        "request.auth.presenter" => Key::Str(StrAttr::Presenter),
        _ => {
            return Err(format!(
                "unknown attribute {key:?} (the sidecar evaluates request.headers[<name>], \
                 source.ip, remote.ip, source.namespace, source.principal, \
                 request.auth.principal, request.auth.audiences, request.auth.presenter, \
                 request.auth.claims[<name>], destination.ip, destination.port, connection.sni)"
            ));
        }
    })
}

/// Reads a port as a policy writes it (`"8080"`).
pub fn read_port(v: &str) -> Result<u16, String> {
    if !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_digit())
        && let Ok(p) = v.parse::<u16>()
    {
        return Ok(p);
    }
    Err(format!("bad port {v:?}"))
}

fn condition(c: &AuthzCondition, out: &mut Vec<Field>) -> Result<(), FieldError> {
    let key = read_key(&c.key).map_err(|m| ("key".to_string(), m))?;
    let values = (&c.values[..], &c.not_values[..]);
    let names = ("values", "notValues");
    match key {
        Key::Str(attr) => pair(out, names, values, strs, |m| Test::Str(attr.clone(), m)),
        Key::Ip(which) => pair(out, names, values, cidr, |b| Test::Ip(which, b)),
        Key::Port => pair(out, names, values, read_port, Test::Port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_istio_names_them() {
        assert_eq!(
            read_key("request.headers[X-Token]").unwrap(),
            Key::Str(StrAttr::Header(HeaderName::from_static("x-token")))
        );
        assert_eq!(
            read_key("request.auth.claims[groups][0]").unwrap(),
            Key::Str(StrAttr::Claim(vec!["groups".into(), "0".into()]))
        );
        assert_eq!(read_key("destination.port").unwrap(), Key::Port);
        assert_eq!(
            read_key("request.headers[bad name]").unwrap(),
            Key::Str(StrAttr::Absent)
        );
        for bad in [
            "request.headers",
            "request.headers[]",
            "request.headers[a][b]",
            "request.auth.claims",
            "source.serviceAccount",
            "experimental.envoy.filters.network.mysql_proxy[db.table]",
            "",
        ] {
            assert!(read_key(bad).is_err(), "{bad}");
        }
        assert_eq!(read_port("8080"), Ok(8080));
        assert!(read_port("65536").is_err() && read_port("-1").is_err() && read_port("").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let rule: AuthzRule = serde_json::from_value(serde_json::json!({
            "from": [{"ipBlocks": ["10.0.0.0/8"]}, {"notIpBlocks": ["1.2.3.4", "nope"]}]
        }))
        .unwrap();
        let (field, message) = Rule::compile(&rule, AuthzAction::Allow, Mode::Http).unwrap_err();
        assert_eq!(field, "from[1].notIpBlocks[1]");
        assert!(message.contains("nope"), "{message}");
        let rule: AuthzRule = serde_json::from_value(serde_json::json!({
            "to": [{"paths": ["/a/{**}/{*}"]}]
        }))
        .unwrap();
        assert_eq!(
            Rule::compile(&rule, AuthzAction::Deny, Mode::Http)
                .unwrap_err()
                .0,
            "to[0].paths[0]"
        );
        let rule: AuthzRule = serde_json::from_value(serde_json::json!({
            "when": [{"key": "source.ip", "values": ["10.0.0.1"]}, {"key": "request.size", "values": ["1"]}]
        }))
        .unwrap();
        assert_eq!(
            Rule::compile(&rule, AuthzAction::Deny, Mode::Http)
                .unwrap_err()
                .0,
            "when[1].key"
        );
        let rule: AuthzRule = serde_json::from_value(serde_json::json!({
            "when": [{"key": "destination.port", "notValues": ["80", "http"]}]
        }))
        .unwrap();
        assert_eq!(
            Rule::compile(&rule, AuthzAction::Deny, Mode::Http)
                .unwrap_err()
                .0,
            "when[0].notValues[1]"
        );
    }

    #[test]
    fn tcp_leaves_http_fields_out() {
        let rule: AuthzRule = serde_json::from_value(serde_json::json!({
            "from": [{"requestPrincipals": ["*"], "namespaces": ["foo"]}],
            "to": [{"methods": ["GET"], "ports": [80]}],
            "when": [{"key": "request.headers[x]", "values": ["1"]}, {"key": "source.ip", "values": ["10.0.0.0/8"]}]
        }))
        .unwrap();
        assert!(uses_http_only(&rule));
        assert_eq!(
            Rule::compile(&rule, AuthzAction::Allow, Mode::Tcp).unwrap(),
            None
        );
        let deny = Rule::compile(&rule, AuthzAction::Deny, Mode::Tcp)
            .unwrap()
            .unwrap();
        assert_eq!(deny.from[0].0.len(), 1, "namespaces only");
        assert_eq!(deny.to[0].0.len(), 1, "ports only");
        assert_eq!(deny.when.0.len(), 1, "source.ip only");
        let http = Rule::compile(&rule, AuthzAction::Allow, Mode::Http)
            .unwrap()
            .unwrap();
        assert_eq!(
            (http.from[0].0.len(), http.to[0].0.len(), http.when.0.len()),
            (2, 2, 2)
        );
    }
}
