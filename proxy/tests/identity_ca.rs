//! The sidecar's identity client against the mesh CA the operator runs (its real gRPC+TLS
//! server, `rustmesh_operator::ca`), on loopback.
//!
//! Without a cluster, the CA authenticates a fixed token (the one stand-in: the TokenReview
//! step). With the local cluster (`testkit`), the whole chain is real: a token minted by the
//! API server for a service account, reviewed by the API server, and the certificate the
//! sidecar installs names exactly that service account.

mod ca_common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ca_common::{TD, Tokens, authority, eventually, files, start_ca};
use rustmesh_operator::ca::review::Reviewer;
use rustmesh_proxy::drain;
use rustmesh_proxy::identity::ca_client::{CaClient, FetchError};
use rustmesh_proxy::identity::cert::verify_chain;
use rustmesh_proxy::identity::{Store, manager};
use rustmesh_xds::identity::SpiffeId;

fn who() -> SpiffeId {
    ca_common::id("bookinfo", "reviews")
}

/// The CA vouches for the token `the-token` as `id`.
fn fixed_token(id: SpiffeId) -> Tokens {
    Tokens::one("the-token", id)
}

#[tokio::test]
async fn a_sidecar_gets_a_certificate_for_exactly_its_identity() {
    let authority = authority();
    let (addr, _stop) = start_ca(authority.clone(), fixed_token(who()), "127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), "the-token\n", authority.root_bundle());
    let client = ca_common::client(addr, dir.path(), Duration::from_secs(3600));
    let cert = client.fetch(&who()).await.unwrap();
    assert_eq!(cert.identity, who());
    assert_eq!(cert.chain.len(), 1, "the root is not sent to peers");
    assert_eq!(cert.roots.len(), 1);
    verify_chain(&cert.chain, &cert.roots, SystemTime::now()).unwrap();
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert_eq!(
        life,
        Duration::from_secs(3600 + 60),
        "asked lifetime plus clock skew"
    );
    assert!(
        !format!("{cert:?}").contains("PRIVATE"),
        "Debug never shows the key"
    );

    // Another workload asking with this token still gets nothing for its own name.
    let other = SpiffeId::new(TD, "bookinfo", "admin").unwrap();
    match client.fetch(&other).await {
        Err(FetchError::Refused { code, message }) => {
            assert_eq!(code, tonic::Code::InvalidArgument);
            assert!(message.contains("sa/admin"), "{message}");
        }
        other => panic!("not refused: {other:?}"),
    }
    // A wrong token: refused as unauthenticated.
    files(dir.path(), "stolen", authority.root_bundle());
    assert!(matches!(
        client.fetch(&who()).await,
        Err(FetchError::Refused {
            code: tonic::Code::Unauthenticated,
            ..
        })
    ));
    // A CA whose certificate is not from the mesh root is not trusted.
    files(
        dir.path(),
        "the-token",
        ca_common::authority().root_bundle(),
    );
    assert!(matches!(
        client.fetch(&who()).await,
        Err(FetchError::Connect { .. })
    ));
    // A missing token file is named.
    std::fs::remove_file(dir.path().join("token")).unwrap();
    let err = client.fetch(&who()).await.unwrap_err().to_string();
    assert!(
        err.contains(&dir.path().join("token").display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn the_ca_is_found_through_the_mesh_name_table_where_the_cluster_has_no_dns() {
    let authority = authority();
    let (addr, _stop) = start_ca(authority.clone(), fixed_token(who()), "127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), "the-token", authority.root_bundle());
    // Istio's CA_ADDR; the name resolves nowhere but in the mesh's own table.
    let ca_addr = format!("istiod.istio-system.svc:{}", addr.port());
    let client = |resolver: Option<rustmesh_proxy::identity::ca_client::Resolver>| {
        let c = CaClient::new(
            &ca_addr,
            dir.path().join("token"),
            dir.path().join("root-cert.pem"),
            Duration::from_secs(3600),
        )
        .unwrap();
        match resolver {
            Some(r) => c.with_resolver(r),
            None => c,
        }
    };
    let err = client(None).fetch(&who()).await.unwrap_err().to_string();
    assert!(
        err.contains("neither in the mesh's name table nor resolvable"),
        "{err}"
    );
    let table = Arc::new(|host: &str| {
        (host == "istiod.istio-system.svc").then_some(std::net::IpAddr::from([127, 0, 0, 1]))
    });
    // Found by name; the TLS name checked is still the host name, not the address.
    let cert = client(Some(table)).fetch(&who()).await.unwrap();
    assert_eq!(cert.identity, who());
}

#[tokio::test]
async fn renewal_survives_a_ca_outage_and_an_expired_certificate_is_not_served() {
    let authority = authority();
    let (addr, stop) = start_ca(authority.clone(), fixed_token(who()), "127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), "the-token", authority.root_bundle());
    // Short-lived certificates so renewal and expiry happen within the test.
    let client = ca_common::client(addr, dir.path(), Duration::from_secs(4));
    let store = Arc::new(Store::default());
    let (signal, watch) = drain::channel();
    let running = tokio::spawn(manager::run(client, who(), store.clone(), watch));

    eventually("a first certificate", || store.ready()).await;
    let first = store.current().unwrap();
    eventually("a renewal", || store.generation() >= 2).await;
    let renewed = store.current().unwrap();
    assert_ne!(renewed.serial, first.serial);

    // The CA goes down: fetches fail, the current certificate keeps serving while valid.
    let _ = stop.send(());
    eventually("a failed renewal", || store.failures() >= 1).await;
    let held = store.current().unwrap();
    assert_eq!(store.ready(), held.is_valid_at(SystemTime::now()));
    // Past its expiry the sidecar is not ready (no expired certificate is presented).
    eventually("expiry", || SystemTime::now() > held.not_after).await;
    assert!(!store.ready());

    // The CA comes back on the same address: the sidecar recovers by itself.
    let (_, _stop) = start_ca(authority, fixed_token(who()), &addr.to_string()).await;
    eventually("recovery", || store.ready()).await;
    signal.close();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_api_server_a_real_token_gets_its_service_accounts_identity() {
    let Some(admin) = rustmesh_testkit::cluster_or_skip().await else {
        return;
    };
    rustmesh_testkit::in_namespace(&admin, "idca", async |admin, ns| {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        use kube::api::{Api, PostParams};
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "reviews"}})).unwrap(),
        )
        .await
        .unwrap();
        let token = sas
            .create_token_request(
                "reviews",
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec!["istio-ca".into()],
                        expiration_seconds: Some(600),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        let authority = authority();
        let (addr, _stop) = start_ca(
            authority.clone(),
            Reviewer::new(admin.clone(), TD),
            "127.0.0.1:0",
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        files(dir.path(), &token, authority.root_bundle());
        let client = ca_common::client(addr, dir.path(), Duration::from_secs(3600));
        let me = SpiffeId::new(TD, ns, "reviews").unwrap();
        let cert = client.fetch(&me).await.unwrap();
        assert_eq!(cert.identity, me);
        // The same token cannot get the default service account's identity.
        let default = SpiffeId::new(TD, ns, "default").unwrap();
        assert!(matches!(
            client.fetch(&default).await,
            Err(FetchError::Refused {
                code: tonic::Code::InvalidArgument,
                ..
            })
        ));
    })
    .await;
}
