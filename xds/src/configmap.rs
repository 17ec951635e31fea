//! The ConfigMap contract: how a scope's [`ProxyConfig`] is stored in the ConfigMap
//! [`crate::well_known::PROXY_CONFIGMAP`], written by the operator and read by the proxy, in one
//! place so the two sides cannot drift apart.
//!
//! - `data["scopes.json"]`: the [`ScopeIndex`] ([`crate::scope`]: key names, which key a pod
//!   uses, and per scope its `versionInfo` and endpoint parts), read with [`read_index`];
//! - `binaryData["default.json.gz"]`, `binaryData["sidecar-<name>.json.gz"]`: gzip ([`gzip`],
//!   deterministic) of the compact JSON of each scope's configuration without its endpoints
//!   ([`take_base`]), or of a whole configuration for a key the index lists no parts for
//!   ([`encode`], [`decode`]);
//! - `binaryData["default.eds-NN.json.gz"]`...: gzip of each endpoint part ([`endpoint_part_json`];
//!   which assignment goes to which part: [`split_endpoints`]);
//! - a reader puts a scope back together with [`assemble`] (or, given a lookup of the keys,
//!   [`read_scope`]), validating the result;
//! - hashes: [`content_hash`] (a configuration without its `versionInfo`), [`scope_version`] (the
//!   `versionInfo` of a split scope, from its values' [`value_hash`]es) and [`content_hash_of`]
//!   (the whole ConfigMap content, the operator's `rustmesh.io/config-hash` annotation).
//!
//! Size limits: the operator writes at most [`MAX_PAYLOAD_BYTES`]; what is read is untrusted, so a
//! value is never decompressed past [`MAX_DECODED_BYTES`]. Every error names the key it is about
//! ([`ConfigMapError::key`]). The functions here are pure: fetching the keys (a mounted volume, the
//! API, a `ConfigMap` object) is the caller's.
//!
//! [`encode_scope`] is the whole writing side for one scope in one call (the operator's encoder
//! does the same steps with caching), the inverse of [`assemble`].

use crate::cluster::ClusterLoadAssignment;
use crate::fnv;
use crate::scope::{
    EndpointPart, SCOPE_INDEX_KEY, ScopeIndex, ScopeParts, endpoint_part_count, endpoint_part_key,
    endpoint_part_of,
};
use crate::{Error, ProxyConfig};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::Serialize;
use std::io::{Read, Write};

/// Largest payload the operator writes: the API server refuses objects over 1 MiB (3 MiB request
/// limit, 1.5 MiB etcd value by default, 1 MiB for ConfigMaps); the rest is left for metadata.
pub const MAX_PAYLOAD_BYTES: usize = 1_000_000;
/// A value larger than this (after gunzip) is refused.
pub const MAX_DECODED_BYTES: u64 = 64 * 1024 * 1024;

/// Why a value of the ConfigMap could not be read. `key` is the key (or whatever the caller named
/// the value by: a path, `configmap ns/name, key K`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigMapError {
    /// Not gzip.
    #[error("cannot decode {key}: not gzip: {message}")]
    NotGzip { key: String, message: String },
    /// Over [`MAX_DECODED_BYTES`].
    #[error("cannot decode {key}: larger than {limit} bytes")]
    TooLarge { key: String, limit: u64 },
    /// Not UTF-8 text.
    #[error("cannot decode {key}: not UTF-8: {message}")]
    NotUtf8 { key: String, message: String },
    /// A key the index names is not there.
    #[error("{key}: not found")]
    Missing { key: String },
    /// Decoded, but not a valid document of its kind (the source names the field).
    #[error("{key}: {source}")]
    Invalid {
        key: String,
        #[source]
        source: Error,
    },
    /// The index (`key`) names something that cannot be a ConfigMap key (a path).
    #[error("{key}: key: {named:?} is not a ConfigMap key")]
    NotAKey { key: String, named: String },
}

impl ConfigMapError {
    /// The key (or name of the value) the error is about.
    pub fn key(&self) -> &str {
        match self {
            ConfigMapError::NotGzip { key, .. }
            | ConfigMapError::TooLarge { key, .. }
            | ConfigMapError::NotUtf8 { key, .. }
            | ConfigMapError::Missing { key }
            | ConfigMapError::Invalid { key, .. }
            | ConfigMapError::NotAKey { key, .. } => key,
        }
    }
}

fn invalid(key: &str) -> impl FnOnce(Error) -> ConfigMapError + '_ {
    move |source| ConfigMapError::Invalid {
        key: key.to_string(),
        source,
    }
}

/// gzip of bytes (deterministic: no timestamp, no file name in the header).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 8), Compression::default());
    enc.write_all(bytes)
        .and_then(|()| enc.finish())
        .expect("gzip into memory cannot fail")
}

/// The stored bytes of `key` as text: gunzipped when `gzipped` (never past
/// [`MAX_DECODED_BYTES`]), then checked to be UTF-8.
pub fn decode_text(key: &str, raw: &[u8], gzipped: bool) -> Result<String, ConfigMapError> {
    let bytes = if gzipped {
        let mut out = Vec::new();
        GzDecoder::new(raw)
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| ConfigMapError::NotGzip {
                key: key.to_string(),
                message: e.to_string(),
            })?;
        if out.len() as u64 > MAX_DECODED_BYTES {
            return Err(ConfigMapError::TooLarge {
                key: key.to_string(),
                limit: MAX_DECODED_BYTES,
            });
        }
        out
    } else {
        raw.to_vec()
    };
    String::from_utf8(bytes).map_err(|e| ConfigMapError::NotUtf8 {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// [`decode_text`] of a `.json.gz` value.
pub fn gunzip(key: &str, raw: &[u8]) -> Result<String, ConfigMapError> {
    decode_text(key, raw, true)
}

/// Reads `data["scopes.json"]` (`key` names it in errors).
pub fn read_index(key: &str, raw: &[u8]) -> Result<ScopeIndex, ConfigMapError> {
    let text = decode_text(key, raw, false)?;
    ScopeIndex::from_json(&text).map_err(invalid(key))
}

/// Refuses a key named by the index (`index`) that could not be a ConfigMap key (a path).
pub fn check_key(index: &str, named: &str) -> Result<(), ConfigMapError> {
    if named.contains('/') || named.starts_with('.') {
        return Err(ConfigMapError::NotAKey {
            key: index.to_string(),
            named: named.to_string(),
        });
    }
    Ok(())
}

/// gzip of the compact JSON of a whole configuration (a key without endpoint parts).
pub fn encode(config: &ProxyConfig) -> Vec<u8> {
    gzip(&serde_json::to_vec(config).expect("configuration always serialises"))
}

/// Reads a whole-configuration `.json.gz` value back, validating it.
pub fn decode(key: &str, raw: &[u8]) -> Result<ProxyConfig, ConfigMapError> {
    ProxyConfig::from_json(&gunzip(key, raw)?).map_err(invalid(key))
}

/// Splits a scope's configuration for writing: the JSON of the scope's own key (the
/// configuration without its endpoints and `versionInfo`), and the endpoints taken out of it.
pub fn take_base(mut config: ProxyConfig) -> (Vec<u8>, Vec<ClusterLoadAssignment>) {
    let endpoints = std::mem::take(&mut config.endpoints);
    config.version_info.clear();
    let json = serde_json::to_vec(&config).expect("configuration always serialises");
    (json, endpoints)
}

/// The JSON of one endpoint part (an [`EndpointPart`] holding these assignments).
pub fn endpoint_part_json(endpoints: &[ClusterLoadAssignment]) -> Vec<u8> {
    #[derive(Serialize)]
    struct PartRef<'a> {
        endpoints: &'a [ClusterLoadAssignment],
    }
    serde_json::to_vec(&PartRef { endpoints }).expect("endpoints always serialise")
}

/// A scope's assignments grouped into its endpoint parts, part `i` at index `i`
/// ([`endpoint_part_count`] parts, each assignment where [`endpoint_part_of`] puts it, in the
/// order given).
pub fn split_endpoints(endpoints: Vec<ClusterLoadAssignment>) -> Vec<Vec<ClusterLoadAssignment>> {
    let n = endpoint_part_count(endpoints.len());
    let mut grouped = vec![Vec::new(); n];
    for cla in endpoints {
        grouped[endpoint_part_of(&cla.cluster_name, n)].push(cla);
    }
    grouped
}

/// The hash of one value's JSON (what [`scope_version`] combines).
pub fn value_hash(json: &[u8]) -> u64 {
    fnv::hash(json)
}

/// The `versionInfo` of a split scope: a hash of its values' [`value_hash`]es, its own key's
/// first, then its endpoint parts' in order.
pub fn scope_version(value_hashes: impl IntoIterator<Item = u64>) -> String {
    let mut h = fnv::OFFSET;
    for v in value_hashes {
        h = fnv::extend(h, v.to_le_bytes());
    }
    format!("{h:016x}")
}

/// Hash of a configuration's content (its `versionInfo` excluded), as 16 hex digits.
pub fn content_hash(config: &ProxyConfig) -> String {
    let mut c = config.clone();
    c.version_info.clear();
    let json = serde_json::to_vec(&c).expect("configuration always serialises");
    format!("{:016x}", fnv::hash(&json))
}

/// Hash of a ConfigMap's content: `data` then `binaryData` entries, each in key order (as 16 hex
/// digits). Equal only for exactly equal content.
pub fn content_hash_of<'a>(
    data: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    binary: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> String {
    let mut h = fnv::OFFSET;
    for (tag, entries) in [
        (b"d:", data.into_iter().collect::<Vec<_>>()),
        (b"b:", binary.into_iter().collect()),
    ] {
        for (k, v) in entries {
            h = fnv::extend(h, tag.iter().copied());
            h = fnv::extend(h, k.bytes());
            h = fnv::extend(h, [0u8]);
            h = fnv::extend(h, v.iter().copied());
            h = fnv::extend(h, [0u8]);
        }
    }
    format!("{h:016x}")
}

/// One scope as written by [`encode_scope`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedScope {
    /// `binaryData` values: the scope's own key first, then its endpoint parts in order.
    pub values: Vec<(String, Vec<u8>)>,
    /// The scope's entry in [`ScopeIndex::parts`].
    pub parts: ScopeParts,
}

/// Encodes one scope's configuration under `key`, split: its configuration without endpoints,
/// and its endpoints in parts ([`split_endpoints`]).
pub fn encode_scope(key: &str, config: &ProxyConfig) -> EncodedScope {
    let (base, endpoints) = take_base(config.clone());
    let mut hashes = vec![value_hash(&base)];
    let mut values = vec![(key.to_string(), gzip(&base))];
    for (i, eps) in split_endpoints(endpoints).iter().enumerate() {
        let json = endpoint_part_json(eps);
        hashes.push(value_hash(&json));
        values.push((endpoint_part_key(key, i), gzip(&json)));
    }
    let parts = ScopeParts {
        version_info: scope_version(hashes),
        endpoints: values[1..].iter().map(|(k, _)| k.clone()).collect(),
    };
    EncodedScope { values, parts }
}

/// Puts one scope's configuration back together and validates it: `base` is the text of the
/// scope's key (named `key`); `split` is `None` when that is a whole configuration, else the
/// `versionInfo` from the index and the scope's endpoint parts (each named, and gzipped, in the
/// index's order). Each error names the value at fault.
pub fn assemble<'a>(
    key: &str,
    base: &str,
    split: Option<(&str, impl IntoIterator<Item = (&'a str, &'a [u8])>)>,
) -> Result<ProxyConfig, ConfigMapError> {
    let Some((version_info, parts)) = split else {
        return ProxyConfig::from_json(base).map_err(invalid(key));
    };
    let config = ProxyConfig::from_json_unvalidated(base).map_err(invalid(key))?;
    let mut read = Vec::new();
    for (part_key, raw) in parts {
        let text = gunzip(part_key, raw)?;
        read.push(EndpointPart::from_json(&text).map_err(invalid(part_key))?);
    }
    config
        .with_parts(read, version_info.to_string())
        .map_err(invalid(key))
}

/// Reads the scope stored under `key` the way the proxy does, `get` looking up a key of the
/// ConfigMap (`data` or `binaryData`): the index, the scope's value, and its endpoint parts when
/// the index lists them, put back together and validated. A key the index needs and `get` does
/// not have is [`ConfigMapError::Missing`].
pub fn read_scope<'a>(
    get: impl Fn(&str) -> Option<&'a [u8]>,
    key: &str,
) -> Result<ProxyConfig, ConfigMapError> {
    let fetch = |k: &str| get(k).ok_or_else(|| ConfigMapError::Missing { key: k.to_string() });
    let index = read_index(SCOPE_INDEX_KEY, fetch(SCOPE_INDEX_KEY)?)?;
    check_key(SCOPE_INDEX_KEY, key)?;
    let base = gunzip(key, fetch(key)?)?;
    let Some(parts) = index.parts.get(key) else {
        return assemble(key, &base, None::<(&str, [(&str, &[u8]); 0])>);
    };
    let mut read = Vec::with_capacity(parts.endpoints.len());
    for k in &parts.endpoints {
        check_key(SCOPE_INDEX_KEY, k)?;
        read.push((k.as_str(), fetch(k)?));
    }
    assemble(key, &base, Some((parts.version_info.as_str(), read)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn assignment(cluster: &str, ip: [u8; 4], port: u16) -> ClusterLoadAssignment {
        let json = serde_json::json!({"clusterName": cluster, "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {
                "address": format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]), "portValue": port}}}}]}]});
        serde_json::from_value(json).unwrap()
    }

    /// A valid configuration with one EDS cluster per host and its assignment.
    fn config(hosts: &[(String, [u8; 4], u16)]) -> ProxyConfig {
        let clusters: Vec<_> = hosts
            .iter()
            .map(|(h, _, _)| {
                let name = format!("outbound|80||{h}.shop.svc.cluster.local");
                serde_json::json!({"name": name, "type": "EDS", "lbPolicy": "ROUND_ROBIN",
                    "edsClusterConfig": {"serviceName": name}})
            })
            .collect();
        let mut config = ProxyConfig::from_json_unvalidated(
            &serde_json::json!({"versionInfo": "v", "clusters": clusters}).to_string(),
        )
        .unwrap();
        config.endpoints = hosts
            .iter()
            .map(|(h, ip, port)| {
                assignment(
                    &format!("outbound|80||{h}.shop.svc.cluster.local"),
                    *ip,
                    *port,
                )
            })
            .collect();
        config
            .endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        config.validate().unwrap();
        config
    }

    /// The keys as the operator writes them: the scope's values and the index.
    fn stored(e: &EncodedScope) -> BTreeMap<String, Vec<u8>> {
        let mut index = ScopeIndex::default();
        index.parts.insert(e.values[0].0.clone(), e.parts.clone());
        let mut keys: BTreeMap<_, _> = e.values.iter().cloned().collect();
        keys.insert(SCOPE_INDEX_KEY.into(), index.to_json().into_bytes());
        keys
    }

    fn read(keys: &BTreeMap<String, Vec<u8>>) -> Result<ProxyConfig, ConfigMapError> {
        read_scope(|k| keys.get(k).map(Vec::as_slice), "default.json.gz")
    }

    proptest! {
        /// Encode a configuration with endpoint parts, decode, reassemble: the same
        /// configuration, with the version the index carries; encoding is deterministic and the
        /// content hash survives the trip.
        #[test]
        fn encode_then_assemble_is_the_identity(
            hosts in proptest::collection::btree_map("[a-z][a-z0-9]{0,12}", (any::<[u8; 4]>(), 1u16..), 0..300)
        ) {
            let hosts: Vec<_> = hosts.into_iter().map(|(h, (ip, port))| (h, ip, port)).collect();
            let original = config(&hosts);
            let encoded = encode_scope("default.json.gz", &original);
            prop_assert_eq!(encoded.values.len(), 1 + endpoint_part_count(hosts.len()));
            prop_assert_eq!(&encoded, &encode_scope("default.json.gz", &original));
            let back = read(&stored(&encoded)).unwrap();
            let mut expected = original.clone();
            expected.version_info = encoded.parts.version_info.clone();
            prop_assert_eq!(&back, &expected);
            prop_assert_eq!(content_hash(&back), content_hash(&original));
            // The whole-configuration layout round-trips too.
            prop_assert_eq!(decode("k", &encode(&original)).unwrap(), original);
        }
    }

    fn two_hosts() -> EncodedScope {
        let hosts = [
            ("a".to_string(), [10, 0, 0, 1], 80),
            ("b".to_string(), [10, 0, 0, 2], 80),
        ];
        let mut config = config(&hosts);
        // Enough assignments for two parts.
        for i in 0..200u8 {
            let name = format!("outbound|81||h{i}.shop.svc.cluster.local");
            config.clusters.push(
                serde_json::from_value(serde_json::json!({"name": name, "type": "EDS",
                    "lbPolicy": "ROUND_ROBIN", "edsClusterConfig": {"serviceName": name}}))
                .unwrap(),
            );
            config.endpoints.push(assignment(&name, [10, 1, 0, i], 81));
        }
        config
            .endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        let e = encode_scope("default.json.gz", &config);
        assert!(e.values.len() >= 3, "{}", e.values.len());
        e
    }

    const PART0: &str = "default.eds-00.json.gz";
    const PART1: &str = "default.eds-01.json.gz";

    #[test]
    fn bad_gzip_is_refused_naming_the_key() {
        let mut keys = stored(&two_hosts());
        keys.insert(PART0.into(), b"not gzip".to_vec());
        let err = read(&keys).unwrap_err();
        assert!(matches!(err, ConfigMapError::NotGzip { .. }), "{err}");
        assert_eq!(err.key(), PART0);
        assert!(err.to_string().contains("not gzip"), "{err}");
    }

    #[test]
    fn values_over_the_limit_are_refused_without_decompressing_them_whole() {
        let huge = gzip(&vec![b' '; MAX_DECODED_BYTES as usize + 1]);
        let err = gunzip("default.json.gz", &huge).unwrap_err();
        assert_eq!(
            err,
            ConfigMapError::TooLarge {
                key: "default.json.gz".into(),
                limit: MAX_DECODED_BYTES
            }
        );
        // At the limit is fine.
        let fits = gzip(&vec![b' '; 1024]);
        assert_eq!(gunzip("k", &fits).unwrap().len(), 1024);
    }

    #[test]
    fn not_utf8_is_refused_naming_the_key() {
        let err = gunzip("k.json.gz", &gzip(&[0xff, 0xfe])).unwrap_err();
        assert!(matches!(err, ConfigMapError::NotUtf8 { ref key, .. } if key == "k.json.gz"));
        let err = read_index("scopes.json", &[0xff]).unwrap_err();
        assert_eq!(err.key(), "scopes.json");
    }

    #[test]
    fn a_missing_duplicated_or_wrong_part_is_refused_naming_it() {
        let good = stored(&two_hosts());
        assert!(read(&good).is_ok());
        let mut keys = good.clone();
        keys.remove(PART0);
        let err = read(&keys).unwrap_err();
        assert_eq!(err, ConfigMapError::Missing { key: PART0.into() });
        let mut keys = good.clone();
        keys.remove(SCOPE_INDEX_KEY);
        assert_eq!(read(&keys).unwrap_err().key(), SCOPE_INDEX_KEY);
        // The same part twice: an assignment given twice.
        let mut keys = good.clone();
        keys.insert(PART1.into(), good[PART0].clone());
        let err = read(&keys).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
        // Something else in a part's place.
        let mut keys = good.clone();
        keys.insert(PART0.into(), good["default.json.gz"].clone());
        let err = read(&keys).unwrap_err();
        assert_eq!(err.key(), PART0);
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn index_keys_that_are_paths_are_refused() {
        assert!(check_key("scopes.json", "default.json.gz").is_ok());
        for bad in ["../etc/passwd", "a/b", "..data"] {
            let err = check_key("scopes.json", bad).unwrap_err();
            assert_eq!(err.key(), "scopes.json");
        }
    }

    #[test]
    fn configmap_hash_changes_with_any_byte_and_is_stable() {
        let d = [("scopes.json", &b"{}"[..])];
        let b = [("default.json.gz", &b"x"[..])];
        let h = content_hash_of(d, b);
        assert_eq!(h, content_hash_of(d, b));
        assert_ne!(h, content_hash_of(d, [("default.json.gz", &b"y"[..])]));
        // Moving a value between data and binaryData is a change.
        assert_ne!(h, content_hash_of(d.into_iter().chain(b), []));
    }
}
