//! `rustmesh-testkit` (dev-only, never published): the harness of the integration tests that
//! need a real Kubernetes API server (`operator/tests/rbac_cluster.rs`,
//! `proxy/tests/config_api.rs`), and the private PKI of the tests that need real certificates
//! ([`pki::TestCa`]).
//!
//! - The cluster is the local e2e cluster (`e2e/local-cluster up`): its admin kubeconfig
//!   [`ADMIN_KUBECONFIG`], or the file `$RUSTMESH_KUBECONFIG` names ([`kubeconfig_path`]).
//! - [`cluster_or_skip`] connects as that admin. With no reachable cluster the test prints why
//!   and passes (so `cargo test` works anywhere), unless `RUSTMESH_E2E=1`: then it fails.
//! - [`in_namespace`] runs the test's body in a throwaway namespace of its own and deletes the
//!   namespace afterwards, also when the body panics (the panic then goes on).
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn my_test() {
//!     let Some(admin) = rustmesh_testkit::cluster_or_skip().await else { return };
//!     rustmesh_testkit::in_namespace(&admin, "mytest", body).await;
//! }
//! async fn body(admin: kube::Client, ns: &str) { /* ... */ }
//! ```
#![forbid(unsafe_code)]

pub mod pki;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// The local e2e cluster's admin kubeconfig (see `e2e/README.md`).
pub const ADMIN_KUBECONFIG: &str = "/var/lib/rustmesh-e2e/kubeconfig/admin.kubeconfig";

/// The kubeconfig the tests use: `$RUSTMESH_KUBECONFIG`, else [`ADMIN_KUBECONFIG`].
pub fn kubeconfig_path() -> String {
    std::env::var("RUSTMESH_KUBECONFIG").unwrap_or_else(|_| ADMIN_KUBECONFIG.into())
}

/// The client configuration of [`kubeconfig_path`] (its current context).
pub async fn config() -> Result<Config, String> {
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path).map_err(|e| format!("{path}: {e}"))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{path}: {e}"))
}

/// A client of the cluster that has answered (its version, within 5 s), or why there is none.
pub async fn admin_client() -> Result<Client, String> {
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

/// The admin client; `None` (after printing why) when there is no cluster, which is a failure
/// (a panic) when `RUSTMESH_E2E=1`.
pub async fn cluster_or_skip() -> Option<Client> {
    match admin_client().await {
        Ok(client) => Some(client),
        Err(reason) => {
            assert!(
                std::env::var("RUSTMESH_E2E").as_deref() != Ok("1"),
                "RUSTMESH_E2E=1 but no cluster: {reason}"
            );
            eprintln!(
                "skipping: no Kubernetes cluster ({reason}); RUSTMESH_E2E=1 makes this a failure"
            );
            None
        }
    }
}

/// A namespace name not used before: `rustmesh-<prefix>-<pid>-<nanos>`.
pub fn unique_namespace(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    format!("rustmesh-{prefix}-{}-{nanos:x}", std::process::id())
}

/// Creates a namespace ([`unique_namespace`]), runs `body` with the admin client and its name,
/// then deletes it, whether `body` returned or panicked (the panic is resumed after).
pub async fn in_namespace(admin: &Client, prefix: &str, body: impl AsyncFnOnce(Client, &str)) {
    let ns = unique_namespace(prefix);
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
                .expect("a namespace object"),
        )
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    let result = AssertUnwindSafe(body(admin.clone(), &ns))
        .catch_unwind()
        .await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
