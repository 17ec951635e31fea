//! Applying: the [`Watcher`] polls the source (and the API's copy when it follows it), and when
//! the inputs' hash changes validates and compiles the document and swaps it in, or refuses it
//! (logged, counted) and keeps the previous configuration serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::api::{self, ApiTarget, ApiView};
use super::document::hash_of;
use super::{ConfigSource, Document};
use crate::cluster::ClusterManager;
use crate::http::handler::ConnectionManager;
use crate::snapshot::{Snapshot, Store};
use crate::stats::Metrics;
use crate::{Error, Result};
use rustmesh_xds::scope::ProxyRole;

/// What one poll did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The inputs did not change.
    Unchanged,
    /// A new configuration serves (its `versionInfo`).
    Applied(String),
    /// The new document was refused (the reason, naming the field).
    Rejected(String),
}

/// Polls a [`ConfigSource`] (and, with [`Watcher::follow_api`], the ConfigMap through the API)
/// and swaps good configurations into a [`Store`].
pub struct Watcher {
    source: ConfigSource,
    store: Arc<Store>,
    clusters: Arc<ClusterManager>,
    metrics: Metrics,
    http: Arc<ConnectionManager>,
    interval: Duration,
    last: Option<u64>,
    api: Option<ApiFollow>,
}

/// The API side of a [`Watcher`].
struct ApiFollow {
    target: ApiTarget,
    feed: watch::Receiver<ApiView>,
    /// The last poll used the API's copy.
    live: bool,
    /// The configuration serving came from the API's copy.
    serving_from_api: bool,
    /// After falling back to the mount while serving the API's copy: the mount's hash then.
    /// The mount may lag the API by a minute, so what it shows at that moment is not applied
    /// (it could be older than what serves); the next change of it is.
    mount_baseline: Option<u64>,
}

impl Watcher {
    /// A watcher; nothing is read until [`Watcher::poll`] or [`Watcher::run`].
    pub fn new(
        source: ConfigSource,
        store: Arc<Store>,
        clusters: Arc<ClusterManager>,
        metrics: Metrics,
        http: Arc<ConnectionManager>,
        interval: Duration,
    ) -> Self {
        Watcher {
            source,
            store,
            clusters,
            metrics,
            http,
            interval,
            last: None,
            api: None,
        }
    }

    /// Also follows `target` through the API ([`api::follow`]'s `feed`): while the watch is
    /// live its copy is used (the labels still come from the source's labels file) and a
    /// change is applied as soon as it is heard; while it is not (starting, unreachable,
    /// forbidden) the source is polled as without it. Only for [`ConfigSource::Dir`].
    pub fn follow_api(&mut self, target: ApiTarget, feed: watch::Receiver<ApiView>) {
        self.api = Some(ApiFollow {
            target,
            feed,
            live: false,
            serving_from_api: false,
            mount_baseline: None,
        });
    }

    /// The pod's labels file and the proxy's role, which pick its scope in the ConfigMap.
    fn pod(&self) -> (PathBuf, ProxyRole) {
        match &self.source {
            ConfigSource::Dir {
                pod_labels, role, ..
            } => (pod_labels.clone(), *role),
            ConfigSource::File(_) => (PathBuf::new(), ProxyRole::Sidecar),
        }
    }

    /// Reads the source once; applies the document if it changed and is good.
    pub fn poll(&mut self) -> Outcome {
        let (labels_path, role) = self.pod();
        let mut from_api = false;
        let document = match &mut self.api {
            None => self.source.read(),
            Some(api) => {
                let view = api.feed.borrow().clone();
                match view {
                    ApiView::Live(object) => {
                        if !api.live {
                            tracing::info!(
                                "following {} through the API (changes apply as they are heard)",
                                api.target
                            );
                            self.metrics.config_api_live(true);
                        }
                        api.live = true;
                        api.mount_baseline = None;
                        from_api = true;
                        api::read(object.as_deref(), &api.target, &labels_path, role)
                    }
                    ApiView::Pending | ApiView::Down(_) => {
                        if api.live {
                            let why = match &view {
                                ApiView::Down(why) => why.as_str(),
                                _ => "not listed yet",
                            };
                            tracing::warn!(
                                "lost the API watch of {} ({why}); following the mounted copy \
                                 until it is back",
                                api.target
                            );
                            self.metrics.config_api_live(false);
                        }
                        api.live = false;
                        let document = self.source.read();
                        if api.serving_from_api {
                            let hash = match &document {
                                Ok(d) => d.hash,
                                Err(e) => hash_of(&[e.to_string().as_bytes()]),
                            };
                            match api.mount_baseline {
                                None => {
                                    api.mount_baseline = Some(hash);
                                    return Outcome::Unchanged;
                                }
                                Some(b) if b == hash => return Outcome::Unchanged,
                                Some(_) => {}
                            }
                        }
                        document
                    }
                }
            }
        };
        let outcome = self.apply(document);
        if let (Some(api), Outcome::Applied(_)) = (&mut self.api, &outcome) {
            api.serving_from_api = from_api;
            if !from_api {
                api.mount_baseline = None;
            }
        }
        outcome
    }

    fn apply(&mut self, document: Result<Document>) -> Outcome {
        let hash = match &document {
            Ok(d) => d.hash,
            Err(e) => hash_of(&[e.to_string().as_bytes()]),
        };
        if self.last == Some(hash) {
            return Outcome::Unchanged;
        }
        self.last = Some(hash);
        let result = document.and_then(|d| {
            let origin = d.origin();
            let config = d.config()?;
            let snapshot = Snapshot::compile(config, &self.clusters, &self.metrics, &self.http)
                .map_err(|e| match e {
                    Error::ConfigCompile { field, message } => Error::ConfigCompile {
                        field: format!("{origin}: {field}"),
                        message,
                    },
                    other => other,
                })?;
            Ok((snapshot, origin))
        });
        match result {
            Ok((snapshot, origin)) => {
                let version = snapshot.version().to_string();
                let snapshot = Arc::new(snapshot);
                self.clusters.commit(&snapshot.clusters);
                self.store.swap(snapshot.clone());
                self.metrics.config_reload(true);
                tracing::info!(
                    version,
                    origin,
                    listeners = snapshot.listeners.len(),
                    clusters = snapshot.clusters.len(),
                    "configuration applied"
                );
                Outcome::Applied(version)
            }
            Err(e) => {
                self.metrics.config_reload(false);
                let serving = self.store.load();
                match &serving {
                    Some(s) => tracing::warn!(
                        serving = s.version(),
                        "configuration refused, the previous one keeps serving: {e}"
                    ),
                    None => tracing::warn!("no configuration yet (not ready): {e}"),
                }
                Outcome::Rejected(e.to_string())
            }
        }
    }

    /// Polls every interval, and at once when the API's copy changes, forever (reads run on
    /// the blocking pool).
    pub async fn run(mut self) {
        let mut feed = self.api.as_ref().map(|a| a.feed.clone());
        loop {
            let heard = match feed.as_mut() {
                Some(f) => tokio::select! {
                    () = tokio::time::sleep(self.interval) => false,
                    changed = f.changed() => {
                        if changed.is_err() {
                            feed = None;
                        }
                        true
                    }
                },
                None => {
                    tokio::time::sleep(self.interval).await;
                    false
                }
            };
            let started = std::time::Instant::now();
            self = match tokio::task::spawn_blocking(move || {
                let outcome = self.poll();
                (self, outcome)
            })
            .await
            {
                Ok((w, outcome)) => {
                    if heard && matches!(outcome, Outcome::Applied(_)) {
                        tracing::debug!(elapsed = ?started.elapsed(), "API change applied");
                    }
                    w
                }
                Err(e) => {
                    tracing::error!("configuration watcher stopped: {e}");
                    return;
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_POLL_INTERVAL;
    use rustmesh_xds::scope::SCOPE_INDEX_KEY;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn doc(version: &str, cluster: &str) -> String {
        json!({
            "versionInfo": version,
            "listeners": [{"name": "virtualOutbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                "useOriginalDst": true, "trafficDirection": "OUTBOUND",
                "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                    "typedConfig": {"statPrefix": "x", "cluster": cluster}}]}]}],
            "clusters": [{"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"}],
        })
        .to_string()
    }

    fn watcher(source: ConfigSource) -> (Watcher, Arc<Store>, Metrics) {
        let metrics = Metrics::default();
        let store = Arc::new(Store::new());
        let w = Watcher::new(
            source,
            store.clone(),
            Arc::new(ClusterManager::new(metrics.clone())),
            metrics.clone(),
            Arc::new(ConnectionManager::default()),
            DEFAULT_POLL_INTERVAL,
        );
        (w, store, metrics)
    }

    /// Writes atomically, like kubelet and editors that rename.
    fn write(path: &Path, text: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn file_source_applies_refuses_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let (mut w, store, metrics) = watcher(ConfigSource::File(path.clone()));

        assert!(matches!(w.poll(), Outcome::Rejected(r) if r.contains("config.json")));
        assert!(store.load().is_none());
        assert_eq!(
            w.poll(),
            Outcome::Unchanged,
            "the same problem is reported once"
        );

        write(&path, doc("v1", "PassthroughCluster").as_bytes());
        assert_eq!(w.poll(), Outcome::Applied("v1".into()));
        assert_eq!(w.poll(), Outcome::Unchanged);
        let v1 = store.load().unwrap();

        write(&path, b"{\"versionInfo\": \"v2\", \"listeners\": [");
        let Outcome::Rejected(reason) = w.poll() else {
            panic!()
        };
        assert!(reason.contains("line 1"), "{reason}");
        assert_eq!(store.load().unwrap().version(), "v1");

        write(&path, doc("v3", "nope").as_bytes());
        let Outcome::Rejected(reason) = w.poll() else {
            panic!()
        };
        assert!(
            reason.contains("listeners[0].filterChains[0].filters[0].typedConfig.cluster")
                && reason.contains("\"nope\""),
            "{reason}"
        );
        assert!(Arc::ptr_eq(&store.load().unwrap(), &v1));
        assert_eq!(metrics.config_reload_counts(), (1, 3));

        write(&path, doc("v4", "PassthroughCluster").as_bytes());
        assert_eq!(w.poll(), Outcome::Applied("v4".into()));
    }

    /// [`doc`] with a route table whose routes match `regexes`, one route each.
    fn doc_with_regexes(version: &str, regexes: &[&str]) -> String {
        let mut d: serde_json::Value =
            serde_json::from_str(&doc(version, "PassthroughCluster")).unwrap();
        let routes: Vec<_> = regexes
            .iter()
            .enumerate()
            .map(|(i, re)| {
                json!({"name": format!("r{i}"), "match": {"safeRegex": {"regex": re}},
                "route": {"cluster": "PassthroughCluster"}})
            })
            .collect();
        d["routes"] = json!([{"name": "9080", "virtualHosts": [{"name": "v", "domains": ["*"], "routes": routes}]}]);
        d.to_string()
    }

    #[test]
    fn a_regex_bomb_is_refused_naming_the_field_and_the_previous_config_keeps_serving() {
        use rustmesh_xds::regex::{Anchor, CONFIG_SIZE_BUDGET, compile};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let (mut w, store, _) = watcher(ConfigSource::File(path.clone()));
        write(
            &path,
            doc_with_regexes("v1", &["^/api/v[0-9]+/.*", r".*\.jpg"]).as_bytes(),
        );
        assert_eq!(w.poll(), Outcome::Applied("v1".into()));

        // `\w{60}` compiles to megabytes: 300 such routes took a sidecar from 21 MB to 1 GB.
        write(&path, doc_with_regexes("v2", &[r"\w{60}"; 300]).as_bytes());
        let Outcome::Rejected(reason) = w.poll() else {
            panic!("a regex bomb was applied")
        };
        assert!(
            reason.contains(r#"routes[0].virtualHosts[0].routes[0].match.safeRegex.regex: regex "\\w{60}" compiles to more than 524288 bytes"#),
            "{reason}"
        );
        assert_eq!(store.load().unwrap().version(), "v1");

        // Patterns allowed one by one, but too many together.
        let medium = "[a-z]{4000}";
        let n = CONFIG_SIZE_BUDGET / compile(medium, Anchor::Whole).unwrap().size + 1;
        write(&path, doc_with_regexes("v3", &vec![medium; n]).as_bytes());
        let Outcome::Rejected(reason) = w.poll() else {
            panic!("the regex budget was not enforced")
        };
        assert!(
            reason.contains(&format!(
                "routes[0].virtualHosts[0].routes[{}].match.safeRegex.regex",
                n - 1
            )) && reason.contains("over the budget of 16777216 bytes"),
            "{reason}"
        );
        assert_eq!(store.load().unwrap().version(), "v1");
    }

    fn gzip(text: &str) -> Vec<u8> {
        rustmesh_xds::configmap::gzip(text.as_bytes())
    }

    /// A ConfigMap volume as kubelet lays it out: `..<timestamp>/` holding the files, `..data`
    /// pointing at it, and each key a symlink through `..data`.
    fn publish(dir: &Path, generation: u32, files: &[(&str, Vec<u8>)]) {
        let ts = dir.join(format!("..gen{generation}"));
        std::fs::create_dir(&ts).unwrap();
        for (k, v) in files {
            std::fs::write(ts.join(k), v).unwrap();
        }
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        for (k, _) in files {
            let link = dir.join(k);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(k), &link).unwrap();
            }
        }
    }

    #[test]
    fn split_configuration_is_assembled_from_its_endpoint_parts() {
        const A: &str = "outbound|80||a.shop.svc.cluster.local";
        const B: &str = "outbound|80||b.shop.svc.cluster.local";
        let eds = |name: &str| {
            json!({"name": name, "type": "EDS", "lbPolicy": "ROUND_ROBIN",
                "edsClusterConfig": {"serviceName": name}})
        };
        let base = json!({
            "listeners": [{"name": "virtualOutbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                "useOriginalDst": true, "trafficDirection": "OUTBOUND",
                "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                    "typedConfig": {"statPrefix": "x", "cluster": A}}]}]}],
            "clusters": [eds(A), eds(B)],
        })
        .to_string();
        let part = |cluster: &str, ip: &str| {
            json!({"endpoints": [{"clusterName": cluster, "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": {"socketAddress": {"address": ip, "portValue": 8080}}}}]}]}]})
            .to_string()
        };
        let index = |version: &str| {
            json!({"version": 2, "default": "default.json.gz", "parts": {"default.json.gz": {
                "versionInfo": version, "endpoints": ["default.eds-00.json.gz", "default.eds-01.json.gz"]}}})
            .to_string()
            .into_bytes()
        };
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("config");
        std::fs::create_dir(&mount).unwrap();
        publish(
            &mount,
            1,
            &[
                ("scopes.json", index("v1")),
                ("default.json.gz", gzip(&base)),
                ("default.eds-00.json.gz", gzip(&part(B, "10.0.0.2"))),
                ("default.eds-01.json.gz", gzip(&part(A, "10.0.0.1"))),
            ],
        );
        let (mut w, store, _) = watcher(ConfigSource::Dir {
            dir: mount.clone(),
            pod_labels: dir.path().join("no-labels"),
            role: ProxyRole::Sidecar,
        });
        assert_eq!(w.poll(), Outcome::Applied("v1".into()));
        let addresses = |store: &Store| {
            let snapshot = store.load().unwrap();
            snapshot
                .config
                .endpoints
                .iter()
                .map(|c| {
                    let ip = c
                        .lb_endpoints()
                        .next()
                        .unwrap()
                        .endpoint
                        .address
                        .socket_address
                        .address
                        .to_string();
                    format!("{}={ip}", c.cluster_name)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            addresses(&store),
            [format!("{A}=10.0.0.1"), format!("{B}=10.0.0.2")]
        );
        // Only an endpoint part changes (and the version in the index): applied.
        publish(
            &mount,
            2,
            &[
                ("scopes.json", index("v2")),
                ("default.json.gz", gzip(&base)),
                ("default.eds-00.json.gz", gzip(&part(B, "10.0.0.9"))),
                ("default.eds-01.json.gz", gzip(&part(A, "10.0.0.1"))),
            ],
        );
        assert_eq!(w.poll(), Outcome::Applied("v2".into()));
        assert_eq!(addresses(&store)[1], format!("{B}=10.0.0.9"));
        // A missing part, or a part that is not one, is refused naming its key; v2 keeps serving.
        publish(
            &mount,
            3,
            &[
                ("scopes.json", index("v3")),
                ("default.json.gz", gzip(&base)),
                ("default.eds-01.json.gz", gzip(&part(A, "10.0.0.1"))),
            ],
        );
        let Outcome::Rejected(why) = w.poll() else {
            panic!("a missing part must be refused")
        };
        assert!(why.contains("default.eds-00.json.gz"), "{why}");
        publish(
            &mount,
            4,
            &[
                ("scopes.json", index("v4")),
                ("default.json.gz", gzip(&base)),
                ("default.eds-00.json.gz", gzip(&base)),
                ("default.eds-01.json.gz", gzip(&part(A, "10.0.0.1"))),
            ],
        );
        let Outcome::Rejected(why) = w.poll() else {
            panic!("a part that is not an endpoint part must be refused")
        };
        assert!(
            why.contains("default.eds-00.json.gz") && why.contains("unknown field"),
            "{why}"
        );
        // The same assignment in two parts is refused too.
        publish(
            &mount,
            5,
            &[
                ("scopes.json", index("v5")),
                ("default.json.gz", gzip(&base)),
                ("default.eds-00.json.gz", gzip(&part(A, "10.0.0.1"))),
                ("default.eds-01.json.gz", gzip(&part(A, "10.0.0.1"))),
            ],
        );
        let Outcome::Rejected(why) = w.poll() else {
            panic!("an assignment given twice must be refused")
        };
        assert!(why.contains("given twice"), "{why}");
        assert_eq!(store.load().unwrap().version(), "v2");
    }

    #[test]
    fn configmap_dir_selects_the_scope_by_pod_labels_and_follows_data_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        std::fs::write(&labels, "app=\"ratings\"\nversion=\"v1\"\n").unwrap();
        let mount = dir.path().join("config");
        std::fs::create_dir(&mount).unwrap();
        let index = json!({"version": 1, "default": "default.json.gz",
            "selectors": [{"key": "sidecar-ratings.json.gz", "sidecar": "ratings", "labels": {"app": "ratings"}}]})
        .to_string();
        publish(
            &mount,
            1,
            &[
                ("scopes.json", index.clone().into_bytes()),
                (
                    "default.json.gz",
                    gzip(&doc("default-1", "PassthroughCluster")),
                ),
                (
                    "sidecar-ratings.json.gz",
                    gzip(&doc("ratings-1", "PassthroughCluster")),
                ),
            ],
        );
        let (mut w, store, _) = watcher(ConfigSource::Dir {
            dir: mount.clone(),
            pod_labels: labels.clone(),
            role: ProxyRole::Sidecar,
        });
        assert_eq!(w.poll(), Outcome::Applied("ratings-1".into()));
        publish(
            &mount,
            2,
            &[
                ("scopes.json", index.into_bytes()),
                (
                    "default.json.gz",
                    gzip(&doc("default-2", "PassthroughCluster")),
                ),
                (
                    "sidecar-ratings.json.gz",
                    gzip(&doc("ratings-2", "PassthroughCluster")),
                ),
            ],
        );
        assert_eq!(w.poll(), Outcome::Applied("ratings-2".into()));
        // Relabelled pod: the default scope.
        std::fs::write(&labels, "app=\"reviews\"\n").unwrap();
        assert_eq!(w.poll(), Outcome::Applied("default-2".into()));
        assert_eq!(store.load().unwrap().version(), "default-2");
    }

    /// A Gateway may select a sidecar's labels: the sidecar keeps its own scope and only a
    /// router (a gateway's proxy) reads the gateway scope.
    #[test]
    fn only_a_router_reads_the_gateway_scope_its_labels_select() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        std::fs::write(&labels, "app=\"ratings\"\nistio=\"ingressgateway\"\n").unwrap();
        let mount = dir.path().join("config");
        std::fs::create_dir(&mount).unwrap();
        let gateway_key = rustmesh_xds::scope::gateway_scope_key(
            &[("istio".to_string(), "ingressgateway".to_string())].into(),
        );
        let index = json!({"version": 3, "default": "default.json.gz", "selectors": [
            {"key": gateway_key, "gateways": ["default/gw"], "labels": {"istio": "ingressgateway"}},
            {"key": "sidecar-ratings.json.gz", "sidecar": "ratings", "labels": {"app": "ratings"}},
        ]})
        .to_string();
        publish(
            &mount,
            1,
            &[
                ("scopes.json", index.into_bytes()),
                (
                    "default.json.gz",
                    gzip(&doc("default-1", "PassthroughCluster")),
                ),
                (
                    "sidecar-ratings.json.gz",
                    gzip(&doc("ratings-1", "PassthroughCluster")),
                ),
                (&gateway_key, gzip(&doc("gateway-1", "PassthroughCluster"))),
            ],
        );
        for (role, version) in [
            (ProxyRole::Sidecar, "ratings-1"),
            (ProxyRole::Router, "gateway-1"),
        ] {
            let (mut w, _, _) = watcher(ConfigSource::Dir {
                dir: mount.clone(),
                pod_labels: labels.clone(),
                role,
            });
            assert_eq!(w.poll(), Outcome::Applied(version.into()), "{role:?}");
        }
        // A router no gateway scope selects reads the default scope, never a Sidecar's.
        std::fs::write(&labels, "app=\"ratings\"\n").unwrap();
        let (mut w, _, _) = watcher(ConfigSource::Dir {
            dir: mount.clone(),
            pod_labels: labels.clone(),
            role: ProxyRole::Router,
        });
        assert_eq!(w.poll(), Outcome::Applied("default-1".into()));
    }

    #[test]
    fn dir_without_index_reads_config_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            doc("plain", "PassthroughCluster"),
        )
        .unwrap();
        let (mut w, _, _) = watcher(ConfigSource::Dir {
            dir: dir.path().to_path_buf(),
            pod_labels: dir.path().join("no-labels"),
            role: ProxyRole::Sidecar,
        });
        assert_eq!(w.poll(), Outcome::Applied("plain".into()));
    }
    fn object(
        index: &str,
        files: &[(&str, Vec<u8>)],
    ) -> Arc<k8s_openapi::api::core::v1::ConfigMap> {
        Arc::new(k8s_openapi::api::core::v1::ConfigMap {
            data: Some(BTreeMap::from([(
                SCOPE_INDEX_KEY.to_string(),
                index.to_string(),
            )])),
            binary_data: Some(
                files
                    .iter()
                    .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        })
    }

    #[test]
    fn api_copy_wins_while_live_and_a_lagging_mount_never_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        std::fs::write(&labels, "app=\"ratings\"\n").unwrap();
        let mount = dir.path().join("config");
        std::fs::create_dir(&mount).unwrap();
        let index = json!({"version": 1, "default": "default.json.gz",
            "selectors": [{"key": "sidecar-ratings.json.gz", "sidecar": "ratings", "labels": {"app": "ratings"}}]})
        .to_string();
        let files = |v: &str| {
            vec![
                (
                    "default.json.gz",
                    gzip(&doc(&format!("default-{v}"), "PassthroughCluster")),
                ),
                (
                    "sidecar-ratings.json.gz",
                    gzip(&doc(&format!("ratings-{v}"), "PassthroughCluster")),
                ),
            ]
        };
        let with_index = |v: &str| {
            let mut f = vec![("scopes.json", index.clone().into_bytes())];
            f.extend(files(v));
            f
        };
        publish(&mount, 1, &with_index("1"));
        let (mut w, store, metrics) = watcher(ConfigSource::Dir {
            dir: mount.clone(),
            pod_labels: labels.clone(),
            role: ProxyRole::Sidecar,
        });
        let target = ApiTarget {
            namespace: "shop".into(),
            name: "rustmesh-proxy-config".into(),
        };
        let (tx, rx) = watch::channel(ApiView::Pending);
        w.follow_api(target, rx);

        // Starting: the mount serves at once.
        assert_eq!(w.poll(), Outcome::Applied("ratings-1".into()));
        // The API lists the same content: nothing to re-apply.
        tx.send_replace(ApiView::Live(Some(object(&index, &files("1")))));
        assert_eq!(w.poll(), Outcome::Unchanged);
        assert_eq!(metrics.config_api_live_value(), 1);
        // A change heard through the API applies, though the mount still has the old one.
        tx.send_replace(ApiView::Live(Some(object(&index, &files("2")))));
        assert_eq!(w.poll(), Outcome::Applied("ratings-2".into()));
        // The pod is relabelled: the API copy's default scope.
        std::fs::write(&labels, "app=\"reviews\"\n").unwrap();
        assert_eq!(w.poll(), Outcome::Applied("default-2".into()));
        std::fs::write(&labels, "app=\"ratings\"\n").unwrap();
        assert_eq!(w.poll(), Outcome::Applied("ratings-2".into()));

        // A bad document from the API is refused like a bad file.
        let mut bad = files("3");
        bad[1].1 = gzip(&doc("ratings-3", "nope"));
        tx.send_replace(ApiView::Live(Some(object(&index, &bad))));
        let Outcome::Rejected(reason) = w.poll() else {
            panic!()
        };
        assert!(
            reason.starts_with(
                "configmap shop/rustmesh-proxy-config, key sidecar-ratings.json.gz: listeners[0]"
            ) && reason.contains("\"nope\""),
            "{reason}"
        );
        assert_eq!(store.load().unwrap().version(), "ratings-2");
        assert_eq!(metrics.config_reload_counts(), (4, 1));
        // Not gzip.
        let mut bad = files("4");
        bad[1].1 = b"not gzip".to_vec();
        tx.send_replace(ApiView::Live(Some(object(&index, &bad))));
        assert!(matches!(w.poll(), Outcome::Rejected(r) if r.contains("not gzip")));
        // Deleted by hand: refused, the last good one serves (the operator restores it).
        tx.send_replace(ApiView::Live(None));
        assert!(matches!(w.poll(), Outcome::Rejected(r) if r.ends_with("not found")));
        tx.send_replace(ApiView::Live(Some(object(&index, &files("2")))));
        assert_eq!(w.poll(), Outcome::Applied("ratings-2".into()));

        // The API goes away: the mount (still at 1, it lags) does not roll the proxy back...
        tx.send_replace(ApiView::Down("connection refused".into()));
        assert_eq!(w.poll(), Outcome::Unchanged);
        assert_eq!(w.poll(), Outcome::Unchanged);
        assert_eq!(store.load().unwrap().version(), "ratings-2");
        assert_eq!(metrics.config_api_live_value(), 0);
        // ...but its next change applies.
        publish(&mount, 2, &with_index("5"));
        assert_eq!(w.poll(), Outcome::Applied("ratings-5".into()));
        publish(&mount, 3, &with_index("6"));
        assert_eq!(w.poll(), Outcome::Applied("ratings-6".into()));
        // The API is back with a newer copy.
        tx.send_replace(ApiView::Live(Some(object(&index, &files("7")))));
        assert_eq!(w.poll(), Outcome::Applied("ratings-7".into()));
    }
}
