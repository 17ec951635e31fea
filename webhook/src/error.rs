//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the webhook library.
///
/// Review-level problems (a pod that does not parse, a bad annotation) are *not* errors: they become
/// `allowed: true` responses with a warning (see `review`). Only a body that is not an admission
/// review at all becomes an [`Error`], and the HTTP layer answers it with `400 Bad Request`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request body is not JSON.
    #[error("request body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),

    /// The body is JSON but not an `AdmissionReview`.
    #[error("request body is not an AdmissionReview: {0}")]
    NotAdmissionReview(String),

    /// The `AdmissionReview` has no `request`, so there is nothing to answer.
    #[error("AdmissionReview has no `request`")]
    MissingRequest,

    /// The `AdmissionReview` request has no string `uid`, so no response can be matched to it.
    #[error("AdmissionReview `request.uid` is missing or not a string")]
    MissingUid,

    /// A setting (ConfigMap key or settings-file key) has a bad value or is unknown.
    #[error("injection setting `{key}`: {reason}")]
    Setting {
        /// The ConfigMap/file key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The settings file could not be parsed.
    #[error("settings file {path}: {reason}")]
    SettingsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A certificate or key could not be generated, parsed or used.
    #[error("TLS: {0}")]
    Tls(String),

    /// Binding or serving the listener failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// A command-line flag has a bad value.
    #[error("flag {flag}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn setting(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Setting {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tls(reason: impl std::fmt::Display) -> Self {
        Error::Tls(reason.to_string())
    }
}
