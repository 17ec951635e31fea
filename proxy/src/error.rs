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
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
