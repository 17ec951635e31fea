//! The service registry as the renderer reads it: each Service with its ports (protocol chosen the
//! Istio way) and, per port, its ready endpoints with the labels and service accounts of the pods
//! behind them.

use crate::index::{Index, Labels, ObjKey, PodInfo, SERVICE_EXPORT_TO_ANNOTATION};
use crate::protocol::Protocol;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use rustmesh_api::workload::{canonical_name_label, canonical_revision};
use rustmesh_xds::cluster::EndpointWorkload;
use rustmesh_xds::names::service_fqdn;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// One Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Svc {
    pub name: String,
    pub namespace: String,
    pub fqdn: String,
    /// `None` for headless services.
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<SvcPort>,
    /// From the `networking.istio.io/exportTo` annotation; empty means everywhere.
    pub export_to: Vec<String>,
}

impl Svc {
    pub fn headless(&self) -> bool {
        self.cluster_ip.is_none()
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
            && self.ports.len() == other.ports.len()
            && self.ports.iter().zip(&other.ports).all(|(a, b)| {
                a.name == b.name
                    && a.port == b.port
                    && a.protocol == b.protocol
                    && a.target_port == b.target_port
                    && a.service_accounts() == b.service_accounts()
            })
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
    /// The pod's service account, when the pod is known.
    pub service_account: Option<String>,
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
    // ExternalName services have no endpoints the mesh can reach by address: not rendered.
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
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
    })
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
            out.push(Ep {
                ip,
                port,
                labels: info.map(|p| p.labels.clone()).unwrap_or_default(),
                service_account: info.map(|p| p.service_account.clone()),
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
            });
        }
    }
    out.sort_by_key(|e| (e.ip, e.port));
    out.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
    out
}
