//! The value matchers a compiled policy is made of: Istio's string forms ([`StrMatch`]: exact,
//! prefix `abc*`, suffix `*abc`, presence `*`), path templates ([`Template`]: `{*}` one
//! segment, `{**}` any number of segments, as Envoy's URI template matcher), and address
//! blocks ([`cidr`]).
//!
//! A leaf: nothing else in the crate is used here. Matching works on bytes (header values need
//! not be text) and never allocates.

use std::net::IpAddr;

use ipnet::IpNet;

/// One of Istio's string forms, read from a policy value
/// (<https://istio.io/latest/docs/reference/config/security/authorization-policy/#Rule>).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrMatch {
    /// `abc`: the value is `abc`.
    Exact(Box<[u8]>),
    /// `abc*`: the value starts with `abc`.
    Prefix(Box<[u8]>),
    /// `*abc`: the value ends with `abc`.
    Suffix(Box<[u8]>),
    /// `*`: the value is present and not empty.
    Presence,
}

impl StrMatch {
    /// Reads a value as Istio does: `*` alone is presence, a leading `*` a suffix match, else a
    /// trailing `*` a prefix match, else an exact match. With `lower`, the text is lowercased
    /// (hosts: compared without case).
    pub fn parse(value: &str, lower: bool) -> Self {
        let text = |s: &str| -> Box<[u8]> {
            if lower {
                s.to_ascii_lowercase().into_bytes().into()
            } else {
                s.as_bytes().into()
            }
        };
        if value == "*" {
            StrMatch::Presence
        } else if let Some(rest) = value.strip_prefix('*') {
            StrMatch::Suffix(text(rest))
        } else if let Some(rest) = value.strip_suffix('*') {
            StrMatch::Prefix(text(rest))
        } else {
            StrMatch::Exact(text(value))
        }
    }

    /// Whether `value` matches, byte for byte.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StrMatch::Exact(e) => value == &e[..],
            StrMatch::Prefix(p) => value.starts_with(p),
            StrMatch::Suffix(s) => value.ends_with(s),
            StrMatch::Presence => !value.is_empty(),
        }
    }

    /// Whether `value` matches without ASCII case (the matcher was parsed with `lower`).
    pub fn matches_ignore_case(&self, value: &[u8]) -> bool {
        match self {
            StrMatch::Exact(e) => value.eq_ignore_ascii_case(e),
            StrMatch::Prefix(p) => {
                value.len() >= p.len() && value[..p.len()].eq_ignore_ascii_case(p)
            }
            StrMatch::Suffix(s) => {
                value.len() >= s.len() && value[value.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            StrMatch::Presence => !value.is_empty(),
        }
    }

    /// The value an exact matcher wants (what the index keys rules by).
    pub fn exact(&self) -> Option<&[u8]> {
        match self {
            StrMatch::Exact(e) => Some(e),
            _ => None,
        }
    }
}

/// A `paths` value: one of the string forms, or a template when it holds `{*}` or `{**}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// Exact, prefix, suffix or presence.
    Str(StrMatch),
    /// `/api/{*}/items/{**}`.
    Template(Template),
}

impl PathMatch {
    /// Reads a `paths` value; `Err` says why a template is refused.
    pub fn parse(value: &str) -> Result<Self, String> {
        if Template::is_template(value) {
            Template::parse(value).map(PathMatch::Template)
        } else {
            Ok(PathMatch::Str(StrMatch::parse(value, false)))
        }
    }

    /// Whether `path` (without its query) matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Str(s) => s.matches(path),
            PathMatch::Template(t) => t.matches(path),
        }
    }

    /// The path an exact matcher wants.
    pub fn exact(&self) -> Option<&[u8]> {
        match self {
            PathMatch::Str(s) => s.exact(),
            PathMatch::Template(_) => None,
        }
    }
}

/// A piece of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    /// Text that must be there as written.
    Literal(Box<[u8]>),
    /// `{*}`: one or more path characters, not `/` (one segment).
    One,
    /// `{**}`: zero or more path characters or `/` (any number of segments).
    Many,
}

/// A path template (Envoy's `UriTemplateMatchConfig`, as Istio renders `{*}`/`{**}` paths):
/// `{*}` matches one segment, `{**}` zero or more characters across segments (it must be the
/// last operator); other segments match as written. The characters an operator takes are RFC
/// 3986's path characters, as Envoy's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// RFC 3986 `pchar` without `/` (percent-escapes count as their `%` and hex digits), the
/// characters Envoy lets a template operator and a template literal hold.
pub fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

impl Template {
    /// Whether Istio reads `value` as a template.
    pub fn is_template(value: &str) -> bool {
        value.contains("{*}") || value.contains("{**}")
    }

    /// Compiles a template, refusing what Istio refuses: an operator that is not a whole
    /// segment, `{` or `}` elsewhere, an operator after `{**}`, a literal segment that is empty
    /// or holds other than path characters.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        // Slashes around the segments are text; between them, each segment is checked (as
        // Istio splits the path with its outer slashes trimmed).
        let body = value.trim_matches('/');
        let lead = &value[..value.len() - value.trim_start_matches('/').len()];
        let trail = if body.is_empty() {
            ""
        } else {
            &value[value.trim_end_matches('/').len()..]
        };
        let mut literal = lead.to_string();
        let mut many_seen = false;
        for (i, segment) in body.split('/').enumerate() {
            if i > 0 {
                literal.push('/');
            }
            match segment {
                "{*}" | "{**}" if many_seen => {
                    return Err(format!(
                        "invalid path template {value:?}: {{**}} must be the last operator"
                    ));
                }
                "{*}" | "{**}" => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(
                            std::mem::take(&mut literal).into_bytes().into(),
                        ));
                    }
                    if segment == "{**}" {
                        many_seen = true;
                        pieces.push(Piece::Many);
                    } else {
                        pieces.push(Piece::One);
                    }
                }
                s if s.contains(['{', '}']) => {
                    return Err(format!(
                        "invalid path template {value:?}: {{*}} and {{**}} must be whole \
                         segments and '{{' or '}}' may appear nowhere else"
                    ));
                }
                s if !s.is_empty() && s.bytes().all(is_path_char) => literal.push_str(s),
                s => {
                    return Err(format!(
                        "invalid path template {value:?}: segment {s:?} is not a non-empty \
                         run of path characters"
                    ));
                }
            }
        }
        literal.push_str(trail);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.into_bytes().into()));
        }
        Ok(Template { pieces })
    }

    /// Whether `path` matches the whole template.
    pub fn matches(&self, path: &[u8]) -> bool {
        match_pieces(&self.pieces, path)
    }
}

fn match_pieces(pieces: &[Piece], input: &[u8]) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return input.is_empty();
    };
    match first {
        Piece::Literal(l) => input.starts_with(l) && match_pieces(rest, &input[l.len()..]),
        Piece::One => {
            // The longest run of segment characters first; what follows an operator starts
            // with `/` or ends the path, so the first try is normally the only one.
            let run = input.iter().take_while(|&&b| is_path_char(b)).count();
            (1..=run).rev().any(|k| match_pieces(rest, &input[k..]))
        }
        Piece::Many => {
            let run = input
                .iter()
                .take_while(|&&b| b == b'/' || is_path_char(b))
                .count();
            (0..=run).rev().any(|k| match_pieces(rest, &input[k..]))
        }
    }
}

/// Reads an address or CIDR block as Istio's `ipBlocks` take them (`203.0.113.4`,
/// `203.0.113.0/24`, IPv6 likewise); `Err` says why not. The address is read as Go's parser
/// (and the operator's validation) reads it: no leading zeros in IPv4 (`09.0.0.0` is refused,
/// never taken for `9.0.0.0`), a prefix length of decimal digits only.
pub fn cidr(value: &str) -> Result<IpNet, String> {
    match value.split_once('/') {
        Some((addr, len)) => {
            let bad = || format!("bad CIDR range {value:?}");
            let addr = addr.parse::<IpAddr>().map_err(|_| bad())?;
            if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let len = len.parse::<u8>().map_err(|_| bad())?;
            IpNet::new(addr, len).map_err(|_| bad())
        }
        None => value
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("bad IP address {value:?}")),
    }
}

/// Whether `ip` (IPv4-mapped IPv6 taken as IPv4) is in `block`.
pub fn in_block(block: &IpNet, ip: IpAddr) -> bool {
    block.contains(&ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_forms() {
        let m = |p: &str, v: &str| StrMatch::parse(p, false).matches(v.as_bytes());
        assert!(m("abc", "abc") && !m("abc", "abcd") && !m("abc", "ab"));
        // "Prefix match: "abc*" will match on value "abc" and "abcd"."
        assert!(m("abc*", "abc") && m("abc*", "abcd") && !m("abc*", "xabc"));
        // "Suffix match: "*abc" will match on value "abc" and "xabc"."
        assert!(m("*abc", "abc") && m("*abc", "xabc") && !m("*abc", "abcd"));
        // "Presence match: "*" will match when value is not empty."
        assert!(m("*", "x") && !m("*", ""));
        // A `*` inside is literal, as Istio reads it.
        assert!(m("/a*b", "/a*b") && !m("/a*b", "/axb"));
        assert_eq!(
            StrMatch::parse("*a*", false),
            StrMatch::Suffix(b"a*"[..].into())
        );
    }

    #[test]
    fn hosts_without_case() {
        let m = |p: &str, v: &str| StrMatch::parse(p, true).matches_ignore_case(v.as_bytes());
        assert!(m("Httpbin.Foo", "httpbin.foo") && m("httpbin.foo", "HTTPBIN.FOO"));
        assert!(m("*.Example.com", "api.EXAMPLE.com") && !m("*.example.com", "example.org"));
        assert!(m("API.*", "api.example.com"));
        assert!(
            !m("httpbin.foo", "httpbin.foo:8000"),
            "the port is part of the host"
        );
    }

    #[test]
    fn templates_as_envoy_reads_them() {
        let t = |p: &str| Template::parse(p).unwrap();
        let one = t("/api/{*}/items");
        assert!(one.matches(b"/api/v1/items"));
        assert!(!one.matches(b"/api/v1/v2/items"), "{{*}} is one segment");
        assert!(!one.matches(b"/api//items"), "{{*}} is not empty");
        let many = t("/api/{**}");
        assert!(many.matches(b"/api/v1") && many.matches(b"/api/v1/v2/v3"));
        assert!(many.matches(b"/api/"), "{{**}} may be empty");
        assert!(!many.matches(b"/api") && !many.matches(b"/apix/v1"));
        let tail = t("/{**}/edit");
        assert!(tail.matches(b"/a/b/edit") && tail.matches(b"//edit"));
        assert!(!tail.matches(b"/a/b/view"));
        let mixed = t("/{*}/orders/{**}");
        assert!(mixed.matches(b"/users/orders/1/2") && !mixed.matches(b"/a/b/orders/1"));
        // Operators take path characters only.
        assert!(!one.matches(b"/api/a?b/items") && !one.matches(b"/api/a b/items"));
        assert!(t("/x/{*}").matches(b"/x/%41~!$&'()+,;:@=-._"));
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "/api/{**}/{*}",
            "/api/{**}/{**}",
            "/api/a{*}",
            "/api/{*}b",
            "/api/{id}/{*}",
            "/api//{*}",
            "/api/a*/{*}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
            assert!(PathMatch::parse(bad).is_err(), "{bad}");
        }
        assert!(
            PathMatch::parse("/api/{id}").is_ok(),
            "no operator: a literal path"
        );
    }

    #[test]
    fn addresses_and_blocks() {
        let b = cidr("10.0.0.0/8").unwrap();
        assert!(in_block(&b, "10.1.2.3".parse().unwrap()));
        assert!(in_block(&b, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!in_block(&b, "11.0.0.1".parse().unwrap()));
        let one = cidr("203.0.113.4").unwrap();
        assert!(in_block(&one, "203.0.113.4".parse().unwrap()));
        assert!(!in_block(&one, "203.0.113.5".parse().unwrap()));
        assert!(in_block(
            &cidr("fd00::/8").unwrap(),
            "fd00::1".parse().unwrap()
        ));
        assert!(cidr("10.0.0.0/33").is_err() && cidr("10.0.0").is_err() && cidr("x/8").is_err());
        // Found by the authz_match fuzz target: leading zeros and signs are refused, as Go's
        // parser and the operator refuse them, never read another way.
        for bad in [
            "09.0.0.0/8",
            "00.0.0.0/0",
            "010.0.0.1",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0.0/0008",
        ] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(cidr("0.0.0.0/0").unwrap().prefix_len(), 0);
    }
}
