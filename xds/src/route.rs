//! Route tables: virtual hosts matched on `Host`/`:authority`, routes matched on path, headers,
//! query parameters and the caller's labels, and what to do with a match.

use crate::duration::Duration;
use crate::types::Percent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A named route table (`9080`, `reviews.default.svc.cluster.local:9080`, `inbound|9080||`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfiguration {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

/// Routes for a set of host names. `*` matches any host; the most specific domain wins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHost {
    /// `reviews.default.svc.cluster.local:9080`, `allow_any`, `block_all`, `inbound|http|9080`.
    pub name: String,
    pub domains: Vec<String>,
    /// Tried in order; the first match wins.
    pub routes: Vec<Route>,
    /// Add `x-envoy-attempt-count` to upstream requests, as Istio does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_request_attempt_count: bool,
}

/// One route: a match and exactly one action (`route`, `redirect` or `directResponse`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseAction>,
    /// Fault injection applied before the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
    /// `name.namespace` of the VirtualService this route came from (the VIRTUAL SERVICE column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_service: Option<String>,
    /// Cross-origin resource sharing, as Envoy's CORS filter applies a route's policy (Istio's
    /// `corsPolicy`). Absent: requests pass untouched, as before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
    /// The name of this route's spans (Istio's `<host>:<port>/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decorator: Option<crate::trace::Decorator>,
}

/// Envoy's route-level `CorsPolicy`, as Istio renders a VirtualService's `corsPolicy`: lists
/// already joined with `,`, `maxAge` in whole seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// The origins allowed; a matcher that matches `*` allows every origin (as Envoy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin_string_match: Vec<StringMatcher>,
    /// `access-control-allow-methods` of a preflight answer (empty: not sent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allow_methods: String,
    /// `access-control-allow-headers` of a preflight answer (empty: not sent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allow_headers: String,
    /// `access-control-expose-headers` of an allowed request's response (empty: not sent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expose_headers: String,
    /// `access-control-max-age` of a preflight answer, in seconds (empty: not sent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub max_age: String,
    /// `access-control-allow-credentials: true` on allowed answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// A preflight whose origin is not allowed goes on to the app (Envoy's default, Istio's
    /// `FORWARD`); false answers it here with 200 and no CORS headers (Istio's `IGNORE`).
    #[serde(default = "forward", skip_serializing_if = "is_forward")]
    pub forward_not_matching_preflights: bool,
}

impl Default for CorsPolicy {
    fn default() -> Self {
        CorsPolicy {
            allow_origin_string_match: Vec::new(),
            allow_methods: String::new(),
            allow_headers: String::new(),
            expose_headers: String::new(),
            max_age: String::new(),
            allow_credentials: false,
            forward_not_matching_preflights: true,
        }
    }
}

fn forward() -> bool {
    true
}

fn is_forward(b: &bool) -> bool {
    *b
}

/// Conditions on a request; all given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path prefix (`/` matches everything). Exactly one of `prefix`, `path`, `safeRegex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Exact path (without the query string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// RE2 regex that must match the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    /// False makes path matching case-insensitive (Istio's `ignoreUriCase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
    /// Header conditions; pseudo-headers `:method`, `:authority`, `:scheme` work too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// Labels the calling workload must carry (Istio's `sourceLabels`). The proxy checks them
    /// against its own pod's labels, so one config can serve every pod of a scope.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
}

/// An RE2 regular expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexMatcher {
    pub regex: String,
}

/// Envoy's `StringMatcher`: exactly one of the match kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

impl StringMatcher {
    /// The value of an `exact` matcher with nothing else set (no `ignoreCase`), the only kind
    /// a certificate's subject alt names are compared with; `None` for any other matcher.
    pub fn exact_only(&self) -> Option<&str> {
        let exact = self.exact.as_deref()?;
        (*self == StringMatcher::exact(exact)).then_some(exact)
    }

    pub fn exact(s: &str) -> Self {
        StringMatcher {
            exact: Some(s.to_string()),
            ..Default::default()
        }
    }

    pub fn prefix(s: &str) -> Self {
        StringMatcher {
            prefix: Some(s.to_string()),
            ..Default::default()
        }
    }

    pub fn regex(s: &str) -> Self {
        StringMatcher {
            safe_regex: Some(RegexMatcher {
                regex: s.to_string(),
            }),
            ..Default::default()
        }
    }

    /// How many match kinds are set (valid matchers have exactly one).
    pub fn kinds(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.suffix.is_some(),
            self.contains.is_some(),
            self.safe_regex.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count()
    }
}

/// A condition on one header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcher>,
    /// Match on presence (true) or absence (false) alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    /// Negate the result (Istio's `withoutHeaders`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_match: bool,
}

/// A condition on one query parameter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParameterMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
}

/// Forward the request: to one cluster or to weighted clusters (exactly one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedClusters>,
    /// Whole-request timeout; `0s` or unset means none (Istio's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// Replaces the matched prefix (or the whole path for exact and regex matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexMatchAndSubstitute>,
    /// Replaces the `Host`/`:authority` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_literal: Option<String>,
    /// Copies of the request sent fire-and-forget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_mirror_policies: Vec<RequestMirrorPolicy>,
    /// Consistent-hash keys for RING_HASH / MAGLEV clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<HashPolicy>,
}

/// Clusters chosen at random in proportion to their weights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedClusters {
    pub clusters: Vec<ClusterWeight>,
}

/// One cluster of a [`WeightedClusters`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterWeight {
    pub name: String,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

/// When and how often to retry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Envoy retry conditions, comma-separated: `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    pub retry_on: String,
    pub num_retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Prefer a host not tried before (Istio's `previous_hosts` predicate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_previous_hosts: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection_retry_max_attempts: Option<u32>,
}

/// Regex path rewrite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexMatchAndSubstitute {
    pub pattern: RegexMatcher,
    pub substitution: String,
}

/// Mirror to a cluster for a share of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirrorPolicy {
    pub cluster: String,
    /// Share mirrored; all requests when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// One consistent-hash key (exactly one kind).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter_name: Option<String>,
}

/// Hash on a cookie; when `ttl` is set and the cookie is missing, the proxy generates one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Answer with a redirect. Unset parts keep the request's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<String>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "moved_permanently")]
    pub response_code: u16,
}

fn moved_permanently() -> u16 {
    301
}

/// Answer directly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponseAction {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Delay and/or abort a share of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A fixed delay for a share of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    pub percentage: Percent,
}

/// An error answer for a share of requests (`httpStatus` or gRPC `grpcStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    pub percentage: Percent,
}

/// A header to add, appending to or overwriting an existing value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    #[serde(default)]
    pub append_action: AppendAction,
}

/// A header name and value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    pub value: String,
}

/// Istio `add` is `APPEND_IF_EXISTS_OR_ADD`; `set` is `OVERWRITE_IF_EXISTS_OR_ADD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppendAction {
    #[default]
    AppendIfExistsOrAdd,
    OverwriteIfExistsOrAdd,
}
