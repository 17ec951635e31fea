//! The mesh CA the operator runs (`rustmesh_operator::ca`), started on loopback for the
//! sidecar's identity tests, and the files a sidecar reads (token, root).
//!
//! Without a cluster the CA authenticates tokens from a fixed table (the one stand-in: the
//! TokenReview step) and reads `credentialName` Secrets from another ([`Secrets`], standing in
//! for the API server's Secrets and SubjectAccessReview); everything else is the real CA
//! server, gRPC and TLS.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustmesh_operator::ca::authority::{Authority, Material};
use rustmesh_operator::ca::review::AuthError;
use rustmesh_operator::ca::service::{Authenticate, Ca, CaMetrics, CaServer};
use rustmesh_proxy::identity::WorkloadCert;
use rustmesh_proxy::identity::ca_client::CaClient;
use rustmesh_xds::identity::SpiffeId;

pub const TD: &str = "cluster.local";

/// Vouches for the tokens in its table.
pub struct Tokens(pub BTreeMap<String, SpiffeId>);

impl Tokens {
    pub fn one(token: &str, id: SpiffeId) -> Self {
        Tokens(BTreeMap::from([(token.to_string(), id)]))
    }
}

impl Authenticate for Tokens {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::Rejected("unknown token".into()))
    }
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

/// A fresh mesh root.
pub fn authority() -> Arc<Authority> {
    Arc::new(
        Authority::new(
            TD,
            &Material::self_signed_root(TD, SystemTime::now()).unwrap(),
        )
        .unwrap(),
    )
}

/// Starts the CA on `addr` (port 0: any); returns its address and a stopper.
pub async fn start_ca<A: Authenticate>(
    authority: Arc<Authority>,
    auth: A,
    addr: &str,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    serve(Ca::new(authority, auth, CaMetrics::default()), addr).await
}

/// Serves `ca` on `addr` (port 0: any); returns its address and a stopper.
pub async fn serve<A: Authenticate>(
    ca: Ca<A>,
    addr: &str,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let ca = Arc::new(ca);
    let names = [
        "localhost".to_string(),
        "istiod.istio-system.svc".to_string(),
    ];
    let server = CaServer::new(addr.parse().unwrap(), ca, &names)
        .await
        .unwrap();
    let bound = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (bound, stop)
}

/// Writes the token and root files a sidecar reads.
pub fn files(dir: &Path, token: &str, root: &str) {
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root).unwrap();
}

/// A client of the CA at `addr` reading its files from `dir`.
pub fn client(addr: std::net::SocketAddr, dir: &Path, ttl: Duration) -> CaClient {
    CaClient::new(
        &format!("localhost:{}", addr.port()),
        dir.join("token"),
        dir.join("root-cert.pem"),
        ttl,
    )
    .unwrap()
}

/// A workload certificate for `who`, issued by a CA with root `authority` through the real
/// request path (key and CSR made by the sidecar's client).
pub async fn issue(authority: &Arc<Authority>, who: &SpiffeId) -> WorkloadCert {
    let (addr, _stop) = start_ca(
        authority.clone(),
        Tokens::one("t", who.clone()),
        "127.0.0.1:0",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), "t", authority.root_bundle());
    client(addr, dir.path(), Duration::from_secs(3600))
        .fetch(who)
        .await
        .unwrap()
}

pub async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- credentialName: the Secrets the CA serves --------------------------------------------

/// Secrets of the cluster, as the CA reads them, and the accounts that may list them.
#[derive(Clone, Default)]
pub struct Secrets(Arc<std::sync::Mutex<(SecretTable, Vec<String>)>>);

/// Secret data by (namespace, name).
type SecretTable = BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>;

impl Secrets {
    pub fn put(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        self.0.lock().unwrap().0.insert(
            (ns.to_string(), name.to_string()),
            data.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        );
    }

    pub fn allow(&self, id: &rustmesh_xds::identity::SpiffeId) {
        self.0.lock().unwrap().1.push(id.to_string());
    }
}

type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl rustmesh_operator::ca::credential::SecretSource for Secrets {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<BTreeMap<String, Vec<u8>>>, String>> {
        let found = self
            .0
            .lock()
            .unwrap()
            .0
            .get(&(namespace.to_string(), name.to_string()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn may_list_secrets<'a>(
        &'a self,
        who: &'a rustmesh_xds::identity::SpiffeId,
    ) -> BoxFut<'a, Result<bool, String>> {
        let ok = self.0.lock().unwrap().1.contains(&who.to_string());
        Box::pin(async move { Ok(ok) })
    }
}
