//! The crate's error type. Every error names the document, the object, the field and the line.

use std::fmt;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.http[0].route[1].weight`.
    pub field: String,
    pub message: String,
    /// 1-based line in the input, when the input was text.
    pub line: Option<usize>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Which object of an input an error is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectRef {
    /// 1-based position of the document in a multi-document stream.
    pub document: usize,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(kind) = &self.kind {
            write!(f, " ({kind}")?;
            match (&self.namespace, &self.name) {
                (Some(ns), Some(name)) => write!(f, " {ns}/{name}")?,
                (None, Some(name)) => write!(f, " {name}")?,
                _ => {}
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors of `rustmesh-api`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not YAML, or does not have the shape of the kind it claims to be.
    #[error("{object}: {error}")]
    Parse {
        object: Box<ObjectRef>,
        error: FieldError,
    },
    /// The object has the right shape but breaks a rule (weights, regexes, subsets...).
    #[error("{object}: {}", join(errors))]
    Invalid {
        object: Box<ObjectRef>,
        errors: Vec<FieldError>,
    },
    /// Writing the CRDs failed.
    #[error("rendering CRD YAML: {0}")]
    Render(String),
}

impl Error {
    /// The field errors carried, whatever the variant.
    pub fn field_errors(&self) -> Vec<&FieldError> {
        match self {
            Error::Parse { error, .. } => vec![error],
            Error::Invalid { errors, .. } => errors.iter().collect(),
            Error::Render(_) => vec![],
        }
    }
}
