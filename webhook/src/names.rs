//! Istio's label, annotation, container and volume names, as the injector reads and writes them.
//! (Ports, uids, mount paths and the names other parts use too live in `rustmesh_xds::well_known`
//! and are re-exported here.)

pub use rustmesh_xds::well_known::{
    INIT_CONTAINER_NAME, LABEL_INJECT, LABEL_ISTIO_INJECTION, LABEL_REV, SIDECAR_CONTAINER_NAME,
};

/// Pod label set on injected pods, read by peers for auto mTLS.
pub const LABEL_TLS_MODE: &str = "security.istio.io/tlsMode";
pub use rustmesh_xds::well_known::{LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION};

/// Annotation written on injected pods; its presence means "already injected".
pub const ANNOTATION_STATUS: &str = "sidecar.istio.io/status";
/// Per-pod proxy configuration (YAML or JSON `ProxyConfig`); we read `holdApplicationUntilProxyStarts`
/// and `concurrency`.
pub const ANNOTATION_PROXY_CONFIG: &str = "proxy.istio.io/config";
/// Which container `kubectl logs/exec` picks by default (the sidecar is first, so we set it).
pub const ANNOTATION_DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// `sidecar.istio.io/proxyCPU`: requests.cpu of the sidecar.
pub const ANNOTATION_PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
/// `sidecar.istio.io/proxyMemory`: requests.memory of the sidecar.
pub const ANNOTATION_PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
/// `sidecar.istio.io/proxyCPULimit`: limits.cpu of the sidecar.
pub const ANNOTATION_PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
/// `sidecar.istio.io/proxyMemoryLimit`: limits.memory of the sidecar.
pub const ANNOTATION_PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";

/// `sidecar.istio.io/proxyImage`: the image of `istio-proxy` (and `istio-init`, which runs the
/// same binary).
pub const ANNOTATION_PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
/// `sidecar.istio.io/userVolume`: a JSON object of volume names to volumes added to the pod.
pub const ANNOTATION_USER_VOLUME: &str = "sidecar.istio.io/userVolume";
/// `sidecar.istio.io/userVolumeMount`: a JSON object of volume names to mounts of `istio-proxy`.
pub const ANNOTATION_USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
/// `status.sidecar.istio.io/port`: the sidecar's status port (0: none, and no readiness probe).
pub const ANNOTATION_STATUS_PORT: &str = "status.sidecar.istio.io/port";
/// `initialDelaySeconds` of the sidecar's readiness probe.
pub const ANNOTATION_READINESS_INITIAL_DELAY: &str =
    "readiness.status.sidecar.istio.io/initialDelaySeconds";
/// `periodSeconds` of the sidecar's readiness probe.
pub const ANNOTATION_READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
/// `failureThreshold` of the sidecar's readiness probe.
pub const ANNOTATION_READINESS_FAILURE_THRESHOLD: &str =
    "readiness.status.sidecar.istio.io/failureThreshold";
/// The app's ports the sidecar's readiness once waited for (Istio before 1.6: `--applicationPorts`);
/// checked, and reported as having no effect ([`crate::readiness::application_ports`]).
pub const ANNOTATION_READINESS_APPLICATION_PORTS: &str =
    "readiness.status.sidecar.istio.io/applicationPorts";
/// `prometheus.istio.io/merge-metrics`: `false` turns metrics merging off for the pod.
pub const ANNOTATION_MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";
/// Prometheus's scrape annotations, which metrics merging points at the sidecar.
pub const ANNOTATION_PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// The port Prometheus scrapes.
pub const ANNOTATION_PROMETHEUS_PORT: &str = "prometheus.io/port";
/// The path Prometheus scrapes.
pub const ANNOTATION_PROMETHEUS_PATH: &str = "prometheus.io/path";
/// The sidecar's environment variable holding the app's own `prometheus.io/*` annotations, as
/// a JSON object of strings `{"scrape":..,"path":..,"port":..}` (the contract with the sidecar's
/// status port, `proxy/src/merge_metrics.rs`, and Istio's agent).
pub const ENV_PROMETHEUS_ANNOTATIONS: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// Where the status port serves the merged metrics.
pub const MERGED_METRICS_PATH: &str = "/stats/prometheus";

/// Outbound IP ranges to capture (`-i`), `*` for all.
pub const ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Outbound IP ranges never captured (`-x`).
pub const ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Inbound ports to capture (`-b`), `*` for all.
pub const ANNOTATION_INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Inbound ports never captured (`-d`, appended to the proxy's own ports).
pub const ANNOTATION_EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Outbound ports never captured (`-o`).
pub const ANNOTATION_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Outbound ports always captured, whatever their destination (`-q`).
pub const ANNOTATION_INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// Network interfaces whose traffic is never captured (`-c`).
pub const ANNOTATION_EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// Virtual interfaces whose inbound traffic is captured as outbound (`-k`); deprecated by Istio
/// for [`ANNOTATION_REROUTE_VIRTUAL_INTERFACES`], which wins when both are set.
pub const ANNOTATION_KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
/// Virtual interfaces whose inbound traffic is captured as outbound (`-k`).
pub const ANNOTATION_REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
/// How the pod's traffic is captured: `REDIRECT`, `TPROXY` or `NONE` (`-m`, and
/// `ISTIO_META_INTERCEPTION_MODE` of the sidecar).
pub const ANNOTATION_INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

/// Downward-API volume with the pod's labels and annotations.
pub const VOLUME_PODINFO: &str = "istio-podinfo";
/// Writable scratch space of the sidecar (its root filesystem is read-only).
pub const VOLUME_ENVOY: &str = "istio-envoy";
/// Where [`VOLUME_ENVOY`] is mounted.
pub const ENVOY_SCRATCH_MOUNT: &str = "/etc/istio/proxy";
/// Name of the sidecar's Prometheus port.
pub const PROMETHEUS_PORT_NAME: &str = "http-envoy-prom";
/// Readiness path of the sidecar.
pub const READINESS_PATH: &str = "/healthz/ready";
/// Command of the `postStart` hook that holds the app until the proxy is ready
/// (`proxy wait`, like Istio's `pilot-agent wait`; implemented in the proxy crate).
pub const WAIT_COMMAND: [&str; 2] = ["proxy", "wait"];
/// Command of a native sidecar's `preStop` hook, before its `--debug-port=<status port>`:
/// `proxy request` (like Istio's `pilot-agent request`; implemented in the proxy crate), whose
/// `POST drain` ([`DRAIN_REQUEST`]) starts the sidecar's drain when the pod starts stopping.
pub const REQUEST_COMMAND: [&str; 2] = ["proxy", "request"];
/// The request a native sidecar's `preStop` hook sends, as in Istio's template.
pub const DRAIN_REQUEST: [&str; 2] = ["POST", "drain"];

/// The projected service-account token for the mesh CA (audience `istio-ca`), Istio's name.
pub const VOLUME_TOKEN: &str = "istio-token";
/// ConfigMap `istio-ca-root-cert` (the mesh trust bundle), Istio's volume name.
pub const VOLUME_ROOT_CERT: &str = "istiod-ca-cert";

/// `inject.istio.io/templates`: the injection template(s) of the pod, a comma-separated list
/// (`sidecar` by default, or `gateway`).
pub const ANNOTATION_TEMPLATES: &str = "inject.istio.io/templates";
/// `proxy.istio.io/overrides`: the pod's own `istio-proxy`/`istio-init` merged onto the injected
/// ones, recorded at injection so that injecting again applies them again.
pub const ANNOTATION_OVERRIDES: &str = "proxy.istio.io/overrides";
/// `sidecar.istio.io/nativeSidecar`: `"true"`/`"false"`, the pod's choice of a native sidecar
/// over the `nativeSidecars` setting.
pub const ANNOTATION_NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
/// Istio's router metadata, set on a gateway's proxy (which runs `proxy run --type router`, as
/// Istio starts its agent as `proxy router`); the proxy checks its value.
pub const ENV_ROUTER_MODE: &str = "ISTIO_META_ROUTER_MODE";
/// Istio's default router mode (what a router without `ISTIO_META_ROUTER_MODE` runs as).
pub const DEFAULT_ROUTER_MODE: &str = "sni-dnat";
