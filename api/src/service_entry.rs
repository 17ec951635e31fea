//! `ServiceEntry` (`networking.istio.io`, served as `v1`, `v1beta1` and `v1alpha3`): adds
//! entries to the mesh's service registry (external APIs, VMs, services of another registry).
//! Shapes follow <https://istio.io/latest/docs/reference/config/networking/service-entry/>.
//!
//! Issue #20: the operator renders the common egress cases (hosts, IP `addresses`, ports,
//! location, every resolution: NONE, STATIC, and DNS and DNS_ROUND_ROBIN, whose hosts or
//! endpoint names the sidecar resolves; IP and DNS-name endpoints with their ports and labels,
//! a STATIC entry's `workloadSelector` (the ready pods of the entry's namespace with those
//! labels, on the port's `targetPort`; rustmesh has no WorkloadEntry kind), endpoint
//! `weight`s, the identities mutual TLS to the entry accepts (`subjectAltNames` and the
//! endpoints' `serviceAccount`s), exportTo). What it
//! does not render is refused naming the field, never accepted and silently ignored: the
//! field-support table ([`crate::support`]) refuses the endpoints' `network` and `locality`;
//! [`ServiceEntrySpec::unsupported`] refuses `subjectAltNames`
//! that are not SPIFFE ids, `serviceAccount`s that cannot be one, `unix://` endpoints,
//! wildcard hosts with resolution DNS or DNS_ROUND_ROBIN and more than
//! [`MAX_DNS_ENDPOINTS`] endpoints to resolve. [`ServiceEntrySpec::istio_errors`] gives
//! Istio's own verdict without those refusals (what `istioctl validate` would say).
//!
//! [`ServiceEntrySpec::istio_errors`] reports Istio's errors (`ValidateServiceEntry` and the
//! CRD's rules), each naming its field:
//! - at least one host; not `*` alone; each a DNS name whose first label only may hold a
//!   wildcard (`*.example.com`), or an IP address;
//! - `addresses` IP addresses or CIDR blocks; CIDR blocks only for the NONE and STATIC
//!   resolutions;
//! - port names (DNS labels) and numbers (1 to 65535) unique, protocols Istio knows, a
//!   `targetPort` within 1 to 65535;
//! - `workloadSelector` and `endpoints` not both set; no empty key or `*` in the selector;
//! - resolution NONE: no endpoints; STATIC: endpoints whose address is an IP address or a
//!   `unix://` socket (an absolute path or `@abstract`, without ports, the entry then having
//!   exactly one port), or empty with a `network`; DNS and DNS_ROUND_ROBIN: hosts that are
//!   FQDNs when there are no endpoints, endpoints whose address is an IP address or an FQDN,
//!   at most one endpoint for DNS_ROUND_ROBIN;
//! - an endpoint's ports naming ports of the entry, with valid numbers; its labels valid
//!   Kubernetes labels;
//! - several hosts only with HTTP or TLS ports, unless the resolution is NONE;
//! - `exportTo`: `.`, `*`, `~` or namespace names, no duplicate, `*` and `~` alone.
//!
//! [`ServiceEntrySpec::warnings`] reports Istio's warnings: a `workloadSelector` without
//! labels (it selects every workload of the namespace), a partial wildcard host (`*foo.com`),
//! a TCP (or protocol-less) port without `addresses`, a `targetPort` with resolution NONE, a
//! `workloadSelector` with resolution NONE, DNS or DNS_ROUND_ROBIN, several hosts with
//! addresses and a TCP port for DNS resolutions, a STATIC endpoint with a network but no
//! address.
//!
//! Decisions where Istio is silent or needs what the spec does not hold:
//! - `exportTo: [".", <own namespace>]` is a duplicate for Istio, which knows the object's
//!   namespace; the spec alone does not, so only literal duplicates are reported here;
//! - a STATIC entry without endpoints or workloadSelector is accepted, as Istio accepts it (it
//!   has no endpoints until WorkloadEntries or pods are selected by another way: none);
//! - Istio warns about a TCP port without addresses only when automatic address allocation is
//!   off; rustmesh has none, so the warning is always given;
//! - `weight`, `locality`, `network` and `serviceAccount` of an endpoint are checked as Istio
//!   checks them (not at all, beyond their type).

use crate::error::FieldError;
use crate::sidecar::{SidecarPort, SidecarWorkloadSelector};
use crate::status::IstioStatus;
use crate::validate::{Validate, is_dns_label};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The versions `networking.istio.io` serves this kind as, newest (stored) first.
pub const VERSIONS: [&str; 3] = crate::parse::VERSIONS;

/// The spec of a ServiceEntry.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    plural = "serviceentries",
    singular = "serviceentry",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "IstioStatus",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Hosts","type":"string","description":"The hosts associated with the ServiceEntry","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Location","type":"string","description":"Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)","jsonPath":".spec.location"}"#,
    printcolumn = r#"{"name":"Resolution","type":"string","description":"Service resolution mode for the hosts (NONE, STATIC, DNS or DNS_ROUND_ROBIN)","jsonPath":".spec.resolution"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// The hosts of the entry: DNS names, possibly with a wildcard first label
    /// (`*.example.com`), matched by VirtualServices and DestinationRules, by the HTTP
    /// authority and by the TLS SNI.
    pub hosts: Vec<String>,
    /// The virtual IP addresses (or CIDR blocks) of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The ports of the service: number, protocol, name (unique) and the endpoints'
    /// `targetPort`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<SidecarPort>,
    /// Whether the service is outside the mesh (default) or part of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How the service's endpoints are found (default NONE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// The endpoints of the service (WorkloadEntry's shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    /// The pods and WorkloadEntries of the entry's namespace that are its endpoints (MESH_INTERNAL
    /// services); exclusive with `endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarWorkloadSelector>,
    /// The namespaces the entry is visible to: `.` (its own), `*` (all, the default), `~`
    /// (none) or namespace names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// The identities the service's certificates may present (verified in addition to the
    /// service accounts of its workloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// `ServiceEntry.Location`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mutual TLS, metrics as for an external service.
    #[default]
    MeshExternal,
    /// Part of the mesh (VMs added by hand, for example).
    MeshInternal,
}

/// `ServiceEntry.Resolution`: how the proxy finds the endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// The connection goes to the address the application asked for.
    #[default]
    None,
    /// The endpoints' IP addresses (or Unix sockets).
    Static,
    /// The hosts (or the endpoints' names) resolved by DNS, every address used.
    Dns,
    /// The hosts (or the one endpoint's name) resolved by DNS, the first address used.
    DnsRoundRobin,
}

impl Resolution {
    /// Istio's name: `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        }
    }
}

/// `WorkloadEntry`: one endpoint of a ServiceEntry (a VM, a bare-metal host, an external
/// name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// An IP address, a DNS name (DNS resolutions) or `unix:///path` (STATIC); may be empty
    /// when `network` is set (reached through the network's gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The endpoint's port for each port of the entry, by the entry's port name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// The endpoint's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The network the endpoint is in (multi-network meshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// The endpoint's load-balancing weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The service account of the workload, when it runs a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// The port protocols Istio knows (case-insensitive), and which of them carry HTTP or TLS (so
/// several hosts can share a port).
const PROTOCOLS: [(&str, bool); 12] = [
    ("HTTP", true),
    ("HTTPS", true),
    ("HTTP2", true),
    ("HTTP_PROXY", true),
    ("GRPC", true),
    ("GRPC-WEB", true),
    ("TLS", true),
    ("TCP", false),
    ("UDP", false),
    ("MONGO", false),
    ("REDIS", false),
    ("MYSQL", false),
];

fn protocol(p: Option<&str>) -> Option<(&'static str, bool)> {
    let p = p?.to_ascii_uppercase();
    PROTOCOLS.iter().copied().find(|(name, _)| *name == p)
}

/// A DNS-1123 label, upper case allowed (as Istio's host checks allow it).
fn is_host_label(s: &str) -> bool {
    is_dns_label(&s.to_ascii_lowercase())
}

/// Istio's check of a DNS name (`ValidateDNS1123Labels`): at most 255 characters, each label a
/// DNS label, a trailing dot allowed, the last label not all digits.
fn dns_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty".to_string());
    }
    if name.len() > 255 {
        return Some(format!("domain name {name:?} too long (max 255)"));
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = trimmed.split('.').collect();
    let top = labels.last().copied().unwrap_or_default();
    if !top.is_empty() && top.chars().all(|c| c.is_ascii_digit()) {
        return Some(format!(
            "domain name {name:?} invalid (top level domain {top:?} cannot be all-numeric)"
        ));
    }
    labels
        .iter()
        .find(|l| !is_host_label(l))
        .map(|l| format!("domain name {name:?} invalid (label {l:?} invalid)"))
}

/// Istio's `ValidateWildcardDomain`: the first label may be `*` or start with `*`.
pub(crate) fn wildcard_domain_problem(host: &str) -> Option<String> {
    if host.len() > 255 {
        return Some(format!("domain name {host:?} too long (max 255)"));
    }
    let (first, rest) = match host.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (host, None),
    };
    let first_ok = first == "*"
        || (first.len() <= 63
            && is_host_label(
                first
                    .strip_prefix("*-")
                    .or_else(|| first.strip_prefix('*'))
                    .unwrap_or(first),
            ));
    if !first_ok {
        return Some(format!(
            "domain name {host:?} invalid (label {first:?} invalid)"
        ));
    }
    rest.and_then(dns_name_problem)
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, len)) => ip
            .parse::<IpAddr>()
            .ok()
            .zip(len.parse::<u8>().ok())
            .is_some_and(|(ip, len)| len <= if ip.is_ipv4() { 32 } else { 128 }),
        None => is_ip(s),
    }
}

/// A Kubernetes label key (`[prefix/]name`) and value.
fn label_problem(key: &str, value: &str) -> Option<String> {
    fn is_name(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }
    let key_ok = match key.split_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253 && prefix.split('.').all(is_dns_label) && is_name(name)
        }
        None => is_name(key),
    };
    if !key_ok {
        return Some(format!("invalid label key {key:?}"));
    }
    if !value.is_empty() && !is_name(value) {
        return Some(format!("invalid label value {value:?} for key {key:?}"));
    }
    None
}

impl ServiceEntrySpec {
    /// The resolution, NONE when not given (protobuf's default).
    pub fn resolution(&self) -> Resolution {
        self.resolution.unwrap_or_default()
    }

    /// The location, MESH_EXTERNAL when not given (protobuf's default).
    pub fn location(&self) -> Location {
        self.location.unwrap_or_default()
    }

    /// Istio's errors about the spec (see the module doc), without rustmesh's refusals.
    pub fn istio_errors(&self) -> Vec<FieldError> {
        self.check().0
    }

    /// Istio's warnings about the spec (see the module doc).
    pub fn warnings(&self) -> Vec<FieldError> {
        self.check().1
    }

    /// (errors, warnings), as Istio reports them.
    fn check(&self) -> (Vec<FieldError>, Vec<FieldError>) {
        let mut err = Vec::new();
        let mut warn = Vec::new();
        let resolution = self.resolution();

        if let Some(selector) = &self.workload_selector {
            if selector.labels.is_empty() {
                warn.push(FieldError::new(
                    "spec.workloadSelector",
                    "workload selector specified without labels: the service entry will be \
                     applied to all services in namespace",
                ));
            }
            for (k, v) in &selector.labels {
                if k.is_empty() {
                    err.push(FieldError::new(
                        "spec.workloadSelector.labels",
                        format!("empty key is not supported in selector: \"{k}={v}\""),
                    ));
                } else if k.contains('*') || v.contains('*') {
                    err.push(FieldError::new(
                        format!("spec.workloadSelector.labels.{k}"),
                        format!("wildcard is not supported in selector: \"{k}={v}\""),
                    ));
                }
            }
            if !self.endpoints.is_empty() {
                err.push(FieldError::new(
                    "spec.workloadSelector",
                    "only one of workloadSelector or endpoints can be set",
                ));
            }
        }

        if self.hosts.is_empty() {
            err.push(FieldError::new(
                "spec.hosts",
                "service entry must have at least one host",
            ));
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let at = format!("spec.hosts[{i}]");
            if host == "*" {
                err.push(FieldError::new(
                    at,
                    "invalid host *: a full wildcard is not allowed",
                ));
                continue;
            }
            if is_ip(host) {
                continue;
            }
            if let Some(problem) = wildcard_domain_problem(host) {
                err.push(FieldError::new(at.clone(), problem));
            }
            if host.contains('*') && !host.starts_with("*.") {
                warn.push(FieldError::new(
                    at,
                    format!("partial wildcard {host:?} not allowed"),
                ));
            }
        }

        let mut cidr = false;
        for (i, address) in self.addresses.iter().enumerate() {
            cidr |= address.contains('/');
            if !is_ip_or_cidr(address) {
                err.push(FieldError::new(
                    format!("spec.addresses[{i}]"),
                    format!("{address:?} is not a valid IP address or CIDR"),
                ));
            }
        }
        if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
            err.push(FieldError::new(
                "spec.addresses",
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
            ));
        }

        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            let name = port.name.as_deref().unwrap_or_default();
            if !is_dns_label(name) {
                err.push(FieldError::new(
                    format!("{at}.name"),
                    format!("invalid port name: {name:?} (a DNS label is required)"),
                ));
            } else if !names.insert(name) {
                err.push(FieldError::new(
                    format!("{at}.name"),
                    format!("service entry port name {name:?} already defined"),
                ));
            }
            if !(1..=65535).contains(&port.number) {
                err.push(FieldError::new(
                    format!("{at}.number"),
                    format!("port number {} must be in the range 1..65535", port.number),
                ));
            } else if !numbers.insert(port.number) {
                err.push(FieldError::new(
                    format!("{at}.number"),
                    format!("service entry port {} already defined", port.number),
                ));
            }
            if let Some(target) = port.target_port {
                if !(1..=65535).contains(&target) {
                    err.push(FieldError::new(
                        format!("{at}.targetPort"),
                        format!("port number {target} must be in the range 1..65535"),
                    ));
                }
                if resolution == Resolution::None {
                    warn.push(FieldError::new(
                        format!("{at}.targetPort"),
                        "targetPort has no effect when resolution mode is NONE",
                    ));
                }
            }
            if let Some(p) = &port.protocol
                && protocol(Some(p)).is_none()
            {
                err.push(FieldError::new(
                    format!("{at}.protocol"),
                    format!("unsupported protocol: {p}"),
                ));
            }
            if self.addresses.is_empty()
                && port
                    .protocol
                    .as_deref()
                    .is_none_or(|p| p.is_empty() || p.eq_ignore_ascii_case("TCP"))
            {
                warn.push(FieldError::new(
                    at,
                    "addresses are required for ports serving TCP (or unset) protocol: \
                     without automatic address allocation, the port cannot be told apart from \
                     other services' on the same port",
                ));
            }
        }

        match resolution {
            Resolution::None => {
                if !self.endpoints.is_empty() {
                    err.push(FieldError::new(
                        "spec.endpoints",
                        "no endpoints should be provided for resolution type NONE",
                    ));
                }
                if self.workload_selector.is_some() {
                    warn.push(FieldError::new(
                        "spec.workloadSelector",
                        "workloadSelector should not be set when resolution mode is NONE",
                    ));
                }
            }
            Resolution::Static => {
                for (i, e) in self.endpoints.iter().enumerate() {
                    self.static_endpoint(
                        &format!("spec.endpoints[{i}]"),
                        e,
                        &names,
                        &mut err,
                        &mut warn,
                    );
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                let mode = resolution.as_str();
                if self.endpoints.is_empty() {
                    for (i, host) in self.hosts.iter().enumerate() {
                        if host != "*" && dns_name_problem(host).is_some() {
                            err.push(FieldError::new(
                                format!("spec.hosts[{i}]"),
                                format!(
                                    "hosts must be FQDN if no endpoints are provided for resolution mode {mode}"
                                ),
                            ));
                        }
                    }
                }
                if resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
                    err.push(FieldError::new(
                        "spec.endpoints",
                        format!("there must only be 0 or 1 endpoint for resolution mode {mode}"),
                    ));
                }
                for (i, e) in self.endpoints.iter().enumerate() {
                    let at = format!("spec.endpoints[{i}]");
                    let address = e.address.as_deref().unwrap_or_default();
                    if !is_ip(address) && dns_name_problem(address).is_some() {
                        err.push(FieldError::new(
                            format!("{at}.address"),
                            format!(
                                "endpoint address {address:?} is not a valid FQDN or an IP address"
                            ),
                        ));
                    }
                    endpoint_labels_and_ports(&at, e, &names, &mut err);
                }
                if self.workload_selector.is_some() {
                    warn.push(FieldError::new(
                        "spec.workloadSelector",
                        format!(
                            "workloadSelector should not be set when resolution mode is {mode}"
                        ),
                    ));
                }
                let tcp = self.ports.iter().any(|p| {
                    p.protocol
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("TCP"))
                });
                if !self.addresses.is_empty() && self.hosts.len() > 1 && tcp {
                    warn.push(FieldError::new(
                        "spec.hosts",
                        "service entry can not have more than one host specified simultaneously \
                         with address and tcp port",
                    ));
                }
            }
        }

        if resolution != Resolution::None
            && self.hosts.len() > 1
            && self.ports.iter().any(|p| {
                !protocol(p.protocol.as_deref()).is_some_and(|(_, http_or_tls)| http_or_tls)
            })
        {
            err.push(FieldError::new(
                "spec.hosts",
                "multiple hosts provided with non-HTTP, non-TLS ports: a TCP proxy cannot tell \
                 the hosts apart (use resolution NONE, or one entry per host)",
            ));
        }

        export_to(&self.export_to, &mut err);
        (err, warn)
    }

    /// A STATIC endpoint (Istio's `validateWorkloadEntry` without FQDN addresses).
    fn static_endpoint(
        &self,
        at: &str,
        e: &WorkloadEntry,
        names: &BTreeSet<&str>,
        err: &mut Vec<FieldError>,
        warn: &mut Vec<FieldError>,
    ) {
        let address = e.address.as_deref().unwrap_or_default();
        if address.is_empty() {
            match &e.network {
                Some(network) if !network.is_empty() => warn.push(FieldError::new(
                    format!("{at}.address"),
                    format!("address is unset with network {network:?}"),
                )),
                _ => {
                    err.push(FieldError::new(
                        format!("{at}.address"),
                        "address is required",
                    ));
                    return;
                }
            }
        }
        if let Some(path) = address.strip_prefix("unix://") {
            if path.is_empty() {
                err.push(FieldError::new(
                    format!("{at}.address"),
                    "unix address must not be empty",
                ));
            } else if !path.starts_with('@') && (!path.starts_with('/') || path.ends_with('/')) {
                err.push(FieldError::new(
                    format!("{at}.address"),
                    format!("{path} is not an absolute path to a file"),
                ));
            }
            if !e.ports.is_empty() {
                err.push(FieldError::new(
                    format!("{at}.ports"),
                    format!("unix endpoint {address} must not include ports"),
                ));
            }
            if self.ports.len() != 1 {
                err.push(FieldError::new(
                    "spec.ports",
                    "exactly 1 service port required for unix endpoints",
                ));
            }
        } else if !address.is_empty() && !is_ip(address) {
            err.push(FieldError::new(
                format!("{at}.address"),
                format!("endpoint address {address:?} is not a valid IP address"),
            ));
        }
        endpoint_labels_and_ports(at, e, names, err);
    }
}

/// An endpoint's ports (named by a port of the entry, valid numbers) and labels.
fn endpoint_labels_and_ports(
    at: &str,
    e: &WorkloadEntry,
    names: &BTreeSet<&str>,
    err: &mut Vec<FieldError>,
) {
    for (name, port) in &e.ports {
        let field = format!("{at}.ports.{name}");
        if !names.contains(name.as_str()) {
            err.push(FieldError::new(
                field.clone(),
                format!("endpoint port {port} is not defined by the service entry (no port named {name:?})"),
            ));
        }
        if !is_dns_label(name) {
            err.push(FieldError::new(
                field.clone(),
                format!("invalid port name: {name:?}"),
            ));
        }
        if !(1..=65535).contains(port) {
            err.push(FieldError::new(
                field,
                format!("port number {port} must be in the range 1..65535"),
            ));
        }
    }
    for (k, v) in &e.labels {
        if let Some(problem) = label_problem(k, v) {
            err.push(FieldError::new(format!("{at}.labels"), problem));
        }
    }
}

/// Istio's `exportTo` rules: `.`, `*`, `~` or a namespace name, no duplicate, `*` and `~`
/// alone.
fn export_to(values: &[String], err: &mut Vec<FieldError>) {
    let mut seen = BTreeSet::new();
    for (i, v) in values.iter().enumerate() {
        let at = format!("spec.exportTo[{i}]");
        if !seen.insert(v.as_str()) {
            err.push(FieldError::new(
                at,
                format!("duplicate entries in exportTo: {v:?}"),
            ));
        } else if !matches!(v.as_str(), "." | "*" | "~") && !is_dns_label(v) {
            err.push(FieldError::new(
                at,
                format!("{v:?} is not `.`, `*`, `~` or a namespace name"),
            ));
        }
    }
    if seen.len() > 1 {
        if seen.contains("*") {
            err.push(FieldError::new(
                "spec.exportTo",
                "cannot have both public (*) and non-public exportTo values for a resource",
            ));
        }
        if seen.contains("~") {
            err.push(FieldError::new(
                "spec.exportTo",
                "if ~ is specified in exportTo, nothing else should be specified",
            ));
        }
    }
}

/// The most endpoints an entry of resolution DNS may list: the names one STRICT_DNS cluster
/// may hold ([`rustmesh_xds::config::MAX_DNS_NAMES`]).
pub const MAX_DNS_ENDPOINTS: usize = rustmesh_xds::config::MAX_DNS_NAMES;

impl ServiceEntrySpec {
    /// rustmesh's refusals that depend on a field's value rather than its presence (the
    /// support table's `ReportedBy` entries): `subjectAltNames` that are not SPIFFE ids (the sidecars verify mesh
    /// peers by SPIFFE id), an endpoint `serviceAccount` that cannot name a service account,
    /// `unix://` endpoints (the proxy dials TCP only), wildcard hosts with
    /// resolution DNS or DNS_ROUND_ROBIN (a wildcard is not a name to resolve: without endpoints
    /// Istio refuses it too, with endpoints rustmesh does not render it) and more than
    /// [`MAX_DNS_ENDPOINTS`] endpoints to resolve (the sidecar resolves at most that many
    /// names per cluster). Each names its field.
    pub fn unsupported(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        let resolution = self.resolution();
        if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            for (i, host) in self.hosts.iter().enumerate() {
                if host.contains('*') {
                    out.push(FieldError::new(
                        "spec.hosts",
                        format!(
                            "not implemented by rustmesh: the wildcard host {host:?} \
                             (spec.hosts[{i}]) with spec.resolution {}: a wildcard is not a \
                             name the sidecar can resolve; use resolution NONE, or list the \
                             hosts",
                            resolution.as_str(),
                        ),
                    ));
                }
            }
            if self.endpoints.len() > MAX_DNS_ENDPOINTS {
                out.push(FieldError::new(
                    "spec.endpoints",
                    format!(
                        "not implemented by rustmesh: {} endpoints with spec.resolution {}: \
                         the sidecar resolves at most {MAX_DNS_ENDPOINTS} names per cluster",
                        self.endpoints.len(),
                        resolution.as_str(),
                    ),
                ));
            }
        }
        for (i, san) in self.subject_alt_names.iter().enumerate() {
            if let Err(e) = san.parse::<rustmesh_xds::identity::SpiffeId>() {
                out.push(FieldError::new(
                    "spec.subjectAltNames",
                    format!(
                        "not implemented by rustmesh: {san:?} (spec.subjectAltNames[{i}]) is \
                         not a SPIFFE id ({e}); the \
                         sidecars verify a mesh peer by its SPIFFE id \
                         (spiffe://<trust domain>/ns/<namespace>/sa/<service account>), so \
                         other names are refused"
                    ),
                ));
            }
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if let Some(sa) = e.service_account.as_deref().filter(|s| !s.is_empty())
                && let Err(err) =
                    rustmesh_xds::identity::SpiffeId::new("cluster.local", "default", sa)
            {
                out.push(FieldError::new(
                    format!("spec.endpoints[{i}].serviceAccount"),
                    format!("{sa:?} cannot be a service account's name: {err}"),
                ));
            }
            if let Some(address) = e.address.as_deref().filter(|a| a.starts_with("unix://")) {
                out.push(FieldError::new(
                    format!("spec.endpoints[{i}].address"),
                    format!(
                        "not implemented by rustmesh: unix socket endpoints ({address}): the \
                         sidecar connects over TCP only"
                    ),
                ));
            }
        }
        out
    }
}

impl Validate for ServiceEntrySpec {
    /// rustmesh's refusals (fields and values rustmesh does not implement, each naming the field), then
    /// Istio's errors. The refusals come first: a refused field may also break one of Istio's
    /// rules (a `workloadSelector` beside `endpoints`), and the first message should say what
    /// rustmesh lacks.
    fn validate(&self) -> Vec<FieldError> {
        let mut out = crate::support::refused_fields("ServiceEntry", self);
        out.extend(self.unsupported());
        out.extend(self.istio_errors());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{IstioObject, load_all};

    fn doc(version: &str, spec: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/{version}\nkind: ServiceEntry\nmetadata:\n  name: se\n  namespace: foo\nspec:\n{spec}"
        )
    }

    fn spec(yaml: &str) -> ServiceEntrySpec {
        crate::parse::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The fields of Istio's errors about a spec.
    fn errors(yaml: &str) -> Vec<String> {
        spec(yaml)
            .istio_errors()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn warnings(yaml: &str) -> Vec<String> {
        spec(yaml).warnings().into_iter().map(|e| e.field).collect()
    }

    const HTTPS: &str = "ports: [{number: 443, name: https, protocol: TLS}]\n";

    #[test]
    fn read_as_every_served_version_rendered_cases_accepted_the_rest_refused_by_name() {
        for version in VERSIONS {
            // Istio's egress example with resolution NONE: accepted.
            let text = doc(
                version,
                "  hosts: [api.example.com]\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: NONE\n  exportTo: [\".\"]\n",
            );
            let obj = load_all(&text).remove(0).unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(obj, IstioObject::ServiceEntry(_)), "{version}");
            // DNS and DNS_ROUND_ROBIN resolutions: accepted (the sidecar resolves the host).
            for resolution in ["DNS", "DNS_ROUND_ROBIN"] {
                let text = doc(
                    version,
                    &format!(
                        "  hosts: [api.example.com]\n  ports: [{{number: 443, name: https, protocol: TLS}}]\n  resolution: {resolution}\n"
                    ),
                );
                let obj = load_all(&text).remove(0).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    matches!(&obj, IstioObject::ServiceEntry(se) if se.spec.resolution.is_some()),
                    "{version} {resolution}"
                );
            }
            // A wildcard host with DNS resolution: refused, naming the field and its line.
            let text = doc(
                version,
                "  hosts: ['*.example.com']\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: DNS\n  endpoints: [{address: egress.example.com}]\n",
            );
            let err = load_all(&text)
                .remove(0)
                .expect_err("a wildcard is not a name to resolve");
            let fields: Vec<(String, Option<usize>)> = err
                .field_errors()
                .into_iter()
                .map(|e| (e.field.clone(), e.line))
                .collect();
            assert_eq!(fields, [("spec.hosts".to_string(), Some(7))], "{version}");
            let message = &err.field_errors()[0].message;
            assert!(
                message.contains("not implemented by rustmesh")
                    && message.contains("spec.hosts[0]")
                    && message.contains("spec.resolution DNS")
                    && message.contains(crate::support::SERVICE_ENTRY_NOT_RENDERED),
                "{message}"
            );
        }
    }

    #[test]
    fn unix_endpoints_are_refused_by_name_and_cidr_blocks_accepted() {
        let s = spec(
            "hosts: [a.example.com]\naddresses: [10.0.0.1, 10.1.0.0/16]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: 10.2.0.1}, {address: 'unix:///var/run/a.sock'}]\n",
        );
        let found: Vec<(String, bool)> = s
            .validate()
            .into_iter()
            .map(|e| {
                (
                    e.field,
                    e.message
                        .contains(crate::support::SERVICE_ENTRY_NOT_RENDERED),
                )
            })
            .collect();
        assert_eq!(found, [("spec.endpoints[1].address".to_string(), true)]);
        // Plain IP addresses and endpoints: nothing refused.
        let s = spec(
            "hosts: [a.example.com]\naddresses: [10.0.0.1]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: 10.2.0.1, ports: {http: 8080}, labels: {v: '1'}}]\n",
        );
        assert_eq!(s.validate(), vec![]);
    }

    #[test]
    fn identities_and_weights_are_accepted_and_what_cannot_be_an_identity_is_refused() {
        let s = spec(
            "hosts: [api.internal]\nports: [{number: 80, name: http, protocol: HTTP}]\nlocation: MESH_INTERNAL\nresolution: STATIC\nsubjectAltNames: ['spiffe://cluster.local/ns/vm/sa/api']\nendpoints: [{address: 10.2.0.1, weight: 3, serviceAccount: api}, {address: 10.2.0.2, weight: 0}]\n",
        );
        assert_eq!(s.validate(), vec![]);
        let s = spec(
            "hosts: [api.internal]\nports: [{number: 80, name: http, protocol: HTTP}]\nlocation: MESH_INTERNAL\nresolution: STATIC\nsubjectAltNames: ['spiffe://cluster.local/ns/vm/sa/api', api.example.com]\nendpoints: [{address: 10.2.0.1, serviceAccount: 'api/v1'}]\n",
        );
        let errors = s.validate();
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["spec.subjectAltNames", "spec.endpoints[0].serviceAccount"]
        );
        assert!(errors[0].message.contains("SPIFFE"), "{errors:?}");
        assert!(errors[0].message.contains("[1]"), "{errors:?}");
        assert!(errors[1].message.contains("api/v1"), "{errors:?}");
    }

    #[test]
    fn defaults_are_protobufs() {
        let s = spec(&format!("hosts: [a.example.com]\n{HTTPS}"));
        assert_eq!(s.resolution(), Resolution::None);
        assert_eq!(s.location(), Location::MeshExternal);
        assert_eq!(s.istio_errors(), vec![]);
        let s = spec(
            "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]\nlocation: MESH_INTERNAL\nresolution: DNS_ROUND_ROBIN\n",
        );
        assert_eq!(s.resolution(), Resolution::DnsRoundRobin);
        assert_eq!(s.location(), Location::MeshInternal);
        assert_eq!(s.ports[0].target_port, Some(8080));
    }

    #[test]
    fn unknown_fields_and_values_are_refused_when_read() {
        for bad in [
            "hosts: [a.example.com]\nresolution: DNS_RR\n",
            "hosts: [a.example.com]\nlocation: EXTERNAL\n",
            "hosts: [a.example.com]\nendpoints: [{address: 1.2.3.4, port: 80}]\n",
            "hosts: [a.example.com]\nsubjectAltName: [x]\n",
            "addresses: [1.2.3.4]\n",
        ] {
            assert!(
                crate::parse::from_yaml::<ServiceEntrySpec>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(errors(&format!("hosts: []\n{HTTPS}")), ["spec.hosts"]);
        assert_eq!(errors(&format!("hosts: ['*']\n{HTTPS}")), ["spec.hosts[0]"]);
        assert_eq!(
            errors(&format!(
                "hosts: [a.example.com, 'foo.*.com', 'a..b', '-a.com', 'x.123']\n{HTTPS}"
            )),
            [
                "spec.hosts[1]",
                "spec.hosts[2]",
                "spec.hosts[3]",
                "spec.hosts[4]"
            ]
        );
        // A wildcard first label, an IP address, a trailing dot, upper case: accepted.
        assert_eq!(
            errors(&format!(
                "hosts: ['*.example.com', 10.0.0.1, 'example.com.', Example.COM]\n{HTTPS}"
            )),
            Vec::<String>::new()
        );
        // A partial wildcard is accepted with a warning.
        let partial = format!("hosts: ['*foo.com']\n{HTTPS}");
        assert_eq!(errors(&partial), Vec::<String>::new());
        assert_eq!(warnings(&partial), ["spec.hosts[0]"]);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            errors(&format!(
                "hosts: [a.example.com]\naddresses: [1.2.3.4, 10.0.0.0/8, '2001:db8::/32', 1.2.3, 10.0.0.0/33, a.b]\n{HTTPS}"
            )),
            [
                "spec.addresses[3]",
                "spec.addresses[4]",
                "spec.addresses[5]"
            ]
        );
        // CIDR blocks only for NONE and STATIC.
        for (resolution, refused) in [
            ("NONE", false),
            ("STATIC", false),
            ("DNS", true),
            ("DNS_ROUND_ROBIN", true),
        ] {
            let found = errors(&format!(
                "hosts: [a.example.com]\naddresses: [10.0.0.0/8]\nresolution: {resolution}\n{HTTPS}"
            ));
            assert_eq!(
                found.contains(&"spec.addresses".to_string()),
                refused,
                "{resolution}: {found:?}"
            );
        }
    }

    #[test]
    fn ports() {
        assert_eq!(
            errors(
                "hosts: [a.example.com]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 80, name: http2, protocol: HTTP2}\n- {number: 81, name: http, protocol: HTTP}\n- {number: 0, name: zero}\n- {number: 82, name: Bad_Name}\n- {number: 83}\n- {number: 84, name: p84, protocol: QUIC}\n- {number: 85, name: p85, targetPort: 70000}\n"
            ),
            [
                "spec.ports[1].number",
                "spec.ports[2].name",
                "spec.ports[3].number",
                "spec.ports[4].name",
                "spec.ports[5].name",
                "spec.ports[6].protocol",
                "spec.ports[7].targetPort",
            ]
        );
        // Protocols are case-insensitive; GRPC-Web and HTTP_PROXY are Istio's.
        assert_eq!(
            errors(
                "hosts: [a.example.com]\naddresses: [1.2.3.4]\nports:\n- {number: 80, name: a, protocol: http}\n- {number: 81, name: b, protocol: GRPC-Web}\n- {number: 82, name: c, protocol: HTTP_PROXY}\n- {number: 83, name: d, protocol: Mongo}\n"
            ),
            Vec::<String>::new()
        );
        // A TCP or protocol-less port without addresses, a targetPort with NONE: warned.
        assert_eq!(
            warnings(
                "hosts: [a.example.com]\nports:\n- {number: 80, name: a}\n- {number: 81, name: b, protocol: TCP, targetPort: 8081}\n- {number: 82, name: c, protocol: HTTP}\n"
            ),
            ["spec.ports[0]", "spec.ports[1].targetPort", "spec.ports[1]"]
        );
    }

    #[test]
    fn several_hosts_need_http_or_tls_ports_unless_resolution_is_none() {
        let tcp = "hosts: [a.example.com, b.example.com]\naddresses: [1.2.3.4]\nports: [{number: 5432, name: pg, protocol: TCP}]\n";
        assert_eq!(errors(tcp), Vec::<String>::new());
        assert_eq!(errors(&format!("{tcp}resolution: DNS\n")), ["spec.hosts"]);
        assert_eq!(warnings(&format!("{tcp}resolution: DNS\n")), ["spec.hosts"]);
        assert_eq!(
            errors(&format!("{tcp}resolution: STATIC\n")),
            ["spec.hosts"]
        );
        let tls = "hosts: [a.example.com, b.example.com]\nports: [{number: 443, name: https, protocol: HTTPS}, {number: 80, name: http, protocol: HTTP}]\nresolution: DNS\n";
        assert_eq!(errors(tls), Vec::<String>::new());
    }

    #[test]
    fn workload_selector() {
        let base = "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\n";
        assert_eq!(
            errors(&format!(
                "{base}workloadSelector: {{labels: {{app: a}}}}\nendpoints: [{{address: 1.2.3.4}}]\n"
            )),
            ["spec.workloadSelector"]
        );
        assert_eq!(
            errors(&format!(
                "{base}workloadSelector: {{labels: {{'': a, app: '*'}}}}\n"
            )),
            [
                "spec.workloadSelector.labels",
                "spec.workloadSelector.labels.app"
            ]
        );
        assert_eq!(
            warnings(&format!("{base}workloadSelector: {{}}\n")),
            ["spec.workloadSelector"]
        );
        assert_eq!(
            warnings(&format!("{base}workloadSelector: {{labels: {{app: a}}}}\n")),
            Vec::<String>::new()
        );
        for resolution in ["NONE", "DNS", "DNS_ROUND_ROBIN"] {
            let w = warnings(&format!(
                "hosts: [a.example.com]\nports: [{{number: 80, name: http, protocol: HTTP}}]\nresolution: {resolution}\nworkloadSelector: {{labels: {{app: a}}}}\n"
            ));
            assert_eq!(w, ["spec.workloadSelector"], "{resolution}");
        }
    }

    #[test]
    fn resolution_none_takes_no_endpoints() {
        assert_eq!(
            errors(&format!(
                "hosts: [a.example.com]\n{HTTPS}endpoints: [{{address: 1.2.3.4}}]\n"
            )),
            ["spec.endpoints"]
        );
    }

    #[test]
    fn static_endpoints() {
        let base = "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\n";
        // An IP address (v4 or v6), with ports named after the entry's.
        assert_eq!(
            errors(&format!(
                "{base}endpoints: [{{address: 1.2.3.4, ports: {{http: 8080}}, labels: {{app: a, example.com/tier: web}}}}, {{address: '2001:db8::1'}}]\n"
            )),
            Vec::<String>::new()
        );
        // No FQDN for STATIC; an address is required without a network.
        assert_eq!(
            errors(&format!(
                "{base}endpoints: [{{address: a.example.com}}, {{labels: {{app: a}}}}]\n"
            )),
            ["spec.endpoints[0].address", "spec.endpoints[1].address"]
        );
        // With a network, an empty address is a warning.
        let networked = format!("{base}endpoints: [{{network: vpc-2}}]\n");
        assert_eq!(errors(&networked), Vec::<String>::new());
        assert_eq!(warnings(&networked), ["spec.endpoints[0].address"]);
        // Ports the entry does not declare, out of range; labels Kubernetes refuses.
        assert_eq!(
            errors(&format!(
                "{base}endpoints: [{{address: 1.2.3.4, ports: {{grpc: 9090, http: 0}}, labels: {{'-bad': a}}}}]\n"
            )),
            [
                "spec.endpoints[0].ports.grpc",
                "spec.endpoints[0].ports.http",
                "spec.endpoints[0].labels"
            ]
        );
    }

    #[test]
    fn unix_socket_endpoints() {
        let base = "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\n";
        for good in ["unix:///var/run/example/socket", "unix://@abstract"] {
            assert_eq!(
                errors(&format!("{base}endpoints: [{{address: '{good}'}}]\n")),
                Vec::<String>::new(),
                "{good}"
            );
        }
        for bad in ["unix://", "unix://relative/socket", "unix:///var/run/"] {
            assert_eq!(
                errors(&format!("{base}endpoints: [{{address: '{bad}'}}]\n")),
                ["spec.endpoints[0].address"],
                "{bad}"
            );
        }
        assert_eq!(
            errors(&format!(
                "{base}endpoints: [{{address: 'unix:///s', ports: {{http: 80}}}}]\n"
            )),
            ["spec.endpoints[0].ports"]
        );
        assert_eq!(
            errors(
                "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP}, {number: 81, name: h2, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: 'unix:///s'}]\n"
            ),
            ["spec.ports"]
        );
    }

    #[test]
    fn dns_resolutions() {
        let ports = "ports: [{number: 80, name: http, protocol: HTTP}]\n";
        for mode in ["DNS", "DNS_ROUND_ROBIN"] {
            // Without endpoints the hosts are resolved: no wildcard.
            assert_eq!(
                errors(&format!(
                    "hosts: ['*.example.com']\n{ports}resolution: {mode}\n"
                )),
                ["spec.hosts[0]"],
                "{mode}"
            );
            // With an endpoint, the hosts may be wildcards; the endpoint an FQDN or an IP.
            assert_eq!(
                errors(&format!(
                    "hosts: ['*.example.com']\n{ports}resolution: {mode}\nendpoints: [{{address: lb.example.com, ports: {{http: 8080}}}}]\n"
                )),
                Vec::<String>::new(),
                "{mode}"
            );
            assert_eq!(
                errors(&format!(
                    "hosts: [a.example.com]\n{ports}resolution: {mode}\nendpoints: [{{address: 'bad name'}}]\n"
                )),
                ["spec.endpoints[0].address"],
                "{mode}"
            );
        }
        // DNS_ROUND_ROBIN: at most one endpoint.
        let two = "endpoints: [{address: a.example.com}, {address: b.example.com}]\n";
        assert_eq!(
            errors(&format!(
                "hosts: [a.example.com]\n{ports}resolution: DNS\n{two}"
            )),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(&format!(
                "hosts: [a.example.com]\n{ports}resolution: DNS_ROUND_ROBIN\n{two}"
            )),
            ["spec.endpoints"]
        );
        // Endpoint ports name the entry's ports.
        assert_eq!(
            errors(&format!(
                "hosts: [a.example.com]\n{ports}resolution: DNS\nendpoints: [{{address: 1.2.3.4, ports: {{https: 8443}}}}]\n"
            )),
            ["spec.endpoints[0].ports.https"]
        );
    }

    #[test]
    fn dns_resolutions_are_rendered_but_wildcards_and_too_many_names_are_refused_by_name() {
        let ports = "ports: [{number: 80, name: http, protocol: HTTP}]\n";
        let refused = |yaml: &str| -> Vec<String> {
            spec(yaml)
                .unsupported()
                .into_iter()
                .map(|e| {
                    assert!(
                        e.message
                            .contains(crate::support::SERVICE_ENTRY_NOT_RENDERED),
                        "{e}"
                    );
                    e.field
                })
                .collect()
        };
        for mode in ["DNS", "DNS_ROUND_ROBIN"] {
            // The host resolved, or endpoint names and IP addresses: nothing refused.
            let host = format!("hosts: [a.example.com]\n{ports}resolution: {mode}\n");
            assert_eq!(spec(&host).validate(), vec![], "{mode}");
            let named = format!(
                "hosts: [a.example.com]\n{ports}resolution: {mode}\nendpoints: [{{address: lb.example.com, ports: {{http: 8080}}}}]\n"
            );
            assert_eq!(spec(&named).validate(), vec![], "{mode}");
            // A wildcard host, with an endpoint (valid for Istio): refused naming the hosts,
            // the host's index and the resolution.
            let wildcard = format!(
                "hosts: [a.example.com, '*.example.com']\n{ports}resolution: {mode}\nendpoints: [{{address: lb.example.com}}]\n"
            );
            assert_eq!(refused(&wildcard), ["spec.hosts"], "{mode}");
            let message = &spec(&wildcard).unsupported()[0].message;
            assert!(
                message.contains("spec.hosts[1]")
                    && message.contains(&format!("spec.resolution {mode}")),
                "{message}"
            );
            // Without endpoints Istio refuses it too; rustmesh's refusal comes first.
            let alone = format!("hosts: ['*.example.com']\n{ports}resolution: {mode}\n");
            let fields: Vec<String> = spec(&alone)
                .validate()
                .into_iter()
                .map(|e| e.field)
                .collect();
            assert_eq!(fields, ["spec.hosts", "spec.hosts[0]"], "{mode}");
        }
        // A wildcard host with resolution NONE or STATIC: not refused.
        for mode in ["NONE", "STATIC"] {
            assert_eq!(
                refused(&format!(
                    "hosts: ['*.example.com']\n{ports}resolution: {mode}\n"
                )),
                Vec::<String>::new(),
                "{mode}"
            );
        }
        // At most 64 names to resolve (one STRICT_DNS cluster's); STATIC may list more.
        let endpoints = |n: usize| -> String {
            let list: Vec<String> = (0..n)
                .map(|i| format!("{{address: h{i}.example.com}}"))
                .collect();
            format!("endpoints: [{}]\n", list.join(", "))
        };
        let dns = format!("hosts: [a.example.com]\n{ports}resolution: DNS\n");
        assert_eq!(
            refused(&format!("{dns}{}", endpoints(MAX_DNS_ENDPOINTS))),
            Vec::<String>::new()
        );
        assert_eq!(
            refused(&format!("{dns}{}", endpoints(MAX_DNS_ENDPOINTS + 1))),
            ["spec.endpoints"]
        );
    }

    #[test]
    fn export_to() {
        let base = format!("hosts: [a.example.com]\n{HTTPS}");
        assert_eq!(
            errors(&format!("{base}exportTo: ['.', bar]\n")),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(&format!("{base}exportTo: ['~']\n")),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(&format!("{base}exportTo: ['.', '.']\n")),
            ["spec.exportTo[1]"]
        );
        assert_eq!(
            errors(&format!("{base}exportTo: [Bad_NS]\n")),
            ["spec.exportTo[0]"]
        );
        assert_eq!(
            errors(&format!("{base}exportTo: ['*', bar]\n")),
            ["spec.exportTo"]
        );
        assert_eq!(
            errors(&format!("{base}exportTo: ['~', '.']\n")),
            ["spec.exportTo"]
        );
    }

    #[test]
    fn istio_examples_validate() {
        let text = include_str!("../tests/fixtures/valid/service-entry.yaml");
        let (mut accepted, mut refused) = (0, 0);
        for (i, result) in load_all(text).into_iter().enumerate() {
            // Accepted (resolution NONE and DNS, a CIDR block, a workloadSelector), or refused
            // only as not implemented (a unix socket).
            match result {
                Ok(_) => accepted += 1,
                Err(err) => {
                    for e in err.field_errors() {
                        assert!(
                            e.message
                                .contains(crate::support::SERVICE_ENTRY_NOT_RENDERED),
                            "document {}: {e}",
                            i + 1
                        );
                    }
                    refused += 1;
                }
            }
        }
        assert_eq!((accepted, refused), (7, 1));
        use serde::Deserialize;
        for d in serde_norway::Deserializer::from_str(text) {
            let se = ServiceEntry::deserialize(d).unwrap();
            let name = se.metadata.name.clone().unwrap_or_default();
            assert_eq!(se.spec.istio_errors(), vec![], "{name}");
            assert_eq!(se.spec.warnings(), vec![], "{name}");
            let _ = IstioObject::ServiceEntry(Box::new(se));
        }
    }
}
