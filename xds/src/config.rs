//! The whole configuration of one proxy: what the operator writes into the ConfigMap, what the
//! proxy loads (refusing an invalid document while the previous one keeps serving), and what
//! `/config_dump` shows.

use crate::cluster::{Cluster, ClusterLoadAssignment, DiscoveryType, Host, LbPolicy};
use crate::error::Error;
use crate::listener::{FilterChain, Listener, NetworkFilter};
use crate::regex::{Anchor, RegexBudget};
use crate::route::{RouteAction, RouteConfiguration, StringMatcher};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

/// A proxy's configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Opaque version (the operator writes a content hash); shown by `/config_dump`.
    #[serde(default)]
    pub version_info: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Route tables referenced by HTTP listeners (`rds.routeConfigName`).
    #[serde(default)]
    pub routes: Vec<RouteConfiguration>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Endpoints of EDS clusters, keyed by `clusterName` = the cluster's `edsClusterConfig.serviceName`.
    #[serde(default)]
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Names the DNS proxy answers for (Istio's name table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<DnsEntry>,
    /// The PeerAuthentication policies that can apply to this scope's pods (see
    /// [`crate::peer_authn`]); absent: PERMISSIVE everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_authentication: Option<crate::peer_authn::PeerAuthentication>,
    /// The AuthorizationPolicy objects that can apply to this scope's pods (see
    /// [`crate::authz`]); absent: no policy, every request is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<crate::authz::Authorization>,
    /// The RequestAuthentication objects that can apply to this scope's pods, key sets
    /// resolved (see [`crate::request_authn`]); absent: no JWT is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_authentication: Option<crate::request_authn::RequestAuthentication>,
    /// The Telemetry policies that can apply to this scope's pods, with the mesh's providers
    /// (see [`crate::telemetry`]); absent: the mesh's access log and tracing settings on every
    /// listener, every metric recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::Telemetry>,
}

/// A host name and its addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsEntry {
    /// The FQDN, e.g. `reviews.bookinfo.svc.cluster.local`.
    pub name: String,
    /// Other names answered the same way (`reviews`, `reviews.bookinfo`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

impl ProxyConfig {
    /// Reads and validates a JSON document. Errors name the field (and line for syntax errors).
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let config: ProxyConfig = parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration without validating it: the scope's own part of a split
    /// configuration, whose endpoints are still to come ([`ProxyConfig::with_parts`]).
    pub fn from_json_unvalidated(text: &str) -> Result<Self, Error> {
        parse(text)
    }

    /// Puts a split configuration back together (see [`crate::scope`]): adds the endpoint parts'
    /// assignments (sorted by cluster name, as rendered), sets `versionInfo`, then validates the
    /// whole. An assignment given twice is refused, naming the cluster.
    pub fn with_parts(
        mut self,
        parts: Vec<crate::scope::EndpointPart>,
        version_info: String,
    ) -> Result<Self, Error> {
        for part in parts {
            self.endpoints.extend(part.endpoints);
        }
        self.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        let twice: Vec<(String, String)> = self
            .endpoints
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0].cluster_name == w[1].cluster_name)
            .map(|(i, w)| {
                (
                    format!("endpoints[{}].clusterName", i + 1),
                    format!("endpoints of {:?} are given twice", w[1].cluster_name),
                )
            })
            .collect();
        if !twice.is_empty() {
            return Err(Error::Invalid(twice));
        }
        self.version_info = version_info;
        self.validate()?;
        Ok(self)
    }

    /// Pretty JSON, as written into the ConfigMap and shown by `/config_dump`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("configuration always serialises")
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfiguration> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Endpoints of a cluster: inline for STATIC, from `endpoints` for EDS.
    pub fn load_assignment<'a>(
        &'a self,
        cluster: &'a Cluster,
    ) -> Option<&'a ClusterLoadAssignment> {
        match (&cluster.load_assignment, &cluster.eds_cluster_config) {
            (Some(la), _) => Some(la),
            (None, Some(eds)) => self
                .endpoints
                .iter()
                .find(|e| e.cluster_name == eds.service_name),
            _ => None,
        }
    }

    /// Checks that the document is consistent; lists every problem with its field path.
    pub fn validate(&self) -> Result<(), Error> {
        let mut v = Checker::default();
        v.run(self);
        if v.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(v.errors))
        }
    }
}

/// The most DNS names one STRICT_DNS cluster may list (each is resolved on its own schedule).
pub const MAX_DNS_NAMES: usize = 64;

/// Whether `n` is a DNS name (RFC 1123 labels of letters, digits, `-` and `_`, at most 253
/// characters, an optional trailing dot).
pub fn is_dns_name(n: &str) -> bool {
    let n = n.strip_suffix('.').unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Deserialises JSON with errors naming the field, line and column.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        Error::Parse {
            field: e.path().to_string(),
            line: inner.line(),
            column: inner.column(),
            message: inner
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    })
}

struct Checker {
    errors: Vec<(String, String)>,
    clusters: HashSet<String>,
    /// Every pattern of the document, counted together.
    regexes: RegexBudget,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            errors: Vec::new(),
            clusters: HashSet::new(),
            regexes: RegexBudget::new("proxy configuration"),
        }
    }
}

fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(usize, &'a str)> {
    let mut seen = BTreeSet::new();
    names
        .enumerate()
        .filter(|(_, n)| !seen.insert(*n))
        .collect()
}

impl Checker {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push((field.into(), message.into()));
    }

    fn run(&mut self, c: &ProxyConfig) {
        self.clusters = c.clusters.iter().map(|c| c.name.clone()).collect();
        if let Some(t) = &c.telemetry
            && let Err(e) = t.check()
        {
            self.err("telemetry", e.to_string());
        }
        for (i, n) in duplicates(c.listeners.iter().map(|l| l.name.as_str())) {
            self.err(
                format!("listeners[{i}].name"),
                format!("listener {n:?} is defined twice"),
            );
        }
        for (i, n) in duplicates(c.routes.iter().map(|r| r.name.as_str())) {
            self.err(
                format!("routes[{i}].name"),
                format!("route table {n:?} is defined twice"),
            );
        }
        for (i, n) in duplicates(c.clusters.iter().map(|c| c.name.as_str())) {
            self.err(
                format!("clusters[{i}].name"),
                format!("cluster {n:?} is defined twice"),
            );
        }
        let route_names: HashSet<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
        let mut bound = HashSet::new();
        for (i, l) in c.listeners.iter().enumerate() {
            let p = format!("listeners[{i}]");
            if l.name.is_empty() {
                self.err(format!("{p}.name"), "listener name is required");
            }
            if l.bind_to_port {
                if l.address.socket_address.port_value == 0 {
                    self.err(
                        format!("{p}.address.socketAddress.portValue"),
                        "a bound listener needs a port",
                    );
                }
                if !bound.insert(l.address.socket_address) {
                    self.err(
                        format!("{p}.address"),
                        "two bound listeners share this address",
                    );
                }
            }
            if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
                self.err(
                    format!("{p}.filterChains"),
                    "a listener needs a filter chain or a defaultFilterChain",
                );
            }
            for (j, fc) in l.filter_chains.iter().enumerate() {
                self.chain(&format!("{p}.filterChains[{j}]"), fc, &route_names);
            }
            if let Some(fc) = &l.default_filter_chain {
                self.chain(&format!("{p}.defaultFilterChain"), fc, &route_names);
            }
        }
        for (i, r) in c.routes.iter().enumerate() {
            self.route_config(&format!("routes[{i}]"), r);
        }
        let eds_names: HashSet<&str> = c
            .clusters
            .iter()
            .filter_map(|c| {
                c.eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.as_str())
            })
            .collect();
        for (i, cl) in c.clusters.iter().enumerate() {
            let p = format!("clusters[{i}]");
            match cl.type_ {
                DiscoveryType::Eds if cl.eds_cluster_config.is_none() => self.err(
                    format!("{p}.edsClusterConfig"),
                    "an EDS cluster needs edsClusterConfig.serviceName",
                ),
                DiscoveryType::Static | DiscoveryType::StrictDns | DiscoveryType::LogicalDns
                    if cl.load_assignment.is_none() =>
                {
                    self.err(
                        format!("{p}.loadAssignment"),
                        "a STATIC, STRICT_DNS or LOGICAL_DNS cluster needs loadAssignment",
                    )
                }
                DiscoveryType::OriginalDst if cl.lb_policy != LbPolicy::ClusterProvided => self
                    .err(
                        format!("{p}.lbPolicy"),
                        "an ORIGINAL_DST cluster must use CLUSTER_PROVIDED",
                    ),
                _ => {}
            }
            let sockets = cl
                .transport_socket
                .iter()
                .map(|t| (format!("{p}.transportSocket"), t))
                .chain(
                    cl.transport_socket_matches
                        .iter()
                        .enumerate()
                        .map(|(j, m)| {
                            (
                                format!("{p}.transportSocketMatches[{j}].transportSocket"),
                                &m.transport_socket,
                            )
                        }),
                );
            let mut problems = Vec::new();
            for (at, socket) in sockets {
                if let Some(t) = socket.tls() {
                    for (field, message) in
                        t.common_tls_context.problems(crate::tls::Side::Upstream)
                    {
                        problems.push((
                            format!("{at}.typedConfig.commonTlsContext.{field}"),
                            message,
                        ));
                    }
                }
            }
            for (field, message) in problems {
                self.err(field, message);
            }
            if let Some(la) = &cl.load_assignment {
                self.endpoint_hosts(&format!("{p}.loadAssignment"), la, cl.type_);
            }
            if cl.type_.is_dns() && cl.dns_refresh_rate.is_some_and(|r| r.as_std().is_zero()) {
                self.err(format!("{p}.dnsRefreshRate"), "must be more than 0");
            }
            if cl.type_ != DiscoveryType::OriginalDst && cl.lb_policy == LbPolicy::ClusterProvided {
                self.err(
                    format!("{p}.lbPolicy"),
                    "CLUSTER_PROVIDED is only for ORIGINAL_DST clusters",
                );
            }
            if let Some(o) = &cl.outlier_detection {
                for (name, v) in [
                    ("maxEjectionPercent", o.max_ejection_percent),
                    ("minHealthPercent", o.min_health_percent),
                ] {
                    if v.is_some_and(|v| v > 100) {
                        self.err(
                            format!("{p}.outlierDetection.{name}"),
                            "must be between 0 and 100",
                        );
                    }
                }
            }
        }
        for (i, e) in c.endpoints.iter().enumerate() {
            if !eds_names.contains(e.cluster_name.as_str()) {
                self.err(
                    format!("endpoints[{i}].clusterName"),
                    format!("no EDS cluster has serviceName {:?}", e.cluster_name),
                );
            }
        }
        for (i, e) in c.endpoints.iter().enumerate() {
            self.endpoint_hosts(&format!("endpoints[{i}]"), e, DiscoveryType::Eds);
        }
        for (i, n) in duplicates(c.endpoints.iter().map(|e| e.cluster_name.as_str())) {
            self.err(
                format!("endpoints[{i}].clusterName"),
                format!("endpoints for {n:?} are listed twice"),
            );
        }
        for (i, d) in c.dns.iter().enumerate() {
            if d.name.is_empty() {
                self.err(format!("dns[{i}].name"), "name is required");
            }
            if d.addresses.is_empty() {
                self.err(
                    format!("dns[{i}].addresses"),
                    "at least one address is required",
                );
            }
        }
    }

    /// Endpoint hosts are IP addresses, except in STRICT_DNS and LOGICAL_DNS clusters, whose
    /// hosts may be DNS names (at most [`MAX_DNS_NAMES`] hosts; LOGICAL_DNS: exactly one).
    fn endpoint_hosts(&mut self, p: &str, la: &ClusterLoadAssignment, type_: DiscoveryType) {
        let mut names = 0;
        for (i, l) in la.endpoints.iter().enumerate() {
            for (j, e) in l.lb_endpoints.iter().enumerate() {
                let at = format!(
                    "{p}.endpoints[{i}].lbEndpoints[{j}].endpoint.address.socketAddress.address"
                );
                match (&e.endpoint.address.socket_address.address, type_.is_dns()) {
                    (Host::Name(n), true) => {
                        names += 1;
                        if !is_dns_name(n) {
                            self.err(at, format!("{n:?} is not a DNS name"));
                        }
                    }
                    (Host::Name(n), false) => self.err(
                        at,
                        format!(
                            "{n:?} is not an IP address (DNS names only in STRICT_DNS and \
                             LOGICAL_DNS clusters)"
                        ),
                    ),
                    // An IP address in a DNS cluster resolves to itself, as in Envoy.
                    (Host::Ip(_), true) => names += 1,
                    (Host::Ip(_), false) => {}
                }
            }
        }
        if names > MAX_DNS_NAMES {
            self.err(
                format!("{p}.endpoints"),
                format!("{names} endpoints: a DNS cluster lists at most {MAX_DNS_NAMES}"),
            );
        }
        if type_ == DiscoveryType::LogicalDns && names != 1 {
            self.err(
                format!("{p}.endpoints"),
                format!("a LOGICAL_DNS cluster has exactly one endpoint, not {names}"),
            );
        }
    }

    fn cluster_ref(&mut self, field: String, name: &str) {
        if !self.clusters.contains(name) {
            self.err(field, format!("cluster {name:?} is not defined"));
        }
    }

    fn chain(&mut self, p: &str, fc: &FilterChain, routes: &HashSet<&str>) {
        let m = &fc.filter_chain_match;
        for (i, name) in m.server_names.iter().enumerate() {
            let bare = name.strip_prefix('*').unwrap_or(name);
            if bare.is_empty() || bare.contains('*') {
                self.err(
                    format!("{p}.filterChainMatch.serverNames[{i}]"),
                    format!(
                        "{name:?} is not a server name (a wildcard only as the first character)"
                    ),
                );
            }
        }
        if let Some(crate::tls::DownstreamTransportSocket::Tls(t)) = &fc.transport_socket {
            let at = format!("{p}.transportSocket.typedConfig.commonTlsContext");
            for (field, message) in t.common_tls_context.problems(crate::tls::Side::Downstream) {
                self.err(format!("{at}.{field}"), message);
            }
            if t.common_tls_context
                .tls_certificate_sds_secret_configs
                .is_empty()
            {
                self.err(
                    format!("{at}.tlsCertificateSdsSecretConfigs"),
                    "a server needs a certificate",
                );
            }
            if m.transport_protocol.as_deref() != Some(crate::listener::TLS) {
                self.err(
                    format!("{p}.filterChainMatch.transportProtocol"),
                    "a chain terminating TLS must match transportProtocol \"tls\"",
                );
            }
        }
        if let Some(tp) = &m.transport_protocol
            && tp != crate::listener::RAW_BUFFER
            && tp != crate::listener::TLS
        {
            self.err(
                format!("{p}.filterChainMatch.transportProtocol"),
                format!("{tp:?} is not raw_buffer or tls"),
            );
        }
        for (k, r) in m.prefix_ranges.iter().enumerate() {
            if r.prefix_len > r.max_len() {
                self.err(
                    format!("{p}.filterChainMatch.prefixRanges[{k}].prefixLen"),
                    format!("{} is longer than the address", r.prefix_len),
                );
            }
        }
        if fc.filters.is_empty() {
            self.err(
                format!("{p}.filters"),
                "a filter chain needs a terminal filter (tcp_proxy or http_connection_manager)",
            );
        }
        if fc.filters.len() > 1 {
            self.err(
                format!("{p}.filters"),
                "only one terminal filter per chain is supported",
            );
        }
        for (k, f) in fc.filters.iter().enumerate() {
            let fp = format!("{p}.filters[{k}].typedConfig");
            let logs = match f {
                NetworkFilter::TcpProxy(t) => &t.access_log,
                NetworkFilter::HttpConnectionManager(h) => &h.access_log,
            };
            for (n, log) in logs.iter().enumerate() {
                if let Err(e) = log.compile() {
                    self.err(format!("{fp}.accessLog[{n}]"), e.to_string());
                }
            }
            match f {
                NetworkFilter::TcpProxy(t) => match (&t.cluster, &t.weighted_clusters) {
                    (Some(c), None) => self.cluster_ref(format!("{fp}.cluster"), c),
                    (None, Some(w)) => {
                        for (n, cw) in w.clusters.iter().enumerate() {
                            self.cluster_ref(
                                format!("{fp}.weightedClusters.clusters[{n}].name"),
                                &cw.name,
                            );
                        }
                        if w.clusters.iter().map(|c| u64::from(c.weight)).sum::<u64>() == 0 {
                            self.err(format!("{fp}.weightedClusters"), "weights add up to 0");
                        }
                    }
                    _ => self.err(
                        fp,
                        "exactly one of cluster and weightedClusters is required",
                    ),
                },
                NetworkFilter::HttpConnectionManager(h) => match (&h.rds, &h.route_config) {
                    (Some(r), None) => {
                        if !routes.contains(r.route_config_name.as_str()) {
                            self.err(
                                format!("{fp}.rds.routeConfigName"),
                                format!("route table {:?} is not defined", r.route_config_name),
                            );
                        }
                    }
                    (None, Some(rc)) => self.route_config(&format!("{fp}.routeConfig"), rc),
                    _ => self.err(fp, "exactly one of rds and routeConfig is required"),
                },
            }
        }
    }

    fn string_matcher(&mut self, p: &str, m: &StringMatcher) {
        if m.kinds() != 1 {
            self.err(
                p.to_string(),
                "exactly one of exact, prefix, suffix, contains, safeRegex is required",
            );
        }
        if let Some(r) = &m.safe_regex {
            self.regex(&format!("{p}.safeRegex.regex"), &r.regex, Anchor::Whole);
        }
    }

    /// Compiles `re` as the proxy will, within the per-pattern limits and the document's budget.
    fn regex(&mut self, p: &str, re: &str, anchor: Anchor) {
        if let Err(problem) = self.regexes.compile(re, anchor) {
            self.err(p.to_string(), problem.to_string());
        }
    }

    fn route_config(&mut self, p: &str, rc: &RouteConfiguration) {
        if rc.name.is_empty() {
            self.err(format!("{p}.name"), "route table name is required");
        }
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let vp = format!("{p}.virtualHosts[{i}]");
            if vh.domains.is_empty() {
                self.err(
                    format!("{vp}.domains"),
                    "a virtual host needs at least one domain",
                );
            }
            for (j, r) in vh.routes.iter().enumerate() {
                let rp = format!("{vp}.routes[{j}]");
                let m = &r.match_;
                let kinds = [m.prefix.is_some(), m.path.is_some(), m.safe_regex.is_some()];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    self.err(
                        format!("{rp}.match"),
                        "exactly one of prefix, path and safeRegex is required",
                    );
                }
                if let Some(re) = &m.safe_regex {
                    self.regex(
                        &format!("{rp}.match.safeRegex.regex"),
                        &re.regex,
                        Anchor::Whole,
                    );
                }
                for (k, h) in m.headers.iter().enumerate() {
                    match (&h.string_match, h.present_match) {
                        (Some(sm), None) => {
                            self.string_matcher(&format!("{rp}.match.headers[{k}].stringMatch"), sm)
                        }
                        (None, Some(_)) => {}
                        _ => self.err(
                            format!("{rp}.match.headers[{k}]"),
                            "exactly one of stringMatch and presentMatch is required",
                        ),
                    }
                }
                for (k, q) in m.query_parameters.iter().enumerate() {
                    match (&q.string_match, q.present_match) {
                        (Some(sm), None) => self.string_matcher(
                            &format!("{rp}.match.queryParameters[{k}].stringMatch"),
                            sm,
                        ),
                        (None, Some(_)) => {}
                        _ => self.err(
                            format!("{rp}.match.queryParameters[{k}]"),
                            "exactly one of stringMatch and presentMatch is required",
                        ),
                    }
                }
                let actions = [
                    r.route.is_some(),
                    r.redirect.is_some(),
                    r.direct_response.is_some(),
                ];
                if actions.iter().filter(|a| **a).count() != 1 {
                    self.err(
                        rp.clone(),
                        "exactly one of route, redirect and directResponse is required",
                    );
                }
                if let Some(a) = &r.route {
                    self.route_action(&format!("{rp}.route"), a);
                }
                if let Some(c) = &r.cors {
                    for (k, o) in c.allow_origin_string_match.iter().enumerate() {
                        self.string_matcher(&format!("{rp}.cors.allowOriginStringMatch[{k}]"), o);
                    }
                    if !c.max_age.is_empty() && c.max_age.parse::<u64>().is_err() {
                        self.err(
                            format!("{rp}.cors.maxAge"),
                            format!("{:?} is not a number of seconds", c.max_age),
                        );
                    }
                }
                if let Some(rd) = &r.redirect
                    && ![301, 302, 303, 307, 308].contains(&rd.response_code)
                {
                    self.err(
                        format!("{rp}.redirect.responseCode"),
                        format!("{} is not 301, 302, 303, 307 or 308", rd.response_code),
                    );
                }
                if let Some(d) = &r.direct_response
                    && !(200..=599).contains(&d.status)
                {
                    self.err(
                        format!("{rp}.directResponse.status"),
                        format!("{} is not an HTTP status", d.status),
                    );
                }
                if let Some(f) = &r.fault {
                    if let Some(d) = &f.delay
                        && !d.percentage.is_valid()
                    {
                        self.err(
                            format!("{rp}.fault.delay.percentage"),
                            "must be between 0 and 100",
                        );
                    }
                    if let Some(a) = &f.abort {
                        if !a.percentage.is_valid() {
                            self.err(
                                format!("{rp}.fault.abort.percentage"),
                                "must be between 0 and 100",
                            );
                        }
                        if a.http_status.is_none() == a.grpc_status.is_none() {
                            self.err(
                                format!("{rp}.fault.abort"),
                                "exactly one of httpStatus and grpcStatus is required",
                            );
                        }
                        if let Some(s) = a.http_status
                            && !(200..=599).contains(&s)
                        {
                            self.err(
                                format!("{rp}.fault.abort.httpStatus"),
                                format!("{s} is not an HTTP status"),
                            );
                        }
                    }
                }
            }
        }
    }

    fn route_action(&mut self, p: &str, a: &RouteAction) {
        match (&a.cluster, &a.weighted_clusters) {
            (Some(c), None) => self.cluster_ref(format!("{p}.cluster"), c),
            (None, Some(w)) => {
                if w.clusters.is_empty() {
                    self.err(
                        format!("{p}.weightedClusters.clusters"),
                        "at least one cluster is required",
                    );
                }
                for (i, cw) in w.clusters.iter().enumerate() {
                    self.cluster_ref(format!("{p}.weightedClusters.clusters[{i}].name"), &cw.name);
                }
                if !w.clusters.is_empty()
                    && w.clusters.iter().map(|c| u64::from(c.weight)).sum::<u64>() == 0
                {
                    self.err(format!("{p}.weightedClusters"), "weights add up to 0");
                }
            }
            _ => self.err(
                p.to_string(),
                "exactly one of cluster and weightedClusters is required",
            ),
        }
        if let Some(r) = &a.retry_policy {
            for (i, code) in r.retriable_status_codes.iter().enumerate() {
                if !(100..=599).contains(code) {
                    self.err(
                        format!("{p}.retryPolicy.retriableStatusCodes[{i}]"),
                        format!("{code} is not an HTTP status"),
                    );
                }
            }
        }
        if let Some(rr) = &a.regex_rewrite {
            self.regex(
                &format!("{p}.regexRewrite.pattern.regex"),
                &rr.pattern.regex,
                Anchor::Search,
            );
        }
        for (i, m) in a.request_mirror_policies.iter().enumerate() {
            self.cluster_ref(
                format!("{p}.requestMirrorPolicies[{i}].cluster"),
                &m.cluster,
            );
            if m.percentage.is_some_and(|pc| !pc.is_valid()) {
                self.err(
                    format!("{p}.requestMirrorPolicies[{i}].percentage"),
                    "must be between 0 and 100",
                );
            }
        }
        for (i, h) in a.hash_policy.iter().enumerate() {
            let kinds = [
                h.header_name.is_some(),
                h.cookie.is_some(),
                h.source_ip,
                h.query_parameter_name.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                self.err(format!("{p}.hashPolicy[{i}]"), "exactly one of headerName, cookie, sourceIp and queryParameterName is required");
            }
        }
    }
}
