//! Choosing and decoding this pod's document: out of a ConfigMap's keys (mounted or from the
//! API, behind `Keys`), the scope the pod's labels select, its endpoint parts, and the hash of
//! every input; decoded and reassembled with the contract [`rustmesh_xds::configmap`], whose
//! errors become the proxy's (naming the file or ConfigMap key).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use rustmesh_xds::ProxyConfig;
use rustmesh_xds::configmap::{self as contract, ConfigMapError};
use rustmesh_xds::scope::{self, DEFAULT_SCOPE_KEY, SCOPE_INDEX_KEY};

use super::PLAIN_CONFIG_KEY;
use crate::{Error, Result};

/// A document read from the source, still as stored (decoded by [`Document::text`] only when
/// its hash says it changed).
#[derive(Clone, Debug)]
pub struct Document {
    /// The stored bytes.
    pub raw: Vec<u8>,
    /// Whether they are gzipped (`.gz` keys).
    pub gzip: bool,
    /// Where it came from, for messages (`/etc/rustmesh/config/sidecar-db.json.gz`, or
    /// `configmap shop/rustmesh-proxy-config, key default.json.gz`).
    pub origin: String,
    /// Hash of every input that went into choosing and reading it: the pod's labels, the
    /// index, the key and the stored bytes (endpoint parts included). The same content hashes
    /// the same whether it was read from the mount or the API, so switching between them
    /// re-applies nothing.
    pub hash: u64,
    /// A split configuration (`rustmesh_xds::scope`, index version 2): its endpoint parts
    /// (gzipped) and its `versionInfo`; `None` when `raw` is the whole configuration.
    pub split: Option<Split>,
}

/// The rest of a split configuration.
#[derive(Clone, Debug)]
pub struct Split {
    /// `versionInfo` of the assembled configuration (from the index).
    pub version_info: String,
    /// Endpoint parts: where each came from, and its gzipped bytes.
    pub parts: Vec<(String, Vec<u8>)>,
}

impl Document {
    /// Where it came from, for messages.
    pub fn origin(&self) -> String {
        self.origin.clone()
    }

    /// The JSON text of the scope's own key (gunzipped if needed).
    pub fn text(&self) -> Result<String> {
        Ok(contract::decode_text(&self.origin, &self.raw, self.gzip)?)
    }

    /// The configuration, validated: the document itself, or for a split configuration the
    /// scope's part with its endpoint parts put back in (each refused naming its key).
    pub fn config(&self) -> Result<ProxyConfig> {
        let split = self.split.as_ref().map(|s| {
            let parts = s.parts.iter().map(|(o, raw)| (o.as_str(), raw.as_slice()));
            (s.version_info.as_str(), parts)
        });
        Ok(contract::assemble(&self.origin, &self.text()?, split)?)
    }
}

/// The contract's errors name the value by its origin (a path, or ConfigMap and key).
impl From<ConfigMapError> for Error {
    fn from(e: ConfigMapError) -> Self {
        match e {
            ConfigMapError::NotGzip { key, message } => Error::ConfigDecode {
                origin: key,
                message: format!("not gzip: {message}"),
            },
            ConfigMapError::TooLarge { key, limit } => Error::ConfigDecode {
                origin: key,
                message: format!("larger than {limit} bytes"),
            },
            ConfigMapError::NotUtf8 { key, message } => Error::ConfigDecode {
                origin: key,
                message: format!("not UTF-8: {message}"),
            },
            ConfigMapError::Missing { key } => Error::ConfigMissing { origin: key },
            ConfigMapError::Invalid { key, source } => Error::ConfigInvalid {
                origin: key,
                source,
            },
            ConfigMapError::NotAKey { key, named } => Error::ConfigCompile {
                field: format!("{key}: key"),
                message: format!("{named:?} is not a ConfigMap key"),
            },
        }
    }
}

fn invalid(origin: impl Into<String>, source: rustmesh_xds::Error) -> Error {
    Error::ConfigInvalid {
        origin: origin.into(),
        source,
    }
}

/// One ConfigMap's keys, as the proxy reads them: the mounted directory ([`MountedKeys`]) or
/// the object from the API (`api::ObjectKeys`).
pub(crate) trait Keys {
    /// The stored bytes of `key` (for `binaryData`, decoded), `None` when there is no such key.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Where `key` is, for messages.
    fn origin(&self, key: &str) -> String;
}

/// Picks this pod's document out of a ConfigMap (the operator's layout, `rustmesh_xds::scope`):
/// with `scopes.json`, the scope the pod's labels select for a proxy of `role`; without it, `config.json` (plain
/// JSON), else `default.json.gz`. The same for the mount and the API object.
pub(crate) fn select_document(
    keys: &impl Keys,
    labels_bytes: &[u8],
    labels_path: &Path,
    role: scope::ProxyRole,
) -> Result<Document> {
    let index_bytes = keys.get(SCOPE_INDEX_KEY)?;
    let mut parts = None;
    let (key, why) = match &index_bytes {
        Some(index_bytes) => {
            let index_origin = keys.origin(SCOPE_INDEX_KEY);
            let index = contract::read_index(&index_origin, index_bytes)?;
            let labels_text =
                std::str::from_utf8(labels_bytes).map_err(|e| Error::ConfigDecode {
                    origin: labels_path.display().to_string(),
                    message: format!("not UTF-8: {e}"),
                })?;
            let labels: BTreeMap<String, String> = scope::parse_pod_labels(labels_text)
                .map_err(|e| invalid(labels_path.display().to_string(), e))?;
            let key = scope::select_scope(&index, &labels, role).to_string();
            contract::check_key(&index_origin, &key)?;
            let why = format!("scope {key:?} selected by the pod's labels");
            parts = index.parts.get(&key).cloned();
            (key, why)
        }
        None => {
            let key = if keys.get(PLAIN_CONFIG_KEY)?.is_some()
                || keys.get(DEFAULT_SCOPE_KEY)?.is_none()
            {
                PLAIN_CONFIG_KEY
            } else {
                DEFAULT_SCOPE_KEY
            };
            (key.to_string(), format!("no {SCOPE_INDEX_KEY}"))
        }
    };
    let origin = keys.origin(&key);
    let raw = keys.get(&key)?.ok_or_else(|| Error::ConfigMissing {
        origin: origin.clone(),
    })?;
    let mut hashed: Vec<&[u8]> = vec![
        labels_bytes,
        index_bytes.as_deref().unwrap_or_default(),
        key.as_bytes(),
        &raw,
    ];
    let split = match parts {
        None => None,
        Some(p) => {
            let mut read = Vec::with_capacity(p.endpoints.len());
            for part_key in &p.endpoints {
                contract::check_key(&keys.origin(SCOPE_INDEX_KEY), part_key)?;
                let origin = keys.origin(part_key);
                let bytes = keys.get(part_key)?.ok_or_else(|| Error::ConfigMissing {
                    origin: origin.clone(),
                })?;
                read.push((origin, bytes));
            }
            Some(Split {
                version_info: p.version_info,
                parts: read,
            })
        }
    };
    if let Some(split) = &split {
        hashed.extend(split.parts.iter().map(|(_, b)| b.as_slice()));
    }
    let hash = hash_of(&hashed);
    tracing::trace!(origin, why, "configuration read");
    Ok(Document {
        raw,
        gzip: key.ends_with(".gz"),
        origin,
        hash,
        split,
    })
}

pub(crate) fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}
