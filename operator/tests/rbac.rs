//! operator/rbac.yaml grants what the controller does, and no write beyond it.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde::Deserialize;

fn documents() -> Vec<serde_json::Value> {
    let text = include_str!("../rbac.yaml");
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_json::to_value(serde_norway::Value::deserialize(d).unwrap()).unwrap())
        .collect()
}

fn allows(
    rules: &[PolicyRule],
    group: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
) -> bool {
    rules.iter().any(|r| {
        r.api_groups
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|g| g == group)
            && r.resources
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
            && match (&r.resource_names, name) {
                (None, _) => true,
                (Some(names), Some(n)) => names.iter().any(|x| x == n),
                (Some(_), None) => false,
            }
    })
}

#[test]
fn rbac_covers_the_controller_and_no_more() {
    let docs = documents();
    let cr: ClusterRole = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .unwrap();
    let rules = cr.rules.unwrap();
    for res in ["services", "endpoints", "pods", "namespaces"] {
        assert!(allows(&rules, "", res, "watch", None), "{res}");
        assert!(
            !allows(&rules, "", res, "patch", None),
            "{res} must stay read-only"
        );
    }
    for res in ["virtualservices", "destinationrules", "sidecars"] {
        assert!(allows(&rules, "networking.istio.io", res, "list", None));
        assert!(allows(
            &rules,
            "networking.istio.io",
            &format!("{res}/status"),
            "patch",
            None
        ));
        assert!(
            !allows(&rules, "networking.istio.io", res, "patch", None),
            "spec is not ours"
        );
    }
    let cm = rustmesh_xds::well_known::PROXY_CONFIGMAP;
    assert!(allows(&rules, "", "configmaps", "patch", Some(cm)));
    assert!(!allows(
        &rules,
        "",
        "configmaps",
        "patch",
        Some("kube-root-ca.crt")
    ));
    assert!(allows(&rules, "", "configmaps", "create", None));
    let reader = rustmesh_operator::configmap::READER_ROLE;
    assert!(allows(
        &rules,
        "rbac.authorization.k8s.io",
        "roles",
        "patch",
        Some(reader)
    ));
    assert!(allows(
        &rules,
        "rbac.authorization.k8s.io",
        "rolebindings",
        "patch",
        Some(reader)
    ));
    assert!(allows(&rules, "events.k8s.io", "events", "create", None));
    let role: Role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .unwrap();
    let lease_rules = role.rules.unwrap();
    assert!(allows(
        &lease_rules,
        "coordination.k8s.io",
        "leases",
        "update",
        Some("rustmesh-operator")
    ));
    assert!(allows(
        &lease_rules,
        "coordination.k8s.io",
        "leases",
        "create",
        None
    ));
}
