//! Clusters and endpoints: `outbound|<port>|<subset>|<fqdn>` with the DestinationRule's traffic
//! policy, `inbound|<port>||`, and the three static clusters.
//!
//! A DNS-resolved service (a ServiceEntry host of resolution DNS or DNS_ROUND_ROBIN, an
//! ExternalName Service: `registry::DnsResolution`) gets a STRICT_DNS (LOGICAL_DNS) cluster
//! whose `loadAssignment` lists the names (or IP addresses) the sidecar resolves
//! ([`dns_load_assignment`]), with `respectDnsTtl` and a `dnsRefreshRate` of
//! [`DNS_REFRESH_SECS`], as Istio renders them; a DNS_ROUND_ROBIN subset selecting no endpoint
//! gets a STRICT_DNS cluster of none (a LOGICAL_DNS cluster has exactly one).
//!
//! With a mesh CA ([`MeshConfig::ca_host`]), an outbound cluster originates Istio's mutual TLS
//! ([`upstream_tls`]): a DestinationRule's `tls.mode: ISTIO_MUTUAL` gives it one TLS transport
//! socket, `DISABLE` none, and without a `tls` setting auto mTLS (`meshConfig.enableAutoMtls`)
//! gives it `transportSocketMatches`: mutual TLS to endpoints whose pod carries
//! `security.istio.io/tlsMode: istio` (their [`load_assignment`] metadata), plain TCP to the
//! others. The expected server identities are the SPIFFE ids of the service accounts of the
//! pods behind the port.
//!
//! With or without a CA, `SIMPLE` / `MUTUAL` originate TLS to a server outside the mesh
//! ([`external_upstream`]): SNI the setting's `sni` or else the service's host (Istio takes it
//! from the request's authority; rustmesh's pools are per cluster, so the host it is), the
//! server verified against `caCertificates` or the system roots, unless `insecureSkipVerify`.

use super::{ClusterParts, Ctx, EdsRecipe, EdsRecipes};
use crate::index::{Labels, MeshConfig};
use crate::registry::{DnsResolution, Ep, SvcPort};
use rustmesh_api::common::labels_match;
use rustmesh_api::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection as DrOutlier, SimpleLb, Subset, TlsMode,
};
use rustmesh_api::service_entry::{Location, Resolution};
use rustmesh_xds::address::SocketAddress;
use rustmesh_xds::cluster::{
    BindConfig, CircuitBreakers, Cluster, ClusterLoadAssignment, ClusterMetadata, DiscoveryType,
    EdsClusterConfig, HttpProtocolOptions, LbEndpoint, LbPolicy, LocalityLbEndpoints,
    MaglevLbConfig, OutlierDetection, RingHashLbConfig, ServiceRef, Thresholds, UpstreamProtocol,
};
use rustmesh_xds::duration::Duration;
use rustmesh_xds::names::{BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER_V4, PASSTHROUGH_CLUSTER};
use rustmesh_xds::route::{HashCookie, HashPolicy};
use rustmesh_xds::tls::{
    ALPN_ISTIO_TCP, ClientCert, ServerRoots, TLS_MODE_ISTIO, TLS_MODE_LABEL, TransportSocketMatch,
    UpstreamTransportSocket, auto_mtls_matches, external_upstream, istio_sni, istio_upstream,
};
use rustmesh_xds::well_known::INBOUND_PASSTHROUGH_SOURCE_V4;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// Envoy's connect timeout when the DestinationRule sets none (Istio's mesh default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration(std::time::Duration::from_secs(10));

/// The parts of a traffic policy that apply to one port (and subset).
#[derive(Clone, Copy, Default)]
pub struct Policy<'a> {
    pub lb: Option<&'a LoadBalancerSettings>,
    pub pool: Option<&'a ConnectionPoolSettings>,
    pub outlier: Option<&'a DrOutlier>,
    pub tls: Option<&'a ClientTlsSettings>,
}

/// Istio's `MergeTrafficPolicy`: the top-level policy, replaced whole by its port-level settings
/// for `port`; then each field the subset sets; then the subset's port-level settings, whole.
pub fn merged_policy<'a>(
    dr: &'a DestinationRuleSpec,
    port: u16,
    subset: Option<&'a Subset>,
) -> Policy<'a> {
    let mut p = Policy::default();
    if let Some(tp) = &dr.traffic_policy {
        p = Policy {
            lb: tp.load_balancer.as_ref(),
            pool: tp.connection_pool.as_ref(),
            outlier: tp.outlier_detection.as_ref(),
            tls: tp.tls.as_ref(),
        };
        if let Some(pl) = tp
            .port_level_settings
            .iter()
            .find(|pl| pl.port.is_some_and(|n| n.number == u32::from(port)))
        {
            p = Policy {
                lb: pl.load_balancer.as_ref(),
                pool: pl.connection_pool.as_ref(),
                outlier: pl.outlier_detection.as_ref(),
                tls: pl.tls.as_ref(),
            };
        }
    }
    if let Some(stp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
        if stp.load_balancer.is_some() {
            p.lb = stp.load_balancer.as_ref();
        }
        if stp.connection_pool.is_some() {
            p.pool = stp.connection_pool.as_ref();
        }
        if stp.outlier_detection.is_some() {
            p.outlier = stp.outlier_detection.as_ref();
        }
        if stp.tls.is_some() {
            p.tls = stp.tls.as_ref();
        }
        if let Some(pl) = stp
            .port_level_settings
            .iter()
            .find(|pl| pl.port.is_some_and(|n| n.number == u32::from(port)))
        {
            p = Policy {
                lb: pl.load_balancer.as_ref(),
                pool: pl.connection_pool.as_ref(),
                outlier: pl.outlier_detection.as_ref(),
                tls: pl.tls.as_ref(),
            };
        }
    }
    p
}

/// The route hash policy of a consistent-hash load balancer.
pub fn hash_policy_for(lb: Option<&LoadBalancerSettings>) -> Option<HashPolicy> {
    let ch = lb?.consistent_hash.as_ref()?;
    Some(if let Some(h) = &ch.http_header_name {
        HashPolicy {
            header_name: Some(h.clone()),
            ..HashPolicy::default()
        }
    } else if let Some(c) = &ch.http_cookie {
        HashPolicy {
            cookie: Some(HashCookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl,
            }),
            ..HashPolicy::default()
        }
    } else if ch.use_source_ip == Some(true) {
        HashPolicy {
            source_ip: true,
            ..HashPolicy::default()
        }
    } else {
        HashPolicy {
            query_parameter_name: Some(ch.http_query_parameter_name.clone()?),
            ..HashPolicy::default()
        }
    })
}

fn lb_policy(lb: Option<&LoadBalancerSettings>) -> LbPolicy {
    let Some(lb) = lb else {
        return LbPolicy::LeastRequest;
    };
    if let Some(ch) = &lb.consistent_hash {
        return if ch.maglev.is_some() {
            LbPolicy::Maglev
        } else {
            LbPolicy::RingHash
        };
    }
    match lb.simple {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        _ => LbPolicy::LeastRequest,
    }
}

/// The table sizes of a consistent-hash load balancer, as Istio sets them: MAGLEV's
/// `maglev.tableSize`; RING_HASH's `ringHash.minimumRingSize`, else the deprecated top-level
/// `minimumRingSize`. 0 (proto3's unset) and absent leave Envoy's defaults.
fn hash_lb_configs(
    lb: Option<&LoadBalancerSettings>,
) -> (Option<RingHashLbConfig>, Option<MaglevLbConfig>) {
    let Some(ch) = lb.and_then(|lb| lb.consistent_hash.as_ref()) else {
        return (None, None);
    };
    if let Some(m) = &ch.maglev {
        let table_size = m.table_size.filter(|n| *n > 0);
        return (
            None,
            table_size.map(|n| MaglevLbConfig {
                table_size: Some(n),
            }),
        );
    }
    let minimum = ch
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .or(ch.minimum_ring_size)
        .filter(|n| *n > 0);
    let ring = minimum.map(|n| RingHashLbConfig {
        minimum_ring_size: Some(n),
        maximum_ring_size: None,
    });
    (ring, None)
}

fn to_u32(v: Option<i32>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

/// Istio's circuit breaker: every threshold at its maximum unless the connection pool limits it.
fn circuit_breakers(pool: Option<&ConnectionPoolSettings>) -> CircuitBreakers {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: Some(to_u32(tcp.and_then(|t| t.max_connections)).unwrap_or(u32::MAX)),
            max_pending_requests: Some(
                to_u32(http.and_then(|h| h.http1_max_pending_requests)).unwrap_or(u32::MAX),
            ),
            max_requests: Some(to_u32(http.and_then(|h| h.http2_max_requests)).unwrap_or(u32::MAX)),
            max_retries: Some(to_u32(http.and_then(|h| h.max_retries)).unwrap_or(u32::MAX)),
        }],
    }
}

fn outlier_detection(o: Option<&DrOutlier>) -> Option<OutlierDetection> {
    let o = o?;
    Some(OutlierDetection {
        consecutive_5xx: o.consecutive_5xx_errors,
        // The deprecated `consecutiveErrors` counts gateway errors only (Istio's reading).
        consecutive_gateway_failure: o
            .consecutive_gateway_errors
            .or(to_u32(o.consecutive_errors)),
        consecutive_local_origin_failure: o.consecutive_local_origin_failures,
        interval: o.interval,
        base_ejection_time: o.base_ejection_time,
        max_ejection_percent: to_u32(o.max_ejection_percent),
        min_health_percent: to_u32(o.min_health_percent),
    })
}

/// How an outbound cluster talks to its endpoints, as Istio decides it: `(transportSocket,
/// transportSocketMatches)`. `tls` is the DestinationRule's merged setting for the cluster's
/// port and subset; `sni` and `sans` the defaults of mutual TLS (a setting's own `sni` and
/// `subjectAltNames` override them). `SIMPLE`/`MUTUAL`: TLS to a server outside the mesh
/// (SNI `host` unless the setting has one), CA or not, from the files or, when
/// `credentials` (the DestinationRule has a workloadSelector and the mesh a CA: Istio's rule
/// for sidecars), the `credentialName` Secret; otherwise nothing without a mesh CA;
/// `ISTIO_MUTUAL`: mutual TLS; `DISABLE` (or a `tls` without mode, proto's default): plain;
/// no setting: auto mTLS when enabled and `auto_mtls_applies`: not on ORIGINAL_DST clusters,
/// whose endpoints carry no metadata (Istio's exception too), nor towards services whose
/// PeerAuthentication says DISABLE.
pub fn upstream_tls(
    mesh: &MeshConfig,
    tls: Option<&ClientTlsSettings>,
    auto_mtls_applies: bool,
    host: &str,
    sni: &str,
    sans: Vec<String>,
    credentials: bool,
) -> (Option<UpstreamTransportSocket>, Vec<TransportSocketMatch>) {
    if let Some(t) = tls
        && let Some(mode @ (TlsMode::Simple | TlsMode::Mutual)) = t.mode
    {
        let sni = t.sni.as_deref().filter(|s| !s.is_empty()).unwrap_or(host);
        let credential = t
            .credential_name
            .as_deref()
            .filter(|n| credentials && !n.is_empty());
        let roots = match (&t.ca_certificates, t.insecure_skip_verify, credential) {
            (_, Some(true), _) => ServerRoots::SkipVerify,
            (_, _, Some(name)) => ServerRoots::Credential(name.to_string()),
            (Some(path), _, _) if !path.is_empty() => ServerRoots::File(path.clone()),
            _ => ServerRoots::System,
        };
        let client = match (mode, credential, &t.client_certificate, &t.private_key) {
            (TlsMode::Mutual, Some(name), _, _) => Some(ClientCert::Credential(name)),
            (TlsMode::Mutual, None, Some(cert), Some(key)) => Some(ClientCert::Files {
                cert: cert.as_str(),
                key: key.as_str(),
            }),
            _ => None,
        };
        // `caCrl` goes with roots from a file or the system's (validation refuses it beside a
        // credential the sidecar uses, whose Secret carries its lists, and warns that it is
        // unused with insecureSkipVerify).
        let crl = match roots {
            ServerRoots::File(_) | ServerRoots::System => {
                t.ca_crl.as_deref().filter(|c| !c.is_empty())
            }
            ServerRoots::SkipVerify | ServerRoots::Credential(_) => None,
        };
        return (
            Some(UpstreamTransportSocket::Tls(Box::new(external_upstream(
                sni,
                &[],
                client,
                &roots,
                crl,
                &t.subject_alt_names,
            )))),
            Vec::new(),
        );
    }
    if mesh.ca_host.is_none() {
        return (None, Vec::new());
    }
    match tls {
        Some(t) if t.mode == Some(TlsMode::IstioMutual) => {
            let sni = t.sni.as_deref().filter(|s| !s.is_empty()).unwrap_or(sni);
            let sans = if t.subject_alt_names.is_empty() {
                sans
            } else {
                t.subject_alt_names.clone()
            };
            (
                Some(UpstreamTransportSocket::Tls(Box::new(istio_upstream(
                    sni,
                    &ALPN_ISTIO_TCP,
                    &sans,
                )))),
                Vec::new(),
            )
        }
        Some(_) => (None, Vec::new()),
        None if mesh.auto_mtls && auto_mtls_applies => {
            (None, auto_mtls_matches(sni, &ALPN_ISTIO_TCP, &sans))
        }
        None => (None, Vec::new()),
    }
}

/// `inbound|<port>||`: to the app, at the connection's original destination from 127.0.0.6
/// (Istio 1.10+), or at a loopback endpoint a Sidecar names; `metadata.services` lists the
/// services the port serves.
pub fn inbound_cluster(
    name: &str,
    endpoint: super::InboundEndpoint,
    services: &BTreeSet<ServiceRef>,
) -> Cluster {
    let mut c = match endpoint {
        super::InboundEndpoint::OriginalDst => {
            let mut c = bare(name, DiscoveryType::OriginalDst, LbPolicy::ClusterProvided);
            c.upstream_bind_config = Some(BindConfig {
                source_address: SocketAddress {
                    address: INBOUND_PASSTHROUGH_SOURCE_V4,
                    port_value: 0,
                },
            });
            c
        }
        super::InboundEndpoint::Loopback(ip, port) => {
            let mut c = bare(name, DiscoveryType::Static, LbPolicy::RoundRobin);
            c.load_assignment = Some(assignment(
                name,
                vec![LbEndpoint::new(SocketAddr::new(ip, port))],
            ));
            c
        }
    };
    c.metadata = (!services.is_empty()).then(|| ClusterMetadata {
        services: services.iter().cloned().collect(),
        subset: None,
        destination_rule: None,
    });
    c
}

fn bare(name: &str, type_: DiscoveryType, lb_policy: LbPolicy) -> Cluster {
    Cluster {
        transport_socket: None,
        transport_socket_matches: Vec::new(),
        name: name.to_string(),
        type_,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        lb_policy,
        ring_hash_lb_config: None,
        maglev_lb_config: None,
        eds_cluster_config: None,
        load_assignment: None,
        dns_refresh_rate: None,
        respect_dns_ttl: false,
        circuit_breakers: None,
        outlier_detection: None,
        upstream_bind_config: None,
        upstream_protocol: UpstreamProtocol::UseDownstream,
        common_http_protocol_options: None,
        metadata: None,
    }
}

/// PassthroughCluster (ORIGINAL_DST), BlackHoleCluster (STATIC, no endpoints),
/// InboundPassthroughClusterIpv4 (ORIGINAL_DST from 127.0.0.6).
pub fn static_clusters() -> Vec<Cluster> {
    let passthrough = bare(
        PASSTHROUGH_CLUSTER,
        DiscoveryType::OriginalDst,
        LbPolicy::ClusterProvided,
    );
    let mut blackhole = bare(
        BLACKHOLE_CLUSTER,
        DiscoveryType::Static,
        LbPolicy::RoundRobin,
    );
    blackhole.load_assignment = Some(assignment(BLACKHOLE_CLUSTER, Vec::new()));
    let mut inbound = bare(
        INBOUND_PASSTHROUGH_CLUSTER_V4,
        DiscoveryType::OriginalDst,
        LbPolicy::ClusterProvided,
    );
    inbound.upstream_bind_config = Some(BindConfig {
        source_address: SocketAddress {
            address: INBOUND_PASSTHROUGH_SOURCE_V4,
            port_value: 0,
        },
    });
    vec![passthrough, blackhole, inbound]
}

impl<'v, 'a> Ctx<'v, 'a> {
    /// Every wanted outbound cluster, sorted by name, with the endpoints of the EDS ones.
    pub(super) fn build_clusters(&self) -> ClusterParts {
        let mut clusters = Vec::new();
        let mut endpoints = Vec::new();
        let mut recipes = EdsRecipes::new();
        for (name, w) in &self.wanted {
            let dr = self.destination_rule_for(w.svc);
            let subset = w
                .subset
                .and_then(|s| dr.and_then(|(_, d)| d.spec.subsets.iter().find(|x| x.name == s)));
            let policy = dr
                .map(|(_, d)| merged_policy(&d.spec, w.port.port, subset))
                .unwrap_or_default();
            // A ServiceEntry host of resolution NONE forwards to the address the application
            // connected to, as a headless Service does (Istio's `Passthrough` resolution).
            let entry_passthrough = w
                .svc
                .entry
                .as_ref()
                .is_some_and(|e| e.resolution == Resolution::None);
            let passthrough = w.svc.headless()
                || entry_passthrough
                || policy
                    .lb
                    .is_some_and(|lb| lb.simple == Some(SimpleLb::Passthrough));
            let tcp = policy.pool.and_then(|p| p.tcp.as_ref());
            let http = policy.pool.and_then(|p| p.http.as_ref());
            let mut c = if passthrough {
                bare(name, DiscoveryType::OriginalDst, LbPolicy::ClusterProvided)
            } else if let Some(dns) = &w.svc.dns {
                // A ServiceEntry host of resolution DNS (DNS_ROUND_ROBIN), or an ExternalName
                // Service: a STRICT_DNS (LOGICAL_DNS) cluster of its endpoints' names, which the
                // sidecar resolves (Istio's rendering).
                let selector = subset.map(|s| &s.labels);
                let mtls = self.view.index.mesh.ca_host.is_some();
                let la = dns_load_assignment(name, dns, w.port, mtls, |labels| {
                    selector.is_none_or(|sel| labels_match(sel, labels))
                });
                // A LOGICAL_DNS cluster has exactly one endpoint; a subset selecting none
                // gets a STRICT_DNS cluster of none (no upstream, as Istio's empty cluster).
                let type_ = if dns.logical && la.lb_endpoints().count() == 1 {
                    DiscoveryType::LogicalDns
                } else {
                    DiscoveryType::StrictDns
                };
                let mut c = bare(name, type_, lb_policy(policy.lb));
                (c.ring_hash_lb_config, c.maglev_lb_config) = hash_lb_configs(policy.lb);
                c.dns_refresh_rate = Some(Duration::from_secs(DNS_REFRESH_SECS));
                c.respect_dns_ttl = true;
                c.load_assignment = Some(la);
                c
            } else {
                let mut c = bare(name, DiscoveryType::Eds, lb_policy(policy.lb));
                (c.ring_hash_lb_config, c.maglev_lb_config) = hash_lb_configs(policy.lb);
                c.eds_cluster_config = Some(EdsClusterConfig {
                    service_name: name.clone(),
                });
                let selector = subset.map(|s| &s.labels);
                let mtls = self.view.index.mesh.ca_host.is_some();
                endpoints.push(load_assignment(name, &w.port.endpoints, mtls, |labels| {
                    selector.is_none_or(|sel| labels_match(sel, labels))
                }));
                recipes
                    .entry(w.svc.fqdn.clone())
                    .or_default()
                    .push(EdsRecipe::new(name, w.port.port, selector, mtls));
                c
            };
            c.connect_timeout = tcp
                .and_then(|t| t.connect_timeout)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            c.circuit_breakers = Some(circuit_breakers(policy.pool));
            c.outlier_detection = outlier_detection(policy.outlier);
            c.upstream_protocol = if w.port.protocol.is_http2()
                || (http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade)
                    && w.port.protocol.listener() == crate::protocol::ListenerProtocol::Http)
            {
                UpstreamProtocol::Http2
            } else {
                UpstreamProtocol::UseDownstream
            };
            (c.transport_socket, c.transport_socket_matches) = upstream_tls(
                &self.view.index.mesh,
                policy.tls,
                // No auto mTLS to a MESH_EXTERNAL entry (Istio's rule): plain, or the app's own
                // TLS; a MESH_INTERNAL one's endpoints labelled tlsMode=istio get it, as pods.
                !passthrough
                    && !w.svc.external_name()
                    && w.svc
                        .entry
                        .as_ref()
                        .is_none_or(|e| e.location == Location::MeshInternal)
                    && !super::peer_authn::disables_mtls(self.view, &w.svc.namespace),
                &w.svc.fqdn,
                &istio_sni(w.port.port, w.subset.unwrap_or(""), &w.svc.fqdn),
                w.svc.identities(&self.view.index.mesh.trust_domain, w.port),
                dr.is_some_and(|(_, d)| {
                    d.spec
                        .workload_selector
                        .as_ref()
                        .is_some_and(|s| !s.match_labels.is_empty())
                }) && self.view.index.mesh.ca_host.is_some(),
            );
            if http.and_then(|h| h.use_client_protocol) == Some(true) {
                c.upstream_protocol = UpstreamProtocol::UseDownstream;
            }
            let idle = http.and_then(|h| h.idle_timeout);
            let per_conn =
                to_u32(http.and_then(|h| h.max_requests_per_connection)).filter(|n| *n > 0);
            if idle.is_some() || per_conn.is_some() {
                c.common_http_protocol_options = Some(HttpProtocolOptions {
                    idle_timeout: idle,
                    max_requests_per_connection: per_conn,
                });
            }
            c.metadata = Some(ClusterMetadata {
                services: vec![ServiceRef {
                    host: w.svc.fqdn.clone(),
                    name: w.svc.name.clone(),
                    namespace: w.svc.namespace.clone(),
                    selector: Default::default(),
                }],
                subset: w.subset.map(str::to_string),
                destination_rule: dr.map(|(k, _)| format!("{}.{}", k.name, k.namespace)),
            });
            clusters.push(c);
        }
        (clusters, endpoints, recipes)
    }
}

/// How often the sidecar resolves a DNS cluster's names again when the answer's TTL is 0, in
/// seconds (Istio's meshConfig `dnsRefreshRate` default; Istio also sets `respect_dns_ttl`).
pub const DNS_REFRESH_SECS: u64 = 60;

/// The endpoints of a STRICT_DNS (LOGICAL_DNS: the first only) cluster: each DNS endpoint
/// whose labels the subset selects, by name (or IP address), at its port for `port`; labelled
/// `security.istio.io/tlsMode: istio` ones carry the auto mTLS metadata when the mesh has a CA.
pub fn dns_load_assignment(
    cluster: &str,
    dns: &DnsResolution,
    port: &SvcPort,
    mtls: bool,
    selects: impl Fn(&Labels) -> bool,
) -> ClusterLoadAssignment {
    let mut lb_endpoints: Vec<LbEndpoint> = dns
        .endpoints
        .iter()
        .filter(|e| selects(&e.labels))
        .map(|e| {
            let at = e.port_for(port);
            let mut ep = match e.address.parse::<std::net::IpAddr>() {
                Ok(ip) => LbEndpoint::new(SocketAddr::new(ip, at)),
                Err(_) => LbEndpoint::named(&e.address, at),
            };
            ep.load_balancing_weight = weight(e.weight);
            with_mesh_tls(ep, mtls, &e.labels)
        })
        .collect();
    if dns.logical {
        lb_endpoints.truncate(1);
    }
    assignment(cluster, lb_endpoints)
}

/// The endpoints of an EDS cluster: the port's ready endpoints whose labels the subset selects;
/// those of a pod labelled `security.istio.io/tlsMode: istio` (a pod with a sidecar) carry the
/// metadata auto mTLS matches on, when the mesh has a CA (`mtls`).
pub fn load_assignment(
    cluster: &str,
    endpoints: &[Ep],
    mtls: bool,
    selects: impl Fn(&Labels) -> bool,
) -> ClusterLoadAssignment {
    let lb_endpoints: Vec<LbEndpoint> = endpoints
        .iter()
        .filter(|e| selects(&e.labels))
        .map(|e| {
            let mut ep = LbEndpoint::new(SocketAddr::new(e.ip, e.port));
            if let Some(w) = &e.workload {
                ep = ep.with_workload(w);
            }
            ep.load_balancing_weight = weight(e.weight);
            with_mesh_tls(ep, mtls, &e.labels)
        })
        .collect();
    assignment(cluster, lb_endpoints)
}

/// An endpoint's `loadBalancingWeight`: a ServiceEntry endpoint's `weight`, none for 0 or
/// unset (Envoy's and Istio's 1).
fn weight(w: Option<u32>) -> Option<u32> {
    w.filter(|w| *w > 0)
}

/// `ep` with the metadata auto mTLS matches on, when the mesh has a CA (`mtls`) and `labels`
/// are a pod's with a sidecar (`security.istio.io/tlsMode: istio`).
fn with_mesh_tls(ep: LbEndpoint, mtls: bool, labels: &Labels) -> LbEndpoint {
    if mtls && labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO) {
        ep.with_istio_tls_mode()
    } else {
        ep
    }
}

/// A cluster's endpoints as Istio writes them: one locality at priority 0, none at all when
/// there is no endpoint.
fn assignment(cluster: &str, lb_endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: if lb_endpoints.is_empty() {
            Vec::new()
        } else {
            vec![LocalityLbEndpoints {
                locality: None,
                lb_endpoints,
                priority: 0,
            }]
        },
    }
}
