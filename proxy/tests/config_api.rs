//! The proxy follows its ConfigMap through a real API server: the local e2e cluster
//! (`/var/lib/rustmesh-e2e/kubeconfig/admin.kubeconfig`, or `$RUSTMESH_KUBECONFIG`).
//!
//! In a namespace of its own (created and deleted here) the test makes a service account, the
//! ConfigMap `rustmesh-proxy-config` and a mounted copy on disk, and runs the proxy's
//! configuration watcher with that service account's token:
//!
//! * without RBAC the watch is forbidden: the mounted copy serves, the failure says why;
//! * with the operator's reader Role and RoleBinding (same rules) the watch starts (back-off
//!   retry) and the API's copy serves; the service account still cannot read another ConfigMap
//!   or list ConfigMaps without naming this one;
//! * updates apply; the time from the update request to the new configuration serving is
//!   printed (no assertion on it);
//! * a bad document is refused (counted) and the last good one keeps serving, also when the
//!   ConfigMap is deleted; a good one then applies.
//!
//! Without a reachable cluster the test prints why and passes; with `RUSTMESH_E2E=1` that is a
//! failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::config::api::{self, ApiTarget, ApiView};
use rustmesh_proxy::config::{ConfigSource, Watcher};
use rustmesh_proxy::proxy::RefuseHttp;
use rustmesh_proxy::snapshot::Store;
use rustmesh_proxy::stats::Metrics;
use serde_json::json;

const ADMIN_KUBECONFIG: &str = "/var/lib/rustmesh-e2e/kubeconfig/admin.kubeconfig";
const CM: &str = "rustmesh-proxy-config";
const INDEX: &str = r#"{"version":1,"default":"default.json.gz","selectors":[{"key":"sidecar-ratings.json.gz","sidecar":"ratings","labels":{"app":"ratings"}}]}"#;

fn kubeconfig_path() -> String {
    std::env::var("RUSTMESH_KUBECONFIG").unwrap_or_else(|_| ADMIN_KUBECONFIG.into())
}

async fn config() -> Result<Config, String> {
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path).map_err(|e| format!("{path}: {e}"))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{path}: {e}"))
}

async fn admin_client() -> Result<Client, String> {
    let client = Client::try_from(config().await?).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("API server at {}: {e}", kubeconfig_path())),
        Err(_) => Err(format!(
            "API server at {} did not answer in 5 s",
            kubeconfig_path()
        )),
    }
}

fn doc(version: &str) -> String {
    json!({
        "versionInfo": version,
        "listeners": [{"name": "virtualOutbound", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
            "useOriginalDst": true, "trafficDirection": "OUTBOUND",
            "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                "typedConfig": {"statPrefix": "x", "cluster": if version.starts_with("bad") { "nope" } else { "PassthroughCluster" }}}]}]}],
        "clusters": [{"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"}],
    })
    .to_string()
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// The ConfigMap as the operator writes it, version `n` of both scopes.
fn configmap(ns: &str, n: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::core::ObjectMeta {
            name: Some(CM.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("scopes.json".into(), INDEX.into())])),
        binary_data: Some(BTreeMap::from([
            (
                "default.json.gz".into(),
                ByteString(gzip(&doc(&format!("default-{n}")))),
            ),
            (
                "sidecar-ratings.json.gz".into(),
                ByteString(gzip(&doc(&format!("ratings-{n}")))),
            ),
        ])),
        ..Default::default()
    }
}

async fn until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_follows_its_configmap_through_a_real_api_server() {
    let admin = match admin_client().await {
        Ok(c) => c,
        Err(reason) => {
            assert!(
                std::env::var("RUSTMESH_E2E").as_deref() != Ok("1"),
                "RUSTMESH_E2E=1 but no cluster: {reason}"
            );
            eprintln!(
                "skipping: no Kubernetes cluster ({reason}); RUSTMESH_E2E=1 makes this a failure"
            );
            return;
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let ns = format!("rustmesh-cfgwatch-{}-{nanos:x}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let result = AssertUnwindSafe(body(admin.clone(), &ns))
        .catch_unwind()
        .await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn body(admin: Client, ns: &str) {
    let pp = PostParams::default();
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    cms.create(&pp, &configmap(ns, "api-1")).await.unwrap();
    let mut other = configmap(ns, "other");
    other.metadata.name = Some("other".into());
    cms.create(&pp, &other).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    sas.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "proxy"}})).unwrap(),
    )
    .await
    .unwrap();

    // The service account's token (1.20: the token controller writes it into a Secret).
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let sa = sas.get("proxy").await.unwrap();
        if let Some(name) = sa
            .secrets
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| s.name)
            .next()
        {
            let secret = secrets.get(&name).await.unwrap();
            if let Some(t) = secret.data.and_then(|d| d.get("token").cloned()) {
                break String::from_utf8(t.0).unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no token for the service account"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut sa_config = config().await.unwrap();
    sa_config.auth_info = serde_json::from_value(json!({"token": token})).unwrap();
    let sa_client = Client::try_from(sa_config).unwrap();

    // The mounted copy, older than the API's.
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount).unwrap();
    std::fs::write(mount.join("scopes.json"), INDEX).unwrap();
    for (k, v) in configmap(ns, "mount-0").binary_data.unwrap() {
        std::fs::write(mount.join(k), v.0).unwrap();
    }
    let labels = dir.path().join("labels");
    std::fs::write(&labels, "app=\"ratings\"\n").unwrap();

    let metrics = Metrics::default();
    let store = Arc::new(Store::new());
    let mut watcher = Watcher::new(
        ConfigSource::Dir {
            dir: mount.clone(),
            pod_labels: labels.clone(),
        },
        store.clone(),
        Arc::new(ClusterManager::new(metrics.clone())),
        metrics.clone(),
        Arc::new(RefuseHttp::new(metrics.clone())),
        Duration::from_millis(500),
    );
    let target = ApiTarget {
        namespace: ns.into(),
        name: CM.into(),
    };
    let mut feed = api::follow(target.clone(), Some(sa_client.clone()));
    watcher.follow_api(target, feed.clone());

    // No RBAC yet: the mount serves, the watch is refused and says why.
    watcher.poll();
    let version = || store.load().map(|s| s.version().to_string());
    assert_eq!(version().as_deref(), Some("ratings-mount-0"));
    let why = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let ApiView::Down(why) = &*feed.borrow_and_update() {
                return why.clone();
            }
            feed.changed().await.unwrap();
        }
    })
    .await
    .expect("the forbidden watch is reported");
    println!("without RBAC: {why}");
    assert!(
        why.contains("forbidden") && why.contains("rustmesh-proxy-config-reader"),
        "{why}"
    );
    tokio::spawn(watcher.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(version().as_deref(), Some("ratings-mount-0"));

    // The operator's Role and RoleBinding (the same rules as operator::configmap::reader_role).
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "rustmesh-proxy-config-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CM],
                   "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "rustmesh-proxy-config-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rustmesh-proxy-config-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": format!("system:serviceaccounts:{ns}")}],
    }))
    .unwrap();
    let granted = Instant::now();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&pp, &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&pp, &binding)
        .await
        .unwrap();
    until("the API's copy serves", Duration::from_secs(60), || {
        (version().as_deref() == Some("ratings-api-1")).then_some(())
    })
    .await;
    println!(
        "RBAC granted → API copy serving: {:?} (the watch retries with back-off)",
        granted.elapsed()
    );

    // Only that ConfigMap: not another one, not a list without naming it.
    let sa_cms: Api<ConfigMap> = Api::namespaced(sa_client.clone(), ns);
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(forbidden(sa_cms.get("other").await.map(|_| ())));
    assert!(forbidden(
        sa_cms.list(&ListParams::default()).await.map(|_| ())
    ));
    assert!(sa_cms.get(CM).await.is_ok());

    // Updates: from the request to the new configuration serving.
    let apply = PatchParams::apply("rustmesh-cfgwatch-test").force();
    let mut times = Vec::new();
    for n in 2..=11 {
        let want = format!("ratings-api-{n}");
        let started = Instant::now();
        cms.patch(
            CM,
            &apply,
            &Patch::Apply(configmap(ns, &format!("api-{n}"))),
        )
        .await
        .unwrap();
        let written = started.elapsed();
        until(&want.clone(), Duration::from_secs(10), || {
            (version().as_deref() == Some(want.as_str())).then_some(())
        })
        .await;
        let serving = started.elapsed();
        println!("update {n}: written in {written:?}, serving in {serving:?}");
        times.push(serving);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times.sort();
    println!(
        "ConfigMap update → new configuration serving, {} updates: min {:?}, median {:?}, max {:?}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );

    // A bad document is refused; the last good one serves.
    let (_, rejected) = metrics.config_reload_counts();
    let mut bad = configmap(ns, "api-12");
    bad.binary_data.as_mut().unwrap().insert(
        "sidecar-ratings.json.gz".into(),
        ByteString(gzip(&doc("bad-12"))),
    );
    cms.patch(CM, &apply, &Patch::Apply(&bad)).await.unwrap();
    until(
        "the bad document is refused",
        Duration::from_secs(10),
        || (metrics.config_reload_counts().1 > rejected).then_some(()),
    )
    .await;
    assert_eq!(version().as_deref(), Some("ratings-api-11"));
    // Deleted: refused too.
    cms.delete(CM, &DeleteParams::default()).await.unwrap();
    until("the deletion is refused", Duration::from_secs(10), || {
        (metrics.config_reload_counts().1 > rejected + 1).then_some(())
    })
    .await;
    assert_eq!(version().as_deref(), Some("ratings-api-11"));
    // Back: applies.
    cms.create(&pp, &configmap(ns, "api-13")).await.unwrap();
    until(
        "the recreated ConfigMap serves",
        Duration::from_secs(10),
        || (version().as_deref() == Some("ratings-api-13")).then_some(()),
    )
    .await;
    // Relabelled pod: the default scope of the API's copy.
    std::fs::write(&labels, "app=\"reviews\"\n").unwrap();
    until("the default scope serves", Duration::from_secs(10), || {
        (version().as_deref() == Some("default-api-13")).then_some(())
    })
    .await;
}
