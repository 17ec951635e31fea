//! VirtualService delegation (`http[].delegate`), as Istio merges it (pilot's
//! `mergeHTTPRoutes`): a root VirtualService (one with hosts) names, in one of its `http`
//! routes, a delegate VirtualService (one without hosts, in the root's namespace unless
//! `namespace` says otherwise, exported to the root's namespace); the delegate's `http` routes
//! take that route's place, in their order, each restricted to what the root route matches:
//!
//! - every match of a delegate route is combined with every root match it does not conflict
//!   with (the delegate's conditions win, headers/query parameters/source labels are merged);
//!   a delegate match that conflicts with all the root's matches (a uri prefix outside the
//!   root's, a different exact path, a regex on either side, another port...) makes the
//!   whole delegate route never match: it is left out (Istio logs it; the operator reports it
//!   as a warning on the root);
//! - what the delegate route leaves unset (rewrite, timeout, retries, fault, mirrors, CORS,
//!   headers) comes from the root route; names are joined with `-`;
//! - only one level: a delegate may not delegate again (`rustmesh_api::validate` refuses it).
//!
//! Short host names in a delegate resolve in the delegate's namespace (it is validated there);
//! those the root lends it (mirrors) in the root's. Pure functions: validation (warnings) and
//! the renderer (`render/routes.rs`) share them; `index::delegate_key` names the delegate and
//! `index::Index::delegate_audience` says which namespaces a delegate's change re-renders.

use rustmesh_api::common::StringMatch;
use rustmesh_api::virtual_service::{HttpMatchRequest, HttpRoute};
use std::collections::BTreeMap;

/// One delegate route merged into the root route that delegates to it; `None` when its matches
/// conflict with the root's (it would never apply). Host names the root lends (mirrors) go
/// through `resolve_in_root` (`validation::resolve_host` in the root's namespace), so that they
/// keep meaning what they meant in the root.
pub fn merge_http_route(
    root: &HttpRoute,
    delegate: &HttpRoute,
    resolve_in_root: &dyn Fn(&str) -> String,
) -> Option<HttpRoute> {
    let match_ = merge_matches(&root.match_, &delegate.match_)?;
    let mut out = delegate.clone();
    out.match_ = match_;
    out.delegate = None;
    out.name = join_names(root.name.as_deref(), delegate.name.as_deref());
    let resolve = |mut d: rustmesh_api::common::Destination| {
        d.host = resolve_in_root(&d.host);
        d
    };
    if out.rewrite.is_none() {
        out.rewrite.clone_from(&root.rewrite);
    }
    if out.direct_response.is_none() {
        out.direct_response.clone_from(&root.direct_response);
    }
    if out.timeout.is_none() {
        out.timeout = root.timeout;
    }
    if out.retries.is_none() {
        out.retries.clone_from(&root.retries);
    }
    if out.fault.is_none() {
        out.fault.clone_from(&root.fault);
    }
    if out.mirror.is_none() {
        out.mirror = root.mirror.clone().map(resolve);
    }
    if out.mirror_percent.is_none() {
        out.mirror_percent = root.mirror_percent;
    }
    if out.mirror_percentage.is_none() {
        out.mirror_percentage = root.mirror_percentage;
    }
    if out.cors_policy.is_none() {
        out.cors_policy.clone_from(&root.cors_policy);
    }
    if out.mirrors.is_empty() {
        out.mirrors = root
            .mirrors
            .iter()
            .cloned()
            .map(|mut m| {
                m.destination = resolve(m.destination);
                m
            })
            .collect();
    }
    if out.headers.is_none() {
        out.headers.clone_from(&root.headers);
    }
    Some(out)
}

fn join_names(root: Option<&str>, delegate: Option<&str>) -> Option<String> {
    match (root, delegate) {
        (r, None | Some("")) => r.map(str::to_string),
        (None | Some(""), Some(d)) => Some(d.to_string()),
        (Some(r), Some(d)) => Some(format!("{r}-{d}")),
    }
}

/// The matches of a merged route: each delegate match combined with each root match it does not
/// conflict with; `None` when some delegate match conflicts with every root match (Istio drops
/// the route). No matches on either side: the other side's.
fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in delegate {
        let before = out.len();
        for r in root {
            if !has_conflict(r, leaf) {
                out.push(merge_match(r, leaf));
            }
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

fn merged_map<V: Clone>(
    root: &BTreeMap<String, V>,
    leaf: &BTreeMap<String, V>,
) -> BTreeMap<String, V> {
    let mut out = root.clone();
    out.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = join_names(root.name.as_deref(), leaf.name.as_deref());
    for (o, r) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if o.is_none() {
            o.clone_from(r);
        }
    }
    out.headers = merged_map(&root.headers, &leaf.headers);
    out.without_headers = merged_map(&root.without_headers, &leaf.without_headers);
    out.query_params = merged_map(&root.query_params, &leaf.query_params);
    out.source_labels = merged_map(&root.source_labels, &leaf.source_labels);
    if out.port.is_none_or(|p| p == 0) {
        out.port = root.port;
    }
    if out.source_namespace.as_deref().is_none_or(str::is_empty) {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.as_deref().is_none_or(str::is_empty) {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// Whether a delegate match (`leaf`) cannot be narrowed into the root match (Istio's
/// `hasConflict`).
fn has_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    for (root_map, leaf_map) in [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ] {
        if leaf_map
            .iter()
            .any(|(k, l)| string_match_conflict(root_map.get(k), Some(l)))
        {
            return true;
        }
    }
    if root.ignore_uri_case.unwrap_or(false) != leaf.ignore_uri_case.unwrap_or(false) {
        return true;
    }
    let (rp, lp) = (root.port.unwrap_or(0), leaf.port.unwrap_or(0));
    if rp > 0 && lp > 0 && rp != lp {
        return true;
    }
    if let Some(rns) = root.source_namespace.as_deref().filter(|n| !n.is_empty())
        && leaf.source_namespace.as_deref() != Some(rns)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
    {
        return true;
    }
    if !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && (root.gateways.len() < leaf.gateways.len()
            || leaf.gateways.iter().any(|g| !root.gateways.contains(g)))
    {
        return true;
    }
    false
}

/// Istio's `stringMatchConflict`: a delegate's condition must lie within the root's (an exact
/// value equal to the root's exact, or a prefix or exact under the root's prefix); regexes only
/// combine with an absent condition.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    match (root, leaf) {
        (StringMatch::Regex(_), _) | (_, StringMatch::Regex(_)) => true,
        (StringMatch::Exact(r), StringMatch::Exact(l)) => r != l,
        (StringMatch::Exact(_), StringMatch::Prefix(_)) => true,
        (StringMatch::Prefix(r), StringMatch::Prefix(l) | StringMatch::Exact(l)) => {
            !l.starts_with(r.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(json: &str) -> HttpMatchRequest {
        serde_json::from_str(json).unwrap()
    }
    fn route(json: &str) -> HttpRoute {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn string_conditions_must_lie_within_the_roots() {
        let p = |s: &str| StringMatch::Prefix(s.into());
        let e = |s: &str| StringMatch::Exact(s.into());
        let r = |s: &str| StringMatch::Regex(s.into());
        assert!(!string_match_conflict(Some(&p("/a")), Some(&p("/a/b"))));
        assert!(string_match_conflict(Some(&p("/a/b")), Some(&p("/a"))));
        assert!(!string_match_conflict(Some(&p("/a")), Some(&e("/a/x"))));
        assert!(string_match_conflict(Some(&p("/a")), Some(&e("/b"))));
        assert!(!string_match_conflict(Some(&e("/a")), Some(&e("/a"))));
        assert!(string_match_conflict(Some(&e("/a")), Some(&e("/b"))));
        assert!(string_match_conflict(Some(&e("/a")), Some(&p("/a"))));
        assert!(string_match_conflict(Some(&r("/a.*")), Some(&p("/a"))));
        assert!(string_match_conflict(Some(&p("/a")), Some(&r("/a.*"))));
        assert!(!string_match_conflict(None, Some(&r("/a.*"))));
        assert!(!string_match_conflict(Some(&r("/a.*")), None));
    }

    #[test]
    fn matches_combine_each_delegate_match_with_each_compatible_root_match() {
        let root = [
            m(
                r#"{"name": "v", "uri": {"prefix": "/reviews"}, "headers": {"x-a": {"exact": "1"}}}"#,
            ),
            m(r#"{"uri": {"prefix": "/ratings"}}"#),
        ];
        let leaf = [m(
            r#"{"name": "v2", "uri": {"prefix": "/reviews/v2"}, "headers": {"x-b": {"exact": "2"}}}"#,
        )];
        let out = merge_matches(&root, &leaf).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name.as_deref(), Some("v-v2"));
        assert_eq!(out[0].uri, Some(StringMatch::Prefix("/reviews/v2".into())));
        assert_eq!(out[0].headers.len(), 2);
        // A delegate match outside every root match: the delegate route never applies.
        let outside = [m(r#"{"uri": {"prefix": "/details"}}"#)];
        assert_eq!(merge_matches(&root, &outside), None);
        // No delegate match: the root's; no root match: the delegate's.
        assert_eq!(merge_matches(&root, &[]).unwrap(), root.to_vec());
        assert_eq!(merge_matches(&[], &leaf).unwrap(), leaf.to_vec());
        // Conditions the delegate leaves out come from the root.
        let leaf = [m(r#"{"headers": {"x-b": {"exact": "2"}}}"#)];
        let out = merge_matches(&root, &leaf).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].uri, Some(StringMatch::Prefix("/ratings".into())));
        // Other conflicts: ports, ignoreUriCase, sourceNamespace, sourceLabels.
        let c = |r: &str, l: &str| has_conflict(&m(r), &m(l));
        assert!(c(r#"{"port": 80}"#, r#"{"port": 81}"#));
        assert!(!c(r#"{"port": 80}"#, r#"{}"#));
        assert!(c(r#"{"ignoreUriCase": true}"#, r#"{}"#));
        assert!(c(r#"{"sourceNamespace": "a"}"#, r#"{}"#));
        assert!(c(
            r#"{"sourceLabels": {"app": "a"}}"#,
            r#"{"sourceLabels": {"app": "b"}}"#
        ));
        assert!(c(r#"{"gateways": ["mesh"]}"#, r#"{"gateways": ["gw"]}"#));
    }

    #[test]
    fn a_delegate_route_takes_what_it_leaves_unset_from_the_root() {
        let root = route(
            r#"{"name": "root", "match": [{"uri": {"prefix": "/r"}}], "delegate": {"name": "d"},
                "timeout": "5s", "retries": {"attempts": 1}, "mirror": {"host": "shadow"}}"#,
        );
        let leaf = route(
            r#"{"name": "leaf", "timeout": "1s", "route": [{"destination": {"host": "reviews"}}]}"#,
        );
        let resolve = |h: &str| crate::validation::resolve_host(h, "default", "cluster.local");
        let out = merge_http_route(&root, &leaf, &resolve).unwrap();
        assert_eq!(out.name.as_deref(), Some("root-leaf"));
        assert_eq!(out.delegate, None);
        assert_eq!(out.match_, root.match_);
        assert_eq!(out.timeout, leaf.timeout);
        assert_eq!(out.retries, root.retries);
        assert_eq!(out.mirror.unwrap().host, "shadow.default.svc.cluster.local");
        assert_eq!(out.route, leaf.route);
    }
}
