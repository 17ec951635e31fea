//! The service registry as the renderer reads it: each Service with its ports (protocol chosen the
//! Istio way) and, per port, its ready endpoints with the labels and service accounts of the pods
//! behind them; and each host of a ServiceEntry as a service of its own ([`EntryInfo`]), as
//! Istio's registry holds them.
//!
//! DNS-resolved services ([`DnsResolution`]): a ServiceEntry host of resolution DNS resolves
//! through the entry's `endpoints` (names or IP addresses, each at the port its `ports` maps,
//! else `targetPort`, else the entry's port), else through the host itself; DNS_ROUND_ROBIN the
//! same, one endpoint, first address. An ExternalName Service resolves `spec.externalName` at
//! each service port, as Istio's; one whose name is not a DNS name is not rendered. The
//! renderer makes them STRICT_DNS / LOGICAL_DNS clusters the sidecar resolves itself.
//!
//! ServiceEntry hosts (decisions where Istio leaves a choice or rustmesh differs):
//! - the version of an entry in the registry is its current one when it passes its own checks
//!   (`Validate`, which also refuses what rustmesh does not render), else its last accepted one,
//!   else none: the same rule as the operator's verdicts, which depend on nothing else;
//! - a host is held by one service: a Kubernetes Service of that name first, then the oldest
//!   entry naming it (creation time, namespace, name); the others are told by a warning
//!   (`validation`);
//! - an entry of resolution STATIC without `addresses` gets, for each host that is a DNS name
//!   without wildcard, one address of the class E block 240.240.0.0/16 (Istio's automatic
//!   allocation range, [`allocate`]): the FNV-1a hash of the host picks it, the next free one
//!   on a collision (entries in age order; past 65534 such hosts, addresses repeat), so it is
//!   stable while the set of entries is. The sidecar's DNS proxy answers it and its listeners
//!   catch it. Entries of resolution NONE get none: the connection must go to the address the
//!   application resolved itself.

use crate::index::{Index, Labels, ObjKey, PodInfo, SERVICE_EXPORT_TO_ANNOTATION};
use crate::protocol::Protocol;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use rustmesh_api::ServiceEntry;
use rustmesh_api::common::labels_match;
use rustmesh_api::service_entry::{Location, Resolution};
use rustmesh_api::validate::Validate;
use rustmesh_api::workload::{canonical_name_label, canonical_revision};
use rustmesh_xds::address::CidrRange;
use rustmesh_xds::cluster::EndpointWorkload;
use rustmesh_xds::config::is_dns_name;
use rustmesh_xds::identity::SpiffeId;
use rustmesh_xds::names::service_fqdn;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

/// One Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Svc {
    pub name: String,
    pub namespace: String,
    pub fqdn: String,
    /// `None` for headless services.
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<SvcPort>,
    /// From the `networking.istio.io/exportTo` annotation (a ServiceEntry's `exportTo`); empty
    /// means everywhere.
    pub export_to: Vec<String>,
    /// For a ServiceEntry host: the entry and how it resolves (`None`: a Kubernetes Service).
    pub entry: Option<EntryInfo>,
    /// A service the sidecar resolves by DNS itself: a ServiceEntry host of resolution DNS or
    /// DNS_ROUND_ROBIN, or an ExternalName Service (`None`: any other).
    pub dns: Option<DnsResolution>,
}

/// How a DNS-resolved service's cluster finds its endpoints (Istio's `DNSLB` and
/// `DNSRoundRobinLB` resolutions).
#[derive(Clone, Debug, PartialEq)]
pub struct DnsResolution {
    /// DNS_ROUND_ROBIN: one endpoint, the first address of its latest answer (a LOGICAL_DNS
    /// cluster); otherwise every address of every endpoint (STRICT_DNS).
    pub logical: bool,
    /// What the sidecar resolves, in order.
    pub endpoints: Vec<DnsEndpoint>,
}

/// What a host of a ServiceEntry is in the registry besides its ports.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryInfo {
    /// The ServiceEntry.
    pub key: ObjKey,
    pub location: Location,
    pub resolution: Resolution,
    /// Its `addresses` that are IP addresses, else the address allocated to the host (STATIC,
    /// without CIDR blocks either), else none.
    pub addresses: Vec<IpAddr>,
    /// Its `addresses` that are CIDR blocks (resolutions NONE and STATIC): a connection to any
    /// address in one, on a TCP, TLS or protocol-less port of the entry, is the entry's.
    pub cidrs: Vec<CidrRange>,
    /// Whether `addresses` is an allocated class E address.
    pub allocated: bool,
    /// The entry's `subjectAltNames` (SPIFFE ids): identities its endpoints may present to
    /// mutual TLS, beside those of their service accounts.
    pub subject_alt_names: Vec<String>,
}

/// An endpoint of a DNS-resolved service: a DNS name (or IP address), the port for each port
/// name that it maps (a ServiceEntry's `endpoints[].ports`), and its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsEndpoint {
    pub address: String,
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    /// The endpoint's load-balancing weight (a ServiceEntry endpoint's `weight`), for every
    /// address its name resolves to.
    pub weight: Option<u32>,
    /// The service account of the workload behind the name (a ServiceEntry endpoint's
    /// `serviceAccount`), in the entry's namespace.
    pub service_account: Option<String>,
}

impl DnsEndpoint {
    /// The name (or address) `address` at the service's ports, without labels.
    pub fn named(address: &str) -> Self {
        DnsEndpoint {
            address: address.to_string(),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            weight: None,
            service_account: None,
        }
    }

    /// The endpoint's port for `port`: the one its `ports` maps the port's name to, else the
    /// port's `targetPort`, else its number.
    pub fn port_for(&self, port: &SvcPort) -> u16 {
        port.name
            .as_ref()
            .and_then(|n| self.ports.get(n))
            .copied()
            .or(port.target_port)
            .unwrap_or(port.port)
    }
}

impl Svc {
    /// A Kubernetes Service without ClusterIP (a ServiceEntry host is never headless: it
    /// resolves by its `resolution`; nor is an ExternalName Service: it resolves by DNS).
    pub fn headless(&self) -> bool {
        self.entry.is_none() && self.cluster_ip.is_none() && self.dns.is_none()
    }

    /// A Kubernetes ExternalName Service (outside the mesh, as Istio's `MeshExternal`).
    pub fn external_name(&self) -> bool {
        self.entry.is_none() && self.dns.is_some()
    }

    /// The virtual addresses clients reach the service at: the ClusterIP, or an entry's
    /// addresses.
    pub fn vips(&self) -> Vec<IpAddr> {
        match &self.entry {
            Some(e) => e.addresses.clone(),
            None => self.cluster_ip.into_iter().collect(),
        }
    }

    pub fn port(&self, number: u16) -> Option<&SvcPort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// Everything but the endpoints' addresses and labels: equal shapes render the same
    /// listeners, routes and clusters (the service accounts behind each port are the identities
    /// its clusters expect, so they are part of the shape).
    pub fn same_shape(&self, other: &Svc) -> bool {
        self.name == other.name
            && self.namespace == other.namespace
            && self.fqdn == other.fqdn
            && self.cluster_ip == other.cluster_ip
            && self.export_to == other.export_to
            && self.entry == other.entry
            && self.dns == other.dns
            && self.ports.len() == other.ports.len()
            && self.ports.iter().zip(&other.ports).all(|(a, b)| {
                a.name == b.name
                    && a.port == b.port
                    && a.protocol == b.protocol
                    && a.target_port == b.target_port
                    && a.service_accounts() == b.service_accounts()
            })
    }

    /// The identities (SPIFFE ids, sorted) mutual TLS to `port` of this service accepts, as
    /// Istio's service accounts of a service: those of the pods and entry endpoints behind the
    /// port and of the names a DNS entry resolves, in the service's namespace, and an entry's
    /// `subjectAltNames`.
    pub fn identities(&self, trust_domain: &str, port: &SvcPort) -> Vec<String> {
        let dns_accounts = self
            .dns
            .iter()
            .flat_map(|d| &d.endpoints)
            .filter_map(|e| e.service_account.as_deref());
        let mut out: BTreeSet<String> = port
            .service_accounts()
            .into_iter()
            .chain(dns_accounts)
            .filter_map(|sa| SpiffeId::new(trust_domain, &self.namespace, sa).ok())
            .map(|id| id.to_string())
            .collect();
        out.extend(
            self.entry
                .iter()
                .flat_map(|e| e.subject_alt_names.iter().cloned()),
        );
        out.into_iter().collect()
    }

    /// Whether a client in `namespace` may see this service.
    pub fn exported_to(&self, namespace: &str) -> bool {
        exported(&self.export_to, &self.namespace, namespace)
    }
}

/// Istio's `exportTo` rule: empty or `*` is everywhere, `.` the object's own namespace, `~` nowhere.
pub fn exported(export_to: &[String], own: &str, client: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || (e == "." && own == client) || e == client)
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct SvcPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// The numeric target port, when it can be known (a named targetPort is resolved through
    /// the Endpoints ports).
    pub target_port: Option<u16>,
    /// Ready endpoints, sorted by address.
    pub endpoints: Vec<Ep>,
}

impl SvcPort {
    /// The service accounts of the pods behind the port, sorted and deduplicated (endpoints
    /// without a known pod have none).
    pub fn service_accounts(&self) -> BTreeSet<&str> {
        self.endpoints
            .iter()
            .filter_map(|e| e.service_account.as_deref())
            .collect()
    }
}

/// One ready endpoint of a port.
#[derive(Clone, Debug, PartialEq)]
pub struct Ep {
    pub ip: IpAddr,
    pub port: u16,
    /// The pod behind the address (Endpoints `targetRef`), when known.
    pub pod: Option<ObjKey>,
    pub labels: Labels,
    /// The pod's service account, when the pod is known (or a ServiceEntry endpoint's
    /// `serviceAccount`).
    pub service_account: Option<String>,
    /// A ServiceEntry endpoint's `weight` (pods have none: 1).
    pub weight: Option<u32>,
    /// The pod's workload, canonical service and revision and cluster, when the pod is known
    /// (written into the endpoint's metadata, for the client sidecars' metric labels).
    pub workload: Option<EndpointWorkload>,
}

/// All services, by FQDN.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Sorted by FQDN.
    pub services: Vec<Svc>,
    by_fqdn: HashMap<String, usize>,
}

impl Registry {
    pub fn build(index: &Index) -> Self {
        let mut services: Vec<Svc> = index
            .services
            .keys()
            .filter_map(|key| Self::service(index, key))
            .collect();
        let mut taken: BTreeSet<String> = services.iter().map(|s| s.fqdn.clone()).collect();
        services.extend(entry_services(index, &mut taken));
        services.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        let by_fqdn = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.fqdn.clone(), i))
            .collect();
        Registry { services, by_fqdn }
    }

    pub fn get(&self, fqdn: &str) -> Option<&Svc> {
        self.by_fqdn.get(fqdn).map(|i| &self.services[*i])
    }

    /// One Service as [`Registry::build`] would see it now (`None`: not rendered, or absent).
    pub fn service(index: &Index, key: &ObjKey) -> Option<Svc> {
        convert(
            key,
            index.services.get(key)?,
            index.endpoints.get(key),
            &index.pods,
            &index.mesh.domain_suffix,
            &index.mesh.cluster_id,
        )
    }

    /// Replaces the entry of a service whose shape did not change (only its endpoints).
    pub fn update_endpoints(&mut self, svc: Svc) {
        if let Some(i) = self.by_fqdn.get(&svc.fqdn) {
            self.services[*i] = svc;
        }
    }
}

fn convert(
    key: &ObjKey,
    svc: &Service,
    endpoints: Option<&Endpoints>,
    pods: &BTreeMap<ObjKey, PodInfo>,
    domain_suffix: &str,
    cluster_id: &str,
) -> Option<Svc> {
    let spec = svc.spec.as_ref()?;
    // An ExternalName Service is resolved by the sidecar (Istio's rendering): its one endpoint
    // is `externalName` at each service port. Without a usable name: not rendered.
    let dns = if spec.type_.as_deref() == Some("ExternalName") {
        let name = spec
            .external_name
            .as_deref()
            .map(|n| n.trim_end_matches('.'))
            .filter(|n| is_dns_name(n) || n.parse::<IpAddr>().is_ok())?;
        Some(DnsResolution {
            logical: false,
            endpoints: vec![DnsEndpoint::named(name)],
        })
    } else {
        None
    };
    let cluster_ip = match spec.cluster_ip.as_deref() {
        _ if dns.is_some() => None,
        None | Some("") | Some("None") => None,
        Some(ip) => Some(ip.parse().ok()?),
    };
    let export_to = svc
        .annotations()
        .get(SERVICE_EXPORT_TO_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let single_port = spec.ports.as_ref().is_some_and(|p| p.len() == 1);
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Ok(number) = u16::try_from(p.port) else {
            continue;
        };
        let protocol = Protocol::of_service_port(
            number,
            p.name.as_deref(),
            p.protocol.as_deref(),
            p.app_protocol.as_deref(),
        );
        if protocol == Protocol::Udp {
            continue; // UDP and SCTP ports get no listener and no cluster
        }
        let endpoints = port_endpoints(endpoints, p.name.as_deref(), single_port, pods, cluster_id);
        let target_port = match &p.target_port {
            // An ExternalName's endpoint is reached at the service port (targetPort unused).
            _ if dns.is_some() => Some(number),
            None => Some(number),
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) => Some(n),
                Err(_) => endpoints.first().map(|e| e.port),
            },
        };
        ports.push(SvcPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: number,
            protocol,
            target_port,
            endpoints,
        });
    }
    ports.sort_by_key(|p| p.port);
    Some(Svc {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        fqdn: service_fqdn(&key.name, &key.namespace, domain_suffix),
        cluster_ip,
        ports,
        export_to,
        entry: None,
        dns,
    })
}

/// The version of each ServiceEntry the registry holds, oldest first: the current one when it
/// passes its own checks, else its last accepted one (an invalid update), else none.
pub fn rendered_entries(index: &Index) -> Vec<(&ObjKey, &ServiceEntry)> {
    let store = &index.service_entries;
    let mut out: Vec<(&ObjKey, &ServiceEntry)> = store
        .objects
        .iter()
        .filter_map(|(key, se)| {
            if se.spec.validate().is_empty() {
                Some((key, se))
            } else {
                store.last_good.get(key).map(|previous| (key, previous))
            }
        })
        .collect();
    out.sort_by_key(|(_, se)| crate::validation::age_key(&se.metadata));
    out
}

/// One registry service per host of each rendered ServiceEntry whose host no Kubernetes Service
/// or older entry holds (`taken`, which it extends).
fn entry_services(index: &Index, taken: &mut BTreeSet<String>) -> Vec<Svc> {
    let mut out = Vec::new();
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let mut wanting: Vec<usize> = Vec::new();
    for (key, se) in rendered_entries(index) {
        let spec = &se.spec;
        let selected = selected_pods(index, key, spec);
        let addresses: Vec<IpAddr> = spec
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let cidrs: Vec<CidrRange> = spec
            .addresses
            .iter()
            .filter(|a| a.contains('/'))
            .filter_map(|a| CidrRange::parse(a))
            .collect();
        used.extend(&addresses);
        for host in &spec.hosts {
            if !taken.insert(host.clone()) {
                continue;
            }
            let ports = entry_ports(spec, &selected, &index.mesh.cluster_id);
            let allocate = spec.resolution() == Resolution::Static
                && addresses.is_empty()
                && cidrs.is_empty()
                && !host.contains('*')
                && host.parse::<IpAddr>().is_err();
            if allocate {
                wanting.push(out.len());
            }
            out.push(Svc {
                name: host.clone(),
                namespace: key.namespace.clone(),
                fqdn: host.clone(),
                cluster_ip: None,
                ports,
                export_to: spec.export_to.clone(),
                entry: Some(EntryInfo {
                    key: key.clone(),
                    location: spec.location(),
                    resolution: spec.resolution(),
                    addresses: addresses.clone(),
                    cidrs: cidrs.clone(),
                    allocated: false,
                    subject_alt_names: spec.subject_alt_names.clone(),
                }),
                dns: dns_resolution(spec, host),
            });
        }
    }
    for i in wanting {
        let svc = &mut out[i];
        let ip = allocate(&svc.fqdn, &used);
        used.insert(ip);
        if let Some(e) = &mut svc.entry {
            e.addresses = vec![ip];
            e.allocated = true;
        }
    }
    out
}

/// How a DNS-resolved entry's `host` resolves (resolution DNS or DNS_ROUND_ROBIN; `None` for
/// the others): through the entry's `endpoints` (names or IP addresses), else the host itself
/// (Istio's rule).
fn dns_resolution(spec: &rustmesh_api::ServiceEntrySpec, host: &str) -> Option<DnsResolution> {
    let logical = match spec.resolution() {
        Resolution::Dns => false,
        Resolution::DnsRoundRobin => true,
        Resolution::None | Resolution::Static => return None,
    };
    if spec.endpoints.is_empty() {
        return Some(DnsResolution {
            logical,
            endpoints: vec![DnsEndpoint::named(host)],
        });
    }
    let endpoints = spec
        .endpoints
        .iter()
        .filter_map(|e| {
            Some(DnsEndpoint {
                address: e.address.clone()?,
                ports: e
                    .ports
                    .iter()
                    .filter_map(|(n, p)| Some((n.clone(), u16::try_from(*p).ok()?)))
                    .collect(),
                labels: e.labels.clone(),
                weight: e.weight,
                service_account: e.service_account.clone().filter(|s| !s.is_empty()),
            })
        })
        .collect();
    Some(DnsResolution { logical, endpoints })
}

/// The first address of the automatic allocation range (240.240.0.0/16), and how many it has
/// (the block's first and last addresses are left out).
const ALLOCATION_BASE: u32 = u32::from_be_bytes([240, 240, 0, 0]);
const ALLOCATION_SIZE: u32 = 65534;

/// The class E address of `host`: 240.240.0.1 + FNV-1a(host) mod 65534, or the next one not
/// in `used`.
pub fn allocate(host: &str, used: &BTreeSet<IpAddr>) -> IpAddr {
    let mut hash: u32 = 0x811c_9dc5;
    for b in host.to_ascii_lowercase().bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let start = hash % ALLOCATION_SIZE;
    (0..ALLOCATION_SIZE)
        .map(|i| {
            let slot = (start + i) % ALLOCATION_SIZE;
            IpAddr::V4(Ipv4Addr::from(ALLOCATION_BASE + 1 + slot))
        })
        .find(|ip| !used.contains(ip))
        .unwrap_or(IpAddr::V4(Ipv4Addr::from(ALLOCATION_BASE + 1)))
}

/// The pods a STATIC entry's `workloadSelector` selects: those of the entry's namespace whose
/// labels hold every label of the selector (no labels: every pod there), each with its
/// address while ready. Empty without a selector or for another resolution (which Istio warns
/// about and does not select with).
fn selected_pods<'a>(
    index: &'a Index,
    key: &'a ObjKey,
    spec: &rustmesh_api::ServiceEntrySpec,
) -> Vec<(&'a ObjKey, &'a PodInfo, IpAddr)> {
    let Some(selector) = &spec.workload_selector else {
        return Vec::new();
    };
    if spec.resolution() != Resolution::Static {
        return Vec::new();
    }
    index
        .keyed_pods_in(&key.namespace)
        .filter(|(_, p)| labels_match(&selector.labels, &p.labels))
        .filter_map(|(k, p)| Some((k, p, p.ready_ip?)))
        .collect()
}

/// The ports of an entry, as a Service's: protocol as Istio parses a ServiceEntry port's
/// (`protocol` only; none is detected per connection), UDP left out, each with the entry's
/// endpoints (STATIC) on the port the endpoint's `ports` names, else `targetPort`, else the
/// port's number; or with the `selected` pods (a `workloadSelector`) on `targetPort`, else
/// the port's number, with the pods' labels, service accounts and workloads, as a Service's
/// endpoints carry them.
fn entry_ports(
    spec: &rustmesh_api::ServiceEntrySpec,
    selected: &[(&ObjKey, &PodInfo, IpAddr)],
    cluster_id: &str,
) -> Vec<SvcPort> {
    let mut ports = Vec::new();
    for p in &spec.ports {
        let Ok(number) = u16::try_from(p.number) else {
            continue;
        };
        let protocol = p
            .protocol
            .as_deref()
            .map(Protocol::parse)
            .unwrap_or(Protocol::Unsupported);
        if protocol == Protocol::Udp {
            continue;
        }
        let target = p.target_port.and_then(|t| u16::try_from(t).ok());
        let mut endpoints: Vec<Ep> = Vec::new();
        if spec.resolution() == Resolution::Static {
            for e in &spec.endpoints {
                let Some(ip) = e.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                let port = p
                    .name
                    .as_ref()
                    .and_then(|n| e.ports.get(n))
                    .and_then(|n| u16::try_from(*n).ok())
                    .or(target)
                    .unwrap_or(number);
                endpoints.push(Ep {
                    ip,
                    port,
                    pod: None,
                    labels: e.labels.clone(),
                    service_account: e.service_account.clone().filter(|s| !s.is_empty()),
                    workload: None,
                    weight: e.weight,
                });
            }
            for (key, pod, ip) in selected {
                let port = target.unwrap_or(number);
                endpoints.push(pod_endpoint(
                    *ip,
                    port,
                    Some((*key).clone()),
                    Some(pod),
                    cluster_id,
                ));
            }
        }
        endpoints.sort_by_key(|e| (e.ip, e.port));
        endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
        ports.push(SvcPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: number,
            protocol,
            target_port: Some(target.unwrap_or(number)),
            endpoints,
        });
    }
    ports.sort_by_key(|p| p.port);
    ports
}

/// The ready addresses of the Endpoints subsets that carry the port named `name` (Kubernetes
/// matches Service and Endpoints ports by name; a single-port Service may leave it empty).
fn port_endpoints(
    endpoints: Option<&Endpoints>,
    name: Option<&str>,
    single_port: bool,
    pods: &BTreeMap<ObjKey, PodInfo>,
    cluster_id: &str,
) -> Vec<Ep> {
    let want = name.unwrap_or_default();
    let mut out = Vec::new();
    for subset in endpoints.iter().flat_map(|e| e.subsets.iter().flatten()) {
        let ports = subset.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == want)
            .or_else(|| (single_port && ports.len() == 1).then(|| &ports[0]));
        let Some(port) = port.and_then(|p| u16::try_from(p.port).ok()) else {
            continue;
        };
        for addr in subset.addresses.iter().flatten() {
            let Ok(ip) = addr.ip.parse::<IpAddr>() else {
                continue;
            };
            let pod = addr
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| Some(ObjKey::new(r.namespace.clone()?, r.name.clone()?)));
            let info = pod.as_ref().and_then(|k| pods.get(k));
            out.push(pod_endpoint(ip, port, pod, info, cluster_id));
        }
    }
    out.sort_by_key(|e| (e.ip, e.port));
    out.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
    out
}

/// The endpoint `ip:port` of the pod `pod` (when known: its labels, service account and
/// workload go into the endpoint's metadata).
fn pod_endpoint(
    ip: IpAddr,
    port: u16,
    pod: Option<ObjKey>,
    info: Option<&PodInfo>,
    cluster_id: &str,
) -> Ep {
    Ep {
        ip,
        port,
        labels: info.map(|p| p.labels.clone()).unwrap_or_default(),
        service_account: info.map(|p| p.service_account.clone()),
        weight: None,
        workload: pod
            .as_ref()
            .zip(info)
            .filter(|(_, p)| !p.workload.is_empty())
            .map(|(key, p)| EndpointWorkload {
                name: p.workload.clone(),
                namespace: key.namespace.clone(),
                canonical_service: canonical_name_label(&p.labels)
                    .unwrap_or(&p.workload)
                    .to_string(),
                canonical_revision: canonical_revision(&p.labels),
                cluster: cluster_id.to_string(),
            }),
        pod,
    }
}
