//! Keeps the mesh trust bundle in every namespace as ConfigMap `istio-ca-root-cert` (key
//! `root-cert.pem`), as Istio's namespace controller does: written when a namespace appears,
//! rewritten when the ConfigMap is deleted or edited. Only the leader writes.
//!
//! [`to_publish`] decides (pure, tested alone); [`run`] watches Namespaces and the ConfigMaps of
//! that name and applies what it decides.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use rustmesh_xds::well_known::{CA_ROOT_CERT_KEY, CA_ROOT_CONFIGMAP};
use tokio::sync::watch;

use super::root::publish_root;

/// Namespaces that get no root (Istio's injector ignores them too).
pub const SKIPPED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// The namespaces whose `istio-ca-root-cert` is missing or differs from `bundle`, given the
/// live namespaces (`Some(terminating)`) and what each namespace's ConfigMap holds.
pub fn to_publish(
    namespaces: &BTreeMap<String, bool>,
    published: &BTreeMap<String, String>,
    bundle: &str,
) -> Vec<String> {
    namespaces
        .iter()
        .filter(|(ns, terminating)| !**terminating && !SKIPPED_NAMESPACES.contains(&ns.as_str()))
        .filter(|(ns, _)| published.get(*ns).map(String::as_str) != Some(bundle))
        .map(|(ns, _)| ns.clone())
        .collect()
}

enum Change {
    Namespace(Event<Namespace>),
    ConfigMap(Event<ConfigMap>),
}

fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// Publishes `bundle` while this replica leads (`leader`), until `shutdown` turns true.
pub async fn run(
    client: Client,
    bundle: String,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let namespaces = watcher::watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .backoff(rustmesh_xds::backoff::Backoff::api())
    .filter_map(|e| async move { e.ok().map(Change::Namespace) });
    let configmaps = watcher::watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={CA_ROOT_CONFIGMAP}")),
    )
    .backoff(rustmesh_xds::backoff::Backoff::api())
    .filter_map(|e| async move { e.ok().map(Change::ConfigMap) });
    let mut changes = futures::stream::select(namespaces.boxed(), configmaps.boxed());
    let mut live: BTreeMap<String, bool> = BTreeMap::new();
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let retry = tokio::time::interval(std::time::Duration::from_secs(5));
    tokio::pin!(retry);
    loop {
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { return };
                match change {
                    Change::Namespace(Event::Apply(ns) | Event::InitApply(ns)) => {
                        live.insert(ns.name_any(), terminating(&ns));
                    }
                    Change::Namespace(Event::Delete(ns)) => {
                        live.remove(&ns.name_any());
                        published.remove(&ns.name_any());
                    }
                    Change::ConfigMap(Event::Apply(cm) | Event::InitApply(cm)) => {
                        let data = cm.data.as_ref().and_then(|d| d.get(CA_ROOT_CERT_KEY)).cloned();
                        let ns = cm.namespace().unwrap_or_default();
                        match data {
                            Some(d) => published.insert(ns, d),
                            None => published.remove(&ns),
                        };
                    }
                    Change::ConfigMap(Event::Delete(cm)) => {
                        published.remove(&cm.namespace().unwrap_or_default());
                    }
                    _ => {}
                }
            }
            _ = retry.tick(), if !failed.is_empty() => failed.clear(),
            changed = leader.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        if !*leader.borrow() {
            continue;
        }
        for ns in to_publish(&live, &published, &bundle) {
            if failed.contains(&ns) {
                continue;
            }
            match publish_root(&client, &ns, &bundle).await {
                Ok(()) => {
                    tracing::info!(namespace = %ns, "published {CA_ROOT_CONFIGMAP}");
                    published.insert(ns, bundle.clone());
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "publishing the mesh root");
                    failed.insert(ns);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_live_namespace_gets_the_current_bundle_once() {
        let live = BTreeMap::from([
            ("bookinfo".to_string(), false),
            ("shop".to_string(), false),
            ("old".to_string(), true),
            ("kube-system".to_string(), false),
            ("istio-system".to_string(), false),
        ]);
        let published = BTreeMap::from([
            ("bookinfo".to_string(), "ROOT".to_string()),
            ("shop".to_string(), "OLD ROOT".to_string()),
        ]);
        assert_eq!(
            to_publish(&live, &published, "ROOT"),
            vec!["istio-system".to_string(), "shop".to_string()]
        );
        let all = BTreeMap::from([
            ("bookinfo".to_string(), "ROOT".to_string()),
            ("shop".to_string(), "ROOT".to_string()),
            ("istio-system".to_string(), "ROOT".to_string()),
        ]);
        assert!(to_publish(&live, &all, "ROOT").is_empty());
    }
}
