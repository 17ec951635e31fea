//! The `status` every networking.istio.io object carries, written by the operator.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Istio's `IstioStatus`: conditions plus the generation they describe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_messages: Vec<ValidationMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// While the current version is refused: the version the proxies still serve in its place
    /// (a rustmesh field; Istio's CRDs keep unknown status fields). Persisted here so that an
    /// operator restart serves the same routes instead of dropping the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted: Option<LastAccepted>,
}

/// The last accepted version of an object whose current version is refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastAccepted {
    /// Its `metadata.generation`.
    pub generation: i64,
    /// Its `spec`, as it was accepted.
    #[schemars(schema_with = "any_object")]
    pub spec: serde_json::Value,
}

/// An object of any fields (`x-kubernetes-preserve-unknown-fields`), for a spec kept as JSON.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// One condition, e.g. `Accepted=True` or `Accepted=False` with reason `Invalid`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A finding about the object (Istio's analysis messages), naming the field concerned.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationMessage {
    /// `Error`, `Warning` or `Info`.
    pub level: String,
    pub field: String,
    pub message: String,
}
