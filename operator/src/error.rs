//! The crate's one error type.

/// What can go wrong in the operator. Each variant names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig / in-cluster configuration could not be loaded.
    #[error("kubernetes client configuration: {0}")]
    ClientConfig(String),
    /// A rendered configuration failed `ProxyConfig::validate` (a renderer bug: nothing is written).
    #[error("rendered configuration for scope {scope} is invalid: {source}")]
    InvalidRender {
        scope: String,
        source: rustmesh_xds::Error,
    },
    /// A command-line flag has a value the operator cannot use.
    #[error("flag --{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    /// A ConfigMap does not hold a readable configuration (the error names the key).
    #[error("reading the ConfigMap: {0}")]
    ConfigMap(#[from] rustmesh_xds::configmap::ConfigMapError),
    /// Binding or serving the metrics/health port failed.
    #[error("serving {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The mesh CA could not start (its Secret, its material or its port); the error names which.
    #[error("mesh CA: {0}")]
    Ca(String),
}
