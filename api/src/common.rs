//! Types shared by several kinds of `networking.istio.io`.

use rustmesh_xds::regex::Anchor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use rustmesh_xds::types::Percent;

/// Istio's `StringMatch`: exactly one of `exact`, `prefix` or `regex` (RE2 syntax).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl StringMatch {
    /// Whether `value` matches. A regex that does not compile (or is over the size limits of
    /// `rustmesh_xds::regex`) matches nothing; validation reports it.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Regex(r) => rustmesh_xds::regex::compile(r, Anchor::Whole)
                .map(|c| c.regex.is_match(value))
                .unwrap_or(false),
        }
    }
}

/// A port on a destination service: `{number: 9080}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

/// Where traffic goes: a service host (short name or FQDN), optional subset and port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// `workloadSelector` as used by DestinationRule: `{matchLabels: {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Whether every `selector` label is present with the same value in `labels`.
/// An empty selector selects everything, as in Kubernetes.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_semantics() {
        assert!(StringMatch::Exact("/a".into()).matches("/a"));
        assert!(!StringMatch::Exact("/a".into()).matches("/ab"));
        assert!(StringMatch::Prefix("/a".into()).matches("/ab"));
        assert!(StringMatch::Regex("/a.*".into()).matches("/abc"));
        // Envoy's safe_regex is a full match, not a search.
        assert!(!StringMatch::Regex("b".into()).matches("abc"));
        assert!(!StringMatch::Regex("(".into()).matches("("));
    }

    #[test]
    fn label_selection() {
        let labels: BTreeMap<_, _> = [
            ("app".to_string(), "reviews".to_string()),
            ("version".into(), "v1".into()),
        ]
        .into();
        assert!(labels_match(&BTreeMap::new(), &labels));
        assert!(labels_match(
            &[("version".to_string(), "v1".to_string())].into(),
            &labels
        ));
        assert!(!labels_match(
            &[("version".to_string(), "v2".to_string())].into(),
            &labels
        ));
    }
}
