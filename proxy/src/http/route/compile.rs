//! Route compilation, the stage before any request: a [`RouteConfiguration`] from xds becomes a
//! [`RouteTable`] once per configuration snapshot (regexes compiled whole-value, `sourceLabels`
//! decided against this pod's labels, domains indexed for [`matching`](super::matching)). A table
//! that does not compile is refused with a [`RouteError`] naming the field.

use super::{
    Action, ClusterChoice, CompiledRoute, CompiledVirtualHost, Cors, ForwardAction,
    HeaderCondition, MirrorPolicy, PathMatch, QueryCondition, RegexRewrite, RouteError, RouteTable,
    StringMatch,
};
use crate::http::retry::RetrySpec;
use http::HeaderValue;
use regex::Regex;
use rustmesh_xds::regex::{Anchor, compile as compile_regex};
use rustmesh_xds::route::{
    CorsPolicy, HeaderMatcher, QueryParameterMatcher, Route, RouteConfiguration, StringMatcher,
    VirtualHost,
};
use rustmesh_xds::types::Percent;
use std::collections::{BTreeMap, HashMap};

impl StringMatch {
    /// Compiles `m`; `field` names it in errors.
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
}

/// Compiles `re` so that it must match a whole value (Envoy's `safe_regex` semantics), within
/// the size limits every part of the mesh uses (`rustmesh_xds::regex`).
fn full_regex(re: &str, field: &str) -> Result<Regex, (String, String)> {
    compile_regex(re, Anchor::Whole)
        .map(|c| c.regex)
        .map_err(|e| (field.to_string(), e.to_string()))
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

/// A header's or query parameter's condition: exactly one of `stringMatch` and `presentMatch`.
fn value_match(
    string_match: Option<&rustmesh_xds::route::StringMatcher>,
    present_match: Option<bool>,
    field: &str,
) -> Result<Option<StringMatch>, (String, String)> {
    match (string_match, present_match) {
        (Some(sm), None) => Ok(Some(StringMatch::compile(
            sm,
            &format!("{field}.stringMatch"),
        )?)),
        (None, Some(_)) => Ok(None),
        _ => Err((
            field.to_string(),
            "exactly one of stringMatch and presentMatch is required".into(),
        )),
    }
}

fn compile_header(h: &HeaderMatcher, field: &str) -> Result<HeaderCondition, (String, String)> {
    let string_match = value_match(h.string_match.as_ref(), h.present_match, field)?;
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
    let string_match = value_match(q.string_match.as_ref(), q.present_match, field)?;
    Ok(QueryCondition {
        name: q.name.clone(),
        string_match,
        present: q.present_match.unwrap_or(true),
    })
}

/// Compiles a route's CORS policy: origin matchers (regexes within the size limits, whole-value),
/// and the header values its answers carry.
fn compile_cors(c: &CorsPolicy, field: &str) -> Result<Cors, (String, String)> {
    let origins = c
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(k, m)| StringMatch::compile(m, &format!("{field}.allowOriginStringMatch[{k}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let value = |v: &str, name: &str| -> Result<Option<HeaderValue>, (String, String)> {
        if v.is_empty() {
            return Ok(None);
        }
        HeaderValue::from_str(v).map(Some).map_err(|_| {
            (
                format!("{field}.{name}"),
                format!("{v:?} is not a header value"),
            )
        })
    };
    if !c.max_age.is_empty() && c.max_age.parse::<u64>().is_err() {
        return Err((
            format!("{field}.maxAge"),
            format!("{:?} is not a number of seconds", c.max_age),
        ));
    }
    Ok(Cors {
        origins,
        allow_methods: value(&c.allow_methods, "allowMethods")?,
        allow_headers: value(&c.allow_headers, "allowHeaders")?,
        expose_headers: value(&c.expose_headers, "exposeHeaders")?,
        max_age: value(&c.max_age, "maxAge")?,
        allow_credentials: c.allow_credentials,
        forward_not_matching_preflights: c.forward_not_matching_preflights,
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
                    Some(RegexRewrite {
                        pattern: compile_regex(&rr.pattern.regex, Anchor::Search)
                            .map(|c| c.regex)
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
                cors: r
                    .cors
                    .as_ref()
                    .map(|c| compile_cors(c, &format!("{rp}.cors")))
                    .transpose()?,
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
        operation: r
            .decorator
            .as_ref()
            .map(|d| std::sync::Arc::from(d.operation.as_str())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::testing::vh;
    use rustmesh_xds::route::{RegexMatcher, RouteMatch as XRouteMatch};

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
    fn a_regex_over_the_size_limit_is_refused_naming_the_field() {
        // `\w{60}` compiles to megabytes; the route table refuses it even if it got this far.
        let compile = |m: XRouteMatch| {
            let mut vhost = vh("a", &["x"]);
            vhost.routes[0].match_ = m;
            RouteTable::compile(
                &RouteConfiguration {
                    name: "t".into(),
                    virtual_hosts: vec![vhost],
                },
                &BTreeMap::new(),
            )
        };
        let e = compile(XRouteMatch {
            safe_regex: Some(RegexMatcher {
                regex: r"\w{60}".into(),
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "virtualHosts[0].routes[0].match.safeRegex.regex");
        assert!(
            e.message.contains("compiles to more than 524288 bytes"),
            "{e}"
        );
        compile(XRouteMatch {
            safe_regex: Some(RegexMatcher {
                regex: "^/api/v[0-9]+/.*".into(),
            }),
            ..Default::default()
        })
        .expect("Istio's documented example");
    }

    #[test]
    fn substitution_syntax() {
        assert_eq!(substitution(r"/v2/\1"), "/v2/${1}");
        assert_eq!(substitution("$x"), "$$x");
        assert_eq!(substitution(r"a\\b"), r"a\b");
    }
}
