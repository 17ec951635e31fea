//! The ConfigMap contract: what the operator writes into each injected namespace, and the Role
//! and RoleBinding that let that namespace's pods read it (and nothing else).
//!
//! - ConfigMap [`PROXY_CONFIGMAP`] (`rustmesh-proxy-config`);
//! - `data["scopes.json"]`: the [`ScopeIndex`] (which key a pod uses: [`select_scope`]);
//! - `binaryData["default.json.gz"]`, `binaryData["sidecar-<name>.json.gz"]`: gzip of the compact
//!   JSON of each scope's `ProxyConfig`, whose `versionInfo` is its content hash;
//! - annotation [`CONFIG_HASH_ANNOTATION`]: hash of the whole content; the operator applies only
//!   when the live content hashes differently (so a hand edit or deletion is restored, and a
//!   resync that changes nothing writes nothing).
//!
//! [`select_scope`]: rustmesh_xds::scope::select_scope

use crate::error::Error;
use crate::render::{MeshView, Scope, render_view};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::core::ObjectMeta;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::scope::{SCOPE_INDEX_KEY, ScopeIndex};
use rustmesh_xds::well_known::{CONFIG_HASH_ANNOTATION, OPERATOR_FIELD_MANAGER, PROXY_CONFIGMAP};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Name of the Role (and RoleBinding) letting a namespace's pods read [`PROXY_CONFIGMAP`].
pub const READER_ROLE: &str = "rustmesh-proxy-config-reader";
/// Largest payload written: the API server refuses objects over 1 MiB (3 MiB request limit,
/// 1.5 MiB etcd value by default, 1 MiB for ConfigMaps); the rest is left for metadata.
pub const MAX_PAYLOAD_BYTES: usize = 1_000_000;

/// Label put on everything the operator writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", OPERATOR_FIELD_MANAGER);

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `DefaultHasher`).
fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Hash of a configuration's content (its `versionInfo` excluded), as 16 hex digits.
pub fn content_hash(config: &ProxyConfig) -> String {
    let mut c = config.clone();
    c.version_info.clear();
    let json = serde_json::to_vec(&c).expect("configuration always serialises");
    format!("{:016x}", fnv1a(json, FNV_OFFSET))
}

/// gzip of the compact JSON (deterministic: no timestamp, no file name in the header).
pub fn encode(config: &ProxyConfig) -> Result<Vec<u8>, Error> {
    let json = serde_json::to_vec(config).map_err(|e| Error::Encode {
        what: "configuration JSON".into(),
        message: e.to_string(),
    })?;
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(&json)
        .and_then(|()| enc.finish())
        .map_err(|e| Error::Encode {
            what: "gzip".into(),
            message: e.to_string(),
        })
}

/// Reads a `.json.gz` value back (what the proxy does), validating it.
pub fn decode(bytes: &[u8]) -> Result<ProxyConfig, Error> {
    let mut text = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| Error::Encode {
            what: "gunzip".into(),
            message: e.to_string(),
        })?;
    ProxyConfig::from_json(&text).map_err(|e| Error::Encode {
        what: "configuration JSON".into(),
        message: e.to_string(),
    })
}

/// Everything rendered for one namespace.
#[derive(Clone, Debug)]
pub struct RenderedNamespace {
    pub namespace: String,
    pub index: ScopeIndex,
    /// Key → (configuration, gzip bytes).
    pub scopes: BTreeMap<String, (ProxyConfig, Vec<u8>)>,
}

impl RenderedNamespace {
    /// The ConfigMap's `data`.
    pub fn data(&self) -> BTreeMap<String, String> {
        [(SCOPE_INDEX_KEY.to_string(), self.index.to_json())].into()
    }

    /// The ConfigMap's `binaryData`.
    pub fn binary_data(&self) -> BTreeMap<String, ByteString> {
        self.scopes
            .iter()
            .map(|(k, (_, gz))| (k.clone(), ByteString(gz.clone())))
            .collect()
    }

    /// Hash of the whole ConfigMap content (see [`configmap_hash`]).
    pub fn hash(&self) -> String {
        content_hash_of(&self.data(), &self.binary_data())
    }

    /// Bytes the ConfigMap's payload takes as the API server stores and serves it
    /// (binaryData base64-encoded), the number the 1 MiB object limit applies to.
    pub fn payload_bytes(&self) -> usize {
        self.data()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self
                .scopes
                .iter()
                .map(|(k, (_, gz))| k.len() + gz.len().div_ceil(3) * 4)
                .sum::<usize>()
    }
}

/// Renders every scope of a namespace and checks each with `ProxyConfig::validate` (a failure is
/// a renderer bug, reported as an error and nothing is written).
pub fn render_namespace(view: &MeshView<'_>, namespace: &str) -> Result<RenderedNamespace, Error> {
    let mut scopes = BTreeMap::new();
    for scope in view.scopes(namespace) {
        let config = render_view(view, &scope);
        config.validate().map_err(|source| Error::InvalidRender {
            scope: scope.to_string(),
            source,
        })?;
        let gz = encode(&config)?;
        scopes.insert(scope.key(), (config, gz));
    }
    Ok(RenderedNamespace {
        namespace: namespace.to_string(),
        index: view.scope_index(namespace),
        scopes,
    })
}

/// Renders one scope and validates it.
pub fn render_scope(view: &MeshView<'_>, scope: &Scope) -> Result<ProxyConfig, Error> {
    let config = render_view(view, scope);
    config.validate().map_err(|source| Error::InvalidRender {
        scope: scope.to_string(),
        source,
    })?;
    Ok(config)
}

fn content_hash_of(
    data: &BTreeMap<String, String>,
    binary: &BTreeMap<String, ByteString>,
) -> String {
    let mut h = FNV_OFFSET;
    for (k, v) in data {
        h = fnv1a(b"d:".iter().copied(), h);
        h = fnv1a(k.bytes(), h);
        h = fnv1a([0u8], h);
        h = fnv1a(v.bytes(), h);
        h = fnv1a([0u8], h);
    }
    for (k, v) in binary {
        h = fnv1a(b"b:".iter().copied(), h);
        h = fnv1a(k.bytes(), h);
        h = fnv1a([0u8], h);
        h = fnv1a(v.0.iter().copied(), h);
        h = fnv1a([0u8], h);
    }
    format!("{h:016x}")
}

/// Hash of a live ConfigMap's content, comparable with [`RenderedNamespace::hash`]: equal only
/// when data and binaryData are exactly what the operator would write.
pub fn configmap_hash(cm: &ConfigMap) -> String {
    content_hash_of(
        &cm.data.clone().unwrap_or_default(),
        &cm.binary_data.clone().unwrap_or_default(),
    )
}

fn managed_meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap to server-side apply (complete: apply owns every key it lists, and keys of
/// scopes that disappeared are dropped because they are no longer listed).
pub fn config_map(r: &RenderedNamespace) -> ConfigMap {
    let mut metadata = managed_meta(PROXY_CONFIGMAP, &r.namespace);
    metadata.annotations = Some([(CONFIG_HASH_ANNOTATION.to_string(), r.hash())].into());
    ConfigMap {
        metadata,
        data: Some(r.data()),
        binary_data: Some(r.binary_data()),
        immutable: None,
    }
}

/// The Role letting a namespace's pods read only [`PROXY_CONFIGMAP`].
pub fn reader_role(namespace: &str) -> Role {
    Role {
        metadata: managed_meta(READER_ROLE, namespace),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_string()]),
            resource_names: Some(vec![PROXY_CONFIGMAP.to_string()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    }
}

/// Binds [`reader_role`] to every service account of the namespace.
pub fn reader_role_binding(namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: managed_meta(READER_ROLE, namespace),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: READER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: format!("system:serviceaccounts:{namespace}"),
            namespace: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, bookinfo, istio};
    use crate::index::Index;
    use rustmesh_xds::scope::{DEFAULT_SCOPE_KEY, select_scope, sidecar_scope_key};

    #[test]
    fn configmap_carries_the_index_and_one_gzip_per_scope() {
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ratings, namespace: default}
spec:
  workloadSelector: {labels: {app: ratings}}
  egress: [{hosts: ["./*"]}]
"#,
        );
        let view = MeshView::new(&index);
        let r = render_namespace(&view, "default").unwrap();
        let cm = config_map(&r);
        assert_eq!(cm.metadata.name.as_deref(), Some(PROXY_CONFIGMAP));
        let bin = cm.binary_data.as_ref().unwrap();
        let keys: Vec<_> = bin.keys().map(String::as_str).collect();
        assert_eq!(keys, [DEFAULT_SCOPE_KEY, "sidecar-ratings.json.gz"]);
        let idx = ScopeIndex::from_json(&cm.data.as_ref().unwrap()[SCOPE_INDEX_KEY]).unwrap();
        let ratings_pod: BTreeMap<String, String> =
            [("app".to_string(), "ratings".to_string())].into();
        assert_eq!(
            select_scope(&idx, &ratings_pod),
            sidecar_scope_key("ratings")
        );
        assert_eq!(select_scope(&idx, &BTreeMap::new()), DEFAULT_SCOPE_KEY);
        // What the proxy reads back is exactly what was rendered, and valid.
        let default = decode(&bin[DEFAULT_SCOPE_KEY].0).unwrap();
        assert_eq!(default, r.scopes[DEFAULT_SCOPE_KEY].0);
        let narrowed = decode(&bin["sidecar-ratings.json.gz"].0).unwrap();
        assert!(narrowed.listener("10.96.0.10_53").is_none());
        // The live-content hash matches the annotation only for the exact content.
        let annotated = &cm.metadata.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION];
        assert_eq!(&configmap_hash(&cm), annotated);
        let mut edited = cm.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(SCOPE_INDEX_KEY.into(), "{}".into());
        assert_ne!(&configmap_hash(&edited), annotated);
        // Encoding is deterministic.
        assert_eq!(encode(&default).unwrap(), encode(&default).unwrap());
    }

    #[test]
    fn reader_rbac_is_limited_to_the_one_configmap() {
        let role = reader_role("shop");
        let rule = &role.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&[PROXY_CONFIGMAP.to_string()][..])
        );
        assert_eq!(rule.verbs, ["get", "list", "watch"]);
        assert_eq!(
            rule.resources.as_deref(),
            Some(&["configmaps".to_string()][..])
        );
        let rb = reader_role_binding("shop");
        assert_eq!(rb.role_ref.name, READER_ROLE);
        assert_eq!(
            rb.subjects.as_ref().unwrap()[0].name,
            "system:serviceaccounts:shop"
        );
    }

    /// 1000 services with 10 endpoints each in one namespace: the ConfigMap stays well under
    /// the API server's 1 MiB object limit thanks to gzip.
    #[test]
    fn thousand_services_fit_in_a_configmap() {
        let mut index = Index::default();
        fixtures::namespace(&mut index, "mesh", true);
        for i in 0..1000u32 {
            let name = format!("svc-{i:04}");
            let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
            let pods: Vec<(String, String)> = (0..10u32)
                .map(|j| {
                    let n = i * 10 + j;
                    (
                        format!("{name}-{j}"),
                        format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256),
                    )
                })
                .collect();
            let pod_refs: Vec<fixtures::PodSpec<'_>> = pods
                .iter()
                .map(|(p, ip)| (p.as_str(), ip.as_str(), &[("app", "x")][..]))
                .collect();
            fixtures::workload(
                &mut index,
                "mesh",
                &name,
                Some(&ip),
                &[("http", 9080, 9080)],
                &pod_refs,
            );
        }
        let view = MeshView::new(&index);
        let r = render_namespace(&view, "mesh").unwrap();
        let config = &r.scopes[DEFAULT_SCOPE_KEY].0;
        assert_eq!(config.route("9080").unwrap().virtual_hosts.len(), 1001);
        assert_eq!(config.endpoints.len(), 1000);
        let raw = serde_json::to_vec(config).unwrap().len();
        let cm = serde_json::to_vec(&config_map(&r)).unwrap().len();
        assert!(
            raw > 1 << 20,
            "the uncompressed config ({raw} B) should need compression"
        );
        assert!(cm < 1 << 20, "ConfigMap is {cm} bytes, over 1 MiB");
        assert!(r.payload_bytes() <= cm);
        eprintln!("1000 services x 10 endpoints: JSON {raw} B, ConfigMap {cm} B");
    }
}
