//! Route tables: the per-port table (`9080`) with its catch-all virtual host, the per-service
//! table of auto ports (`<fqdn>:<port>`), inbound inline tables, and the translation of a
//! VirtualService's `http` rules into routes.

use super::clusters::{hash_policy_for, merged_policy};
use super::{Ctx, Visible};
use crate::index::ObjKey;
use crate::validation::resolve_host;
use base64::Engine;
use rustmesh_api::VirtualService;
use rustmesh_api::common::{Destination, StringMatch};
use rustmesh_api::gateway::{MESH, resolve_gateway_name};
use rustmesh_api::sidecar::OutboundTrafficPolicyMode;
use rustmesh_api::virtual_service::{
    CorsPolicy as VsCorsPolicy, HeaderOperations, HttpBody, HttpMatchRequest, HttpRetry,
    HttpRoute as VsHttpRoute, UnmatchedPreflights,
};
use rustmesh_xds::duration::Duration;
use rustmesh_xds::names::{ALLOW_ANY_VHOST, BLOCK_ALL_VHOST, ClusterName, PASSTHROUGH_CLUSTER};
use rustmesh_xds::route::{
    AppendAction, ClusterWeight, CorsPolicy, DirectResponseAction, FaultAbort, FaultDelay,
    FaultPolicy, HashPolicy, HeaderMatcher, HeaderValue, HeaderValueOption, QueryParameterMatcher,
    RedirectAction, RegexMatchAndSubstitute, RegexMatcher, RequestMirrorPolicy, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, StringMatcher, VirtualHost, WeightedClusters,
};
use rustmesh_xds::trace::Decorator;
use rustmesh_xds::types::Percent;
use std::collections::BTreeSet;

/// Istio's retry conditions when a route sets none.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Istio's default retry policy: 2 retries on connection failures, refused streams, gRPC
/// unavailable/cancelled and 503, preferring hosts not tried before.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: 2,
        per_try_timeout: None,
        retriable_status_codes: vec![503],
        retry_previous_hosts: true,
        host_selection_retry_max_attempts: Some(5),
    }
}

/// Istio's translation of `retries`: unset → the default policy; `attempts: 0` → no retries;
/// HTTP statuses in `retryOn` become `retriableStatusCodes` (adding `retriable-status-codes`).
pub fn retry_policy(r: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let Some(r) = r else {
        return Some(default_retry_policy());
    };
    if r.attempts <= 0 {
        return None;
    }
    let mut out = default_retry_policy();
    out.num_retries = u32::try_from(r.attempts).unwrap_or(0);
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut policies = Vec::new();
        let mut codes = Vec::new();
        for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token.parse::<u16>() {
                Ok(code) => codes.push(code),
                Err(_) => policies.push(token.to_string()),
            }
        }
        if !codes.is_empty() && !policies.iter().any(|p| p == "retriable-status-codes") {
            policies.push("retriable-status-codes".to_string());
        }
        out.retry_on = policies.join(",");
        out.retriable_status_codes = codes;
    }
    out.per_try_timeout = r.per_try_timeout;
    Some(out)
}

/// Istio's span names (its `getRouteOperation`): `<host>:<port><path>` for a route to one
/// cluster, `<virtual service>:<port><path>` for any other (weighted, redirect, direct
/// response); the path is the match's prefix followed by `*`, its exact path, or its regex.
pub(super) fn decorate(routes: &mut [Route], vs_name: &str, port: u16) {
    for r in routes {
        let m = &r.match_;
        let path = match (&m.prefix, &m.path, &m.safe_regex) {
            (Some(p), _, _) => format!("{p}*"),
            (_, Some(p), _) => p.clone(),
            (_, _, Some(re)) => re.regex.clone(),
            _ => "/*".to_string(),
        };
        let host = r
            .route
            .as_ref()
            .and_then(|a| a.cluster.as_deref())
            .and_then(ClusterName::parse)
            .map(|c| c.host);
        let who = host.as_deref().unwrap_or(vs_name);
        r.decorator = Some(Decorator {
            operation: format!("{who}:{port}{path}"),
        });
    }
}

/// The inline route table of an inbound HTTP chain: everything to `inbound|<port>||`, its spans
/// named `operation` (`<service host>:<service port>/*`, as Istio names them).
pub fn inbound_route_table(
    cluster: &str,
    port: u16,
    operation: Option<String>,
) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: Some("default".to_string()),
                match_: prefix_all(),
                route: Some(RouteAction {
                    cluster: Some(cluster.to_string()),
                    timeout: Some(Duration::ZERO),
                    ..RouteAction::default()
                }),
                decorator: operation.map(|operation| Decorator { operation }),
                ..Route::default()
            }],
            include_request_attempt_count: false,
        }],
    }
}

fn prefix_all() -> RouteMatch {
    RouteMatch {
        prefix: Some("/".to_string()),
        ..RouteMatch::default()
    }
}

fn string_matcher(m: &StringMatch) -> StringMatcher {
    match m {
        StringMatch::Exact(s) => StringMatcher::exact(s),
        StringMatch::Prefix(s) => StringMatcher::prefix(s),
        StringMatch::Regex(r) => StringMatcher::regex(r),
    }
}

fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        string_match: Some(string_matcher(m)),
        present_match: None,
        invert_match: invert,
    }
}

/// One VirtualService match → the model's route match.
fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let mut out = RouteMatch::default();
    match &m.uri {
        None => out.prefix = Some("/".to_string()),
        Some(StringMatch::Exact(p)) => out.path = Some(p.clone()),
        Some(StringMatch::Prefix(p)) => out.prefix = Some(p.clone()),
        Some(StringMatch::Regex(r)) => out.safe_regex = Some(RegexMatcher { regex: r.clone() }),
    }
    if m.ignore_uri_case == Some(true) {
        out.case_sensitive = Some(false);
    }
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            out.headers.push(header(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        out.headers.push(header(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        out.headers.push(header(name, sm, true));
    }
    for (name, sm) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            string_match: Some(string_matcher(sm)),
            present_match: None,
        });
    }
    out.source_labels = m.source_labels.clone();
    out
}

fn header_ops(ops: Option<&HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else {
        return (Vec::new(), Vec::new());
    };
    let mut add = Vec::new();
    for (k, v) in &ops.set {
        add.push(HeaderValueOption {
            header: HeaderValue {
                key: k.clone(),
                value: v.clone(),
            },
            append_action: AppendAction::OverwriteIfExistsOrAdd,
        });
    }
    for (k, v) in &ops.add {
        add.push(HeaderValueOption {
            header: HeaderValue {
                key: k.clone(),
                value: v.clone(),
            },
            append_action: AppendAction::AppendIfExistsOrAdd,
        });
    }
    (add, ops.remove.clone())
}

fn percent(p: Option<&Percent>, deprecated: Option<i64>) -> Percent {
    match (p, deprecated) {
        (Some(p), _) => *p,
        (None, Some(n)) => Percent::new(n as f64),
        (None, None) => Percent::ALL,
    }
}

/// gRPC status names as Istio accepts them in `fault.abort.grpcStatus`.
fn grpc_code(s: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    s.parse::<u32>().ok().or_else(|| {
        NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .and_then(|i| u32::try_from(i).ok())
    })
}

/// A `corsPolicy` as Istio renders it for Envoy's CORS filter (`TranslateCORSPolicy`):
/// `allowOrigins`, else the deprecated `allowOrigin` as exact matches; lists joined with `,`;
/// `maxAge` in whole seconds; unmatched preflights forwarded unless `IGNORE`.
fn cors_policy(c: &VsCorsPolicy) -> CorsPolicy {
    let allow_origin_string_match = if c.allow_origins.is_empty() {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher::exact(o))
            .collect()
    } else {
        c.allow_origins.iter().map(string_matcher).collect()
    };
    CorsPolicy {
        allow_origin_string_match,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials == Some(true),
        forward_not_matching_preflights: c.unmatched_preflights
            != Some(UnmatchedPreflights::Ignore),
    }
}

fn fault(r: &VsHttpRoute) -> Option<FaultPolicy> {
    let f = r.fault.as_ref()?;
    let delay = f.delay.as_ref().and_then(|d| {
        Some(FaultDelay {
            fixed_delay: d.fixed_delay?,
            percentage: percent(d.percentage.as_ref(), d.percent.map(i64::from)),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let http_status = a.http_status.and_then(|s| u16::try_from(s).ok());
        let grpc_status = if http_status.is_none() {
            a.grpc_status.as_deref().and_then(grpc_code)
        } else {
            None
        };
        (http_status.is_some() || grpc_status.is_some()).then(|| FaultAbort {
            http_status,
            grpc_status,
            percentage: percent(a.percentage.as_ref(), None),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(FaultPolicy { delay, abort })
}

impl<'v, 'a> Ctx<'v, 'a> {
    fn catch_all_vhost(&self) -> VirtualHost {
        let route = match self.mode {
            OutboundTrafficPolicyMode::AllowAny => Route {
                name: Some(ALLOW_ANY_VHOST.to_string()),
                match_: prefix_all(),
                route: Some(RouteAction {
                    cluster: Some(PASSTHROUGH_CLUSTER.to_string()),
                    timeout: Some(Duration::ZERO),
                    ..RouteAction::default()
                }),
                ..Route::default()
            },
            OutboundTrafficPolicyMode::RegistryOnly => Route {
                name: Some(BLOCK_ALL_VHOST.to_string()),
                match_: prefix_all(),
                direct_response: Some(DirectResponseAction {
                    status: 502,
                    body: None,
                }),
                ..Route::default()
            },
        };
        VirtualHost {
            name: match self.mode {
                OutboundTrafficPolicyMode::AllowAny => ALLOW_ANY_VHOST,
                OutboundTrafficPolicyMode::RegistryOnly => BLOCK_ALL_VHOST,
            }
            .to_string(),
            domains: vec!["*".to_string()],
            routes: vec![route],
            include_request_attempt_count: true,
        }
    }

    /// The route table `<port>` of the `0.0.0.0_<port>` listener: the catch-all virtual host,
    /// then one per service on that port.
    pub(super) fn port_route_table(
        &mut self,
        port: u16,
        members: &[Visible<'v>],
    ) -> RouteConfiguration {
        let mut vhosts = vec![self.catch_all_vhost()];
        let mut members: Vec<&Visible<'v>> = members.iter().collect();
        members.sort_by(|a, b| a.svc.fqdn.cmp(&b.svc.fqdn));
        members.dedup_by(|a, b| a.svc.fqdn == b.svc.fqdn);
        // A domain belongs to one virtual host (the proxy refuses a table listing one twice):
        // ServiceEntry hosts may share addresses with each other or with a ClusterIP, or differ
        // only in case; the first service in name order keeps a shared one.
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for v in members {
            let domains = match &v.svc.entry {
                Some(e) => rustmesh_xds::names::entry_domains(&v.svc.fqdn, port, &e.addresses),
                None => rustmesh_xds::names::service_domains(
                    &v.svc.name,
                    &v.svc.namespace,
                    self.view.domain_suffix(),
                    port,
                    v.svc.cluster_ip,
                    self.ns(),
                ),
            };
            let domains: Vec<String> = domains
                .into_iter()
                .filter(|d| seen.insert(d.to_ascii_lowercase()))
                .collect();
            if domains.is_empty() {
                continue;
            }
            vhosts.push(VirtualHost {
                name: format!("{}:{port}", v.svc.fqdn),
                domains,
                routes: self.service_routes(v),
                include_request_attempt_count: true,
            });
        }
        RouteConfiguration {
            name: port.to_string(),
            virtual_hosts: vhosts,
        }
    }

    /// The route table `<fqdn>:<port>` of an auto port's listener: one virtual host for `*`.
    pub(super) fn service_route_table(
        &mut self,
        v: &Visible<'v>,
        name: &str,
    ) -> RouteConfiguration {
        RouteConfiguration {
            name: name.to_string(),
            virtual_hosts: vec![VirtualHost {
                name: name.to_string(),
                domains: vec!["*".to_string()],
                routes: self.service_routes(v),
                include_request_attempt_count: true,
            }],
        }
    }

    /// Routes for one service port: its VirtualService's `http` rules, or the default route.
    fn service_routes(&mut self, v: &Visible<'v>) -> Vec<Route> {
        let port = v.port.port;
        if let Some((key, vs)) = self.virtual_service_for(&v.svc.fqdn)
            && !vs.spec.http.is_empty()
        {
            return self.virtual_service_routes(key, vs, port);
        }
        let cluster = ClusterName::outbound(port, "", &v.svc.fqdn).to_string();
        let hash_policy = self.hash_policy(v.svc, port, None);
        let mut routes = vec![Route {
            name: Some("default".to_string()),
            match_: prefix_all(),
            route: Some(RouteAction {
                cluster: Some(cluster),
                timeout: Some(Duration::ZERO),
                retry_policy: Some(default_retry_policy()),
                hash_policy,
                ..RouteAction::default()
            }),
            ..Route::default()
        }];
        decorate(&mut routes, &v.svc.fqdn, port);
        routes
    }

    /// The routes of a VirtualService's `http` rules on `port` (delegates merged in), for the
    /// sidecars of this scope or, with [`Ctx::gateway`] set, for that Gateway's server on
    /// `port`.
    pub(super) fn virtual_service_routes(
        &mut self,
        key: &ObjKey,
        vs: &'a VirtualService,
        port: u16,
    ) -> Vec<Route> {
        let vs_name = format!("{}.{}", key.name, key.namespace);
        let mut out = Vec::new();
        for rule in &vs.spec.http {
            let Some(d) = &rule.delegate else {
                out.extend(self.rule_routes(rule, &key.namespace, port, &vs_name));
                continue;
            };
            // Delegation: the delegate's routes in this one's place, narrowed to its
            // matches (`crate::delegate`); a delegate not found renders nothing here.
            let Some((dkey, dvs)) = self.view.delegate_for(&key.namespace, d) else {
                continue;
            };
            let suffix = self.view.domain_suffix();
            let resolve = |h: &str| resolve_host(h, &key.namespace, suffix);
            for sub in &dvs.spec.http {
                if let Some(merged) = crate::delegate::merge_http_route(rule, sub, &resolve) {
                    out.extend(self.rule_routes(&merged, &dkey.namespace, port, &vs_name));
                }
            }
        }
        decorate(&mut out, &key.name, port);
        out
    }

    /// The routes of one `http` rule (one per match that can apply here), labelled with the
    /// VirtualService `vs_name`; short host names resolve in `vs_ns`.
    fn rule_routes(
        &mut self,
        rule: &VsHttpRoute,
        vs_ns: &str,
        port: u16,
        vs_name: &str,
    ) -> Vec<Route> {
        let matches: Vec<Option<&HttpMatchRequest>> = if rule.match_.is_empty() {
            vec![None]
        } else {
            rule.match_
                .iter()
                .filter(|m| self.match_applies(m, vs_ns, port))
                .map(Some)
                .collect()
        };
        matches
            .into_iter()
            .map(|m| {
                let mut route = self.translate(rule, m, vs_ns, port);
                route.virtual_service = Some(vs_name.to_string());
                route
            })
            .collect()
    }

    /// Whether a match can apply on this port, for this scope's proxies (`port`, `gateways`:
    /// `mesh` for sidecars, else the Gateway being rendered ([`Ctx::gateway`]), named as in
    /// VirtualService `vs_ns`; `sourceNamespace`; `sourceLabels` are left to the proxy, which
    /// knows its pod's labels).
    fn match_applies(&self, m: &HttpMatchRequest, vs_ns: &str, port: u16) -> bool {
        let bound = m.gateways.is_empty()
            || match &self.gateway {
                None => m.gateways.iter().any(|g| g == MESH),
                Some(gw) => m
                    .gateways
                    .iter()
                    .any(|g| &resolve_gateway_name(g, vs_ns) == gw),
            };
        m.port.is_none_or(|p| p == u32::from(port))
            && bound
            && m.source_namespace.as_deref().is_none_or(|n| n == self.ns())
    }

    fn hash_policy(
        &self,
        svc: &crate::registry::Svc,
        port: u16,
        subset: Option<&str>,
    ) -> Vec<HashPolicy> {
        let Some((_, dr)) = self.destination_rule_for(svc) else {
            return Vec::new();
        };
        let subset = subset.and_then(|n| dr.spec.subsets.iter().find(|s| s.name == n));
        let policy = merged_policy(&dr.spec, port, subset);
        hash_policy_for(policy.lb).into_iter().collect()
    }

    /// The hash policy of a destination (through its DestinationRule), if it resolves.
    fn destination_hash(&self, d: &Destination, vs_ns: &str, port: u16) -> Vec<HashPolicy> {
        let host = crate::validation::resolve_host(&d.host, vs_ns, self.view.domain_suffix());
        let Some(svc) = self.view.registry.get(&host) else {
            return Vec::new();
        };
        let port = d
            .port
            .and_then(|p| u16::try_from(p.number).ok())
            .or_else(|| (svc.ports.len() == 1).then(|| svc.ports[0].port))
            .unwrap_or(port);
        self.hash_policy(svc, port, d.subset.as_deref())
    }

    fn translate(
        &mut self,
        rule: &VsHttpRoute,
        m: Option<&HttpMatchRequest>,
        vs_ns: &str,
        port: u16,
    ) -> Route {
        let name = match (rule.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
            (Some(r), Some(mn)) => Some(format!("{r}.{mn}")),
            (Some(r), None) => Some(r.to_string()),
            (None, Some(mn)) => Some(mn.to_string()),
            (None, None) => None,
        };
        let match_ = m.map(route_match).unwrap_or_else(prefix_all);
        let (mut req_add, mut req_remove) =
            header_ops(rule.headers.as_ref().and_then(|h| h.request.as_ref()));
        let (mut resp_add, mut resp_remove) =
            header_ops(rule.headers.as_ref().and_then(|h| h.response.as_ref()));
        let mut out = Route {
            name,
            match_,
            fault: fault(rule),
            virtual_service: None,
            cors: rule.cors_policy.as_ref().map(cors_policy),
            ..Route::default()
        };
        if let Some(rd) = &rule.redirect {
            out.redirect = Some(RedirectAction {
                scheme_redirect: rd.scheme.clone(),
                host_redirect: rd.authority.clone(),
                port_redirect: rd.port.and_then(|p| u16::try_from(p).ok()),
                path_redirect: rd.uri.clone(),
                response_code: rd
                    .redirect_code
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(301),
            });
        } else if let Some(dr) = &rule.direct_response {
            let body = dr.body.as_ref().map(|b| match b {
                HttpBody::String(s) => s.clone(),
                HttpBody::Bytes(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .unwrap_or_else(|| b64.clone()),
            });
            out.direct_response = Some(DirectResponseAction {
                status: u16::try_from(dr.status).unwrap_or(500),
                body,
            });
        } else {
            let mut action = RouteAction {
                timeout: Some(rule.timeout.unwrap_or(Duration::ZERO)),
                retry_policy: retry_policy(rule.retries.as_ref()),
                ..RouteAction::default()
            };
            let dests: Vec<_> = rule
                .route
                .iter()
                .filter(|d| rule.route.len() == 1 || d.weight.unwrap_or(0) > 0)
                .collect();
            let mut hashes = Vec::new();
            if let [only] = dests.as_slice() {
                action.cluster = Some(self.cluster_for(&only.destination, vs_ns, port));
                let (a, r) = header_ops(only.headers.as_ref().and_then(|h| h.request.as_ref()));
                req_add.extend(a);
                req_remove.extend(r);
                let (a, r) = header_ops(only.headers.as_ref().and_then(|h| h.response.as_ref()));
                resp_add.extend(a);
                resp_remove.extend(r);
                hashes.push(self.destination_hash(&only.destination, vs_ns, port));
            } else {
                let mut clusters = Vec::new();
                for d in &dests {
                    let name = self.cluster_for(&d.destination, vs_ns, port);
                    let (ra, rr) = header_ops(d.headers.as_ref().and_then(|h| h.request.as_ref()));
                    let (pa, pr) = header_ops(d.headers.as_ref().and_then(|h| h.response.as_ref()));
                    clusters.push(ClusterWeight {
                        name,
                        weight: d.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(0),
                        request_headers_to_add: ra,
                        request_headers_to_remove: rr,
                        response_headers_to_add: pa,
                        response_headers_to_remove: pr,
                    });
                    hashes.push(self.destination_hash(&d.destination, vs_ns, port));
                }
                action.weighted_clusters = Some(WeightedClusters { clusters });
            }
            // A hash policy only makes sense when every destination hashes the same way.
            if let Some(first) = hashes.first()
                && hashes.iter().all(|h| h == first)
            {
                action.hash_policy = first.clone();
            }
            if let Some(rw) = &rule.rewrite {
                action.prefix_rewrite = rw.uri.clone();
                action.regex_rewrite =
                    rw.uri_regex_rewrite
                        .as_ref()
                        .map(|r| RegexMatchAndSubstitute {
                            pattern: RegexMatcher {
                                regex: r.match_.clone(),
                            },
                            substitution: r.rewrite.clone(),
                        });
                action.host_rewrite_literal = rw.authority.clone();
            }
            if let Some(mirror) = &rule.mirror {
                let cluster = self.cluster_for(mirror, vs_ns, port);
                let pct = match (&rule.mirror_percentage, rule.mirror_percent) {
                    (Some(p), _) => Some(*p),
                    (None, Some(n)) => Some(Percent::new(f64::from(n))),
                    (None, None) => None,
                };
                action.request_mirror_policies.push(RequestMirrorPolicy {
                    cluster,
                    percentage: pct,
                });
            }
            for mp in &rule.mirrors {
                let cluster = self.cluster_for(&mp.destination, vs_ns, port);
                action.request_mirror_policies.push(RequestMirrorPolicy {
                    cluster,
                    percentage: mp.percentage,
                });
            }
            out.route = Some(action);
        }
        out.request_headers_to_add = req_add;
        out.request_headers_to_remove = req_remove;
        out.response_headers_to_add = resp_add;
        out.response_headers_to_remove = resp_remove;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_like_istio() {
        assert_eq!(retry_policy(None), Some(default_retry_policy()));
        let off = HttpRetry {
            attempts: 0,
            ..HttpRetry::default()
        };
        assert_eq!(retry_policy(Some(&off)), None);
        let r = HttpRetry {
            attempts: 3,
            per_try_timeout: Some(Duration::from_secs(2)),
            retry_on: Some("5xx,connect-failure,503,504".into()),
            retry_remote_localities: None,
        };
        let p = retry_policy(Some(&r)).unwrap();
        assert_eq!(p.num_retries, 3);
        assert_eq!(p.retry_on, "5xx,connect-failure,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, vec![503, 504]);
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
        assert!(p.retry_previous_hosts);
        let only_attempts = HttpRetry {
            attempts: 5,
            ..HttpRetry::default()
        };
        let p = retry_policy(Some(&only_attempts)).unwrap();
        assert_eq!(p.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert_eq!(p.num_retries, 5);
    }

    #[test]
    fn grpc_codes_by_name_or_number() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("unavailable"), Some(14));
        assert_eq!(grpc_code("7"), Some(7));
        assert_eq!(grpc_code("NOPE"), None);
    }
}
