//! The install manifests' operator rules, enforced by a real API server (the local e2e cluster:
//! `/var/lib/rustmesh-e2e/kubeconfig/admin.kubeconfig`, or `$RUSTMESH_KUBECONFIG`).
//!
//! In a namespace of its own (created and deleted here) the test gives a service account the
//! rules of the ClusterRole `rustmesh-operator` from `manifests/kustomize/base/operator.yaml`
//! (as a Role: the escalation check looks at what the writer holds in the namespace, so this is
//! the same check), then does what the controller does, as that service account, with the
//! operator's field manager: server-side apply of the ConfigMap, the reader Role and the reader
//! RoleBinding (created, then updated), and the named list the watch makes. It checks that the
//! API server refuses the rest: deleting the ConfigMap, listing ConfigMaps without naming it,
//! writing another Role by name, and a reader Role granting more than the operator holds (RBAC's
//! escalation check: the operator has no `escalate` or `bind`).
//!
//! Without a reachable cluster the test prints why and passes; with `RUSTMESH_E2E=1` that is a
//! failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustmesh_operator::configmap::{READER_ROLE, reader_role, reader_role_binding};
use rustmesh_xds::well_known::{OPERATOR_FIELD_MANAGER, PROXY_CONFIGMAP};
use serde::Deserialize;
use serde_json::json;

fn operator_rules() -> Vec<PolicyRule> {
    let text = include_str!("../../manifests/kustomize/base/operator.yaml");
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_json::to_value(serde_norway::Value::deserialize(d).unwrap()).unwrap())
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "rustmesh-operator")
        .map(|d| serde_json::from_value::<ClusterRole>(d).unwrap())
        .expect("ClusterRole rustmesh-operator in the kustomize base")
        .rules
        .unwrap()
}

fn forbidden<T>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_rules_let_the_operator_write_the_reader_rbac_and_nothing_more() {
    let Some(admin) = rustmesh_testkit::cluster_or_skip().await else {
        return;
    };
    rustmesh_testkit::in_namespace(&admin, "oprbac", body).await;
}

async fn body(admin: Client, ns: &str) {
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    sas.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "operator"}})).unwrap(),
    )
    .await
    .unwrap();
    let role = Role {
        metadata: kube::core::ObjectMeta {
            name: Some("operator-rules".into()),
            ..Default::default()
        },
        rules: Some(operator_rules()),
    };
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&pp, &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "operator-rules"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator-rules"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&pp, &binding)
        .await
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let sa = sas.get("operator").await.unwrap();
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
    let op = Client::try_from(sa_config).unwrap();

    let apply = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let cms: Api<ConfigMap> = Api::namespaced(op.clone(), ns);
    let roles: Api<Role> = Api::namespaced(op.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(op.clone(), ns);
    for round in ["create", "update"] {
        let cm = ConfigMap {
            metadata: kube::core::ObjectMeta {
                name: Some(PROXY_CONFIGMAP.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("round".to_string(), round.to_string())])),
            ..Default::default()
        };
        cms.patch(PROXY_CONFIGMAP, &apply, &Patch::Apply(&cm))
            .await
            .unwrap_or_else(|e| panic!("{round} the ConfigMap: {e}"));
        roles
            .patch(READER_ROLE, &apply, &Patch::Apply(reader_role(ns)))
            .await
            .unwrap_or_else(|e| panic!("{round} the reader Role: {e}"));
        bindings
            .patch(READER_ROLE, &apply, &Patch::Apply(reader_role_binding(ns)))
            .await
            .unwrap_or_else(|e| panic!("{round} the reader RoleBinding: {e}"));
    }
    // The watch's list, by name.
    let named = ListParams::default().fields(&format!("metadata.name={PROXY_CONFIGMAP}"));
    assert_eq!(cms.list(&named).await.unwrap().items.len(), 1);

    // And nothing more.
    assert!(forbidden(cms.list(&ListParams::default()).await));
    assert!(forbidden(
        cms.delete(PROXY_CONFIGMAP, &DeleteParams::default()).await
    ));
    assert!(forbidden(
        roles.delete(READER_ROLE, &DeleteParams::default()).await
    ));
    let mut other = reader_role(ns);
    other.metadata.name = Some("something-else".into());
    assert!(forbidden(
        roles
            .patch("something-else", &apply, &Patch::Apply(&other))
            .await
    ));
    let mut wider = reader_role(ns);
    wider.rules.as_mut().unwrap().push(PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        // The operator may get one Secret by name (credentialName), never list them.
        verbs: vec!["list".into()],
        ..Default::default()
    });
    let refused = roles
        .patch(READER_ROLE, &apply, &Patch::Apply(&wider))
        .await;
    assert!(
        forbidden(refused),
        "a Role granting more than the operator holds"
    );
    let live = Api::<Role>::namespaced(admin, ns)
        .get(READER_ROLE)
        .await
        .unwrap();
    assert_eq!(live.rules, reader_role(ns).rules);
}
