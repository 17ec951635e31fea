//! The crate's error type.

/// Why a proxy configuration document was refused. Always names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not the shape of a configuration.
    #[error("line {line}, column {column}: {field}: {message}")]
    Parse {
        field: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed, but inconsistent (a route names a cluster that does not exist...).
    #[error("{}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
}
