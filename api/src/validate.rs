//! Rules the schema cannot express, checked as Istio's validation does. Each finding names the
//! field (`spec.http[0].route`) so the operator can put it in the object's status.
//!
//! One deliberate difference from current Istio: when a route has several destinations their
//! weights must add up to exactly 100 (Istio's documented rule; recent Istio versions normalise
//! other sums silently, which hides mistakes).

use crate::common::{Destination, Percent, StringMatch};
use crate::destination_rule::*;
use crate::error::FieldError;
use crate::sidecar::{EgressHost, SidecarPort, SidecarSpec};
use crate::virtual_service::*;
use rustmesh_xds::regex::{Anchor, RegexBudget};
use std::collections::{BTreeMap, BTreeSet};

/// Something that can check itself. Paths in the findings start at `spec`.
pub trait Validate {
    fn validate(&self) -> Vec<FieldError>;
}

/// Envoy's retry conditions that Istio passes through from `retryOn`.
pub const RETRY_ON_POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The findings about one object, and its regexes counted together (one object may not compile
/// to more than one proxy configuration may hold: [`rustmesh_xds::regex::CONFIG_SIZE_BUDGET`]).
struct Findings(Vec<FieldError>, RegexBudget);

impl Default for Findings {
    fn default() -> Self {
        Findings(Vec::new(), RegexBudget::new("object"))
    }
}

impl Findings {
    /// Compiles `re` as the proxy will (RE2 syntax, within `rustmesh_xds::regex`'s limits).
    fn regex(&mut self, field: String, re: &str, anchor: Anchor) {
        if let Err(problem) = self.1.compile(re, anchor) {
            self.err(field, problem.to_string());
        }
    }

    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn string_match(&mut self, field: &str, m: &StringMatch) {
        match m {
            StringMatch::Regex(r) => self.regex(format!("{field}.regex"), r, Anchor::Whole),
            StringMatch::Exact(s) | StringMatch::Prefix(s)
                if s.is_empty() && field.ends_with("uri") =>
            {
                // An empty prefix is Istio's "match all"; an empty exact uri can never match.
                if matches!(m, StringMatch::Exact(_)) {
                    self.err(format!("{field}.exact"), "an empty exact uri never matches");
                }
            }
            _ => {}
        }
    }

    fn port(&mut self, field: &str, port: u32) {
        if !(1..=65535).contains(&port) {
            self.err(field, format!("port {port} is out of range 1-65535"));
        }
    }

    fn percent(&mut self, field: &str, p: &Percent) {
        if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
            self.err(
                format!("{field}.value"),
                format!("percentage {} must be between 0 and 100", p.value),
            );
        }
    }

    fn destination(&mut self, field: &str, d: &Destination) {
        if d.host.trim().is_empty() {
            self.err(format!("{field}.host"), "destination host is required");
        } else {
            self.host(&format!("{field}.host"), &d.host);
        }
        if let Some(subset) = &d.subset
            && subset.is_empty()
        {
            self.err(
                format!("{field}.subset"),
                "subset name must not be empty when given",
            );
        }
        if let Some(p) = d.port {
            self.port(&format!("{field}.port.number"), p.number);
        }
    }

    fn host(&mut self, field: &str, host: &str) {
        let bad_char = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | ':' | '_')));
        if host.is_empty() {
            self.err(field, "host must not be empty");
        } else if let Some(c) = bad_char {
            self.err(
                field,
                format!("host {host:?} contains invalid character {c:?}"),
            );
        } else if host.rfind('*').is_some_and(|i| i > 0) {
            self.err(
                field,
                format!(
                    "host {host:?}: a wildcard is only allowed as the first label (`*.example.com`)"
                ),
            );
        }
    }

    fn weights(&mut self, field: &str, weights: &[Option<i32>]) {
        for (i, w) in weights.iter().enumerate() {
            if let Some(w) = w
                && *w < 0
            {
                self.err(
                    format!("{field}[{i}].weight"),
                    format!("weight {w} must not be negative"),
                );
            }
        }
        if weights.len() > 1 {
            let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
            if sum != 100 {
                self.err(
                    field,
                    format!("weights of the destinations add up to {sum}, they must add up to 100"),
                );
            }
        }
    }

    fn export_to(&mut self, values: &[String]) {
        for (i, ns) in values.iter().enumerate() {
            if ns != "." && ns != "*" && !is_dns_label(ns) {
                self.err(
                    format!("spec.exportTo[{i}]"),
                    format!("{ns:?} is not `.`, `*` or a namespace name"),
                );
            }
        }
    }

    fn headers(&mut self, field: &str, h: &Headers) {
        for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
            let Some(ops) = ops else { continue };
            for name in ops
                .set
                .keys()
                .chain(ops.add.keys())
                .chain(ops.remove.iter())
            {
                if name.is_empty()
                    || name
                        .chars()
                        .any(|c| c.is_whitespace() || c == ':' && name.len() == 1)
                {
                    self.err(
                        format!("{field}.{dir}"),
                        format!("invalid header name {name:?}"),
                    );
                }
            }
        }
    }

    fn cidr(&mut self, field: &str, value: &str) {
        let ok = match value.split_once('/') {
            Some((ip, len)) => ip
                .parse::<std::net::IpAddr>()
                .ok()
                .zip(len.parse::<u8>().ok())
                .is_some_and(|(ip, len)| len <= if ip.is_ipv4() { 32 } else { 128 }),
            None => value.parse::<std::net::IpAddr>().is_ok(),
        };
        if !ok {
            self.err(field, format!("{value:?} is not an IP address or CIDR"));
        }
    }
}

/// RFC 1123 label: what a namespace name may be.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Validate for VirtualServiceSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut f = Findings::default();
        let delegate = self.hosts.is_empty();
        if delegate && !self.gateways.is_empty() {
            f.err("spec.hosts", "at least one host is required (only a delegate VirtualService, which has no gateways, may omit hosts)");
        }
        for (i, h) in self.hosts.iter().enumerate() {
            f.host(&format!("spec.hosts[{i}]"), h);
        }
        if self.http.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            f.err(
                "spec",
                "at least one of http, tcp or tls routes is required",
            );
        }
        if delegate {
            // As Istio: a delegate carries HTTP routes only (it is merged into a root's).
            if !self.tcp.is_empty() {
                f.err("spec.tcp", "a delegate VirtualService (one without hosts) may have no tcp routes: only http routes are delegated");
            }
            if !self.tls.is_empty() {
                f.err("spec.tls", "a delegate VirtualService (one without hosts) may have no tls routes: only http routes are delegated");
            }
        }
        for (i, r) in self.http.iter().enumerate() {
            http_route(&mut f, &format!("spec.http[{i}]"), r);
            if let Some(d) = &r.delegate {
                delegate_ref(&mut f, &format!("spec.http[{i}].delegate"), d, delegate);
            }
        }
        for (i, r) in self.tcp.iter().enumerate() {
            let p = format!("spec.tcp[{i}]");
            if r.route.is_empty() {
                f.err(
                    format!("{p}.route"),
                    "a TCP route needs at least one destination",
                );
            }
            for (j, m) in r.match_.iter().enumerate() {
                if let Some(port) = m.port {
                    f.port(&format!("{p}.match[{j}].port"), port);
                }
                for (k, s) in m.destination_subnets.iter().enumerate() {
                    f.cidr(&format!("{p}.match[{j}].destinationSubnets[{k}]"), s);
                }
            }
            route_destinations(&mut f, &format!("{p}.route"), &r.route);
        }
        for (i, r) in self.tls.iter().enumerate() {
            let p = format!("spec.tls[{i}]");
            if r.match_.is_empty() {
                f.err(
                    format!("{p}.match"),
                    "a TLS route needs at least one match with sniHosts",
                );
            }
            for (j, m) in r.match_.iter().enumerate() {
                let at = format!("{p}.match[{j}]");
                if m.sni_hosts.is_empty() {
                    f.err(
                        format!("{at}.sniHosts"),
                        "at least one SNI host is required",
                    );
                }
                for (k, sni) in m.sni_hosts.iter().enumerate() {
                    let field = format!("{at}.sniHosts[{k}]");
                    f.host(&field, sni);
                    // As Istio (`validateSniHost`): each name is one of the VirtualService's
                    // hosts or within one of its wildcards, as written.
                    let compatible = sni.parse::<std::net::IpAddr>().is_ok()
                        || self
                            .hosts
                            .iter()
                            .any(|h| crate::sidecar::host_matches(h, sni));
                    if !compatible {
                        f.err(
                            field,
                            format!(
                                "SNI host {sni:?} is not a compatible host with any hosts of \
                                 the virtual service"
                            ),
                        );
                    }
                }
                if let Some(port) = m.port {
                    f.port(&format!("{at}.port"), port);
                }
                for (k, s) in m.destination_subnets.iter().enumerate() {
                    f.cidr(&format!("{at}.destinationSubnets[{k}]"), s);
                }
            }
            if r.route.is_empty() {
                f.err(
                    format!("{p}.route"),
                    "a TLS route needs at least one destination",
                );
            }
            route_destinations(&mut f, &format!("{p}.route"), &r.route);
        }
        f.export_to(&self.export_to);
        f.0.extend(crate::support::refused_fields("VirtualService", self));
        f.0
    }
}

fn route_destinations(f: &mut Findings, field: &str, route: &[RouteDestination]) {
    for (i, d) in route.iter().enumerate() {
        f.destination(&format!("{field}[{i}].destination"), &d.destination);
    }
    f.weights(field, &route.iter().map(|d| d.weight).collect::<Vec<_>>());
}

/// A route's `delegate`: a VirtualService name (namespace: the root's by default); only one
/// level of delegation, as Istio ("delegate HTTP route cannot contain delegate").
fn delegate_ref(f: &mut Findings, p: &str, d: &Delegate, in_delegate: bool) {
    if in_delegate {
        f.err(
            p.to_string(),
            "a delegate VirtualService (one without hosts) cannot delegate again: only one level of delegation is allowed",
        );
    }
    let name_ok = !d.name.is_empty() && d.name.len() <= 253 && d.name.split('.').all(is_dns_label);
    if !name_ok {
        f.err(
            format!("{p}.name"),
            format!("{:?} is not a VirtualService name", d.name),
        );
    }
    if let Some(ns) = &d.namespace
        && !is_dns_label(ns)
    {
        f.err(
            format!("{p}.namespace"),
            format!("{ns:?} is not a namespace name"),
        );
    }
}

fn http_route(f: &mut Findings, p: &str, r: &HttpRoute) {
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
        r.delegate.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => f.err(
            p.to_string(),
            "one of route, redirect, directResponse or delegate is required",
        ),
        1 => {}
        _ => f.err(
            p.to_string(),
            "only one of route, redirect, directResponse or delegate may be given",
        ),
    }
    for (j, m) in r.match_.iter().enumerate() {
        let mp = format!("{p}.match[{j}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                f.string_match(&format!("{mp}.{name}"), sm);
            }
        }
        for (kind, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (key, sm) in map {
                f.string_match(&format!("{mp}.{kind}.{key}"), sm);
                if kind != "queryParams" && key.chars().any(|c| c.is_ascii_uppercase()) {
                    f.err(
                        format!("{mp}.{kind}.{key}"),
                        format!("header name {key:?} must be lower case"),
                    );
                }
            }
        }
        if let Some(port) = m.port {
            f.port(&format!("{mp}.port"), port);
        }
    }
    for (k, d) in r.route.iter().enumerate() {
        f.destination(&format!("{p}.route[{k}].destination"), &d.destination);
        if let Some(h) = &d.headers {
            f.headers(&format!("{p}.route[{k}].headers"), h);
        }
    }
    f.weights(
        &format!("{p}.route"),
        &r.route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
    if let Some(rd) = &r.redirect {
        if let Some(code) = rd.redirect_code
            && !(300..=399).contains(&code)
        {
            f.err(
                format!("{p}.redirect.redirectCode"),
                format!("{code} is not a 3xx redirect code"),
            );
        }
        if rd.port.is_some() && rd.derive_port.is_some() {
            f.err(
                format!("{p}.redirect"),
                "only one of port and derivePort may be given",
            );
        }
        if let Some(port) = rd.port {
            f.port(&format!("{p}.redirect.port"), port);
        }
    }
    if let Some(dr) = &r.direct_response
        && !(200..=599).contains(&dr.status)
    {
        f.err(
            format!("{p}.directResponse.status"),
            format!("{} is not an HTTP status between 200 and 599", dr.status),
        );
    }
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            f.err(
                format!("{p}.rewrite"),
                "only one of uri and uriRegexRewrite may be given",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            f.regex(
                format!("{p}.rewrite.uriRegexRewrite.match"),
                &rr.match_,
                Anchor::Search,
            );
        }
    }
    if let Some(retry) = &r.retries {
        if retry.attempts < 0 {
            f.err(
                format!("{p}.retries.attempts"),
                format!("attempts {} must not be negative", retry.attempts),
            );
        }
        if let Some(t) = retry.per_try_timeout
            && t.as_std() < std::time::Duration::from_millis(1)
        {
            f.err(
                format!("{p}.retries.perTryTimeout"),
                "perTryTimeout must be at least 1ms",
            );
        }
        if let Some(on) = &retry.retry_on {
            for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let is_status = token.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                if !is_status && !RETRY_ON_POLICIES.contains(&token) {
                    f.err(
                        format!("{p}.retries.retryOn"),
                        format!("unknown retry condition {token:?} (expected an HTTP status or one of {})", RETRY_ON_POLICIES.join(", ")),
                    );
                }
            }
        }
    }
    if let Some(fault) = &r.fault {
        if fault.delay.is_none() && fault.abort.is_none() {
            f.err(format!("{p}.fault"), "a fault needs a delay or an abort");
        }
        if let Some(d) = &fault.delay {
            if d.fixed_delay.is_none() {
                f.err(
                    format!("{p}.fault.delay.fixedDelay"),
                    "fixedDelay is required",
                );
            }
            if let Some(pc) = &d.percentage {
                f.percent(&format!("{p}.fault.delay.percentage"), pc);
            }
            if let Some(pc) = d.percent
                && !(0..=100).contains(&pc)
            {
                f.err(
                    format!("{p}.fault.delay.percent"),
                    format!("percent {pc} must be between 0 and 100"),
                );
            }
        }
        if let Some(a) = &fault.abort {
            match (a.http_status, &a.grpc_status, &a.http2_error) {
                (None, None, None) => f.err(
                    format!("{p}.fault.abort"),
                    "one of httpStatus, grpcStatus or http2Error is required",
                ),
                (Some(s), _, _) if !(200..=599).contains(&s) => f.err(
                    format!("{p}.fault.abort.httpStatus"),
                    format!("{s} is not an HTTP status between 200 and 599"),
                ),
                _ => {}
            }
            if let Some(pc) = &a.percentage {
                f.percent(&format!("{p}.fault.abort.percentage"), pc);
            }
        }
    }
    if let Some(m) = &r.mirror {
        f.destination(&format!("{p}.mirror"), m);
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        f.destination(&format!("{p}.mirrors[{k}].destination"), &m.destination);
        if let Some(pc) = &m.percentage {
            f.percent(&format!("{p}.mirrors[{k}].percentage"), pc);
        }
    }
    if let Some(pc) = &r.mirror_percentage {
        f.percent(&format!("{p}.mirrorPercentage"), pc);
    }
    if let Some(pc) = r.mirror_percent
        && pc > 100
    {
        f.err(
            format!("{p}.mirrorPercent"),
            format!("mirrorPercent {pc} must be between 0 and 100"),
        );
    }
    if let Some(cors) = &r.cors_policy {
        cors_policy(f, &format!("{p}.corsPolicy"), cors);
    }
    if let Some(h) = &r.headers {
        f.headers(&format!("{p}.headers"), h);
    }
}

/// Istio's checks of a `corsPolicy` (`validateCORSPolicy`): origins compile, methods are HTTP
/// methods, header names are tokens (or `*`), `maxAge` is whole seconds. What passes is also a
/// valid header value for the sidecar's answers.
fn cors_policy(f: &mut Findings, p: &str, cors: &CorsPolicy) {
    for (k, o) in cors.allow_origins.iter().enumerate() {
        f.string_match(&format!("{p}.allowOrigins[{k}]"), o);
    }
    for (k, o) in cors.allow_origin.iter().enumerate() {
        if o.is_empty() || o.bytes().any(|b| b.is_ascii_control() || b == b',') {
            f.err(
                format!("{p}.allowOrigin[{k}]"),
                format!("{o:?} is not an origin"),
            );
        }
    }
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "OPTIONS", "DELETE", "TRACE", "CONNECT",
    ];
    for (k, m) in cors.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            f.err(
                format!("{p}.allowMethods[{k}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    let token = |h: &str| {
        h == "*"
            || (!h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    for (list, name) in [
        (&cors.allow_headers, "allowHeaders"),
        (&cors.expose_headers, "exposeHeaders"),
    ] {
        for (k, h) in list.iter().enumerate() {
            if !token(h) {
                f.err(
                    format!("{p}.{name}[{k}]"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
    }
    if let Some(d) = &cors.max_age
        && d.as_std().subsec_nanos() != 0
    {
        f.err(
            format!("{p}.maxAge"),
            "maxAge is accurate only to seconds: give whole seconds",
        );
    }
}

fn traffic_policy(f: &mut Findings, p: &str, tp: &TrafficPolicy) {
    policy_parts(
        f,
        p,
        &tp.load_balancer,
        &tp.connection_pool,
        &tp.outlier_detection,
        &tp.tls,
    );
    let mut seen = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{p}.portLevelSettings[{i}]");
        match pl.port {
            None => f.err(format!("{pp}.port"), "port is required"),
            Some(port) => {
                f.port(&format!("{pp}.port.number"), port.number);
                if !seen.insert(port.number) {
                    f.err(
                        format!("{pp}.port.number"),
                        format!("port {} appears twice", port.number),
                    );
                }
            }
        }
        policy_parts(
            f,
            &pp,
            &pl.load_balancer,
            &pl.connection_pool,
            &pl.outlier_detection,
            &pl.tls,
        );
    }
}

fn policy_parts(
    f: &mut Findings,
    p: &str,
    lb: &Option<LoadBalancerSettings>,
    pool: &Option<ConnectionPoolSettings>,
    outlier: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            f.err(
                format!("{p}.loadBalancer"),
                "only one of simple and consistentHash may be given",
            );
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                f.err(
                    format!("{p}.loadBalancer.consistentHash"),
                    "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
                );
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                f.err(
                    format!("{p}.loadBalancer.consistentHash"),
                    "only one of ringHash and maglev may be given",
                );
            }
            // Envoy's limits: a ring of at most 8M points, a prime Maglev table of at most
            // 5000011 entries (0 is proto3's unset: the default).
            let ring_sizes = [
                (
                    "ringHash.minimumRingSize",
                    ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size),
                ),
                ("minimumRingSize", ch.minimum_ring_size),
            ];
            for (field, size) in ring_sizes {
                if let Some(n) = size
                    && n > MAX_RING_SIZE
                {
                    f.err(
                        format!("{p}.loadBalancer.consistentHash.{field}"),
                        format!("{n} is larger than {MAX_RING_SIZE}"),
                    );
                }
            }
            if let Some(n) = ch.maglev.as_ref().and_then(|m| m.table_size)
                && n != 0
            {
                let field = format!("{p}.loadBalancer.consistentHash.maglev.tableSize");
                if n > MAX_MAGLEV_TABLE_SIZE {
                    f.err(field, format!("{n} is larger than {MAX_MAGLEV_TABLE_SIZE}"));
                } else if !is_prime(n) {
                    f.err(field, format!("{n} must be a prime number"));
                }
            }
            if let Some(c) = &ch.http_cookie
                && c.name.is_empty()
            {
                f.err(
                    format!("{p}.loadBalancer.consistentHash.httpCookie.name"),
                    "cookie name is required",
                );
            }
        }
    }
    if let Some(pool) = pool {
        if let Some(tcp) = &pool.tcp
            && let Some(n) = tcp.max_connections
            && n < 0
        {
            f.err(
                format!("{p}.connectionPool.tcp.maxConnections"),
                format!("{n} must not be negative"),
            );
        }
        if let Some(http) = &pool.http {
            for (name, v) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ] {
                if let Some(n) = v
                    && n < 0
                {
                    f.err(
                        format!("{p}.connectionPool.http.{name}"),
                        format!("{n} must not be negative"),
                    );
                }
            }
        }
    }
    if let Some(o) = outlier {
        for (name, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(n) = v
                && !(0..=100).contains(&n)
            {
                f.err(
                    format!("{p}.outlierDetection.{name}"),
                    format!("{n} must be between 0 and 100"),
                );
            }
        }
        if let Some(n) = o.consecutive_errors
            && n < 0
        {
            f.err(
                format!("{p}.outlierDetection.consecutiveErrors"),
                format!("{n} must not be negative"),
            );
        }
    }
    if let Some(tls) = tls
        && tls.mode == Some(TlsMode::Mutual)
        && tls.credential_name.is_none()
        && (tls.client_certificate.is_none() || tls.private_key.is_none())
    {
        f.err(
            format!("{p}.tls"),
            "MUTUAL needs clientCertificate and privateKey, or credentialName",
        );
    }
}

impl Validate for DestinationRuleSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut f = Findings::default();
        if self.host.trim().is_empty() {
            f.err("spec.host", "host is required");
        } else {
            f.host("spec.host", &self.host);
        }
        if let Some(tp) = &self.traffic_policy {
            traffic_policy(&mut f, "spec.trafficPolicy", tp);
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let p = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                f.err(format!("{p}.name"), "subset name is required");
            } else if !names.insert(s.name.as_str()) {
                f.err(
                    format!("{p}.name"),
                    format!("subset {:?} is defined twice", s.name),
                );
            }
            if let Some(tp) = &s.traffic_policy {
                traffic_policy(&mut f, &format!("{p}.trafficPolicy"), tp);
            }
        }
        f.export_to(&self.export_to);
        f.0.extend(crate::support::refused_fields("DestinationRule", self));
        f.0
    }
}

/// Envoy's largest ring (`minimumRingSize`).
const MAX_RING_SIZE: u64 = rustmesh_xds::cluster::RingHashLbConfig::MAX_RING_SIZE;
/// Envoy's largest Maglev table (`maglev.tableSize`).
const MAX_MAGLEV_TABLE_SIZE: u64 = rustmesh_xds::cluster::MaglevLbConfig::MAX_TABLE_SIZE;

/// Trial division: enough for table sizes up to a few million.
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

const PORT_PROTOCOLS: [&str; 11] = [
    "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "MONGO", "REDIS", "MYSQL", "TCP", "TLS", "UDP",
];

fn sidecar_port(f: &mut Findings, p: &str, port: &SidecarPort) {
    f.port(&format!("{p}.number"), port.number);
    if let Some(proto) = &port.protocol
        && !PORT_PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str())
    {
        f.err(
            format!("{p}.protocol"),
            format!(
                "unknown protocol {proto:?} (expected one of {})",
                PORT_PROTOCOLS.join(", ")
            ),
        );
    }
    if let Some(t) = port.target_port {
        f.port(&format!("{p}.targetPort"), t);
    }
}

impl Validate for SidecarSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut f = Findings::default();
        if self.egress.is_empty()
            && self.ingress.is_empty()
            && self.outbound_traffic_policy.is_none()
            && self.inbound_connection_pool.is_none()
        {
            f.err("spec", "empty Sidecar: give egress, ingress, outboundTrafficPolicy or inboundConnectionPool");
        }
        if let Some(sel) = &self.workload_selector
            && sel.labels.is_empty()
        {
            f.err(
                "spec.workloadSelector.labels",
                "a workloadSelector needs at least one label",
            );
        }
        let mut ports = BTreeMap::new();
        for (i, ing) in self.ingress.iter().enumerate() {
            let p = format!("spec.ingress[{i}]");
            sidecar_port(&mut f, &format!("{p}.port"), &ing.port);
            if ports.insert(ing.port.number, i).is_some() {
                f.err(
                    format!("{p}.port.number"),
                    format!("port {} is used by two ingress listeners", ing.port.number),
                );
            }
            if let Some(ep) = &ing.default_endpoint {
                match crate::sidecar::DefaultEndpoint::parse(ep) {
                    None => f.err(
                        format!("{p}.defaultEndpoint"),
                        format!("{ep:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix://PATH"),
                    ),
                    Some(crate::sidecar::DefaultEndpoint::Unix(_)) => f.err(
                        format!("{p}.defaultEndpoint"),
                        format!("{ep:?}: Unix domain socket endpoints are not implemented by rustmesh; use 127.0.0.1:PORT or 0.0.0.0:PORT"),
                    ),
                    Some(crate::sidecar::DefaultEndpoint::Instance(port))
                        if u32::from(port) != ing.port.number =>
                    {
                        f.err(
                            format!("{p}.defaultEndpoint"),
                            format!(
                                "{ep:?}: rustmesh forwards 0.0.0.0/[::] endpoints to the connection's original destination, so the port must be the listener's ({}); use 127.0.0.1:{port} to reach the app on another port",
                                ing.port.number
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
        }
        let mut catch_all = 0;
        for (i, eg) in self.egress.iter().enumerate() {
            let p = format!("spec.egress[{i}]");
            match &eg.port {
                Some(port) => sidecar_port(&mut f, &format!("{p}.port"), port),
                None => {
                    catch_all += 1;
                    if catch_all > 1 {
                        f.err(
                            format!("{p}.port"),
                            "only one egress listener may omit the port",
                        );
                    } else if i + 1 != self.egress.len() {
                        f.err(
                            format!("{p}.port"),
                            "the egress listener without a port must be the last one",
                        );
                    }
                }
            }
            if eg.hosts.is_empty() {
                f.err(format!("{p}.hosts"), "at least one host is required");
            }
            for (j, h) in eg.hosts.iter().enumerate() {
                match EgressHost::parse(h) {
                    None => f.err(
                        format!("{p}.hosts[{j}]"),
                        format!("{h:?} must have the form namespace/dnsName, e.g. `./*`, `istio-system/*` or `*/reviews.default.svc.cluster.local`"),
                    ),
                    Some(eh) => {
                        if !matches!(eh.namespace, "." | "*" | "~") && !is_dns_label(eh.namespace) {
                            f.err(format!("{p}.hosts[{j}]"), format!("{:?} is not `.`, `*`, `~` or a namespace name", eh.namespace));
                        }
                        f.host(&format!("{p}.hosts[{j}]"), eh.host);
                    }
                }
            }
        }
        if let Some(otp) = &self.outbound_traffic_policy
            && let Some(proxy) = &otp.egress_proxy
        {
            f.destination("spec.outboundTrafficPolicy.egressProxy", proxy);
        }
        f.0.extend(crate::support::refused_fields("Sidecar", self));
        f.0
    }
}
