//! The crate's one error type.

use std::io;

/// Everything that can go wrong in `rustmesh-proxy`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line flag has a value that cannot be used. Nothing has been applied.
    #[error("invalid value {value:?} for {flag}: {reason}")]
    InvalidFlag {
        /// The flag as the user knows it, e.g. `-p/--envoy-port`.
        flag: &'static str,
        /// The value that was given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// An external program (`iptables-restore`, `ip`, ...) could not be started.
    #[error("could not run `{program}`: {source}")]
    Spawn {
        /// The program that was looked up on `PATH`.
        program: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// An external program ran and failed.
    #[error("`{program}` failed ({status}): {detail}")]
    CommandFailed {
        /// The program and its arguments.
        program: String,
        /// Its exit status.
        status: String,
        /// Its standard error, and for `*-restore` the offending line of the document.
        detail: String,
    },

    /// The network interfaces of this namespace could not be listed.
    #[error("could not list the network interfaces: {0}")]
    Interfaces(#[source] io::Error),

    /// Writing the dry-run output failed.
    #[error("could not write the output: {0}")]
    Output(#[source] io::Error),

    /// A listening socket of the sidecar could not be bound.
    #[error("could not listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener (`virtualOutbound`, `admin`, ...).
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// A configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    ConfigRead {
        /// The file.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// A configuration document (or the scope index, or the pod labels) was refused. The error
    /// names the field (and line, for syntax errors).
    #[error("{origin}: {source}")]
    ConfigInvalid {
        /// Where the document came from (file, and ConfigMap key).
        origin: String,
        /// What is wrong.
        #[source]
        source: rustmesh_xds::Error,
    },

    /// A stored configuration (or the index, or the labels) could not be decoded (gzip, UTF-8).
    #[error("cannot decode {origin}: {message}")]
    ConfigDecode {
        /// Where it came from (file, or ConfigMap and key).
        origin: String,
        /// What is wrong.
        message: String,
    },

    /// The key (or the ConfigMap) the pod's configuration should be in does not exist.
    #[error("{origin}: not found")]
    ConfigMissing {
        /// The file, or ConfigMap and key.
        origin: String,
    },

    /// The Kubernetes API could not be used (no in-cluster credentials, unreachable, forbidden).
    #[error("Kubernetes API, {what}: {message}")]
    Kube {
        /// What was being done (`watch configmap shop/rustmesh-proxy-config`).
        what: String,
        /// What went wrong, with the advice the proxy has.
        message: String,
    },

    /// A configuration is valid JSON and consistent, but the proxy cannot run it.
    #[error("{field}: {message}")]
    ConfigCompile {
        /// Field path, e.g. `listeners[2].filterChains[1].filterChainMatch`.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// The async runtime or a signal handler could not be set up.
    #[error("could not start the runtime: {0}")]
    Runtime(#[source] io::Error),

    /// `proxy wait` gave up.
    #[error("{url} did not answer 200 within {timeout:?}: {last}")]
    WaitTimeout {
        /// The URL polled.
        url: String,
        /// How long it waited.
        timeout: std::time::Duration,
        /// The last answer or error.
        last: String,
    },

    /// The DNS proxy could not start.
    #[error("DNS proxy: {0}")]
    Dns(#[source] Box<crate::dns::DnsError>),

    /// The workload identity settings (`CA_ADDR` and what it needs) are incomplete or bad; names
    /// the setting.
    #[error("workload identity: {0}")]
    Identity(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
