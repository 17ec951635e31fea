//! The route engine: a [`RouteConfiguration`] compiled once per configuration snapshot into a
//! [`RouteTable`] (regexes compiled, `sourceLabels` decided against the pod's own labels, virtual
//! host domains indexed), then matched against each request.
//!
//! Virtual host selection is Envoy's: the lower-cased `Host`/`:authority` (port included, as
//! written by the client) is looked up among exact domains, then suffix wildcards (`*.foo`,
//! longest first), then prefix wildcards (`foo.*`, longest first), then `*`. Istio lists every
//! domain with and without `:port`, so `reviews:9080` and `reviews` both find the same host.
//! Routes inside a virtual host are tried in order; the first whose every condition holds wins.

use crate::http::rng::Rng;
use http::{HeaderMap, Method};
use regex::Regex;
use rustmesh_xds::route::{
    ClusterWeight, FaultPolicy, HashPolicy, HeaderMatcher, HeaderValueOption,
    QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteConfiguration, StringMatcher,
    VirtualHost,
};
use rustmesh_xds::types::Percent;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A route table that could not be compiled. `field` is the path inside the route table, e.g.
/// `virtualHosts[1].routes[0].match.safeRegex.regex`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route table {table:?}: {field}: {message}")]
pub struct RouteError {
    /// Name of the route table.
    pub table: String,
    /// Where in the table.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled string matcher (Envoy's `StringMatcher`).
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Equal (optionally ignoring ASCII case).
    Exact(String, bool),
    /// Starts with.
    Prefix(String, bool),
    /// Ends with.
    Suffix(String, bool),
    /// Contains.
    Contains(String, bool),
    /// The regex matches the whole value.
    Regex(Regex),
}

impl StringMatch {
    fn compile(m: &StringMatcher, field: &str) -> Result<Self, (String, String)> {
        let ic = m.ignore_case;
        let lower = |s: &String| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        if m.kinds() != 1 {
            return Err((
                field.to_string(),
                "exactly one of exact, prefix, suffix, contains, safeRegex is required".into(),
            ));
        }
        Ok(if let Some(s) = &m.exact {
            StringMatch::Exact(lower(s), ic)
        } else if let Some(s) = &m.prefix {
            StringMatch::Prefix(lower(s), ic)
        } else if let Some(s) = &m.suffix {
            StringMatch::Suffix(lower(s), ic)
        } else if let Some(s) = &m.contains {
            StringMatch::Contains(lower(s), ic)
        } else if let Some(r) = &m.safe_regex {
            StringMatch::Regex(full_regex(&r.regex, &format!("{field}.safeRegex.regex"))?)
        } else {
            unreachable!("kinds() == 1")
        })
    }

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

/// Compiles `re` so that it must match a whole value (Envoy's `safe_regex` semantics).
fn full_regex(re: &str, field: &str) -> Result<Regex, (String, String)> {
    if let Some(problem) = rustmesh_xds::route::regex_problem(re) {
        return Err((field.to_string(), problem));
    }
    Regex::new(&format!("^(?:{re})$")).map_err(|e| (field.to_string(), e.to_string()))
}

/// How the path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Starts with (`/` matches everything).
    Prefix(String),
    /// Equals (query string excluded).
    Exact(String),
    /// The regex matches the whole path.
    Regex(Regex),
}

/// A compiled header condition.
#[derive(Debug, Clone)]
pub struct HeaderCondition {
    /// Lower-case name; may be a pseudo-header (`:method`, `:authority`, `:scheme`, `:path`).
    pub name: String,
    /// `None` = presence match.
    pub string_match: Option<StringMatch>,
    /// For presence matches: whether the header must be present.
    pub present: bool,
    /// Negate the result.
    pub invert: bool,
}

/// A compiled query parameter condition.
#[derive(Debug, Clone)]
pub struct QueryCondition {
    /// Parameter name (exact, case-sensitive).
    pub name: String,
    /// `None` = presence match.
    pub string_match: Option<StringMatch>,
    /// For presence matches: whether the parameter must be present.
    pub present: bool,
}

/// Where a route sends traffic.
#[derive(Debug, Clone)]
pub enum ClusterChoice {
    /// Always this cluster.
    Single(String),
    /// At random in proportion to the weights (total > 0).
    Weighted {
        /// The clusters with their weights and their own header changes.
        clusters: Vec<ClusterWeight>,
        /// Sum of the weights.
        total: u64,
    },
}

/// A compiled `regexRewrite`.
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    /// The pattern (matched anywhere in the path, every match replaced, as RE2's GlobalReplace).
    pub pattern: Regex,
    /// Replacement in `regex` crate syntax (`\1` from the config becomes `${1}`).
    pub substitution: String,
}

/// A compiled mirror policy.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    /// Cluster receiving the copies.
    pub cluster: String,
    /// Share mirrored (all when unset).
    pub percentage: Percent,
}

/// A compiled `route` action.
#[derive(Debug, Clone)]
pub struct ForwardAction {
    /// Destination cluster(s).
    pub clusters: ClusterChoice,
    /// Whole-request timeout; `None` for none (`0s`).
    pub timeout: Option<Duration>,
    /// Retry policy, interpreted.
    pub retry: Option<RetrySpec>,
    /// Replaces the matched prefix (the whole path for exact and regex matches).
    pub prefix_rewrite: Option<String>,
    /// Regex path rewrite.
    pub regex_rewrite: Option<RegexRewrite>,
    /// Replaces the authority.
    pub host_rewrite: Option<String>,
    /// Fire-and-forget copies.
    pub mirrors: Vec<MirrorPolicy>,
    /// Consistent-hash keys.
    pub hash_policy: Vec<HashPolicy>,
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward upstream.
    Forward(Box<ForwardAction>),
    /// Answer with a redirect.
    Redirect(RedirectAction),
    /// Answer directly.
    Direct {
        /// HTTP status.
        status: u16,
        /// Body, if any.
        body: Option<String>,
    },
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Route name (`default`, the VirtualService route name), for logs.
    pub name: Option<String>,
    /// `name.namespace` of the VirtualService, for logs.
    pub virtual_service: Option<String>,
    /// False when `sourceLabels` do not match this pod: the route never matches.
    pub enabled: bool,
    /// Path condition.
    pub path: PathMatch,
    /// Case-sensitive path matching (default true).
    pub case_sensitive: bool,
    /// Header conditions.
    pub headers: Vec<HeaderCondition>,
    /// Query parameter conditions.
    pub query: Vec<QueryCondition>,
    /// What to do.
    pub action: Action,
    /// Fault injection.
    pub fault: Option<FaultPolicy>,
    /// Request headers to add/overwrite.
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Request headers to remove.
    pub request_headers_to_remove: Vec<String>,
    /// Response headers to add/overwrite.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Response headers to remove.
    pub response_headers_to_remove: Vec<String>,
}

/// A compiled virtual host.
#[derive(Debug, Clone)]
pub struct CompiledVirtualHost {
    /// `reviews.default.svc.cluster.local:9080`, `allow_any`, `block_all`...
    pub name: String,
    /// Routes in order.
    pub routes: Vec<CompiledRoute>,
    /// Add `x-envoy-attempt-count` upstream.
    pub include_request_attempt_count: bool,
}

/// A route table ready to match requests.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// The route table's name (`9080`, `inbound|9080||`).
    pub name: String,
    vhosts: Vec<CompiledVirtualHost>,
    exact: HashMap<String, usize>,
    /// `(suffix without the '*', vhost)`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `(prefix without the '*', vhost)`, longest first.
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
}

/// The parts of a request routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `Host` / `:authority` as sent.
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query string (without `?`), if any.
    pub query: Option<&'a str>,
    /// Regular headers.
    pub headers: &'a HeaderMap,
}

/// A successful match.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// The virtual host.
    pub vhost: &'a CompiledVirtualHost,
    /// The route.
    pub route: &'a CompiledRoute,
    /// Index of the route in the virtual host.
    pub index: usize,
}

impl RouteTable {
    /// Compiles `rc` for a pod carrying `pod_labels` (routes whose `sourceLabels` the pod lacks
    /// are kept, disabled, so indexes and first-match order stay as configured).
    pub fn compile(
        rc: &RouteConfiguration,
        pod_labels: &BTreeMap<String, String>,
    ) -> Result<Self, RouteError> {
        let err = |(field, message): (String, String)| RouteError {
            table: rc.name.clone(),
            field,
            message,
        };
        let mut table = RouteTable {
            name: rc.name.clone(),
            vhosts: Vec::with_capacity(rc.virtual_hosts.len()),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            default: None,
        };
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let vp = format!("virtualHosts[{i}]");
            table
                .vhosts
                .push(compile_vhost(vh, &vp, pod_labels).map_err(err)?);
            for (j, d) in vh.domains.iter().enumerate() {
                let field = format!("{vp}.domains[{j}]");
                let d = d.to_ascii_lowercase();
                let dup = || {
                    err((
                        field.clone(),
                        format!("domain {d:?} is listed by two virtual hosts"),
                    ))
                };
                if d == "*" {
                    if table.default.is_some() {
                        return Err(dup());
                    }
                    table.default = Some(i);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    if table.suffixes.iter().any(|(s, _)| s == suffix) {
                        return Err(dup());
                    }
                    table.suffixes.push((suffix.to_string(), i));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    if table.prefixes.iter().any(|(s, _)| s == prefix) {
                        return Err(dup());
                    }
                    table.prefixes.push((prefix.to_string(), i));
                } else if d.contains('*') {
                    return Err(err((
                        field,
                        "a wildcard may only be the first or last character".into(),
                    )));
                } else if table.exact.insert(d.clone(), i).is_some() {
                    return Err(dup());
                }
            }
        }
        // Longest first; stable, so equal lengths keep configuration order.
        table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        table.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(table)
    }

    /// The compiled virtual hosts, in configuration order.
    pub fn virtual_hosts(&self) -> &[CompiledVirtualHost] {
        &self.vhosts
    }

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

fn compile_vhost(
    vh: &VirtualHost,
    vp: &str,
    pod_labels: &BTreeMap<String, String>,
) -> Result<CompiledVirtualHost, (String, String)> {
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(j, r)| compile_route(r, &format!("{vp}.routes[{j}]"), pod_labels))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CompiledVirtualHost {
        name: vh.name.clone(),
        routes,
        include_request_attempt_count: vh.include_request_attempt_count,
    })
}

fn compile_header(h: &HeaderMatcher, field: &str) -> Result<HeaderCondition, (String, String)> {
    let string_match = match (&h.string_match, h.present_match) {
        (Some(sm), None) => Some(StringMatch::compile(sm, &format!("{field}.stringMatch"))?),
        (None, Some(_)) => None,
        _ => {
            return Err((
                field.to_string(),
                "exactly one of stringMatch and presentMatch is required".into(),
            ));
        }
    };
    Ok(HeaderCondition {
        name: h.name.to_ascii_lowercase(),
        string_match,
        present: h.present_match.unwrap_or(true),
        invert: h.invert_match,
    })
}

fn compile_query(
    q: &QueryParameterMatcher,
    field: &str,
) -> Result<QueryCondition, (String, String)> {
    let string_match = match (&q.string_match, q.present_match) {
        (Some(sm), None) => Some(StringMatch::compile(sm, &format!("{field}.stringMatch"))?),
        (None, Some(_)) => None,
        _ => {
            return Err((
                field.to_string(),
                "exactly one of stringMatch and presentMatch is required".into(),
            ));
        }
    };
    Ok(QueryCondition {
        name: q.name.clone(),
        string_match,
        present: q.present_match.unwrap_or(true),
    })
}

/// Converts an RE2/Envoy substitution (`\1`) into the `regex` crate's (`${1}`), escaping `$`.
fn substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    let d = *d;
                    chars.next();
                    out.push_str(&format!("${{{d}}}"));
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn compile_route(
    r: &Route,
    rp: &str,
    pod_labels: &BTreeMap<String, String>,
) -> Result<CompiledRoute, (String, String)> {
    let m = &r.match_;
    let path = match (&m.prefix, &m.path, &m.safe_regex) {
        (Some(p), None, None) => PathMatch::Prefix(p.clone()),
        (None, Some(p), None) => PathMatch::Exact(p.clone()),
        (None, None, Some(re)) => PathMatch::Regex(full_regex(
            &re.regex,
            &format!("{rp}.match.safeRegex.regex"),
        )?),
        _ => {
            return Err((
                format!("{rp}.match"),
                "exactly one of prefix, path and safeRegex is required".into(),
            ));
        }
    };
    let case_sensitive = m.case_sensitive.unwrap_or(true);
    let path = match path {
        PathMatch::Prefix(p) if !case_sensitive => PathMatch::Prefix(p.to_ascii_lowercase()),
        PathMatch::Exact(p) if !case_sensitive => PathMatch::Exact(p.to_ascii_lowercase()),
        other => other,
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(k, h)| compile_header(h, &format!("{rp}.match.headers[{k}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(k, q)| compile_query(q, &format!("{rp}.match.queryParameters[{k}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let enabled = m
        .source_labels
        .iter()
        .all(|(k, v)| pod_labels.get(k) == Some(v));
    let action = match (&r.route, &r.redirect, &r.direct_response) {
        (Some(a), None, None) => {
            let ap = format!("{rp}.route");
            let clusters = match (&a.cluster, &a.weighted_clusters) {
                (Some(c), None) => ClusterChoice::Single(c.clone()),
                (None, Some(w)) => {
                    let total: u64 = w.clusters.iter().map(|c| u64::from(c.weight)).sum();
                    if total == 0 {
                        return Err((
                            format!("{ap}.weightedClusters"),
                            "weights add up to 0".into(),
                        ));
                    }
                    ClusterChoice::Weighted {
                        clusters: w.clusters.clone(),
                        total,
                    }
                }
                _ => {
                    return Err((
                        ap,
                        "exactly one of cluster and weightedClusters is required".into(),
                    ));
                }
            };
            let regex_rewrite = match &a.regex_rewrite {
                Some(rr) => {
                    let field = format!("{ap}.regexRewrite.pattern.regex");
                    if let Some(problem) = rustmesh_xds::route::regex_problem(&rr.pattern.regex) {
                        return Err((field, problem));
                    }
                    Some(RegexRewrite {
                        pattern: Regex::new(&rr.pattern.regex)
                            .map_err(|e| (field, e.to_string()))?,
                        substitution: substitution(&rr.substitution),
                    })
                }
                None => None,
            };
            Action::Forward(Box::new(ForwardAction {
                clusters,
                timeout: a.timeout.map(|d| d.as_std()).filter(|d| !d.is_zero()),
                retry: a.retry_policy.as_ref().map(RetrySpec::from_policy),
                prefix_rewrite: a.prefix_rewrite.clone(),
                regex_rewrite,
                host_rewrite: a.host_rewrite_literal.clone(),
                mirrors: a
                    .request_mirror_policies
                    .iter()
                    .map(|m| MirrorPolicy {
                        cluster: m.cluster.clone(),
                        percentage: m.percentage.unwrap_or(Percent::ALL),
                    })
                    .collect(),
                hash_policy: a.hash_policy.clone(),
            }))
        }
        (None, Some(rd), None) => Action::Redirect(rd.clone()),
        (None, None, Some(d)) => Action::Direct {
            status: d.status,
            body: d.body.clone(),
        },
        _ => {
            return Err((
                rp.to_string(),
                "exactly one of route, redirect and directResponse is required".into(),
            ));
        }
    };
    Ok(CompiledRoute {
        name: r.name.clone(),
        virtual_service: r.virtual_service.clone(),
        enabled,
        path,
        case_sensitive,
        headers,
        query,
        action,
        fault: r.fault.clone(),
        request_headers_to_add: r.request_headers_to_add.clone(),
        request_headers_to_remove: r.request_headers_to_remove.clone(),
        response_headers_to_add: r.response_headers_to_add.clone(),
        response_headers_to_remove: r.response_headers_to_remove.clone(),
    })
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

    /// The upstream path (and query) after `prefixRewrite`/`regexRewrite`.
    pub fn rewrite_path(&self, path: &str, query: Option<&str>) -> Option<String> {
        let Action::Forward(a) = &self.action else {
            return None;
        };
        let new_path = if let Some(rw) = &a.prefix_rewrite {
            match &self.path {
                PathMatch::Prefix(p) => {
                    let rest = path.get(p.len()..).unwrap_or("");
                    // Istio's rewrite of "/" to "/" etc: join without doubling nothing special.
                    format!("{rw}{rest}")
                }
                PathMatch::Exact(_) | PathMatch::Regex(_) => rw.clone(),
            }
        } else if let Some(rr) = &a.regex_rewrite {
            rr.pattern
                .replace_all(path, rr.substitution.as_str())
                .into_owned()
        } else {
            return None;
        };
        let new_path = if new_path.is_empty() {
            "/".to_string()
        } else {
            new_path
        };
        Some(match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        })
    }
}

impl ClusterChoice {
    /// The cluster for a draw; `rng` decides weighted choices.
    pub fn choose(&self, rng: &Rng) -> (&str, Option<&ClusterWeight>) {
        match self {
            ClusterChoice::Single(c) => (c.as_str(), None),
            ClusterChoice::Weighted { clusters, total } => {
                let mut draw = rng.below(*total);
                for c in clusters {
                    let w = u64::from(c.weight);
                    if draw < w {
                        return (c.name.as_str(), Some(c));
                    }
                    draw -= w;
                }
                // Unreachable with total = sum of weights; fall back to the last.
                let last = clusters.last().expect("weighted clusters are never empty");
                (last.name.as_str(), Some(last))
            }
        }
    }
}

/// Retry conditions, from Envoy's `retryOn` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx, resets, connect failures, per-try timeouts.
    pub five_xx: bool,
    /// `gateway-error`: 502/503/504, resets, connect failures, per-try timeouts.
    pub gateway_error: bool,
    /// `reset`: the upstream reset or disconnected.
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `retriable-status-codes`: statuses in `retriableStatusCodes`.
    pub retriable_status_codes: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// gRPC `cancelled` (1).
    pub grpc_cancelled: bool,
    /// gRPC `deadline-exceeded` (4).
    pub grpc_deadline_exceeded: bool,
    /// gRPC `resource-exhausted` (8).
    pub grpc_resource_exhausted: bool,
    /// gRPC `internal` (13).
    pub grpc_internal: bool,
    /// gRPC `unavailable` (14).
    pub grpc_unavailable: bool,
}

impl RetryOn {
    /// Reads a comma-separated `retryOn`; unknown tokens are ignored, as Envoy does.
    pub fn parse(s: &str) -> Self {
        let mut r = RetryOn::default();
        for token in s.split(',').map(str::trim) {
            match token {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "reset" => r.reset = true,
                "connect-failure" => r.connect_failure = true,
                "refused-stream" => r.refused_stream = true,
                "retriable-status-codes" => r.retriable_status_codes = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "cancelled" => r.grpc_cancelled = true,
                "deadline-exceeded" => r.grpc_deadline_exceeded = true,
                "resource-exhausted" => r.grpc_resource_exhausted = true,
                "internal" => r.grpc_internal = true,
                "unavailable" => r.grpc_unavailable = true,
                _ => {}
            }
        }
        r
    }
}

/// Why an attempt failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The upstream answered with these headers.
    Status {
        /// HTTP status.
        status: u16,
        /// `grpc-status` in the response headers (trailers-only gRPC answers).
        grpc_status: Option<u32>,
    },
    /// Could not connect.
    ConnectFailure,
    /// Reset / disconnect before the response headers.
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

/// A retry policy, interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySpec {
    /// Conditions.
    pub on: RetryOn,
    /// Retries after the first attempt.
    pub num_retries: u32,
    /// Timeout of each attempt (until response headers).
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Avoid hosts already tried.
    pub retry_previous_hosts: bool,
    /// Back-off base interval (Envoy's default, 25 ms).
    pub base_interval: Duration,
    /// Back-off cap (10 × base, Envoy's default).
    pub max_interval: Duration,
}

impl RetrySpec {
    /// Interprets a configured policy.
    pub fn from_policy(p: &RetryPolicy) -> Self {
        RetrySpec {
            on: RetryOn::parse(&p.retry_on),
            num_retries: p.num_retries,
            per_try_timeout: p
                .per_try_timeout
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero()),
            retriable_status_codes: p.retriable_status_codes.clone(),
            retry_previous_hosts: p.retry_previous_hosts,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
        }
    }

    /// Whether a failed attempt should be retried (the caller checks the count).
    pub fn should_retry(&self, failure: AttemptFailure) -> bool {
        let on = &self.on;
        match failure {
            AttemptFailure::ConnectFailure => on.connect_failure || on.five_xx || on.gateway_error,
            AttemptFailure::Reset => on.reset || on.five_xx || on.gateway_error,
            AttemptFailure::RefusedStream => on.refused_stream || on.five_xx,
            AttemptFailure::PerTryTimeout => on.five_xx || on.gateway_error,
            AttemptFailure::Status {
                status,
                grpc_status,
            } => {
                (on.five_xx && (500..600).contains(&status))
                    || (on.gateway_error && matches!(status, 502..=504))
                    || (on.retriable_4xx && status == 409)
                    || (on.retriable_status_codes && self.retriable_status_codes.contains(&status))
                    || match grpc_status {
                        Some(1) => on.grpc_cancelled,
                        Some(4) => on.grpc_deadline_exceeded,
                        Some(8) => on.grpc_resource_exhausted,
                        Some(13) => on.grpc_internal,
                        Some(14) => on.grpc_unavailable,
                        _ => false,
                    }
            }
        }
    }

    /// Envoy's fully jittered exponential back-off before retry number `retry` (1-based):
    /// uniform in `[0, base × (2^retry − 1))`, capped at the max interval.
    pub fn backoff(&self, retry: u32, rng: &Rng) -> Duration {
        let factor = (1u64 << retry.clamp(1, 20)) - 1;
        let ceiling = (self.base_interval.as_millis() as u64)
            .saturating_mul(factor)
            .min(self.max_interval.as_millis() as u64);
        Duration::from_millis(rng.below(ceiling.max(1)))
    }
}

/// What fault injection decided for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this instead of forwarding.
    pub abort: Option<AbortWith>,
}

/// The answer of an injected abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortWith {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status (HTTP 200, trailers-only).
    Grpc(u32),
}

/// Draws the fault decision for one request. Delay and abort are drawn independently.
pub fn decide_fault(fault: Option<&FaultPolicy>, rng: &Rng) -> FaultDecision {
    let Some(f) = fault else {
        return FaultDecision::default();
    };
    let delay = f
        .delay
        .as_ref()
        .filter(|d| d.percentage.includes(rng.unit()))
        .map(|d| d.fixed_delay.as_std());
    let abort = f
        .abort
        .as_ref()
        .filter(|a| a.percentage.includes(rng.unit()))
        .and_then(|a| match (a.http_status, a.grpc_status) {
            (Some(s), _) => Some(AbortWith::Http(s)),
            (None, Some(g)) => Some(AbortWith::Grpc(g)),
            _ => None,
        });
    FaultDecision { delay, abort }
}

/// The mirrors to send a copy to for one request.
pub fn decide_mirrors<'a>(mirrors: &'a [MirrorPolicy], rng: &Rng) -> Vec<&'a str> {
    mirrors
        .iter()
        .filter(|m| m.percentage.includes(rng.unit()))
        .map(|m| m.cluster.as_str())
        .collect()
}

/// The `Location` of a redirect for a request (`scheme`, `authority`, `path`, `query` as received).
pub fn redirect_location(
    rd: &RedirectAction,
    scheme: &str,
    authority: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let new_scheme = rd.scheme_redirect.as_deref().unwrap_or(scheme);
    let (req_host, req_port) = split_host_port(authority);
    let host = rd.host_redirect.as_deref().unwrap_or(req_host);
    let port = match (rd.port_redirect, req_port) {
        (Some(p), _) => Some(p.to_string()),
        // A scheme change drops the old port, as Envoy does.
        (None, Some(p)) if rd.scheme_redirect.is_none() && rd.host_redirect.is_none() => {
            Some(p.to_string())
        }
        _ => None,
    };
    let port = port.filter(|p| {
        !((new_scheme == "http" && p == "80") || (new_scheme == "https" && p == "443"))
    });
    let path_and_query = match &rd.path_redirect {
        Some(p) if p.contains('?') => p.clone(),
        Some(p) => match query {
            Some(q) => format!("{p}?{q}"),
            None => p.clone(),
        },
        None => match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        },
    };
    match port {
        Some(p) => format!("{new_scheme}://{host}:{p}{path_and_query}"),
        None => format!("{new_scheme}://{host}{path_and_query}"),
    }
}

/// Splits `host:port` (IPv6 in brackets kept whole).
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let host = &authority[..=end];
                let port = authority[end + 1..].strip_prefix(':');
                (host, port)
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::route::{RegexMatcher, RouteAction, RouteMatch as XRouteMatch};

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![Route {
                match_: XRouteMatch {
                    prefix: Some("/".into()),
                    ..Default::default()
                },
                route: Some(RouteAction {
                    cluster: Some(name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            include_request_attempt_count: false,
        }
    }

    fn table(vhosts: Vec<VirtualHost>) -> RouteTable {
        RouteTable::compile(
            &RouteConfiguration {
                name: "t".into(),
                virtual_hosts: vhosts,
            },
            &BTreeMap::new(),
        )
        .unwrap()
    }

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
    fn duplicate_domains_and_bad_regexes_name_the_field() {
        let e = RouteTable::compile(
            &RouteConfiguration {
                name: "t".into(),
                virtual_hosts: vec![vh("a", &["x"]), vh("b", &["X"])],
            },
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.field, "virtualHosts[1].domains[0]");
        let mut bad = vh("a", &["x"]);
        bad.routes[0].match_ = XRouteMatch {
            safe_regex: Some(RegexMatcher { regex: "(".into() }),
            ..Default::default()
        };
        let e = RouteTable::compile(
            &RouteConfiguration {
                name: "t".into(),
                virtual_hosts: vec![bad],
            },
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.field, "virtualHosts[0].routes[0].match.safeRegex.regex");
        assert!(e.to_string().contains("invalid regex"), "{e}");
    }

    #[test]
    fn substitution_syntax() {
        assert_eq!(substitution(r"/v2/\1"), "/v2/${1}");
        assert_eq!(substitution("$x"), "$$x");
        assert_eq!(substitution(r"a\\b"), r"a\b");
    }

    #[test]
    fn retry_tokens() {
        let r = RetrySpec::from_policy(&RetryPolicy {
            retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                .into(),
            num_retries: 2,
            retriable_status_codes: vec![503],
            ..Default::default()
        });
        use AttemptFailure::*;
        assert!(r.should_retry(ConnectFailure));
        assert!(r.should_retry(RefusedStream));
        assert!(!r.should_retry(Reset));
        assert!(r.should_retry(Status {
            status: 503,
            grpc_status: None
        }));
        assert!(!r.should_retry(Status {
            status: 500,
            grpc_status: None
        }));
        assert!(r.should_retry(Status {
            status: 200,
            grpc_status: Some(14)
        }));
        assert!(!r.should_retry(Status {
            status: 200,
            grpc_status: Some(13)
        }));
        let g = RetrySpec::from_policy(&RetryPolicy {
            retry_on: "gateway-error,retriable-4xx".into(),
            ..Default::default()
        });
        assert!(g.should_retry(Status {
            status: 502,
            grpc_status: None
        }));
        assert!(!g.should_retry(Status {
            status: 500,
            grpc_status: None
        }));
        assert!(g.should_retry(Status {
            status: 409,
            grpc_status: None
        }));
        assert!(g.should_retry(PerTryTimeout));
        let rng = Rng::seeded(1);
        for n in 1..10 {
            assert!(g.backoff(n, &rng) < Duration::from_millis(250));
        }
    }

    #[test]
    fn redirects() {
        let rd = RedirectAction {
            scheme_redirect: Some("https".into()),
            response_code: 301,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(&rd, "http", "a.com:80", "/x", Some("q=1")),
            "https://a.com/x?q=1"
        );
        let rd = RedirectAction {
            host_redirect: Some("b.com".into()),
            port_redirect: Some(8443),
            path_redirect: Some("/new".into()),
            response_code: 302,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(&rd, "http", "a.com:9080", "/old", None),
            "http://b.com:8443/new"
        );
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_host_port("reviews"), ("reviews", None));
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&b=2&a=3"), "a"), Some("1"));
        assert_eq!(query_param(Some("flag&b=2"), "flag"), Some(""));
        assert_eq!(query_param(Some("ab=1"), "a"), None);
        assert_eq!(query_param(None, "a"), None);
    }
}
