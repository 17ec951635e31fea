//! Route matching, per request: the virtual host by `Host`/`:authority` (exact, suffix and prefix
//! wildcards, `*`), then the first of its routes whose path, header and query conditions all
//! hold on a [`RequestView`]. Comes after [`compile`](super::compile) (once per snapshot); the
//! matched route's decisions are in [`actions`](super::actions).

use super::{
    CompiledRoute, CompiledVirtualHost, HeaderCondition, PathMatch, QueryCondition, RequestView,
    RouteMatch, RouteTable, StringMatch,
};

impl StringMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        fn cased(v: &str, ic: bool) -> std::borrow::Cow<'_, str> {
            if ic {
                std::borrow::Cow::Owned(v.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(v)
            }
        }
        match self {
            StringMatch::Exact(s, ic) => cased(value, *ic) == s.as_str(),
            StringMatch::Prefix(s, ic) => cased(value, *ic).starts_with(s.as_str()),
            StringMatch::Suffix(s, ic) => cased(value, *ic).ends_with(s.as_str()),
            StringMatch::Contains(s, ic) => cased(value, *ic).contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

impl RouteTable {
    /// The virtual host for `host` (the `Host`/`:authority` value as sent, port included).
    pub fn select_vhost(&self, host: &str) -> Option<&CompiledVirtualHost> {
        // Hosts almost always arrive in lower case: copy only the ones that do not.
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(i) = self.exact.get(host) {
            return Some(&self.vhosts[*i]);
        }
        for (suffix, i) in &self.suffixes {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        for (prefix, i) in &self.prefixes {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        self.default.map(|i| &self.vhosts[i])
    }

    /// The first route of the selected virtual host that matches `req`.
    pub fn find(&self, req: &RequestView<'_>) -> Option<RouteMatch<'_>> {
        let vhost = self.select_vhost(req.authority)?;
        vhost
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(req))
            .map(|(index, route)| RouteMatch {
                vhost,
                route,
                index,
            })
    }
}

/// All values of a header joined with `,` (Envoy's rule for matching repeated headers).
fn header_value(req: &RequestView<'_>, name: &str) -> Option<String> {
    match name {
        ":method" => return Some(req.method.as_str().to_string()),
        ":authority" | "host" => return Some(req.authority.to_string()),
        ":scheme" => return Some(req.scheme.to_string()),
        ":path" => {
            return Some(match req.query {
                Some(q) => format!("{}?{q}", req.path),
                None => req.path.to_string(),
            });
        }
        _ => {}
    }
    let mut values = req.headers.get_all(name).iter().peekable();
    values.peek()?;
    let joined = values
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    Some(joined)
}

/// The first value of query parameter `name` (raw, not percent-decoded, as Envoy matches it).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

impl HeaderCondition {
    /// Whether the request satisfies this condition. A missing header never matches a string
    /// matcher; `invertMatch` then negates (so Istio's `withoutHeaders` matches requests lacking
    /// the header).
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = header_value(req, &self.name);
        let result = match (&self.string_match, value) {
            (None, v) => v.is_some() == self.present,
            (Some(_), None) => false,
            (Some(m), Some(v)) => m.matches(&v),
        };
        result != self.invert
    }
}

impl QueryCondition {
    /// Whether the request satisfies this condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = query_param(req.query, &self.name);
        match (&self.string_match, value) {
            (None, v) => v.is_some() == self.present,
            (Some(_), None) => false,
            (Some(m), Some(v)) => m.matches(v),
        }
    }
}

impl CompiledRoute {
    /// Whether every condition of the route holds for `req`.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.enabled {
            return false;
        }
        let path_ok = match &self.path {
            PathMatch::Prefix(p) if self.case_sensitive => req.path.starts_with(p.as_str()),
            PathMatch::Prefix(p) => req
                .path
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            PathMatch::Exact(p) if self.case_sensitive => req.path == p,
            PathMatch::Exact(p) => req.path.eq_ignore_ascii_case(p),
            PathMatch::Regex(r) => r.is_match(req.path),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(req))
            && self.query.iter().all(|q| q.matches(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::testing::{table, vh};

    #[test]
    fn vhost_selection_order_is_envoys() {
        let t = table(vec![
            vh("any", &["*"]),
            vh("suffix-short", &["*.com"]),
            vh("suffix-long", &["*.foo.com"]),
            vh("prefix", &["foo.*"]),
            vh("exact", &["www.foo.com", "reviews", "reviews:9080"]),
        ]);
        let sel = |h: &str| t.select_vhost(h).map(|v| v.name.as_str());
        assert_eq!(sel("www.foo.com"), Some("exact"));
        assert_eq!(sel("WWW.Foo.COM"), Some("exact"));
        assert_eq!(sel("api.foo.com"), Some("suffix-long"));
        assert_eq!(sel("bar.com"), Some("suffix-short"));
        assert_eq!(sel("foo.bar"), Some("prefix"));
        assert_eq!(sel("reviews"), Some("exact"));
        assert_eq!(sel("reviews:9080"), Some("exact"));
        assert_eq!(sel("reviews:9081"), Some("any"));
        // A wildcard never matches the empty string.
        assert_eq!(sel(".foo.com"), Some("suffix-short"));
        assert_eq!(sel("foo."), Some("any"));
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&b=2&a=3"), "a"), Some("1"));
        assert_eq!(query_param(Some("flag&b=2"), "flag"), Some(""));
        assert_eq!(query_param(Some("ab=1"), "a"), None);
        assert_eq!(query_param(None, "a"), None);
    }
}
