//! Following the proxy's ConfigMap through the Kubernetes API.
//!
//! The kubelet refreshes a mounted ConfigMap only on its sync period (up to a minute, plus its
//! cache TTL); a watch hears of a change within milliseconds. [`follow`] runs a kube-runtime
//! watcher on the one ConfigMap (`fieldSelector metadata.name=<name>`, which is what lets a
//! Role with `resourceNames` allow the list and the watch), with the in-cluster credentials of
//! the pod's service account, and publishes what the API server says as an [`ApiView`]. The
//! [`super::Watcher`] reads this pod's document out of it with the same selection as for the
//! mounted copy (`super::select_document`), so both give the same document and the same hash.
//!
//! When the API cannot be used (no credentials, unreachable, forbidden by RBAC) the view is
//! [`ApiView::Down`] with the reason, the failure is logged (the first one as a warning, repeats
//! at debug), and the watcher is retried with the API back-off ([`rustmesh_xds::backoff`]: 0.8 s
//! doubling to 30 s, jittered, starting over after two minutes without a failure); meanwhile the
//! [`super::Watcher`] follows the mounted copy. Not kube-runtime's `default_backoff()`: it starts
//! over on the `Init` the watcher yields before every relist, so against an unreachable API it
//! retried every 0.8–1.6 s, from every sidecar of the mesh.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use rustmesh_xds::backoff::Backoff;
use rustmesh_xds::scope::ProxyRole;
use tokio::sync::watch;

use super::{Document, Keys, MAX_CONFIG_BYTES, read_labels, select_document};
use crate::{Error, Result};

/// The ConfigMap a proxy follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTarget {
    /// Its namespace (the pod's, `POD_NAMESPACE`).
    pub namespace: String,
    /// Its name (`rustmesh-proxy-config`).
    pub name: String,
}

impl fmt::Display for ApiTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configmap {}/{}", self.namespace, self.name)
    }
}

impl ApiTarget {
    /// The field selector that names the ConfigMap (RBAC `resourceNames` needs it for list and
    /// watch).
    pub fn field_selector(&self) -> String {
        format!("metadata.name={}", self.name)
    }
}

/// What the API server says about the ConfigMap, as last heard.
#[derive(Clone, Debug, Default)]
pub enum ApiView {
    /// Nothing heard yet (starting).
    #[default]
    Pending,
    /// The watch is live; the ConfigMap as it is now (`None`: it does not exist).
    Live(Option<Arc<ConfigMap>>),
    /// The watch fails (why); it is being retried.
    Down(String),
}

/// A ConfigMap object's keys: `binaryData` (decoded) and `data`.
pub(crate) struct ObjectKeys<'a> {
    object: &'a ConfigMap,
    target: &'a ApiTarget,
}

impl Keys for ObjectKeys<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let bytes = self
            .object
            .binary_data
            .as_ref()
            .and_then(|b| b.get(key))
            .map(|b| b.0.as_slice())
            .or_else(|| {
                self.object
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.as_bytes())
            });
        match bytes {
            Some(b) if b.len() as u64 > MAX_CONFIG_BYTES => Err(Error::ConfigDecode {
                origin: self.origin(key),
                message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            }),
            Some(b) => Ok(Some(b.to_vec())),
            None => Ok(None),
        }
    }

    fn origin(&self, key: &str) -> String {
        format!("{}, key {key}", self.target)
    }
}

/// This pod's document in the ConfigMap (`None`: the ConfigMap does not exist, which is
/// refused like a missing file), the scope chosen for a proxy of `role` by the labels in
/// `labels_path`.
pub fn read(
    object: Option<&ConfigMap>,
    target: &ApiTarget,
    labels_path: &Path,
    role: ProxyRole,
) -> Result<Document> {
    let object = object.ok_or_else(|| Error::ConfigMissing {
        origin: target.to_string(),
    })?;
    let labels = read_labels(labels_path)?;
    select_document(&ObjectKeys { object, target }, &labels, labels_path, role)
}

/// Starts following `target` on the current runtime and returns the view, updated on every
/// change. Without a `client`, one is made from the environment (`KUBECONFIG`, else the pod's
/// service account: `KUBERNETES_SERVICE_HOST` and
/// `/var/run/secrets/kubernetes.io/serviceaccount/`), retried with back-off until it works.
pub fn follow(target: ApiTarget, client: Option<Client>) -> watch::Receiver<ApiView> {
    let (tx, rx) = watch::channel(ApiView::Pending);
    tokio::spawn(async move {
        let client = match client {
            Some(c) => c,
            None => connect(&target, &tx).await,
        };
        run(client, target, tx).await;
    });
    rx
}

async fn connect(target: &ApiTarget, tx: &watch::Sender<ApiView>) -> Client {
    let mut backoff = Backoff::api();
    let mut failures = 0u32;
    loop {
        match Client::try_default().await {
            Ok(c) => return c,
            Err(e) => {
                failures += 1;
                let e = Error::Kube {
                    what: format!("client for {target}"),
                    message: format!(
                        "{e} (no in-cluster credentials: is the service account token \
                         mounted? automountServiceAccountToken: false turns it off)"
                    ),
                };
                if failures == 1 {
                    tracing::warn!("{e}; following the mounted copy, retrying with back-off");
                } else {
                    tracing::debug!(failures, "{e}");
                }
                tx.send_replace(ApiView::Down(e.to_string()));
                let pause = backoff.pause(tokio::time::Instant::now().into_std());
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Why a watch failed, in words that say what to do.
fn explain(e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
        watcher::Error::WatchError(s) => Some(s.as_ref()),
        _ => None,
    };
    match status {
        Some(s) if s.code == 403 => format!(
            "forbidden ({}): the pod's service account needs get, list and watch on this \
             ConfigMap, which the operator's Role and RoleBinding rustmesh-proxy-config-reader \
             in this namespace grant",
            s.message
        ),
        Some(s) if s.code == 401 => format!(
            "unauthorized ({}): the service account token was refused",
            s.message
        ),
        _ => e.to_string(),
    }
}

/// Whether a watcher event comes from an answer of the API server (every one but the start of
/// a relist, which the watcher emits before it asks).
fn answered<K>(event: &Event<K>) -> bool {
    !matches!(event, Event::Init)
}

async fn run(client: Client, target: ApiTarget, tx: watch::Sender<ApiView>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &target.namespace);
    let config = watcher::Config::default().fields(&target.field_selector());
    let mut stream = watcher::watcher(api, config)
        .backoff(Backoff::api())
        .boxed();
    // What the current (re)list has found so far; published whole at `InitDone`.
    let mut listing: Option<ConfigMap> = None;
    let mut failures = 0u32;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                // `Init` only says a (re)list starts; the API has answered once the list or
                // a watch event comes back.
                if failures > 0 && answered(&event) {
                    tracing::info!(failures, "API watch of {target} works again");
                    failures = 0;
                }
                match event {
                    Event::Init => listing = None,
                    Event::InitApply(object) => {
                        if object.metadata.name.as_deref() == Some(&target.name) {
                            listing = Some(object);
                        }
                    }
                    Event::InitDone => {
                        tracing::debug!(found = listing.is_some(), "{target} listed");
                        tx.send_replace(ApiView::Live(listing.take().map(Arc::new)));
                    }
                    Event::Apply(object) => {
                        tx.send_replace(ApiView::Live(Some(Arc::new(object))));
                    }
                    Event::Delete(_) => {
                        tx.send_replace(ApiView::Live(None));
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let e = Error::Kube {
                    what: format!("watch {target}"),
                    message: explain(&e),
                };
                if failures == 1 {
                    tracing::warn!(
                        "{e}; following the mounted copy (it may lag by a minute), retrying with back-off"
                    );
                } else {
                    tracing::debug!(failures, "{e}");
                }
                tx.send_replace(ApiView::Down(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn gzip(text: &str) -> Vec<u8> {
        rustmesh_xds::configmap::gzip(text.as_bytes())
    }

    #[test]
    fn only_an_answer_of_the_api_ends_a_failure_streak() {
        // After a 403 the watcher starts its relist with `Init` and fails again: that is no
        // recovery (the log said "works again" between every two warnings).
        assert!(!answered::<ConfigMap>(&Event::Init));
        assert!(answered::<ConfigMap>(&Event::InitDone));
        assert!(answered(&Event::InitApply(ConfigMap::default())));
        assert!(answered(&Event::Apply(ConfigMap::default())));
        assert!(answered(&Event::Delete(ConfigMap::default())));
    }

    /// A fake API server on a loopback port that accepts every connection and closes it at
    /// once (an API server going down), counting the connections.
    async fn dropping_api() -> (Client, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(connection);
            }
        });
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (client, accepted)
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_api_is_retried_with_exponential_backoff() {
        // Paused time: the back-off's sleeps pass at once, the connections are real. Every
        // attempt fails; the schedule bounds how many there can be (9 in the first minute,
        // where kube-runtime's default back-off, reset by every relist, made about 50).
        let (client, attempts) = dropping_api().await;
        let start = tokio::time::Instant::now();
        let view = follow(target(), Some(client));
        for window in [Duration::from_secs(60), Duration::from_secs(600)] {
            tokio::time::sleep_until(start + window).await;
            let made = attempts.load(Ordering::SeqCst) as u32;
            let most = Backoff::api().most_attempts(window);
            assert!(
                made <= most,
                "{made} connection attempts to an unreachable API within {window:?}; the \
                 back-off allows at most {most}"
            );
            assert!(made >= 3, "the watch is retried: {made} attempts");
            assert!(matches!(&*view.borrow(), ApiView::Down(_)));
        }
    }

    fn target() -> ApiTarget {
        ApiTarget {
            namespace: "shop".into(),
            name: "rustmesh-proxy-config".into(),
        }
    }

    fn object(index: &str, binary: &[(&str, Vec<u8>)]) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(
                "scopes.json".to_string(),
                index.to_string(),
            )])),
            binary_data: Some(
                binary
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    const INDEX: &str = r#"{"version":1,"default":"default.json.gz","selectors":[{"key":"sidecar-ratings.json.gz","sidecar":"ratings","labels":{"app":"ratings"}}]}"#;

    #[test]
    fn the_pods_labels_select_the_scope_in_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        let cm = object(
            INDEX,
            &[
                ("default.json.gz", gzip("{\"default\":1}")),
                ("sidecar-ratings.json.gz", gzip("{\"ratings\":1}")),
            ],
        );
        std::fs::write(&labels, "app=\"ratings\"\nversion=\"v1\"\n").unwrap();
        let d = read(Some(&cm), &target(), &labels, ProxyRole::Sidecar).unwrap();
        assert_eq!(d.text().unwrap(), "{\"ratings\":1}");
        assert_eq!(
            d.origin,
            "configmap shop/rustmesh-proxy-config, key sidecar-ratings.json.gz"
        );
        std::fs::write(&labels, "app=\"reviews\"\n").unwrap();
        let d2 = read(Some(&cm), &target(), &labels, ProxyRole::Sidecar).unwrap();
        assert_eq!(d2.text().unwrap(), "{\"default\":1}");
        assert_ne!(d.hash, d2.hash);
        // No labels file: no labels, the default scope.
        let d3 = read(
            Some(&cm),
            &target(),
            &dir.path().join("none"),
            ProxyRole::Sidecar,
        )
        .unwrap();
        assert_eq!(d3.text().unwrap(), "{\"default\":1}");
    }

    #[test]
    fn the_object_and_the_mount_give_the_same_document_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        std::fs::write(&labels, "app=\"ratings\"\n").unwrap();
        let files = [
            ("default.json.gz", gzip("{\"default\":1}")),
            ("sidecar-ratings.json.gz", gzip("{\"ratings\":1}")),
        ];
        let mount = dir.path().join("mount");
        std::fs::create_dir(&mount).unwrap();
        std::fs::write(mount.join("scopes.json"), INDEX).unwrap();
        for (k, v) in &files {
            std::fs::write(mount.join(k), v).unwrap();
        }
        let from_mount = super::super::ConfigSource::Dir {
            dir: mount,
            pod_labels: labels.clone(),
            role: ProxyRole::Sidecar,
        }
        .read()
        .unwrap();
        let from_api = read(
            Some(&object(INDEX, &files)),
            &target(),
            &labels,
            ProxyRole::Sidecar,
        )
        .unwrap();
        assert_eq!(from_mount.raw, from_api.raw);
        assert_eq!(from_mount.hash, from_api.hash);
    }

    #[test]
    fn bad_objects_are_errors_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        let t = target();
        // The ConfigMap does not exist.
        let e = read(None, &t, &labels, ProxyRole::Sidecar)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "configmap shop/rustmesh-proxy-config: not found");
        // The selected key is missing.
        let e = read(Some(&object(INDEX, &[])), &t, &labels, ProxyRole::Sidecar)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key default.json.gz: not found"), "{e}");
        // A broken index names the field.
        let e = read(
            Some(&object("{\"version\":1}", &[])),
            &t,
            &labels,
            ProxyRole::Sidecar,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("key scopes.json") && e.contains("default"),
            "{e}"
        );
        // Not gzip: read fine, refused when decoded.
        let d = read(
            Some(&object(INDEX, &[("default.json.gz", b"{}".to_vec())])),
            &t,
            &labels,
            ProxyRole::Sidecar,
        )
        .unwrap();
        let e = d.text().unwrap_err().to_string();
        assert!(
            e.starts_with(
                "cannot decode configmap shop/rustmesh-proxy-config, key default.json.gz: not gzip"
            ),
            "{e}"
        );
        // Bad labels file.
        std::fs::write(&labels, "app=ratings\n").unwrap();
        let e = read(Some(&object(INDEX, &[])), &t, &labels, ProxyRole::Sidecar)
            .unwrap_err()
            .to_string();
        assert!(e.contains("labels"), "{e}");
    }

    #[test]
    fn an_object_without_index_uses_config_json_or_default() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        let plain = ConfigMap {
            data: Some(BTreeMap::from([(
                "config.json".to_string(),
                "{\"plain\":1}".to_string(),
            )])),
            ..ConfigMap::default()
        };
        let d = read(Some(&plain), &target(), &labels, ProxyRole::Sidecar).unwrap();
        assert_eq!(d.text().unwrap(), "{\"plain\":1}");
        let gz = ConfigMap {
            binary_data: Some(BTreeMap::from([(
                "default.json.gz".to_string(),
                ByteString(gzip("{\"gz\":1}")),
            )])),
            ..ConfigMap::default()
        };
        let d = read(Some(&gz), &target(), &labels, ProxyRole::Sidecar).unwrap();
        assert_eq!(d.text().unwrap(), "{\"gz\":1}");
    }
}
