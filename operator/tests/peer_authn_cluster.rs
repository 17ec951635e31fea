//! PeerAuthentication through a real API server and the real operator (the local e2e cluster:
//! `/var/lib/rustmesh-e2e/kubeconfig/admin.kubeconfig`, or `$RUSTMESH_KUBECONFIG`).
//!
//! The test installs the CRDs of `crds/` (server-side apply; the PeerAuthentication one is
//! new), starts the operator binary against the cluster (no leader election, no CA, a root
//! namespace of its own), labels a namespace of its own for injection and creates a STRICT
//! namespace-wide PeerAuthentication (`security.istio.io/v1`): the namespace's proxy ConfigMap
//! comes to carry it as the scope's `peerAuthentication.namespace`. A policy Istio's validation
//! refuses (`portLevelMtls` without a selector), created as `v1beta1`, gets `Accepted=False`
//! naming `spec.portLevelMtls` and stays out of the ConfigMap.
//!
//! The operator renders every injected namespace of the cluster: when another rustmesh operator
//! is installed and not scaled to zero (an e2e run) the two would write the same ConfigMaps, so
//! the test then prints why and passes without running. Without a reachable cluster it prints why and passes; with
//! `RUSTMESH_E2E=1` that is a failure.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::core::ObjectMeta;
use kube::{Api, Client, ResourceExt};
use rustmesh_api::peer_authentication::{MtlsMode, MutualTls};
use rustmesh_api::{PeerAuthentication, PeerAuthenticationSpec};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::well_known::PROXY_CONFIGMAP;
use serde_json::json;

/// How long the operator may take to react (the poll ends as soon as it has).
const PATIENCE: Duration = Duration::from_secs(90);

/// The operator process, killed when the test ends (or panics).
struct Operator(Child, String);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_authentication_reaches_the_proxy_configmap_and_a_bad_one_its_status() {
    let Some(admin) = rustmesh_testkit::cluster_or_skip().await else {
        return;
    };
    let installed: Vec<String> = Api::<Deployment>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("list Deployments")
        .items
        .into_iter()
        .filter(|d| {
            d.name_any().starts_with("rustmesh-operator")
                && d.spec.as_ref().and_then(|s| s.replicas) != Some(0)
        })
        .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
        .collect();
    if !installed.is_empty() {
        eprintln!(
            "skipping: a rustmesh operator is installed ({installed:?}); a second one would \
             write the same ConfigMaps"
        );
        return;
    }
    install_crds(&admin).await;
    rustmesh_testkit::in_namespace(&admin, "pa", body).await;
}

/// Server-side applies every CRD of `crds/` and waits until PeerAuthentication's is served.
async fn install_crds(admin: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let pp = PatchParams::apply("rustmesh-operator-tests").force();
    for (_, crd) in rustmesh_api::crd::all() {
        crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {}: {e}", crd.name_any()));
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let crd = crds
            .get("peerauthentications.security.istio.io")
            .await
            .unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "the CRD is not Established");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_operator(ns: &str) -> Operator {
    let log = std::env::temp_dir().join(format!("{ns}-operator.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_operator"))
        .env("KUBECONFIG", rustmesh_testkit::kubeconfig_path())
        .env("RUST_LOG", "info")
        .args([
            "--no-leader-election",
            "--enable-ca-server=false",
            "--metrics-addr=127.0.0.1:0",
            "--debounce-ms=50",
            "--debounce-max-ms=200",
        ])
        .arg(format!("--root-namespace={ns}-root"))
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start the operator");
    Operator(child, log.display().to_string())
}

/// The namespace scope's configuration in the live ConfigMap, if there is one yet.
async fn live_config(cms: &Api<ConfigMap>) -> Option<ProxyConfig> {
    let cm = cms.get_opt(PROXY_CONFIGMAP).await.ok()??;
    let get = |k: &str| -> Option<&[u8]> {
        cm.binary_data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
            .or_else(|| cm.data.as_ref()?.get(k).map(|s| s.as_bytes()))
    };
    rustmesh_xds::configmap::read_scope(get, rustmesh_xds::scope::DEFAULT_SCOPE_KEY).ok()
}

async fn body(admin: Client, ns: &str) {
    let operator = start_operator(ns);
    let log = operator.1.clone();
    Api::<Namespace>::all(admin.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
        )
        .await
        .unwrap();

    let policies: Api<PeerAuthentication> = Api::namespaced(admin.clone(), ns);
    let strict = PeerAuthentication {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..ObjectMeta::default()
        },
        spec: PeerAuthenticationSpec {
            mtls: Some(MutualTls {
                mode: Some(MtlsMode::Strict),
            }),
            ..PeerAuthenticationSpec::default()
        },
        status: None,
    };
    policies
        .create(&Default::default(), &strict)
        .await
        .expect("the API server accepts a STRICT PeerAuthentication");

    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    let deadline = Instant::now() + PATIENCE;
    let served = loop {
        if let Some(p) = live_config(&cms)
            .await
            .and_then(|c| c.peer_authentication)
            .filter(|p| p.namespace.is_some())
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no peerAuthentication in {ns}/{PROXY_CONFIGMAP} (operator log: {log})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let wide = served.namespace.as_ref().unwrap();
    assert_eq!(wide.name, format!("{ns}/default"));
    assert_eq!(wide.mode, MtlsMode::Strict);
    assert_eq!((served.mesh.as_ref(), served.workload.len()), (None, 0));

    // Refused by Istio's validation, not by the schema: created as v1beta1 (still served).
    let gvk = GroupVersionKind::gvk("security.istio.io", "v1beta1", "PeerAuthentication");
    let v1beta1: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "peerauthentications"),
    );
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "ports-without-selector", "namespace": ns},
        "spec": {"mtls": {"mode": "PERMISSIVE"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}},
    }))
    .unwrap();
    v1beta1
        .create(&Default::default(), &bad)
        .await
        .expect("the schema lets it through");
    let deadline = Instant::now() + PATIENCE;
    let condition = loop {
        let status = policies
            .get("ports-without-selector")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if let Some(c) = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted")
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no Accepted condition on the invalid policy (operator log: {log})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(condition.status, "False", "{condition:?}");
    assert_eq!(condition.reason.as_deref(), Some("Invalid"));
    let message = condition.message.unwrap_or_default();
    assert!(
        message.starts_with(
            "spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"
        ),
        "{message}"
    );
    // The good one is Accepted, and the ConfigMap still serves only it.
    let good = policies
        .get("default")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(
        good.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True"),
        "{good:?}"
    );
    let now = live_config(&cms)
        .await
        .unwrap()
        .peer_authentication
        .unwrap();
    assert_eq!(now, served);
    drop(operator);
}
