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
    for res in [
        "virtualservices",
        "destinationrules",
        "sidecars",
        "serviceentries",
        "gateways",
    ] {
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
    for (resource, verb) in [
        ("authorizationpolicies", "watch"),
        ("authorizationpolicies/status", "patch"),
        ("requestauthentications", "watch"),
        ("requestauthentications/status", "patch"),
    ] {
        assert!(allows(&rules, "security.istio.io", resource, verb, None));
    }
    assert!(
        !allows(
            &rules,
            "security.istio.io",
            "authorizationpolicies",
            "patch",
            None
        ),
        "spec is not ours"
    );
    for (resource, verb) in [
        ("telemetries", "get"),
        ("telemetries", "list"),
        ("telemetries", "watch"),
        ("telemetries/status", "patch"),
    ] {
        assert!(
            allows(&rules, "telemetry.istio.io", resource, verb, None),
            "{verb} {resource}"
        );
    }
    assert!(
        !allows(&rules, "telemetry.istio.io", "telemetries", "patch", None),
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

fn install_docs(file: &str) -> Vec<serde_json::Value> {
    match file {
        "operator" => parse(include_str!("../../manifests/kustomize/base/operator.yaml")),
        "webhook" => parse(include_str!("../../manifests/kustomize/base/webhook.yaml")),
        _ => unreachable!(),
    }
}

fn find<T: serde::de::DeserializeOwned>(docs: &[serde_json::Value], kind: &str, name: &str) -> T {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .unwrap_or_else(|| panic!("{kind} {name} in the kustomize base"))
}

/// Every verb the install grants is one the code makes (issue 17 item 11: only the verbs
/// used). The operator's writes are server-side apply (`patch`, plus `create` when the object
/// is missing), the status subresource's apply, kube-runtime's Recorder (events.k8s.io/v1:
/// create, then patch of a series), `create` of reviews and of the CA's own Secret, and the
/// Lease election's get/create/replace; reads are watches (list, watch) and gets.
fn verbs_used(group: &str, resource: &str) -> &'static [&'static str] {
    match (group, resource) {
        ("", "services" | "endpoints" | "pods" | "namespaces") => &["get", "list", "watch"],
        ("discovery.k8s.io", "endpointslices") => &["get", "list", "watch"],
        (
            "networking.istio.io",
            "virtualservices" | "destinationrules" | "sidecars" | "serviceentries" | "gateways",
        ) => &["get", "list", "watch"],
        (
            "security.istio.io",
            "peerauthentications" | "authorizationpolicies" | "requestauthentications",
        ) => &["get", "list", "watch"],
        ("telemetry.istio.io", "telemetries") => &["get", "list", "watch"],
        ("networking.istio.io" | "security.istio.io" | "telemetry.istio.io", r)
            if r.ends_with("/status") =>
        {
            &["patch"]
        }
        // get/list/watch: the named watch, and what the reader Role grants (escalation check).
        ("", "configmaps") => &["get", "list", "watch", "patch", "create"],
        ("rbac.authorization.k8s.io", "roles" | "rolebindings") => &["patch", "create"],
        ("events.k8s.io", "events") => &["create", "patch"],
        ("authentication.k8s.io", "tokenreviews") => &["create"],
        ("authorization.k8s.io", "subjectaccessreviews") => &["create"],
        // credentialName by name anywhere; the CA's keys by name, and its self-signed root
        // created once, in the control-plane namespace.
        ("", "secrets") => &["get", "create"],
        ("coordination.k8s.io", "leases") => &["get", "create", "update"],
        _ => &[],
    }
}

fn assert_only_used_verbs(what: &str, rules: &[PolicyRule]) {
    for r in rules {
        for group in r.api_groups.as_deref().unwrap_or_default() {
            for res in r.resources.as_deref().unwrap_or_default() {
                for verb in &r.verbs {
                    assert!(
                        verbs_used(group, res).contains(&verb.as_str()),
                        "{what}: {verb} on {group}/{res} is granted but the operator never does it"
                    );
                }
            }
        }
    }
}

/// The install's ClusterRole and Role hold only verbs the operator uses; `create` (which
/// Kubernetes cannot limit by name) is granted on no kind it does not create, and Secrets are
/// created only in the control-plane namespace (the Role), never cluster-wide.
#[test]
fn install_grants_only_the_verbs_the_operator_uses() {
    let docs = install_docs("operator");
    let cr: ClusterRole = find(&docs, "ClusterRole", "rustmesh-operator");
    let role: Role = find(&docs, "Role", "rustmesh-operator");
    let cluster_rules = cr.rules.unwrap();
    assert_only_used_verbs("ClusterRole", &cluster_rules);
    assert_only_used_verbs("Role", &role.rules.unwrap());
    assert!(!allows(&cluster_rules, "", "secrets", "create", None));
    assert!(
        !allows(
            &cluster_rules,
            "coordination.k8s.io",
            "leases",
            "get",
            Some("rustmesh-operator")
        ),
        "leases: the namespaced Role only"
    );
    for (group, res) in [
        ("", "configmaps"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    ] {
        assert!(
            !allows(&cluster_rules, group, res, "update", Some("x")),
            "{res}: server-side apply needs patch, not update"
        );
    }
    // The legacy core Events API is not written (kube-runtime's Recorder uses events.k8s.io).
    assert!(!allows(&cluster_rules, "", "events", "create", None));
}

/// The install's Lease rules are exactly what the election does (leader.rs: get_opt, create,
/// replace of the Lease named by LEASE_NAME) and no wider than operator/rbac.yaml's: its own
/// Lease by name, create (not limitable by name), no list, watch, patch or delete.
#[test]
fn install_lease_rules_are_the_elections_and_as_narrow_as_rbac_yaml() {
    let docs = install_docs("operator");
    let role: Role = find(&docs, "Role", "rustmesh-operator");
    let rules = role.rules.unwrap();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "rustmesh-operator")
        .expect("the operator's Deployment");
    let lease = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "LEASE_NAME")
        .and_then(|e| e["value"].as_str())
        .expect("LEASE_NAME")
        .to_string();
    let g = "coordination.k8s.io";
    for verb in ["get", "update"] {
        assert!(allows(&rules, g, "leases", verb, Some(&lease)), "{verb}");
        assert!(
            !allows(&rules, g, "leases", verb, Some("someone-elses")),
            "{verb} of another Lease"
        );
    }
    assert!(allows(&rules, g, "leases", "create", None));
    for verb in ["list", "watch", "patch", "delete", "deletecollection"] {
        assert!(
            !allows(&rules, g, "leases", verb, Some(&lease)),
            "{verb} on leases"
        );
    }
    // No wider than operator/rbac.yaml's Lease Role (each install grant is one of its grants).
    let reference: Role = documents()
        .iter()
        .find(|d| d["kind"] == "Role")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .unwrap();
    let reference = reference.rules.unwrap();
    for r in rules.iter().filter(|r| {
        r.resources
            .as_deref()
            .unwrap_or_default()
            .contains(&"leases".to_string())
    }) {
        for verb in &r.verbs {
            match r.resource_names.as_deref() {
                None => assert!(allows(&reference, g, "leases", verb, None), "{verb}"),
                Some(names) => {
                    for n in names {
                        assert!(allows(&reference, g, "leases", verb, Some(n)), "{verb} {n}");
                    }
                }
            }
        }
    }
}

/// The webhook may touch its own Mutating- and ValidatingWebhookConfiguration (watched by name,
/// JSON-patched), read its own settings ConfigMap, and follow and patch its own serving
/// certificate's Secret (by name); nothing else, no update. `create` of Secrets (the shared
/// certificate's first write: create cannot be limited by name) and Events about its settings
/// (kube-runtime's Recorder: events.k8s.io create and patch) are allowed in its namespace's Role
/// only.
#[test]
fn install_webhook_rules_are_its_own_objects_by_name() {
    let docs = install_docs("webhook");
    let cr: ClusterRole = find(&docs, "ClusterRole", "rustmesh-webhook");
    let role: Role = find(&docs, "Role", "rustmesh-webhook");
    let mwc = "rustmesh-sidecar-injector";
    for r in cr.rules.unwrap() {
        let own = match r.resources.as_deref().unwrap() {
            [res] if res == "mutatingwebhookconfigurations" => mwc,
            [res] if res == "validatingwebhookconfigurations" => "rustmesh-validator",
            other => panic!("the webhook's ClusterRole names {other:?}"),
        };
        assert_eq!(r.resource_names.as_deref().unwrap(), [own]);
        for verb in &r.verbs {
            assert!(
                ["get", "list", "watch", "patch"].contains(&verb.as_str()),
                "{verb}"
            );
        }
    }
    for r in role.rules.unwrap() {
        if r.api_groups.as_deref() == Some(&["events.k8s.io".to_string()]) {
            assert_eq!(r.resources.as_deref().unwrap(), ["events"]);
            for verb in &r.verbs {
                assert!(["create", "patch"].contains(&verb.as_str()), "{verb}");
            }
            continue;
        }
        if r.resources.as_deref() == Some(&["secrets".to_string()]) {
            if r.verbs == ["create"] {
                assert!(r.resource_names.is_none(), "{r:?}");
            } else {
                assert_eq!(
                    r.resource_names.as_deref().unwrap(),
                    ["rustmesh-webhook-tls"]
                );
                assert_eq!(r.verbs, ["get", "list", "watch", "patch"]);
            }
            continue;
        }
        assert_eq!(r.resources.as_deref().unwrap(), ["configmaps"]);
        assert_eq!(r.resource_names.as_deref().unwrap(), [mwc]);
        assert_eq!(r.verbs, ["get", "list", "watch"]);
    }
}
