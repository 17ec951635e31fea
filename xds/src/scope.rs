//! How a proxy finds its configuration in the ConfigMap the operator writes.
//!
//! The operator renders one [`crate::ProxyConfig`] per *scope* of an injected namespace and writes
//! them all into that namespace's ConfigMap [`crate::well_known::PROXY_CONFIGMAP`]:
//!
//! - `binaryData["default.json.gz"]`: the namespace scope (the namespace-wide Sidecar, else the
//!   root namespace's, else everything the namespace may see);
//! - `binaryData["sidecar-<name>.json.gz"]`: one per Sidecar with a `workloadSelector`;
//! - `binaryData["gateway-<16 hex>.json.gz"]`: one per distinct `selector` of the Gateways
//!   selecting pods of the namespace ([`gateway_scope_key`]; index version 3): the gateway
//!   pods' listeners (`0.0.0.0_<port>`, bound to the port, no original destination), routes
//!   (`http.<port>`) and clusters;
//! - `data["scopes.json"]`: the [`ScopeIndex`], which lists the selector scopes in the order they
//!   are tried: gateway scopes (more labels first), read only by routers ([`ProxyRole`]), and
//!   Sidecar scopes (Istio's rule: the oldest Sidecar wins, then the name), read only by
//!   sidecars. A router matching two unrelated gateway selectors gets only the first scope (the
//!   Gateways of the other are not merged into it).
//!
//! Each `.json.gz` value is the gzip (RFC 1952) of compact JSON. A proxy picks its key with
//! [`select_scope`] from its role and its pod's labels (the webhook mounts them at `/etc/istio/pod/labels`, read
//! with [`parse_pod_labels`]).
//!
//! Since index version 2 a scope's configuration may be split, as Envoy receives endpoints (EDS)
//! apart from listeners, routes and clusters: `ScopeIndex::parts[key]` then names the scope's
//! endpoint parts (`default.eds-03.json.gz`, each an [`EndpointPart`]: the `ClusterLoadAssignment`s
//! of the clusters whose host hashes to that part, [`endpoint_part_of`]) and carries the
//! configuration's `versionInfo` (a hash of every part). The scope's own key then holds the
//! configuration without its endpoints; the proxy puts them back together
//! ([`crate::ProxyConfig::with_parts`]) before validating. So an endpoint change rewrites one small
//! part instead of the whole configuration. A key with no `parts` entry holds a whole
//! configuration (version 1 layout).

use crate::cluster::ClusterLoadAssignment;
use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Key (in `data`) of the [`ScopeIndex`] JSON.
pub const SCOPE_INDEX_KEY: &str = "scopes.json";
/// Key (in `binaryData`) of the namespace scope's configuration.
pub const DEFAULT_SCOPE_KEY: &str = "default.json.gz";
/// Version of the [`ScopeIndex`] format; a proxy refuses an index with a newer version.
/// Version 2 added [`ScopeIndex::parts`] (endpoints in parts of their own); version 3 gateway
/// scopes ([`ScopeSelector::gateways`], no `sidecar`). An index without gateway scopes is
/// still written as version 2 ([`ScopeIndex::written_version`]), so proxies that read version
/// 2 keep reading every namespace without gateway pods.
pub const SCOPE_INDEX_VERSION: u32 = 3;
/// The version an index without gateway scopes is written as.
pub const SCOPE_INDEX_VERSION_WITHOUT_GATEWAYS: u32 = 2;
/// Endpoint parts hold about this many `ClusterLoadAssignment`s (see [`endpoint_part_count`]).
pub const ASSIGNMENTS_PER_PART: usize = 128;
/// At most this many endpoint parts per scope.
pub const MAX_ENDPOINT_PARTS: usize = 64;

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
    /// Scopes whose endpoints are in parts of their own, by scope key (version 2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, ScopeParts>,
}

impl Default for ScopeIndex {
    fn default() -> Self {
        ScopeIndex {
            version: SCOPE_INDEX_VERSION_WITHOUT_GATEWAYS,
            default: DEFAULT_SCOPE_KEY.to_string(),
            selectors: Vec::new(),
            parts: BTreeMap::new(),
        }
    }
}

/// How one scope's configuration is split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeParts {
    /// The assembled configuration's `versionInfo`.
    pub version_info: String,
    /// Keys of the endpoint parts ([`EndpointPart`]), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// One endpoint part: the `ClusterLoadAssignment`s of some of a scope's EDS clusters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPart {
    pub endpoints: Vec<ClusterLoadAssignment>,
}

impl EndpointPart {
    /// Reads an endpoint part's JSON (errors name the field, line and column).
    pub fn from_json(text: &str) -> Result<Self, Error> {
        crate::config::parse(text)
    }
}

/// Key (in `binaryData`) of endpoint part `n` of the scope stored under `scope_key`:
/// `default.json.gz` -> `default.eds-03.json.gz`.
pub fn endpoint_part_key(scope_key: &str, n: usize) -> String {
    let stem = scope_key.strip_suffix(".json.gz").unwrap_or(scope_key);
    format!("{stem}.eds-{n:02}.json.gz")
}

/// How many endpoint parts a scope with `assignments` EDS clusters gets: a power of two, about
/// [`ASSIGNMENTS_PER_PART`] assignments each, at most [`MAX_ENDPOINT_PARTS`].
pub fn endpoint_part_count(assignments: usize) -> usize {
    assignments
        .div_ceil(ASSIGNMENTS_PER_PART)
        .max(1)
        .next_power_of_two()
        .min(MAX_ENDPOINT_PARTS)
}

/// The part holding a cluster's endpoints: by a stable hash (FNV-1a) of the cluster's host (the
/// last `|`-separated field of `outbound|<port>|<subset>|<host>`), so all the clusters of one
/// service share a part and an endpoint change of a service rewrites one part.
pub fn endpoint_part_of(cluster_name: &str, parts: usize) -> usize {
    let host = cluster_name.rsplit('|').next().unwrap_or(cluster_name);
    (crate::fnv::hash(host.as_bytes()) % parts.max(1) as u64) as usize
}

/// Key (in `binaryData`) of the gateway scope of the Gateways whose `selector` is `labels`:
/// `gateway-<16 hex digits of the FNV-1a hash of the labels>.json.gz`, stable whichever
/// Gateways share the selector.
pub fn gateway_scope_key(labels: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (k, v) in labels {
        text.push_str(k);
        text.push('=');
        text.push_str(v);
        text.push('\n');
    }
    format!("gateway-{:016x}.json.gz", crate::fnv::hash(text.as_bytes()))
}

/// One selector scope and the key of its configuration: a Sidecar with a workloadSelector
/// (`sidecar` set), or the gateway pods of a Gateway `selector` (`gateways` set; index version
/// 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeSelector {
    /// `sidecar-<name>.json.gz`, or `gateway-<hex>.json.gz` ([`gateway_scope_key`]).
    pub key: String,
    /// The Sidecar's name; empty (absent) for a gateway scope.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sidecar: String,
    /// For a gateway scope: the Gateways (`<namespace>/<name>`) with this selector, oldest
    /// first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// `workloadSelector.labels` (a Gateway's `selector`): all must be present with the same
    /// value.
    pub labels: BTreeMap<String, String>,
}

impl ScopeSelector {
    /// The scope of a Sidecar with a workloadSelector.
    pub fn sidecar(name: &str, labels: BTreeMap<String, String>) -> Self {
        ScopeSelector {
            key: sidecar_scope_key(name),
            sidecar: name.to_string(),
            gateways: Vec::new(),
            labels,
        }
    }

    /// The scope of the gateway pods the Gateways `gateways` (`<namespace>/<name>`) select.
    pub fn gateway(gateways: Vec<String>, labels: BTreeMap<String, String>) -> Self {
        ScopeSelector {
            key: gateway_scope_key(&labels),
            sidecar: String::new(),
            gateways,
            labels,
        }
    }

    /// Whether this is a gateway scope (its pods run as gateways: `proxy run --type router`).
    pub fn is_gateway(&self) -> bool {
        !self.gateways.is_empty()
    }
}

impl ScopeIndex {
    /// Reads `data["scopes.json"]`.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let index: ScopeIndex = crate::config::parse(text)?;
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

    /// The version this index is written as: [`SCOPE_INDEX_VERSION`] when it holds a gateway
    /// scope, else [`SCOPE_INDEX_VERSION_WITHOUT_GATEWAYS`] (what older proxies read).
    pub fn written_version(&self) -> u32 {
        if self.selectors.iter().any(ScopeSelector::is_gateway) {
            SCOPE_INDEX_VERSION
        } else {
            SCOPE_INDEX_VERSION_WITHOUT_GATEWAYS
        }
    }
}

/// What reads a scope: a pod's sidecar (`proxy run`) or a gateway's proxy (`proxy run --type
/// router`, Istio's `proxy router`). A Gateway may select a sidecar pod's labels (Istio then
/// gives that sidecar no gateway listeners): only routers read gateway scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyRole {
    #[default]
    Sidecar,
    Router,
}

/// The key of the configuration for a proxy of `role` on a pod with these labels: for a
/// router, the first gateway scope whose labels are all carried by the pod; for a sidecar, the
/// first such Sidecar scope; else the default scope.
pub fn select_scope<'a>(
    index: &'a ScopeIndex,
    pod_labels: &BTreeMap<String, String>,
    role: ProxyRole,
) -> &'a str {
    let router = role == ProxyRole::Router;
    index
        .selectors
        .iter()
        .filter(|s| s.is_gateway() == router)
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
                ScopeSelector::sidecar("ratings", labels(&[("app", "ratings")])),
                ScopeSelector::sidecar("v1", labels(&[("version", "v1")])),
            ],
            ..ScopeIndex::default()
        };
        assert_eq!(
            select_scope(
                &index,
                &labels(&[("app", "ratings"), ("version", "v1")]),
                ProxyRole::Sidecar
            ),
            "sidecar-ratings.json.gz"
        );
        assert_eq!(
            select_scope(
                &index,
                &labels(&[("app", "reviews"), ("version", "v1")]),
                ProxyRole::Sidecar
            ),
            "sidecar-v1.json.gz"
        );
        assert_eq!(
            select_scope(&index, &labels(&[("app", "reviews")]), ProxyRole::Sidecar),
            DEFAULT_SCOPE_KEY
        );
        let round = ScopeIndex::from_json(&index.to_json()).unwrap();
        assert_eq!(round, index);
    }

    #[test]
    fn gateway_scopes_are_read_by_routers_only_and_need_version_3() {
        let sidecars_only = ScopeIndex {
            selectors: vec![ScopeSelector::sidecar(
                "ingress",
                labels(&[("app", "ingress")]),
            )],
            ..ScopeIndex::default()
        };
        assert_eq!(sidecars_only.written_version(), 2);
        // Written as version 2, a Sidecar scope reads exactly as before (no `gateways`).
        let json = sidecars_only.to_json();
        assert!(!json.contains("gateways"), "{json}");
        let gw = ScopeSelector::gateway(
            vec!["istio-system/bookinfo-gateway".into()],
            labels(&[("istio", "ingressgateway")]),
        );
        assert!(gw.key.starts_with("gateway-") && gw.key.ends_with(".json.gz"));
        assert_eq!(
            gw.key,
            gateway_scope_key(&labels(&[("istio", "ingressgateway")]))
        );
        let index = ScopeIndex {
            // Listed after the Sidecar scope, still tried first.
            selectors: vec![sidecars_only.selectors[0].clone(), gw.clone()],
            ..ScopeIndex::default()
        };
        assert_eq!(index.written_version(), 3);
        // A router whose labels both select takes the gateway scope; a sidecar with the same
        // labels (a Gateway selecting an ordinary pod) its Sidecar scope; a router no gateway
        // scope selects the default.
        let pod = labels(&[("app", "ingress"), ("istio", "ingressgateway")]);
        assert_eq!(select_scope(&index, &pod, ProxyRole::Router), gw.key);
        assert_eq!(
            select_scope(&index, &pod, ProxyRole::Sidecar),
            "sidecar-ingress.json.gz"
        );
        let app = labels(&[("app", "ingress")]);
        assert_eq!(
            select_scope(&index, &app, ProxyRole::Sidecar),
            "sidecar-ingress.json.gz"
        );
        assert_eq!(
            select_scope(&index, &app, ProxyRole::Router),
            DEFAULT_SCOPE_KEY
        );
        let gw_only = labels(&[("istio", "ingressgateway")]);
        assert_eq!(
            select_scope(&index, &gw_only, ProxyRole::Sidecar),
            DEFAULT_SCOPE_KEY
        );
        let json = index.to_json();
        assert!(!json.contains("\"sidecar\": \"\""), "{json}");
        assert_eq!(ScopeIndex::from_json(&json).unwrap(), index);
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
    fn version_1_indexes_still_read_and_parts_round_trip() {
        let v1 = ScopeIndex::from_json(r#"{"version": 1, "default": "default.json.gz"}"#).unwrap();
        assert!(v1.parts.is_empty());
        let mut index = ScopeIndex::default();
        index.parts.insert(
            DEFAULT_SCOPE_KEY.into(),
            ScopeParts {
                version_info: "abc".into(),
                endpoints: vec![endpoint_part_key(DEFAULT_SCOPE_KEY, 0)],
            },
        );
        let json = index.to_json();
        assert!(json.contains("\"default.eds-00.json.gz\""), "{json}");
        assert_eq!(ScopeIndex::from_json(&json).unwrap(), index);
        let bad = ScopeIndex::from_json(
            r#"{"version": 2, "default": "default.json.gz", "parts": {"default.json.gz": {"endpoints": []}}}"#,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("versionInfo"), "{bad}");
    }

    #[test]
    fn endpoint_parts_are_sized_and_keyed_by_host() {
        assert_eq!(endpoint_part_count(0), 1);
        assert_eq!(endpoint_part_count(128), 1);
        assert_eq!(endpoint_part_count(129), 2);
        assert_eq!(endpoint_part_count(3000), 32);
        assert_eq!(endpoint_part_count(1_000_000), MAX_ENDPOINT_PARTS);
        assert_eq!(
            endpoint_part_key("sidecar-ratings.json.gz", 7),
            "sidecar-ratings.eds-07.json.gz"
        );
        // Every subset cluster of a service lands in the same part.
        let host = "reviews.default.svc.cluster.local";
        let n = endpoint_part_of(&format!("outbound|9080||{host}"), 32);
        for subset in ["v1", "v2", "v3"] {
            assert_eq!(
                endpoint_part_of(&format!("outbound|9080|{subset}|{host}"), 32),
                n
            );
            assert_eq!(
                endpoint_part_of(&format!("outbound|9081|{subset}|{host}"), 32),
                n
            );
        }
        // ... and hosts spread over the parts.
        let used: std::collections::BTreeSet<usize> = (0..1000)
            .map(|i| endpoint_part_of(&format!("outbound|80||svc-{i}.ns.svc.cluster.local"), 32))
            .collect();
        assert_eq!(used.len(), 32);
    }

    #[test]
    fn newer_index_is_refused() {
        let err = ScopeIndex::from_json(r#"{"version": 9, "default": "default.json.gz"}"#);
        assert!(err.is_err());
    }
}
