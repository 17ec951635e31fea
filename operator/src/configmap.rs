//! What the operator writes into each injected namespace: the ConfigMap (in the format of
//! [`rustmesh_xds::configmap`], the contract the proxy reads with), and the Role and RoleBinding
//! that let that namespace's pods read it (and nothing else). This module only adds the
//! operator's side: encoding every scope of a namespace with reuse across namespaces and
//! batches ([`Encoder`]), the Kubernetes objects, and the live-content check.
//!
//! - ConfigMap [`PROXY_CONFIGMAP`] (`rustmesh-proxy-config`);
//! - `data["scopes.json"]`: the [`ScopeIndex`] (which key a pod uses: [`select_scope`]; and,
//!   per scope, its `versionInfo` and endpoint parts);
//! - `binaryData["default.json.gz"]`, `binaryData["sidecar-<name>.json.gz"]`: gzip of the compact
//!   JSON of each scope's `ProxyConfig` without its endpoints;
//! - `binaryData["default.eds-NN.json.gz"]`...: gzip of each endpoint part of the scope (the
//!   `ClusterLoadAssignment`s of the clusters whose host hashes to part NN; the number of parts
//!   grows with the number of clusters, about 128 each), so that an endpoint change rewrites
//!   one part, as Envoy gets EDS apart from CDS/LDS/RDS ([`rustmesh_xds::scope`]);
//! - annotation [`CONFIG_HASH_ANNOTATION`]: hash of the whole content
//!   ([`rustmesh_xds::configmap::content_hash_of`]); the operator applies only
//!   when the live content hashes differently (so a hand edit or deletion is restored, and a
//!   resync that changes nothing writes nothing).
//!
//! [`select_scope`]: rustmesh_xds::scope::select_scope

use crate::error::Error;
use crate::index::Index;
use crate::render::{EdsRecipes, MeshView, Scope, render_parts};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::core::ObjectMeta;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::cluster::ClusterLoadAssignment;
use rustmesh_xds::configmap::{
    self as contract, content_hash, content_hash_of, endpoint_part_json, gzip, scope_version,
    split_endpoints, take_base, value_hash,
};
use rustmesh_xds::fnv::{self, OFFSET as FNV_OFFSET};
use rustmesh_xds::scope::{
    EndpointPart, SCOPE_INDEX_KEY, ScopeIndex, ScopeParts, endpoint_part_key,
};
use rustmesh_xds::well_known::{CONFIG_HASH_ANNOTATION, OPERATOR_FIELD_MANAGER, PROXY_CONFIGMAP};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use rustmesh_xds::configmap::{MAX_PAYLOAD_BYTES, encode};

/// Name of the Role (and RoleBinding) letting a namespace's pods read [`PROXY_CONFIGMAP`].
pub const READER_ROLE: &str = "rustmesh-proxy-config-reader";
/// Label put on everything the operator writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", OPERATOR_FIELD_MANAGER);

/// Reads one scope's configuration out of a ConfigMap the way the proxy does
/// ([`rustmesh_xds::configmap::read_scope`]).
pub fn read_scope(cm: &ConfigMap, key: &str) -> Result<ProxyConfig, Error> {
    let get = |k: &str| {
        let data = cm
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|v| v.as_bytes());
        data.or_else(|| cm.binary_data.as_ref()?.get(k).map(|b| b.0.as_slice()))
    };
    Ok(contract::read_scope(get, key)?)
}

/// One stored value: its key, the hash and length of its JSON, and its gzip.
#[derive(Clone, Debug)]
pub struct Part {
    pub key: String,
    pub hash: u64,
    pub json_len: usize,
    pub gz: Arc<Vec<u8>>,
}

/// Gzips JSON values, reusing the gzip of a value already encoded with the same content: in
/// this batch (the namespaces of an open mesh share most endpoint parts) or in the previous
/// output of the same namespace (a change rarely touches every part).
#[derive(Default)]
pub struct Encoder {
    known: HashMap<(u64, usize), Arc<Vec<u8>>>,
    /// Endpoint parts' assignments by content, so that namespaces holding the same part share
    /// one copy in memory too.
    assignments: HashMap<(u64, usize), Arc<Vec<ClusterLoadAssignment>>>,
    /// EDS recipes by content (in an open mesh every namespace has the same ones).
    recipes: HashMap<u64, Vec<Arc<EdsRecipes>>>,
}

impl Encoder {
    /// Remembers the parts of an earlier output as reusable.
    pub fn reuse(&mut self, earlier: &RenderedNamespace) {
        for scope in earlier.scopes.values() {
            for part in std::iter::once(&scope.base).chain(&scope.parts) {
                self.known
                    .entry((part.hash, part.json_len))
                    .or_insert_with(|| part.gz.clone());
            }
            self.share_recipes(scope.recipes.clone());
            for (part, endpoints) in scope.parts.iter().zip(&scope.endpoints) {
                self.assignments
                    .entry((part.hash, part.json_len))
                    .or_insert_with(|| endpoints.clone());
            }
        }
    }

    fn part(&mut self, key: String, json: &[u8]) -> Part {
        let hash = value_hash(json);
        let id = (hash, json.len());
        let gz = self
            .known
            .entry(id)
            .or_insert_with(|| Arc::new(gzip(json)))
            .clone();
        Part {
            key,
            hash,
            json_len: json.len(),
            gz,
        }
    }

    /// One endpoint part's value.
    pub fn endpoint_part(&mut self, key: String, endpoints: &[ClusterLoadAssignment]) -> Part {
        self.part(key, &endpoint_part_json(endpoints))
    }

    /// The copy of an endpoint part's assignments already held for the same content, else
    /// `endpoints` (remembered for the next namespace).
    pub fn share(
        &mut self,
        part: &Part,
        endpoints: Arc<Vec<ClusterLoadAssignment>>,
    ) -> Arc<Vec<ClusterLoadAssignment>> {
        self.assignments
            .entry((part.hash, part.json_len))
            .or_insert(endpoints)
            .clone()
    }

    /// The copy of these recipes already held (equal content), else these.
    fn share_recipes(&mut self, recipes: Arc<EdsRecipes>) -> Arc<EdsRecipes> {
        let mut h = FNV_OFFSET;
        for (host, list) in recipes.iter() {
            h = fnv::extend(h, host.bytes());
            for r in list {
                h = fnv::extend(h, r.cluster.bytes());
                h = fnv::extend(h, r.port.to_le_bytes());
                for (k, v) in r.selector.iter().flat_map(|s| s.iter()) {
                    h = fnv::extend(h, k.bytes().chain(v.bytes()));
                }
            }
        }
        let same = self.recipes.entry(h).or_default();
        if let Some(known) = same.iter().find(|k| ***k == *recipes) {
            return known.clone();
        }
        same.push(recipes.clone());
        recipes
    }

    /// Encodes a rendered scope as [`rustmesh_xds::configmap::encode_scope`] does (its
    /// configuration without endpoints under `key`, the endpoints in parts by host), reusing
    /// the gzip of values already encoded.
    pub fn scope(
        &mut self,
        key: String,
        config: ProxyConfig,
        recipes: EdsRecipes,
    ) -> RenderedScope {
        let (base_json, endpoints) = take_base(config);
        let base = self.part(key.clone(), &base_json);
        let grouped = split_endpoints(endpoints);
        let mut parts = Vec::with_capacity(grouped.len());
        let mut endpoints = Vec::with_capacity(grouped.len());
        for (i, eps) in grouped.into_iter().enumerate() {
            let part = self.endpoint_part(endpoint_part_key(&key, i), &eps);
            endpoints.push(self.share(&part, Arc::new(eps)));
            parts.push(part);
        }
        RenderedScope {
            base,
            parts,
            endpoints,
            recipes: self.share_recipes(Arc::new(recipes)),
        }
    }
}

/// One scope as written: its configuration without endpoints, and its endpoint parts; plus
/// what an endpoint change needs to redo only the parts it touches.
#[derive(Clone, Debug)]
pub struct RenderedScope {
    /// `<key>`: the configuration without endpoints.
    pub base: Part,
    /// `<stem>.eds-NN.json.gz`, in order.
    pub parts: Vec<Part>,
    /// The assignments of each part (sorted by cluster name).
    pub endpoints: Vec<Arc<Vec<ClusterLoadAssignment>>>,
    /// How to recompute each EDS cluster's endpoints, by service FQDN.
    pub recipes: Arc<EdsRecipes>,
}

impl RenderedScope {
    /// The assembled configuration's `versionInfo`: a hash of every part's content.
    pub fn version(&self) -> String {
        scope_version(
            std::iter::once(&self.base)
                .chain(&self.parts)
                .map(|p| p.hash),
        )
    }

    /// Bytes of gzip written for this scope.
    pub fn gz_bytes(&self) -> usize {
        std::iter::once(&self.base)
            .chain(&self.parts)
            .map(|p| p.gz.len())
            .sum()
    }

    /// The assembled configuration (what the proxy will serve), by decoding what is written.
    pub fn config(&self) -> Result<ProxyConfig, Error> {
        let key = &self.base.key;
        let base = ProxyConfig::from_json_unvalidated(&contract::gunzip(key, &self.base.gz)?)
            .map_err(|source| contract::ConfigMapError::Invalid {
                key: key.clone(),
                source,
            })?;
        let parts = self
            .endpoints
            .iter()
            .map(|e| EndpointPart {
                endpoints: e.as_ref().clone(),
            })
            .collect();
        base.with_parts(parts, self.version())
            .map_err(|source| contract::ConfigMapError::Invalid {
                key: key.clone(),
                source,
            })
            .map_err(Error::from)
    }
}

/// Everything rendered for one namespace.
#[derive(Clone, Debug)]
pub struct RenderedNamespace {
    pub namespace: String,
    /// The index as written (with each scope's version and parts).
    pub index: ScopeIndex,
    /// By scope key.
    pub scopes: BTreeMap<String, RenderedScope>,
}

impl RenderedNamespace {
    /// Assembles the namespace's output (fills the index's `parts`).
    pub fn new(
        namespace: String,
        mut index: ScopeIndex,
        scopes: BTreeMap<String, RenderedScope>,
    ) -> Self {
        index.parts = scopes
            .iter()
            .map(|(key, s)| {
                (
                    key.clone(),
                    ScopeParts {
                        version_info: s.version(),
                        endpoints: s.parts.iter().map(|p| p.key.clone()).collect(),
                    },
                )
            })
            .collect();
        RenderedNamespace {
            namespace,
            index,
            scopes,
        }
    }

    /// The ConfigMap's `data`.
    pub fn data(&self) -> BTreeMap<String, String> {
        [(SCOPE_INDEX_KEY.to_string(), self.index.to_json())].into()
    }

    fn values(&self) -> BTreeMap<&str, &[u8]> {
        self.scopes
            .values()
            .flat_map(|s| std::iter::once(&s.base).chain(&s.parts))
            .map(|p| (p.key.as_str(), p.gz.as_slice()))
            .collect()
    }

    /// The ConfigMap's `binaryData`.
    pub fn binary_data(&self) -> BTreeMap<String, ByteString> {
        self.values()
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect()
    }

    /// Hash of the whole ConfigMap content (see [`configmap_hash`]).
    pub fn hash(&self) -> String {
        let data = self.data();
        content_hash_of(
            data.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
            self.values(),
        )
    }

    /// Bytes the ConfigMap's payload takes as the API server stores and serves it
    /// (binaryData base64-encoded), the number the 1 MiB object limit applies to.
    pub fn payload_bytes(&self) -> usize {
        self.data()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self
                .values()
                .iter()
                .map(|(k, gz)| k.len() + gz.len().div_ceil(3) * 4)
                .sum::<usize>()
    }
}

/// Renders every scope of a namespace and checks each with `ProxyConfig::validate` (a failure is
/// a renderer bug, reported as an error and nothing is written).
pub fn render_namespace(view: &MeshView<'_>, namespace: &str) -> Result<RenderedNamespace, Error> {
    render_namespace_with(view, namespace, &mut Encoder::default())
}

/// [`render_namespace`] with an [`Encoder`] shared across namespaces and batches.
pub fn render_namespace_with(
    view: &MeshView<'_>,
    namespace: &str,
    encoder: &mut Encoder,
) -> Result<RenderedNamespace, Error> {
    let mut scopes = BTreeMap::new();
    for scope in view.scopes(namespace) {
        let (config, recipes) = render_parts(view, &scope);
        config.validate().map_err(|source| Error::InvalidRender {
            scope: scope.to_string(),
            source,
        })?;
        let key = scope.key();
        scopes.insert(key.clone(), encoder.scope(key, config, recipes));
    }
    Ok(RenderedNamespace::new(
        namespace.to_string(),
        view.scope_index(namespace),
        scopes,
    ))
}

/// Renders one scope from the raw index (convenience for tests and one-off renders).
pub fn render(index: &Index, scope: &Scope) -> ProxyConfig {
    render_view(&MeshView::new(index), scope)
}

/// Renders one scope with its `versionInfo` set to the content hash
/// ([`rustmesh_xds::configmap::content_hash`]); the
/// rendering itself is [`render_parts`].
pub fn render_view(view: &MeshView<'_>, scope: &Scope) -> ProxyConfig {
    let (mut config, _) = render_parts(view, scope);
    config.version_info = content_hash(&config);
    config
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

/// Hash of a live ConfigMap's content, comparable with [`RenderedNamespace::hash`]: equal only
/// when data and binaryData are exactly what the operator would write.
pub fn configmap_hash(cm: &ConfigMap) -> String {
    let data = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_bytes()));
    let binary = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.0.as_slice()));
    content_hash_of(data, binary)
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
    config_map_with_hash(r, r.hash())
}

/// [`config_map`] with `r.hash()` already computed (it reads every byte of the payload).
pub fn config_map_with_hash(r: &RenderedNamespace, hash: String) -> ConfigMap {
    let mut metadata = managed_meta(PROXY_CONFIGMAP, &r.namespace);
    metadata.annotations = Some([(CONFIG_HASH_ANNOTATION.to_string(), hash)].into());
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
    use rustmesh_xds::scope::{DEFAULT_SCOPE_KEY, ProxyRole, select_scope, sidecar_scope_key};

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
        assert_eq!(
            keys,
            [
                "default.eds-00.json.gz",
                DEFAULT_SCOPE_KEY,
                "sidecar-ratings.eds-00.json.gz",
                "sidecar-ratings.json.gz"
            ]
        );
        let idx = ScopeIndex::from_json(&cm.data.as_ref().unwrap()[SCOPE_INDEX_KEY]).unwrap();
        let ratings_pod: BTreeMap<String, String> =
            [("app".to_string(), "ratings".to_string())].into();
        assert_eq!(
            select_scope(&idx, &ratings_pod, ProxyRole::Sidecar),
            sidecar_scope_key("ratings")
        );
        assert_eq!(
            select_scope(&idx, &BTreeMap::new(), ProxyRole::Sidecar),
            DEFAULT_SCOPE_KEY
        );
        // What the proxy reads back is exactly what was rendered, and valid; the version is
        // the index's.
        let default = read_scope(&cm, DEFAULT_SCOPE_KEY).unwrap();
        let mut rendered = render_view(&view, &Scope::namespace("default"));
        rendered.version_info = r.scopes[DEFAULT_SCOPE_KEY].version();
        assert_eq!(default, rendered);
        assert_eq!(default, r.scopes[DEFAULT_SCOPE_KEY].config().unwrap());
        assert_eq!(
            idx.parts[DEFAULT_SCOPE_KEY].version_info,
            default.version_info
        );
        assert!(!default.endpoints.is_empty());
        // The scope's own value holds no endpoints: they are in the parts.
        let base = contract::gunzip(DEFAULT_SCOPE_KEY, &bin[DEFAULT_SCOPE_KEY].0).unwrap();
        let base = ProxyConfig::from_json_unvalidated(&base).unwrap();
        assert!(base.endpoints.is_empty() && base.version_info.is_empty());
        assert_eq!(base.clusters, default.clusters);
        let narrowed = read_scope(&cm, "sidecar-ratings.json.gz").unwrap();
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
        // The encoder writes exactly the contract's encoding of the scope.
        let contract = contract::encode_scope(DEFAULT_SCOPE_KEY, &rendered);
        let s = &r.scopes[DEFAULT_SCOPE_KEY];
        let written: Vec<(String, Vec<u8>)> = std::iter::once(&s.base)
            .chain(&s.parts)
            .map(|p| (p.key.clone(), p.gz.to_vec()))
            .collect();
        assert_eq!(written, contract.values);
        assert_eq!(idx.parts[DEFAULT_SCOPE_KEY], contract.parts);
        // Encoding is deterministic.
        assert_eq!(encode(&default), encode(&default));
        let again = render_namespace(&view, "default").unwrap();
        assert_eq!(again.hash(), r.hash());
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
        let config = &r.scopes[DEFAULT_SCOPE_KEY].config().unwrap();
        assert_eq!(r.scopes[DEFAULT_SCOPE_KEY].parts.len(), 8);
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
