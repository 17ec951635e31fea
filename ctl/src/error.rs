//! The crate's one error type. Each message is one sentence that says what went wrong and, when
//! the user can act on it, what to do.

/// Why `rustmeshctl` could not show what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that do not fit together (clap checks each flag alone).
    #[error("{0}")]
    Usage(String),

    /// `--file` could not be read.
    #[error("cannot read {path}: {reason}")]
    ReadFile { path: String, reason: String },

    /// The document is not a proxy configuration; `error` names the field (and line).
    #[error("the configuration from {origin} is not a valid proxy configuration: {error}")]
    MalformedDump {
        origin: String,
        error: rustmesh_xds::Error,
    },

    /// `/clusters?format=json` did not have the documented shape.
    #[error(
        "the endpoint health from {origin} is not in the documented /clusters?format=json shape: {reason}"
    )]
    MalformedClusters { origin: String, reason: String },

    /// `/certs` did not have the documented shape.
    #[error("the certificates from {origin} are not in the documented /certs shape: {reason}")]
    MalformedCerts { origin: String, reason: String },

    /// `GET pods/<pod>` answered 404.
    #[error("pod {pod:?} not found in namespace {namespace:?}")]
    PodNotFound { pod: String, namespace: String },

    /// The pod has no `istio-proxy` container.
    #[error(
        "pod {namespace}/{pod} has no istio-proxy container, so it is not in the mesh \
         (label its namespace istio-injection=enabled and recreate the pod)"
    )]
    NotInjected { pod: String, namespace: String },

    /// The proxy is starting: the pod is not running yet, nothing listens on the admin port yet,
    /// or the admin API answers 503 because no configuration is loaded yet.
    #[error("the proxy {target} is not ready yet ({reason}); try again in a few seconds")]
    ProxyNotReady { target: String, reason: String },

    /// `--admin-url` refused the connection, timed out or broke the connection.
    #[error("cannot reach the proxy admin API at {url}: {reason}")]
    AdminUnreachable { url: String, reason: String },

    /// The admin API answered something other than 200 or 503.
    #[error("the proxy admin API {target} answered {status} to {method} {path}{detail}")]
    AdminStatus {
        target: String,
        method: String,
        path: String,
        status: u16,
        detail: String,
    },

    /// RBAC refused `create pods/portforward`.
    #[error(
        "you may not port-forward to pod {namespace}/{pod}: ask for the RBAC permission to \
         create pods/portforward in namespace {namespace} (get pods/portforward before Kubernetes \
         1.35, which authorizes the WebSocket port-forward as a get)"
    )]
    PortForwardForbidden { pod: String, namespace: String },

    /// RBAC refused `get pods`.
    #[error(
        "you may not read pod {namespace}/{pod}: ask for the RBAC permission to get pods in \
         namespace {namespace}"
    )]
    PodForbidden { pod: String, namespace: String },

    /// No usable kubeconfig (or in-cluster configuration).
    #[error(
        "cannot load the Kubernetes configuration (give --kubeconfig, or reach a proxy without \
         Kubernetes with --admin-url or --file): {0}"
    )]
    KubeConfig(String),

    /// Any other failure talking to the Kubernetes API.
    #[error("the Kubernetes API failed while {action}: {reason}")]
    Kube { action: String, reason: String },

    /// Writing to stdout failed.
    #[error("cannot write the output: {0}")]
    Output(String),
}
