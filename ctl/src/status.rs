//! `rustmeshctl proxy-status [POD]`, as `istioctl proxy-status`: for each injected, running pod
//! (or the one named), whether its sidecar serves the configuration the operator wrote for it.
//!
//! What is compared: rustmesh has no xDS server; the operator writes each namespace's
//! ConfigMap `rustmesh-proxy-config`, whose `scopes.json` says which key a pod's labels select
//! and, per key, the `versionInfo` of that configuration (a hash of its content). The sidecar
//! serves the document of that key, `versionInfo` included, and reports it in its admin API's
//! `/server_info` (`configVersion`). The ConfigMap's `rustmesh.io/config-hash` annotation is
//! not used: it hashes the whole namespace's content, so a change for another scope changes it
//! while this pod's configuration stays the same; and the proxy's own document hash mixes in
//! the pod's labels. The per-scope `versionInfo` is what both sides have.
//!
//! - `SYNCED`: the sidecar serves the version the operator wrote for its scope;
//! - `STALE`: it serves another one, or none yet (it has not applied the new one, or refused it:
//!   its log and `rustmesh_config_rejected` say why);
//! - `NOT SENT`: the operator wrote nothing for it (no ConfigMap in the namespace yet).
//!
//! Envoy gets listeners, clusters, endpoints and routes as separate xDS types, which istioctl
//! shows as the columns CDS, LDS, EDS and RDS; here all four come in the one ConfigMap document
//! and are applied together, so the four columns always show the same state (kept so that
//! scripts reading istioctl's columns read these). CLUSTER is Istio's cluster ID, `Kubernetes`
//! (rustmesh serves one cluster); SERVING and WRITTEN are the two versions, VERSION the sidecar
//! build's.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::ListParams;
use rustmesh_api::workload::proxy_role;
use rustmesh_xds::configmap as contract;
use rustmesh_xds::scope::{self, DEFAULT_SCOPE_KEY, SCOPE_INDEX_KEY};
use rustmesh_xds::well_known::PROXY_CONFIGMAP;
use serde::Deserialize;

use crate::cli::ProxyStatusArgs;
use crate::error::Error;
use crate::fetch::{self, Call, KubeOptions, PodRef};
use crate::table::{Table, WIDE_PADDING};

/// Path `rustmeshctl` reads the sidecar's served version from.
pub const SERVER_INFO_PATH: &str = "/server_info";
/// Istio's default cluster ID.
pub const CLUSTER_ID: &str = "Kubernetes";
/// The plain-JSON key the proxy reads when there is no `scopes.json` (as `proxy/src/config.rs`).
const PLAIN_CONFIG_KEY: &str = "config.json";

/// Sync state of one sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    Synced,
    Stale,
    NotSent,
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::NotSent => "NOT SENT",
        })
    }
}

/// Compares what the operator wrote (`written`) with what the sidecar serves.
pub fn sync_state(written: Option<&str>, serving: Option<&str>) -> SyncState {
    match (written, serving) {
        (None, _) => SyncState::NotSent,
        (Some(w), Some(s)) if w == s => SyncState::Synced,
        _ => SyncState::Stale,
    }
}

/// `GET /server_info`, the fields read here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub config_version: Option<String>,
}

impl ServerInfo {
    /// Reads the admin API's answer, naming where it came from.
    pub fn from_json(origin: &str, text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| Error::Kube {
            action: format!("reading {SERVER_INFO_PATH} of {origin}"),
            reason: format!("not the documented shape: {e}"),
        })
    }
}

/// A ConfigMap key's stored bytes: `binaryData`, else `data` (as the proxy reads them).
fn key_bytes<'a>(cm: &'a ConfigMap, key: &str) -> Option<&'a [u8]> {
    cm.binary_data
        .as_ref()
        .and_then(|b| b.get(key))
        .map(|b| b.0.as_slice())
        .or_else(|| {
            cm.data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.as_bytes())
        })
}

/// The `versionInfo` the operator wrote for a pod with `labels` whose proxy has `role`: the scope
/// they select in `scopes.json` and that scope's version (read from the scope's document when the index has
/// no entry for it); `None` when the ConfigMap has no document for it. `Err` names a key that
/// cannot be read.
pub fn written_version(
    cm: &ConfigMap,
    labels: &BTreeMap<String, String>,
    role: scope::ProxyRole,
) -> Result<Option<String>, String> {
    let key = match key_bytes(cm, SCOPE_INDEX_KEY) {
        Some(raw) => {
            let index = contract::read_index(SCOPE_INDEX_KEY, raw).map_err(|e| e.to_string())?;
            let key = scope::select_scope(&index, labels, role).to_string();
            if let Some(parts) = index.parts.get(&key) {
                return Ok(Some(parts.version_info.clone()));
            }
            key
        }
        None if key_bytes(cm, PLAIN_CONFIG_KEY).is_some() => PLAIN_CONFIG_KEY.to_string(),
        None => DEFAULT_SCOPE_KEY.to_string(),
    };
    let Some(raw) = key_bytes(cm, &key) else {
        return Ok(None);
    };
    let text = contract::decode_text(&key, raw, key.ends_with(".gz")).map_err(|e| e.to_string())?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{key}: not JSON: {e}"))?;
    Ok(Some(
        doc.get("versionInfo")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
    ))
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub pod: String,
    pub namespace: String,
    pub written: Option<String>,
    pub serving: Option<String>,
    /// The sidecar's build version.
    pub version: String,
}

/// The table: NAME CLUSTER CDS LDS EDS RDS SERVING WRITTEN VERSION (`-` for no version).
pub fn table(rows: &[Row]) -> String {
    let mut t = Table::new(
        WIDE_PADDING,
        &[
            "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "SERVING", "WRITTEN", "VERSION",
        ],
    );
    for r in rows {
        let state = sync_state(r.written.as_deref(), r.serving.as_deref()).to_string();
        let or_dash = |v: &Option<String>| match v.as_deref() {
            None | Some("") => "-".to_string(),
            Some(v) => v.to_string(),
        };
        t.row(vec![
            format!("{}.{}", r.pod, r.namespace),
            CLUSTER_ID.to_string(),
            state.clone(),
            state.clone(),
            state.clone(),
            state,
            or_dash(&r.serving),
            or_dash(&r.written),
            r.version.clone(),
        ]);
    }
    t.render()
}

fn kube_failure(e: kube::Error, action: String) -> Error {
    Error::Kube {
        action,
        reason: match e {
            kube::Error::Api(s) if s.message.is_empty() => format!("{} {}", s.code, s.reason),
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        },
    }
}

/// `proxy-status`: reads the pods, their namespaces' ConfigMaps and each sidecar's
/// `/server_info`, and prints the table; sidecars that could not be read are listed after it
/// (with one pod named, its error is the command's).
pub async fn run(args: ProxyStatusArgs, out: &mut dyn Write) -> Result<(), Error> {
    let kube = KubeOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    let client = fetch::kube_client(&kube).await?;
    let within = |action: String| Error::Kube {
        action,
        reason: "no answer from the API server".into(),
    };
    let pods: Vec<PodRef> = match &args.pod {
        Some(p) => vec![PodRef::parse(p, args.namespace.as_deref())?],
        None => {
            let api: Api<Pod> = match &args.namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let action = match &args.namespace {
                Some(ns) => format!("listing the pods of namespace {ns}"),
                None => "listing the pods of every namespace".to_string(),
            };
            let list = tokio::time::timeout(args.timeout, api.list(&ListParams::default()))
                .await
                .map_err(|_| within(action.clone()))?
                .map_err(|e| kube_failure(e, action))?;
            let mut refs: Vec<PodRef> = list
                .items
                .iter()
                .filter_map(|p| {
                    let name = p.metadata.name.clone()?;
                    let ns = p.metadata.namespace.clone()?;
                    fetch::check_pod(p, &name, &ns).ok()?;
                    Some(PodRef {
                        name,
                        namespace: Some(ns),
                    })
                })
                .collect();
            refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            refs
        }
    };
    let mut configmaps: BTreeMap<String, Option<ConfigMap>> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for pod_ref in &pods {
        let result = async {
            let (pod, bodies) = fetch::call_pod(
                &client,
                pod_ref,
                &[Call::get(SERVER_INFO_PATH)],
                args.timeout,
            )
            .await?;
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .or_else(|| pod_ref.namespace.clone())
                .unwrap_or_else(|| client.default_namespace().to_string());
            let origin = format!("pod {namespace}/{}", pod_ref.name);
            let info = ServerInfo::from_json(&origin, &bodies[0])?;
            if !configmaps.contains_key(&namespace) {
                let action = format!("reading configmap {namespace}/{PROXY_CONFIGMAP}");
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
                let cm = tokio::time::timeout(args.timeout, api.get_opt(PROXY_CONFIGMAP))
                    .await
                    .map_err(|_| within(action.clone()))?
                    .map_err(|e| kube_failure(e, action))?;
                configmaps.insert(namespace.clone(), cm);
            }
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let written = match &configmaps[&namespace] {
                None => None,
                Some(cm) => written_version(cm, &labels, proxy_role(&pod)).map_err(|reason| {
                    Error::Kube {
                        action: format!("reading configmap {namespace}/{PROXY_CONFIGMAP}"),
                        reason,
                    }
                })?,
            };
            Ok::<_, Error>(Row {
                pod: pod_ref.name.clone(),
                namespace,
                written,
                serving: info.config_version,
                version: info.version,
            })
        }
        .await;
        match result {
            Ok(row) => rows.push(row),
            Err(e) if args.pod.is_some() => return Err(e),
            Err(e) => failures.push(format!(
                "{}.{}: {e}",
                pod_ref.name,
                pod_ref.namespace.as_deref().unwrap_or_default()
            )),
        }
    }
    let mut text = table(&rows);
    if !failures.is_empty() {
        text.push_str(&format!(
            "\ncould not read {} sidecar(s):\n",
            failures.len()
        ));
        for f in failures {
            text.push_str(&format!("  {f}\n"));
        }
    }
    crate::write_out(out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use rustmesh_xds::scope::ProxyRole::{Router, Sidecar};
    use rustmesh_xds::scope::{ScopeIndex, ScopeParts, ScopeSelector};

    fn configmap(index: Option<&ScopeIndex>, binary: &[(&str, Vec<u8>)]) -> ConfigMap {
        ConfigMap {
            data: index.map(|i| {
                [(
                    SCOPE_INDEX_KEY.to_string(),
                    serde_json::to_string(i).unwrap(),
                )]
                .into()
            }),
            binary_data: Some(
                binary
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn states() {
        assert_eq!(sync_state(Some("a"), Some("a")), SyncState::Synced);
        assert_eq!(sync_state(Some("a"), Some("b")), SyncState::Stale);
        assert_eq!(sync_state(Some("a"), None), SyncState::Stale);
        assert_eq!(sync_state(None, Some("a")), SyncState::NotSent);
        assert_eq!(SyncState::NotSent.to_string(), "NOT SENT");
    }

    #[test]
    fn the_version_of_the_scope_the_labels_select() {
        let mut index = ScopeIndex::default();
        index.selectors.push(ScopeSelector::sidecar(
            "ratings",
            [("app".to_string(), "ratings".to_string())].into(),
        ));
        for (key, v) in [(DEFAULT_SCOPE_KEY, "d1"), ("sidecar-ratings.json.gz", "r1")] {
            index.parts.insert(
                key.into(),
                ScopeParts {
                    version_info: v.into(),
                    ..ScopeParts::default()
                },
            );
        }
        let cm = configmap(Some(&index), &[]);
        let app = |a: &str| [("app".to_string(), a.to_string())].into();
        assert_eq!(
            written_version(&cm, &app("ratings"), Sidecar)
                .unwrap()
                .as_deref(),
            Some("r1")
        );
        assert_eq!(
            written_version(&cm, &app("reviews"), Sidecar)
                .unwrap()
                .as_deref(),
            Some("d1")
        );
        // A gateway's proxy with the same labels reads its gateway scope, not the Sidecar's.
        let mut index = index.clone();
        let gw = ScopeSelector::gateway(vec!["default/gw".into()], app("ratings"));
        index.parts.insert(
            gw.key.clone(),
            ScopeParts {
                version_info: "g1".into(),
                ..ScopeParts::default()
            },
        );
        index.selectors.push(gw);
        let cm = configmap(Some(&index), &[]);
        assert_eq!(
            written_version(&cm, &app("ratings"), Router)
                .unwrap()
                .as_deref(),
            Some("g1")
        );
        assert_eq!(
            written_version(&cm, &app("ratings"), Sidecar)
                .unwrap()
                .as_deref(),
            Some("r1")
        );

        // Without an index entry: the scope's own document's versionInfo.
        let gz = contract::gzip(br#"{"versionInfo": "plain-7"}"#);
        let cm = configmap(None, &[(DEFAULT_SCOPE_KEY, gz)]);
        assert_eq!(
            written_version(&cm, &BTreeMap::new(), Sidecar)
                .unwrap()
                .as_deref(),
            Some("plain-7")
        );
        assert_eq!(
            written_version(&configmap(None, &[]), &BTreeMap::new(), Sidecar).unwrap(),
            None
        );
        let bad = configmap(None, &[(DEFAULT_SCOPE_KEY, b"not gzip".to_vec())]);
        assert!(
            written_version(&bad, &BTreeMap::new(), Sidecar)
                .unwrap_err()
                .contains(DEFAULT_SCOPE_KEY)
        );
    }

    #[test]
    fn the_table_repeats_one_state_for_the_four_types() {
        let rows = [
            Row {
                pod: "productpage-v1-1".into(),
                namespace: "default".into(),
                written: Some("aaaa".into()),
                serving: Some("aaaa".into()),
                version: "0.1.0".into(),
            },
            Row {
                pod: "reviews-v2-2".into(),
                namespace: "default".into(),
                written: Some("bbbb".into()),
                serving: None,
                version: "0.1.0".into(),
            },
            Row {
                pod: "web-3".into(),
                namespace: "shop".into(),
                written: None,
                serving: Some("cccc".into()),
                version: "0.1.0".into(),
            },
        ];
        let text = table(&rows);
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "NAME CLUSTER CDS LDS EDS RDS SERVING WRITTEN VERSION",
                "productpage-v1-1.default Kubernetes SYNCED SYNCED SYNCED SYNCED aaaa aaaa 0.1.0",
                "reviews-v2-2.default Kubernetes STALE STALE STALE STALE - bbbb 0.1.0",
                "web-3.shop Kubernetes NOT SENT NOT SENT NOT SENT NOT SENT cccc - 0.1.0",
            ]
        );
    }
}
