//! The proxy follows its ConfigMap through a real API server: the local e2e cluster
//! (`/var/lib/rustmesh-e2e/kubeconfig/admin.kubeconfig`, or `$RUSTMESH_KUBECONFIG`), through the
//! shared harness `rustmesh_testkit`.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::config::api::{self, ApiTarget, ApiView};
use rustmesh_proxy::config::{ConfigSource, Watcher};
use rustmesh_proxy::http::handler::ConnectionManager;
use rustmesh_proxy::snapshot::Store;
use rustmesh_proxy::stats::Metrics;
use serde_json::json;

const CM: &str = "rustmesh-proxy-config";
const INDEX: &str = r#"{"version":1,"default":"default.json.gz","selectors":[{"key":"sidecar-ratings.json.gz","sidecar":"ratings","labels":{"app":"ratings"}}]}"#;

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
    rustmesh_xds::configmap::gzip(text.as_bytes())
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port, the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The real `proxy run`, configured only as the webhook configures it (PROXY_CONFIGMAP,
/// POD_NAMESPACE, the mounts), with the service account's kubeconfig in place of the in-cluster
/// credentials. Killed when dropped.
struct Sidecar {
    child: std::process::Child,
    admin: u16,
    prometheus: u16,
    log: std::path::PathBuf,
}

impl Sidecar {
    fn version(&self) -> Option<String> {
        let dump = http_get(self.admin, "/config_dump")?;
        let v: serde_json::Value = serde_json::from_str(&dump).ok()?;
        v["versionInfo"].as_str().map(str::to_string)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let Some(admin) = rustmesh_testkit::cluster_or_skip().await else {
        return;
    };
    rustmesh_testkit::in_namespace(&admin, "cfgwatch", body).await;
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
    let mut sa_config = rustmesh_testkit::config().await.unwrap();
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
            role: rustmesh_xds::scope::ProxyRole::Sidecar,
        },
        store.clone(),
        Arc::new(ClusterManager::new(metrics.clone())),
        metrics.clone(),
        Arc::new(ConnectionManager::default()),
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

    // The real binary, as injected: the API's copy, not the mount's.
    let mut kc = Kubeconfig::read_from(rustmesh_testkit::kubeconfig_path()).unwrap();
    for a in &mut kc.auth_infos {
        a.auth_info = Some(serde_json::from_value(json!({"token": token})).unwrap());
    }
    let kc_path = dir.path().join("sa.kubeconfig");
    std::fs::write(&kc_path, serde_json::to_string(&kc).unwrap()).unwrap();
    let log = dir.path().join("sidecar.log");
    let (admin_port, prometheus) = (free_port(), free_port());
    let sidecar = Sidecar {
        child: std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["run", "--config-dir"])
            .arg(&mount)
            .arg("--pod-labels")
            .arg(&labels)
            .args(["--outbound-port", &free_port().to_string()])
            .args(["--inbound-port", &free_port().to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--health-port", &free_port().to_string()])
            .args(["--prometheus-port", &prometheus.to_string()])
            .args(["--dns-port", "0"])
            .args(["--status-port", "0"])
            .env("KUBECONFIG", &kc_path)
            .env("PROXY_CONFIGMAP", CM)
            .env("POD_NAMESPACE", ns)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        admin: admin_port,
        prometheus,
        log,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while sidecar.version().as_deref() != Some("ratings-api-1") {
        assert!(
            Instant::now() < deadline,
            "proxy run never served the API's copy (serving {:?}):\n{}",
            sidecar.version(),
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "proxy run: serving the API's copy {:?} after start",
        started.elapsed()
    );
    let metrics_text = http_get(sidecar.prometheus, "/stats/prometheus").unwrap();
    assert!(
        metrics_text.contains("rustmesh_config_api_live 1"),
        "{metrics_text}"
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
    let mut binary_times = Vec::new();
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
        let deadline = started + Duration::from_secs(10);
        while sidecar.version().as_deref() != Some(want.as_str()) {
            assert!(
                Instant::now() < deadline,
                "proxy run: {want}:\n{}",
                sidecar.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let binary = started.elapsed();
        println!(
            "update {n}: written in {written:?}, serving in {serving:?} (watcher), {binary:?} (proxy run, seen through its admin API)"
        );
        times.push(serving);
        binary_times.push(binary);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (what, mut times) in [("watcher", times), ("proxy run", binary_times)] {
        times.sort();
        println!(
            "ConfigMap update → new configuration serving ({what}), {} updates: min {:?}, median {:?}, max {:?}",
            times.len(),
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }

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
    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar.version().as_deref() != Some("ratings-api-13") {
        assert!(Instant::now() < deadline, "proxy run:\n{}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let log = sidecar.log();
    assert!(
        log.contains("following configmap") && log.contains("configuration refused"),
        "{log}"
    );
    drop(sidecar);
    // Relabelled pod: the default scope of the API's copy.
    std::fs::write(&labels, "app=\"reviews\"\n").unwrap();
    until("the default scope serves", Duration::from_secs(10), || {
        (version().as_deref() == Some("default-api-13")).then_some(())
    })
    .await;
}

/// No cluster needed: `proxy run` whose API server does not answer serves the mounted copy,
/// says why, follows the mount's changes, and reports `rustmesh_config_api_live 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_falls_back_to_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount).unwrap();
    let write_mount = |n: &str| {
        std::fs::write(mount.join("scopes.json"), INDEX).unwrap();
        for (k, v) in configmap("x", n).binary_data.unwrap() {
            let tmp = mount.join(format!("{k}.tmp"));
            std::fs::write(&tmp, v.0).unwrap();
            std::fs::rename(&tmp, mount.join(k)).unwrap();
        }
    };
    write_mount("mount-0");
    let labels = dir.path().join("labels");
    std::fs::write(&labels, "app=\"ratings\"\n").unwrap();
    // An API server address nothing listens on.
    let closed = free_port();
    let kc_path = dir.path().join("kubeconfig");
    std::fs::write(
        &kc_path,
        json!({"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": format!("https://127.0.0.1:{closed}"), "insecure-skip-tls-verify": true}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c"})
        .to_string(),
    )
    .unwrap();
    let log = dir.path().join("sidecar.log");
    let (admin_port, prometheus) = (free_port(), free_port());
    let sidecar = Sidecar {
        child: std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["run", "--config-dir"])
            .arg(&mount)
            .arg("--pod-labels")
            .arg(&labels)
            .args(["--outbound-port", &free_port().to_string()])
            .args(["--inbound-port", &free_port().to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--health-port", &free_port().to_string()])
            .args(["--prometheus-port", &prometheus.to_string()])
            .args(["--dns-port", "0"])
            .args(["--status-port", "0"])
            .env("KUBECONFIG", &kc_path)
            .env("PROXY_CONFIGMAP", CM)
            .env("POD_NAMESPACE", "shop")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        admin: admin_port,
        prometheus,
        log,
    };
    let wait = |want: &'static str| {
        let sidecar = &sidecar;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while sidecar.version().as_deref() != Some(want) {
                assert!(
                    Instant::now() < deadline,
                    "{want}: serving {:?}\n{}",
                    sidecar.version(),
                    sidecar.log()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait("ratings-mount-0").await;
    // The failure is logged once with what was tried.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sidecar
        .log()
        .contains("Kubernetes API, watch configmap shop/rustmesh-proxy-config")
    {
        assert!(Instant::now() < deadline, "{}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sidecar.log().contains("following the mounted copy"));
    write_mount("mount-1");
    wait("ratings-mount-1").await;
    let metrics_text = http_get(sidecar.prometheus, "/stats/prometheus").unwrap();
    assert!(
        metrics_text.contains("rustmesh_config_api_live 0"),
        "{metrics_text}"
    );
}
