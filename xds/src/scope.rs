//! How a proxy finds its configuration in the ConfigMap the operator writes.
//!
//! The operator renders one [`crate::ProxyConfig`] per *scope* of an injected namespace and writes
//! them all into that namespace's ConfigMap [`crate::well_known::PROXY_CONFIGMAP`]:
//!
//! - `binaryData["default.json.gz"]`: the namespace scope (the namespace-wide Sidecar, else the
//!   root namespace's, else everything the namespace may see);
//! - `binaryData["sidecar-<name>.json.gz"]`: one per Sidecar with a `workloadSelector`;
//! - `data["scopes.json"]`: the [`ScopeIndex`], which lists the selector scopes in the order they
//!   are tried (Istio's rule: the oldest Sidecar wins, then the name).
//!
//! Each `.json.gz` value is the gzip (RFC 1952) of the compact JSON of a `ProxyConfig`, whose
//! `versionInfo` is the content hash. A pod picks its key with [`select_scope`] from its own
//! labels (the webhook mounts them at `/etc/istio/pod/labels`, read with [`parse_pod_labels`]).

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Key (in `data`) of the [`ScopeIndex`] JSON.
pub const SCOPE_INDEX_KEY: &str = "scopes.json";
/// Key (in `binaryData`) of the namespace scope's configuration.
pub const DEFAULT_SCOPE_KEY: &str = "default.json.gz";
/// Version of the [`ScopeIndex`] format; a proxy refuses an index with a newer major version.
pub const SCOPE_INDEX_VERSION: u32 = 1;

/// Key (in `binaryData`) of the configuration for the Sidecar `name` (which has a workloadSelector).
pub fn sidecar_scope_key(name: &str) -> String {
    format!("sidecar-{name}.json.gz")
}

/// The table of contents of the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeIndex {
    pub version: u32,
    /// Key used by pods no selector matches: [`DEFAULT_SCOPE_KEY`].
    pub default: String,
    /// Selector scopes, tried in order; the first whose labels the pod carries wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<ScopeSelector>,
}

impl Default for ScopeIndex {
    fn default() -> Self {
        ScopeIndex {
            version: SCOPE_INDEX_VERSION,
            default: DEFAULT_SCOPE_KEY.to_string(),
            selectors: Vec::new(),
        }
    }
}

/// One Sidecar with a workloadSelector and the key of its configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeSelector {
    /// `sidecar-<name>.json.gz`.
    pub key: String,
    /// The Sidecar's name.
    pub sidecar: String,
    /// `workloadSelector.labels`: all must be present with the same value.
    pub labels: BTreeMap<String, String>,
}

impl ScopeIndex {
    /// Reads `data["scopes.json"]`.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let index: ScopeIndex = serde_path_to_error::deserialize(de).map_err(|e| Error::Parse {
            field: e.path().to_string(),
            line: e.inner().line(),
            column: e.inner().column(),
            message: e.inner().to_string(),
        })?;
        if index.version > SCOPE_INDEX_VERSION {
            return Err(Error::Invalid(vec![(
                "version".into(),
                format!(
                    "scope index version {} is newer than the supported {SCOPE_INDEX_VERSION}",
                    index.version
                ),
            )]));
        }
        Ok(index)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("scope index always serialises")
    }
}

/// The key of the configuration for a pod with these labels: the first selector scope whose
/// labels are all carried by the pod, else the default scope.
pub fn select_scope<'a>(index: &'a ScopeIndex, pod_labels: &BTreeMap<String, String>) -> &'a str {
    index
        .selectors
        .iter()
        .find(|s| selects(&s.labels, pod_labels))
        .map(|s| s.key.as_str())
        .unwrap_or(index.default.as_str())
}

/// Whether a non-empty selector matches the labels (an empty selector selects nothing here:
/// a Sidecar's workloadSelector must name at least one label).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Parses the downward-API `labels` file: one `key="value"` per line, values quoted as Go's
/// `strconv.Quote` does.
pub fn parse_pod_labels(text: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: &str| Error::Parse {
            field: "labels".into(),
            line: i + 1,
            column: 1,
            message: format!("{message}: {line:?}"),
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected key=\"value\""))?;
        let value = unquote(value).ok_or_else(|| bad("value is not a quoted string"))?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn first_matching_selector_wins_else_default() {
        let index = ScopeIndex {
            selectors: vec![
                ScopeSelector {
                    key: sidecar_scope_key("ratings"),
                    sidecar: "ratings".into(),
                    labels: labels(&[("app", "ratings")]),
                },
                ScopeSelector {
                    key: sidecar_scope_key("v1"),
                    sidecar: "v1".into(),
                    labels: labels(&[("version", "v1")]),
                },
            ],
            ..ScopeIndex::default()
        };
        assert_eq!(
            select_scope(&index, &labels(&[("app", "ratings"), ("version", "v1")])),
            "sidecar-ratings.json.gz"
        );
        assert_eq!(
            select_scope(&index, &labels(&[("app", "reviews"), ("version", "v1")])),
            "sidecar-v1.json.gz"
        );
        assert_eq!(
            select_scope(&index, &labels(&[("app", "reviews")])),
            DEFAULT_SCOPE_KEY
        );
        let round = ScopeIndex::from_json(&index.to_json()).unwrap();
        assert_eq!(round, index);
    }

    #[test]
    fn reads_downward_api_labels() {
        let text =
            "app=\"reviews\"\nsecurity.istio.io/tlsMode=\"istio\"\nnote=\"a \\\"b\\\"\\n\"\n";
        let l = parse_pod_labels(text).unwrap();
        assert_eq!(l["app"], "reviews");
        assert_eq!(l["security.istio.io/tlsMode"], "istio");
        assert_eq!(l["note"], "a \"b\"\n");
        assert!(parse_pod_labels("app=reviews").is_err());
    }

    #[test]
    fn newer_index_is_refused() {
        let err = ScopeIndex::from_json(r#"{"version": 9, "default": "default.json.gz"}"#);
        assert!(err.is_err());
    }
}
