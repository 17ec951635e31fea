//! operator/rbac.yaml grants what the controller does, and no write beyond it.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde::Deserialize;

fn documents() -> Vec<serde_json::Value> {
    parse(include_str!("../rbac.yaml"))
}

fn parse(text: &str) -> Vec<serde_json::Value> {
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

/// What the controller does with the cluster-wide rules, and nothing more; `ca`: the mesh
/// CA's rules too (the install's default).
fn check_cluster_rules(rules: &[PolicyRule], ca: bool) {
    let rules = rules.to_vec();
    for res in ["services", "endpoints", "pods", "namespaces"] {
        assert!(allows(&rules, "", res, "watch", None), "{res}");
        assert!(
            !allows(&rules, "", res, "patch", None),
            "{res} must stay read-only"
        );
    }
    // EndpointSlices replace Endpoints where the API server serves them.
    assert!(allows(
        &rules,
        "discovery.k8s.io",
        "endpointslices",
        "watch",
        None
    ));
    assert!(!allows(
        &rules,
        "discovery.k8s.io",
        "endpointslices",
        "patch",
        None
    ));
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
    assert!(allows(
        &rules,
        "security.istio.io",
        "peerauthentications",
        "watch",
        None
    ));
    assert!(allows(
        &rules,
        "security.istio.io",
        "peerauthentications/status",
        "patch",
        None
    ));
    assert!(
        !allows(
            &rules,
            "security.istio.io",
            "peerauthentications",
            "patch",
            None
        ),
        "spec is not ours"
    );
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
    // The reader Role grants only what the operator holds (no bind/escalate): RBAC's
    // escalation check would refuse it otherwise.
    let reader = rustmesh_operator::configmap::reader_role("shop");
    for rule in reader.rules.unwrap() {
        for verb in &rule.verbs {
            for name in rule.resource_names.as_deref().unwrap() {
                assert!(
                    allows(&rules, "", "configmaps", verb, Some(name)),
                    "the operator cannot grant {verb} on configmap {name}"
                );
            }
        }
    }
    let cm = rustmesh_xds::well_known::PROXY_CONFIGMAP;
    let reader = rustmesh_operator::configmap::READER_ROLE;
    for verb in ["delete", "deletecollection", "bind", "escalate"] {
        for (group, res, name) in [
            ("", "configmaps", cm),
            ("rbac.authorization.k8s.io", "roles", reader),
            ("rbac.authorization.k8s.io", "rolebindings", reader),
        ] {
            assert!(
                !allows(&rules, group, res, verb, Some(name)),
                "{verb} {res}"
            );
        }
    }
    assert!(
        !allows(&rules, "", "configmaps", "list", None),
        "only the one ConfigMap"
    );
    // Secrets: with the CA, one by name for a credentialName (and a SubjectAccessReview of
    // the sidecar's own right first); never listed or watched, never written.
    assert_eq!(allows(&rules, "", "secrets", "get", None), ca);
    assert_eq!(
        allows(
            &rules,
            "authorization.k8s.io",
            "subjectaccessreviews",
            "create",
            None
        ),
        ca
    );
    assert_eq!(
        allows(
            &rules,
            "authentication.k8s.io",
            "tokenreviews",
            "create",
            None
        ),
        ca
    );
    for verb in ["list", "watch", "create", "update", "patch", "delete"] {
        assert!(!allows(&rules, "", "secrets", verb, None), "secrets {verb}");
    }
}

#[test]
fn rbac_covers_the_controller_and_no_more() {
    let docs = documents();
    let cr: ClusterRole = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .unwrap();
    check_cluster_rules(&cr.rules.unwrap(), false);
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

/// The install manifests (the kustomize base, generated from the Helm chart by
/// `manifests/check --update`) give the operator the same least privilege.
#[test]
fn install_manifests_grant_the_same() {
    let docs = parse(include_str!("../../manifests/kustomize/base/operator.yaml"));
    let cr: ClusterRole = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "rustmesh-operator")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .expect("ClusterRole rustmesh-operator in the kustomize base");
    check_cluster_rules(&cr.rules.unwrap(), true);
}
