//! The route engine: a [`RouteConfiguration`] compiled once per configuration snapshot into a
//! [`RouteTable`] (regexes compiled, `sourceLabels` decided against the pod's own labels, virtual
//! host domains indexed), then matched against each request.
//!
//! Virtual host selection is Envoy's: the lower-cased `Host`/`:authority` (port included, as
//! written by the client) is looked up among exact domains, then suffix wildcards (`*.foo`,
//! longest first), then prefix wildcards (`foo.*`, longest first), then `*`. Istio lists every
//! domain with and without `:port`, so `reviews:9080` and `reviews` both find the same host.
//! Routes inside a virtual host are tried in order; the first whose every condition holds wins.
//!
//! This module holds the compiled types and [`RouteTable`]'s API; the work is done by stage, in
//! the order a table and then a request meet it:
//!
//! * `route/compile.rs`: from the xds [`RouteConfiguration`] to a [`RouteTable`]
//!   ([`RouteTable::compile`]), once per snapshot; errors name the field.
//! * `route/matching.rs`: per request, the virtual host and the first route whose conditions
//!   hold on a [`RequestView`] ([`RouteTable::find`]).
//! * `route/actions.rs`: what the matched route decides before the request goes upstream: the
//!   cluster of a weighted choice ([`ClusterChoice::choose`]), fault injection
//!   ([`decide_fault`]), mirrors ([`decide_mirrors`]), the redirect `Location`
//!   ([`redirect_location`]), the path rewrite ([`CompiledRoute::rewrite_path`]).
//! * `route/cors.rs`: the route's CORS policy ([`Cors::check`]): a preflight answered before
//!   the request goes upstream, an allowed origin's headers on the response.
//!
//! The server's request stage acts on these; the route's retry policy is interpreted by
//! [`retry`](crate::http::retry).
//!
//! [`RouteConfiguration`]: rustmesh_xds::route::RouteConfiguration

mod actions;
mod compile;
mod cors;
mod matching;

pub use actions::{
    AbortWith, FaultDecision, decide_fault, decide_mirrors, redirect_location, split_host_port,
};
pub use cors::{Cors, CorsAllowed, CorsCheck};
pub use matching::query_param;

use crate::http::retry::RetrySpec;
use http::{HeaderMap, Method};
use regex::Regex;
use rustmesh_xds::route::{
    ClusterWeight, FaultPolicy, HashPolicy, HeaderValueOption, RedirectAction,
};
use rustmesh_xds::types::Percent;
use std::collections::HashMap;
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
    /// The route's CORS policy (Envoy's CORS filter leaves redirects and direct responses alone).
    pub cors: Option<Cors>,
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
    /// The name of this route's spans (its decorator's operation).
    pub operation: Option<std::sync::Arc<str>>,
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
    /// The compiled virtual hosts, in configuration order.
    pub fn virtual_hosts(&self) -> &[CompiledVirtualHost] {
        &self.vhosts
    }
}

#[cfg(test)]
mod testing {
    //! Route tables for the unit tests of the stages.

    use super::RouteTable;
    use rustmesh_xds::route::{
        Route, RouteAction, RouteConfiguration, RouteMatch as XRouteMatch, VirtualHost,
    };
    use std::collections::BTreeMap;

    /// A virtual host for `domains` whose one route sends everything to the cluster `name`.
    pub fn vh(name: &str, domains: &[&str]) -> VirtualHost {
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

    /// `vhosts` compiled as table `t` for a pod without labels.
    pub fn table(vhosts: Vec<VirtualHost>) -> RouteTable {
        RouteTable::compile(
            &RouteConfiguration {
                name: "t".into(),
                virtual_hosts: vhosts,
            },
            &BTreeMap::new(),
        )
        .unwrap()
    }
}
