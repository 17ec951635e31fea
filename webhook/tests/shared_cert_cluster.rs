//! Two webhook replicas against a real API server (issue 17, item 5): they converge on one
//! serving certificate (the Secret `<service>-tls` of their namespace), the caBundle of the
//! Mutating- and ValidatingWebhookConfiguration is patched to its CA and then left alone (before,
//! each replica made its own CA and patched the bundle in turn: 153 patches in 10 s), a reset
//! bundle (a `helm upgrade`) is patched back once, and a deleted Secret is made again by one
//! replica and followed by both.
//!
//! Needs a cluster (`rustmesh_testkit::cluster_or_skip`: skipped without one unless
//! `RUSTMESH_E2E=1`). The webhook configurations it creates are cluster-scoped, named after the
//! test's namespace, and select no object (an object label nobody sets, `failurePolicy: Ignore`),
//! so running it against a shared cluster disturbs nothing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustmesh_webhook::shared_cert::SharedCert;
use rustmesh_webhook::{Args, Webhook};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_certificate_and_stop_patching() {
    let Some(admin) = rustmesh_testkit::cluster_or_skip().await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustmesh_testkit::in_namespace(&admin, "whtls", body).await;
}

fn webhook_entry(
    name: &str,
    ns: &str,
    path: &str,
    resources: serde_json::Value,
) -> serde_json::Value {
    json!({
        "name": name,
        "clientConfig": {"service": {"name": "rustmesh-webhook", "namespace": ns, "path": path, "port": 443}},
        "rules": [resources],
        "objectSelector": {"matchLabels": {"rustmesh.io/test-never-selected": "true"}},
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "timeoutSeconds": 5,
    })
}

fn settings_file(ns: &str) -> String {
    let path = std::env::temp_dir().join(format!("rustmesh-webhook-{ns}.yaml"));
    std::fs::write(
        &path,
        "image: registry.local/rustmesh/proxy:test\nnativeSidecars: \"false\"\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

async fn replica(admin: &Client, ns: &str, config: &str, settings: &str) -> Webhook {
    let args = Args::try_parse_from([
        "webhook",
        "--listen",
        "127.0.0.1:0",
        "--namespace",
        ns,
        "--service",
        "rustmesh-webhook",
        "--settings-file",
        settings,
        "--webhook-config",
        config,
        "--validating-webhook-config",
        config,
    ])
    .unwrap();
    Webhook::start_with_client(args, Some(admin.clone()))
        .await
        .expect("replica starts")
}

async fn wait_ready(replicas: &[&Webhook], within: Duration) {
    let start = Instant::now();
    loop {
        let problems: Vec<Option<String>> =
            replicas.iter().map(|w| w.state.ready.problem()).collect();
        if problems.iter().all(Option::is_none) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "replicas not ready after {within:?}: {problems:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn writes(w: &Webhook) -> (usize, usize) {
    let c = w.cert_writes.as_ref().expect("shared certificate mode");
    (
        c.bundle_patches.load(Ordering::Relaxed),
        c.secret_writes.load(Ordering::Relaxed),
    )
}

/// The bundles of both configurations, and their resourceVersions.
async fn bundles(admin: &Client, name: &str) -> (Vec<Option<Vec<u8>>>, Vec<String>) {
    let m: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let v: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    let m = m.get(name).await.unwrap();
    let v = v.get(name).await.unwrap();
    let mut out: Vec<Option<Vec<u8>>> = m
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.clone().map(|b| b.0))
        .collect();
    out.extend(
        v.webhooks
            .iter()
            .flatten()
            .map(|w| w.client_config.ca_bundle.clone().map(|b| b.0)),
    );
    let versions = vec![
        m.metadata.resource_version.unwrap_or_default(),
        v.metadata.resource_version.unwrap_or_default(),
    ];
    (out, versions)
}

async fn shared_secret(admin: &Client, ns: &str) -> (SharedCert, String) {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let s = secrets.get("rustmesh-webhook-tls").await.unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    let cert = SharedCert::parse(s.data.as_ref().unwrap_or(&BTreeMap::new())).unwrap();
    (cert, s.metadata.resource_version.unwrap_or_default())
}

/// Both replicas serve the Secret's certificate and every bundle is its CA.
async fn assert_converged(admin: &Client, ns: &str, name: &str, a: &Webhook, b: &Webhook) {
    let (cert, _) = shared_secret(admin, ns).await;
    let leaf = cert.certified.cert[0].as_ref().to_vec();
    assert_eq!(
        a.served_chain()[0],
        leaf,
        "replica a serves the Secret's certificate"
    );
    assert_eq!(
        b.served_chain()[0],
        leaf,
        "replica b serves the Secret's certificate"
    );
    let (bundles, _) = bundles(admin, name).await;
    assert_eq!(bundles.len(), 3);
    for bundle in bundles {
        assert_eq!(bundle.as_deref(), Some(cert.ca_pem.as_bytes()));
    }
}

async fn body(admin: Client, ns: &str) {
    let name = ns.to_owned();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    let pods = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]});
    let istio = json!({"operations": ["CREATE", "UPDATE"], "apiGroups": ["networking.istio.io"], "apiVersions": ["*"], "resources": ["virtualservices"]});
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [
            webhook_entry("a.test.rustmesh.io", ns, "/inject", pods.clone()),
            webhook_entry("b.test.rustmesh.io", ns, "/inject", pods),
        ],
    }))
    .unwrap();
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [webhook_entry("v.test.rustmesh.io", ns, "/validate", istio)],
    }))
    .unwrap();
    mutating.create(&PostParams::default(), &mwc).await.unwrap();
    validating
        .create(&PostParams::default(), &vwc)
        .await
        .unwrap();
    let settings = settings_file(ns);

    // Two replicas starting together.
    let (a, b) = tokio::join!(
        replica(&admin, ns, &name, &settings),
        replica(&admin, ns, &name, &settings)
    );
    wait_ready(&[&a, &b], Duration::from_secs(30)).await;
    assert_converged(&admin, ns, &name, &a, &b).await;
    let (_, secret_version) = shared_secret(&admin, ns).await;
    assert_eq!(
        writes(&a).1 + writes(&b).1,
        1,
        "one replica created the Secret, the other read it"
    );

    // Quiet: nobody writes the configurations or the Secret any more.
    let (_, versions) = bundles(&admin, &name).await;
    let before = (writes(&a), writes(&b));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, versions_after) = bundles(&admin, &name).await;
    assert_eq!(
        versions, versions_after,
        "the configurations are not written again"
    );
    assert_eq!(
        shared_secret(&admin, ns).await.1,
        secret_version,
        "the Secret is not rewritten"
    );
    assert_eq!(before, (writes(&a), writes(&b)), "no more patches");
    let patches = writes(&a).0 + writes(&b).0;
    assert!(
        (2..=4).contains(&patches),
        "one patch per configuration (both replicas may write the same value once): {patches}"
    );

    // A `helm upgrade` resets the mutating bundle: patched back (once), then quiet again.
    let reset = json!({"webhooks": [
        webhook_entry("a.test.rustmesh.io", ns, "/inject", json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]})),
        webhook_entry("b.test.rustmesh.io", ns, "/inject", json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]})),
    ]});
    mutating
        .patch(&name, &PatchParams::default(), &Patch::Merge(&reset))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let (bundles, _) = bundles(&admin, &name).await;
        if bundles.iter().all(Option::is_some) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "bundle not restored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ready(&[&a, &b], Duration::from_secs(20)).await;
    assert_converged(&admin, ns, &name, &a, &b).await;
    let (_, versions) = bundles(&admin, &name).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        versions,
        bundles(&admin, &name).await.1,
        "quiet after the reset"
    );

    // The Secret deleted (how an operator forces a new certificate): made again once, both
    // replicas follow it and every bundle trusts it.
    let (old, _) = shared_secret(&admin, ns).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let secret_writes = writes(&a).1 + writes(&b).1;
    secrets
        .delete("rustmesh-webhook-tls", &DeleteParams::default())
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        if let Ok(s) = secrets.get("rustmesh-webhook-tls").await {
            let new = SharedCert::parse(s.data.as_ref().unwrap()).unwrap();
            if new != old
                && a.served_chain()[0] == new.certified.cert[0].as_ref()
                && b.served_chain()[0] == new.certified.cert[0].as_ref()
            {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no new shared certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ready(&[&a, &b], Duration::from_secs(20)).await;
    assert_converged(&admin, ns, &name, &a, &b).await;
    assert_eq!(
        writes(&a).1 + writes(&b).1,
        secret_writes + 1,
        "made again once"
    );
    let (new, _) = shared_secret(&admin, ns).await;
    assert!(
        new.ca_pem.contains(old.ca_pem.lines().nth(1).unwrap()),
        "the new bundle still trusts the certificate it replaces"
    );

    // A Secret made unusable (a bad key): replaced by exactly one replica (a patch guarded by
    // the resourceVersion both saw; the other's fails with 409 and it follows the winner).
    let secret_writes = writes(&a).1 + writes(&b).1;
    let (before, _) = shared_secret(&admin, ns).await;
    secrets
        .patch(
            "rustmesh-webhook-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"tls.key": "anVuaw=="}})),
        )
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        if let Ok(s) = secrets.get("rustmesh-webhook-tls").await
            && let Ok(new) = SharedCert::parse(s.data.as_ref().unwrap())
            && new != before
            && a.served_chain()[0] == new.certified.cert[0].as_ref()
            && b.served_chain()[0] == new.certified.cert[0].as_ref()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the broken Secret is not replaced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ready(&[&a, &b], Duration::from_secs(20)).await;
    assert_converged(&admin, ns, &name, &a, &b).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        writes(&a).1 + writes(&b).1,
        secret_writes + 1,
        "replaced once"
    );

    a.shutdown().await;
    b.shutdown().await;
    let _ = mutating.delete(&name, &DeleteParams::default()).await;
    let _ = validating.delete(&name, &DeleteParams::default()).await;
    let _ = std::fs::remove_file(settings);
}
