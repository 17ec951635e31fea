//! Ports, identities and addresses every part of the mesh agrees on.
//!
//! These are Istio's values, so that existing tooling, dashboards and habits keep working:
//! the webhook writes them into the injected pod, the capture step programs iptables with them,
//! and the proxy binds them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `virtualOutbound`: every outbound TCP connection of the pod is redirected here.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// `virtualInbound`: every inbound TCP connection of the pod is redirected here.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Admin API (`/config_dump`, `/listeners`, `/clusters`, `/stats`), bound to localhost only.
pub const ADMIN_PORT: u16 = 15000;
/// Status port of the agent (Istio's pilot-agent); excluded from inbound capture.
pub const AGENT_STATUS_PORT: u16 = 15020;
/// Readiness: `GET /healthz/ready`.
pub const HEALTH_PORT: u16 = 15021;
/// DNS proxy (UDP and TCP), the target of the init step's DNS capture.
pub const DNS_PORT: u16 = 15053;
/// Prometheus scrape endpoint: `GET /stats/prometheus`.
pub const PROMETHEUS_PORT: u16 = 15090;
/// HBONE tunnel port; Istio always excludes it from capture, and so do we.
pub const TUNNEL_PORT: u16 = 15008;

/// The proxy runs as this uid and gid (`istio-proxy`); the capture rules never redirect its traffic.
pub const PROXY_UID: u32 = 1337;
/// See [`PROXY_UID`].
pub const PROXY_GID: u32 = 1337;

/// Source address of inbound passthrough connections to the app, so the capture rules let them through.
pub const INBOUND_PASSTHROUGH_SOURCE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
/// IPv6 counterpart of [`INBOUND_PASSTHROUGH_SOURCE_V4`] (Istio uses `::6`).
pub const INBOUND_PASSTHROUGH_SOURCE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6));

/// Inbound ports the capture step leaves alone by default (`-d`), as injected by Istio.
pub const DEFAULT_EXCLUDED_INBOUND_PORTS: [u16; 3] =
    [PROMETHEUS_PORT, HEALTH_PORT, AGENT_STATUS_PORT];

/// The default DNS domain of the cluster.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";

/// The ConfigMap, in each injected namespace, that carries the proxies' configuration.
/// The operator writes it; the webhook mounts it into every sidecar; the sidecar watches it live.
pub const PROXY_CONFIGMAP: &str = "rustmesh-proxy-config";
/// Where the webhook mounts [`PROXY_CONFIGMAP`] in the sidecar (the copy used at start).
pub const PROXY_CONFIG_MOUNT: &str = "/etc/rustmesh/config";
/// Where the webhook mounts the pod's labels and annotations (downward API), as Istio does.
pub const POD_INFO_MOUNT: &str = "/etc/istio/pod";

/// Annotation on [`PROXY_CONFIGMAP`] carrying the hash of its whole content; the operator rewrites
/// the ConfigMap only when the content it renders hashes differently from what is there.
pub const CONFIG_HASH_ANNOTATION: &str = "rustmesh.io/config-hash";
/// Field manager of every server-side apply the operator makes.
pub const OPERATOR_FIELD_MANAGER: &str = "rustmesh-operator";
/// The mesh's root namespace (Istio's): its Sidecar without selector is every namespace's default.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The injected sidecar container (and the container `rustmeshctl` talks to).
pub const SIDECAR_CONTAINER_NAME: &str = "istio-proxy";
/// The arguments of [`SIDECAR_CONTAINER_NAME`] that make it a gateway's proxy (`proxy run --type
/// router`, Istio's `proxy router`): the injector writes them, the operator and `rustmeshctl`
/// read them to know which scopes the pod's proxy reads (`scope::ProxyRole`).
pub const ROUTER_ARGS: [&str; 2] = ["--type", "router"];
/// The injected init container that programs the capture rules.
pub const INIT_CONTAINER_NAME: &str = "istio-init";
/// Namespace label that opts a namespace into injection (`enabled`).
pub const LABEL_ISTIO_INJECTION: &str = "istio-injection";
/// Namespace or pod label that selects a control-plane revision.
pub const LABEL_REV: &str = "istio.io/rev";
/// Pod label (and annotation) that opts a pod in or out of injection.
pub const LABEL_INJECT: &str = "sidecar.istio.io/inject";

/// The ConfigMap in every namespace that carries the mesh's trust bundle (Istio's name).
pub const CA_ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its key holding the PEM root certificate(s).
pub const CA_ROOT_CERT_KEY: &str = "root-cert.pem";

/// Pod label naming the workload's canonical service (the injector sets it, as Istio's does).
pub const LABEL_CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// Pod label naming the workload's canonical revision (the injector sets it, as Istio's does).
pub const LABEL_CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
