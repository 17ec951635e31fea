//! AuthorizationPolicy through validation and the renderer (`render::authz`): which policies a
//! scope lists, in which order and shape, what a CUSTOM, a refused and an invalid update of a
//! policy do, and which namespaces a change re-renders.

use super::*;
use crate::configmap::render;
use crate::fixtures::{bookinfo, istio, namespace, verdict};
use crate::index::{Kind, Object};
use crate::validation::{Level, UNSUPPORTED, status_for};
use rustmesh_xds::authz::{
    Authorization, AuthzAction, AuthzCondition, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
};

/// One AuthorizationPolicy document (generation 1 unless `generation` says otherwise).
fn ap(ns: &str, name: &str, created: &str, spec: &str) -> String {
    ap_at(ns, name, created, 1, spec)
}

fn ap_at(ns: &str, name: &str, created: &str, generation: i64, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\", generation: {generation}}}\nspec:\n{spec}---\n"
    )
}

/// The scope's rendered authorization, from a configuration that validates.
fn authz(index: &Index, scope: &Scope) -> Option<Authorization> {
    let config = render(index, scope);
    if let Err(e) = config.validate() {
        panic!("render of {scope} does not validate: {e}");
    }
    config.authorization
}

fn names(a: &Authorization) -> Vec<&str> {
    a.policies.iter().map(|p| p.name.as_str()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The policy objects of `yaml`, read on their own (for `Index::apply`).
fn objects(yaml: &str) -> Vec<Object> {
    let mut scratch = Index::default();
    istio(&mut scratch, yaml);
    scratch
        .authorization_policies
        .objects
        .into_values()
        .map(|p| Object::AuthorizationPolicy(Box::new(p)))
        .collect()
}

#[test]
fn no_policy_renders_none_so_existing_configurations_are_unchanged() {
    let mut index = bookinfo();
    assert_eq!(authz(&index, &Scope::namespace("default")), None);
    // Policies of other namespaces do not reach `default`.
    namespace(&mut index, "shop", true);
    istio(
        &mut index,
        &ap("shop", "deny-all", "2024-01-01T00:00:00Z", "  {}\n"),
    );
    assert_eq!(authz(&index, &Scope::namespace("default")), None);
    assert_eq!(
        authz(&index, &Scope::namespace("shop")).map(|a| names(&a).join(",")),
        Some("shop/deny-all".to_string())
    );
}

#[test]
fn mesh_wide_and_namespace_wide_policies() {
    let mut index = bookinfo();
    namespace(&mut index, "shop", true);
    let mut yaml = ap(
        "istio-system",
        "mesh-deny-dev",
        "2024-01-01T00:00:00Z",
        "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [dev]}\n",
    );
    yaml += &ap("default", "allow-nothing", "2024-01-01T00:00:00Z", "  {}\n");
    istio(&mut index, &yaml);
    // The root namespace's policy is in every namespace's list, first; `default`'s only in its own.
    let default = authz(&index, &Scope::namespace("default")).unwrap();
    assert_eq!(
        names(&default),
        ["istio-system/mesh-deny-dev", "default/allow-nothing"]
    );
    let shop = authz(&index, &Scope::namespace("shop")).unwrap();
    assert_eq!(names(&shop), ["istio-system/mesh-deny-dev"]);
    // Both without a selector: every pod of the scope gets them.
    assert!(default.policies.iter().all(|p| p.selector.is_empty()));
    let any_pod = labels(&[("app", "anything")]);
    assert_eq!(default.applicable(&any_pod).count(), 2);
    // allow-nothing is ALLOW without rules: the sidecar denies everything with it.
    assert_eq!(
        default.policies[1],
        AuthzPolicy {
            name: "default/allow-nothing".into(),
            selector: BTreeMap::new(),
            action: AuthzAction::Allow,
            rules: vec![],
        }
    );
    assert_eq!(default.policies[0].action, AuthzAction::Deny);
    // The root namespace's own scope lists its policies once.
    namespace(&mut index, "istio-system", true);
    let root = authz(&index, &Scope::namespace("istio-system")).unwrap();
    assert_eq!(names(&root), ["istio-system/mesh-deny-dev"]);
    // A selector Sidecar's scope lists the same policies as its namespace scope.
    istio(
        &mut index,
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: ratings, namespace: default}\nspec:\n  workloadSelector: {labels: {app: ratings}}\n  egress: [{hosts: [\"./*\"]}]\n",
    );
    assert_eq!(
        authz(&index, &Scope::sidecar("default", "ratings")),
        Some(default)
    );
}

#[test]
fn selector_policies_reach_their_workloads_and_root_ones_every_namespace() {
    let mut index = bookinfo();
    namespace(&mut index, "shop", true);
    let mut yaml = ap(
        "default",
        "reviews-only",
        "2024-01-01T00:00:00Z",
        "  selector: {matchLabels: {app: reviews}}\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/productpage]}\n",
    );
    // Istio: a root-namespace policy with a selector applies to the matching workloads of
    // every namespace.
    yaml += &ap(
        "istio-system",
        "v1-nothing",
        "2024-01-01T00:00:00Z",
        "  selector: {matchLabels: {version: v1}}\n",
    );
    // An empty selector is namespace-wide (with Istio's warning).
    yaml += &ap(
        "shop",
        "empty-selector",
        "2024-01-01T00:00:00Z",
        "  selector: {}\n  rules: [{}]\n",
    );
    istio(&mut index, &yaml);
    let default = authz(&index, &Scope::namespace("default")).unwrap();
    assert_eq!(
        names(&default),
        ["istio-system/v1-nothing", "default/reviews-only"]
    );
    assert_eq!(default.policies[0].selector, labels(&[("version", "v1")]));
    assert_eq!(default.policies[1].selector, labels(&[("app", "reviews")]));
    let applicable = |a: &Authorization, pod: &[(&str, &str)]| -> Vec<String> {
        a.applicable(&labels(pod)).map(|p| p.name.clone()).collect()
    };
    assert_eq!(
        applicable(&default, &[("app", "reviews"), ("version", "v1")]),
        ["istio-system/v1-nothing", "default/reviews-only"]
    );
    assert_eq!(
        applicable(&default, &[("app", "reviews"), ("version", "v2")]),
        ["default/reviews-only"]
    );
    assert!(applicable(&default, &[("app", "ratings"), ("version", "v2")]).is_empty());
    let shop = authz(&index, &Scope::namespace("shop")).unwrap();
    assert_eq!(
        names(&shop),
        ["istio-system/v1-nothing", "shop/empty-selector"]
    );
    assert_eq!(
        applicable(&shop, &[("app", "cart"), ("version", "v1")]),
        ["istio-system/v1-nothing", "shop/empty-selector"]
    );
    assert!(shop.policies[1].selector.is_empty());
    let v = verdict(&index, Kind::AuthorizationPolicy, "shop", "empty-selector");
    assert!(v.accepted && v.reason == "Accepted", "{v:?}");
    assert_eq!(v.findings[0].field, "spec.selector.matchLabels");
    assert_eq!(v.findings[0].level, Level::Warning);
}

#[test]
fn policies_are_ordered_root_first_then_by_creation_time_and_name() {
    let mut index = bookinfo();
    let mut yaml = String::new();
    for (ns, name, created) in [
        ("default", "c-newest", "2024-03-01T00:00:00Z"),
        ("default", "b-same-time", "2024-02-01T00:00:00Z"),
        ("default", "a-same-time", "2024-02-01T00:00:00Z"),
        ("istio-system", "z-root", "2024-06-01T00:00:00Z"),
        ("istio-system", "y-root-older", "2024-05-01T00:00:00Z"),
        ("default", "d-oldest", "2023-01-01T00:00:00Z"),
    ] {
        yaml += &ap(ns, name, created, "  rules: [{}]\n");
    }
    istio(&mut index, &yaml);
    let a = authz(&index, &Scope::namespace("default")).unwrap();
    assert_eq!(
        names(&a),
        [
            "istio-system/y-root-older",
            "istio-system/z-root",
            "default/d-oldest",
            "default/a-same-time",
            "default/b-same-time",
            "default/c-newest",
        ]
    );
    // Equal inputs, byte-equal output.
    let again = render(&index, &Scope::namespace("default"));
    assert_eq!(
        again.version_info,
        render(&index, &Scope::namespace("default")).version_info
    );
}

#[test]
fn rules_are_flattened_into_the_proxy_shape() {
    let mut index = bookinfo();
    istio(
        &mut index,
        &ap(
            "default",
            "httpbin",
            "2024-01-01T00:00:00Z",
            r#"  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"], notIpBlocks: ["10.0.0.0/8"]}
    - source: {namespaces: [test], remoteIpBlocks: ["203.0.113.4"], notRequestPrincipals: ["*"]}
    to:
    - operation: {methods: [GET], paths: ["/info*", "/api/{*}/x"], ports: ["9080", "0"], notPorts: ["15021"]}
    - operation: {hosts: ["*.example.com"], notPaths: ["/admin*"]}
    when:
    - {key: "request.auth.claims[iss]", values: ["https://accounts.google.com"]}
    - {key: destination.port, notValues: ["8080"]}
  - {}
"#,
        ),
    );
    let a = authz(&index, &Scope::namespace("default")).unwrap();
    let want = AuthzPolicy {
        name: "default/httpbin".into(),
        selector: labels(&[("app", "reviews")]),
        action: AuthzAction::Deny,
        rules: vec![
            AuthzRule {
                from: vec![
                    AuthzSource {
                        principals: vec!["cluster.local/ns/default/sa/sleep".into()],
                        not_ip_blocks: vec!["10.0.0.0/8".into()],
                        ..AuthzSource::default()
                    },
                    AuthzSource {
                        namespaces: vec!["test".into()],
                        remote_ip_blocks: vec!["203.0.113.4".into()],
                        not_request_principals: vec!["*".into()],
                        ..AuthzSource::default()
                    },
                ],
                to: vec![
                    AuthzOperation {
                        methods: vec!["GET".into()],
                        paths: vec!["/info*".into(), "/api/{*}/x".into()],
                        ports: vec![9080, 0],
                        not_ports: vec![15021],
                        ..AuthzOperation::default()
                    },
                    AuthzOperation {
                        hosts: vec!["*.example.com".into()],
                        not_paths: vec!["/admin*".into()],
                        ..AuthzOperation::default()
                    },
                ],
                when: vec![
                    AuthzCondition {
                        key: "request.auth.claims[iss]".into(),
                        values: vec!["https://accounts.google.com".into()],
                        not_values: vec![],
                    },
                    AuthzCondition {
                        key: "destination.port".into(),
                        values: vec![],
                        not_values: vec!["8080".into()],
                    },
                ],
            },
            // `{}`: matches every request.
            AuthzRule::default(),
        ],
    };
    assert_eq!(a.policies, [want]);
    // The ConfigMap carries it in the proxy model's JSON (ports as numbers).
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(
        json["policies"][0]["rules"][0]["to"][0]["ports"],
        serde_json::json!([9080, 0])
    );
    assert_eq!(json["policies"][0]["action"], "DENY");
}

#[test]
fn custom_is_rendered_as_custom_and_reported_unsupported() {
    let mut index = bookinfo();
    istio(
        &mut index,
        &ap(
            "default",
            "ext-authz",
            "2024-01-01T00:00:00Z",
            "  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules:\n  - to:\n    - operation: {paths: [\"/admin/*\"]}\n",
        ),
    );
    // Rendered: the sidecar denies what it matches.
    let a = authz(&index, &Scope::namespace("default")).unwrap();
    assert_eq!(a.policies[0].action, AuthzAction::Custom);
    assert_eq!(a.policies[0].rules[0].to[0].paths, ["/admin/*"]);
    // Reported: Accepted=False, reason Unsupported, naming spec.provider; Reconciled=True.
    let v = verdict(&index, Kind::AuthorizationPolicy, "default", "ext-authz");
    assert!(v.accepted, "rendered: {v:?}");
    assert_eq!(v.reason, UNSUPPORTED);
    assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
    assert_eq!(
        (v.findings[0].level, v.findings[0].field.as_str()),
        (Level::Error, "spec.provider")
    );
    let status = status_for(&v, Some(1), None, "t0");
    let accepted = &status.conditions[0];
    assert_eq!(
        (accepted.type_.as_str(), accepted.status.as_str()),
        ("Accepted", "False")
    );
    assert_eq!(accepted.reason.as_deref(), Some(UNSUPPORTED));
    let message = accepted.message.as_deref().unwrap();
    assert!(
        message.starts_with(
            "spec.provider: CUSTOM action is not supported: requests it matches are denied"
        ) && message.contains("my-ext-authz"),
        "{message}"
    );
    let reconciled = &status.conditions[1];
    assert_eq!(
        (reconciled.status.as_str(), reconciled.reason.as_deref()),
        ("True", Some("Reconciled"))
    );
    assert_eq!(status.validation_messages[0].level, "Error");
    assert_eq!(status.last_accepted, None);
    // The status is stable: the same verdict writes the same status again.
    assert_eq!(status_for(&v, Some(1), Some(&status), "t1"), status);
    // Written to the kind's own group.
    let body = crate::controller::status_patch(Kind::AuthorizationPolicy, &status);
    assert_eq!(
        (body["apiVersion"].as_str(), body["kind"].as_str()),
        (Some("security.istio.io/v1"), Some("AuthorizationPolicy"))
    );
}

#[test]
fn target_refs_are_refused_and_not_rendered() {
    let mut index = bookinfo();
    istio(
        &mut index,
        &ap(
            "default",
            "waypoint",
            "2024-01-01T00:00:00Z",
            "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}\n  action: DENY\n  rules: [{}]\n",
        ),
    );
    assert_eq!(authz(&index, &Scope::namespace("default")), None);
    let v = verdict(&index, Kind::AuthorizationPolicy, "default", "waypoint");
    assert_eq!((v.accepted, v.reason), (false, "Invalid"));
    let status = status_for(&v, Some(1), None, "t0");
    let message = status.conditions[0].message.as_deref().unwrap();
    assert!(
        message.starts_with("spec.targetRefs: not implemented by rustmesh"),
        "{message}"
    );
}

#[test]
fn an_invalid_update_keeps_the_last_accepted_policy_serving_also_after_a_restart() {
    let good = ap_at(
        "default",
        "fin",
        "2024-01-01T00:00:00Z",
        1,
        "  action: DENY\n  rules:\n  - to:\n    - operation: {ports: [\"9080\"], methods: [DELETE]}\n",
    );
    let bad = ap_at(
        "default",
        "fin",
        "2024-01-01T00:00:00Z",
        2,
        "  action: DENY\n  rules:\n  - to:\n    - operation: {ports: [\"http\"], methods: [POST]}\n",
    );
    let deny_delete = |index: &Index| {
        let a = authz(index, &Scope::namespace("default")).expect("a policy");
        assert_eq!(a.policies.len(), 1);
        assert_eq!(a.policies[0].rules[0].to[0].methods, ["DELETE"]);
        assert_eq!(a.policies[0].rules[0].to[0].ports, [9080]);
    };
    let mut index = bookinfo();
    istio(&mut index, &good);
    let validation = MeshView::new(&index).validation.clone();
    index.remember_accepted(validation.accepted_keys());
    istio(&mut index, &bad);
    let v = verdict(&index, Kind::AuthorizationPolicy, "default", "fin");
    assert_eq!((v.accepted, v.reason), (false, "Invalid"));
    assert_eq!(
        v.findings[0].field,
        "spec.rules[0].to[0].operation.ports[0]"
    );
    assert_eq!(v.serving_previous, Some(1));
    deny_delete(&index);
    let status = status_for(&v, Some(2), None, "t0");
    assert!(
        status.conditions[1]
            .message
            .as_deref()
            .unwrap()
            .contains("last accepted version (generation 1) keeps serving")
    );
    let last = status.last_accepted.clone().expect("status.lastAccepted");
    assert_eq!(last.generation, 1);
    assert_eq!(
        last.spec["rules"][0]["to"][0]["operation"]["methods"][0],
        "DELETE"
    );

    // A restart: a new index sees generation 2 carrying that status, and serves generation 1.
    let mut restarted = bookinfo();
    let Object::AuthorizationPolicy(mut current) = objects(&bad).remove(0) else {
        unreachable!()
    };
    current.status = Some(status.clone());
    restarted.apply(Object::AuthorizationPolicy(current.clone()));
    deny_delete(&restarted);
    let v = verdict(&restarted, Kind::AuthorizationPolicy, "default", "fin");
    assert_eq!(v.serving_previous, Some(1));
    assert_eq!(
        status_for(&v, Some(2), Some(&status), "later"),
        status,
        "the restarted operator writes the same status"
    );
    // Never trusted unchecked: a lastAccepted that does not validate is not restored.
    let mut forged = status.clone();
    forged.last_accepted.as_mut().unwrap().spec["rules"][0]["to"][0]["operation"]["ports"][0] =
        "http".into();
    let mut index = bookinfo();
    let mut tampered = current.clone();
    tampered.status = Some(forged);
    index.apply(Object::AuthorizationPolicy(tampered));
    assert!(index.authorization_policies.last_good.is_empty());
    assert_eq!(authz(&index, &Scope::namespace("default")), None);

    // A policy invalid from the start is left out; the others still render.
    let mut index = bookinfo();
    istio(
        &mut index,
        &(ap(
            "default",
            "bad",
            "2024-01-01T00:00:00Z",
            "  rules:\n  - when:\n    - {key: source.ips, values: [x]}\n",
        ) + &ap("default", "ok", "2024-01-02T00:00:00Z", "  rules: [{}]\n")),
    );
    let v = verdict(&index, Kind::AuthorizationPolicy, "default", "bad");
    assert_eq!((v.accepted, v.serving_previous), (false, None));
    assert_eq!(v.findings[0].field, "spec.rules[0].when[0].key");
    let a = authz(&index, &Scope::namespace("default")).unwrap();
    assert_eq!(names(&a), ["default/ok"]);
}

#[test]
fn a_policy_change_re_renders_its_namespace_or_every_namespace_from_the_root() {
    let mut index = bookinfo();
    namespace(&mut index, "shop", true);
    let own = objects(&ap("shop", "p", "2024-01-01T00:00:00Z", "  {}\n")).remove(0);
    let a = index.apply(own.clone());
    let shop: BTreeSet<String> = ["shop".to_string()].into();
    assert_eq!(a.namespaces, shop);
    assert!(a.statuses);
    // The same content again (a status write): nothing.
    assert!(index.apply(own).is_empty());
    // Root namespace, with or without selector: every injected namespace.
    for spec in ["  {}\n", "  selector: {matchLabels: {app: reviews}}\n"] {
        let root = objects(&ap("istio-system", "r", "2024-01-01T00:00:00Z", spec)).remove(0);
        let a = index.apply(root);
        assert_eq!(
            a.namespaces,
            ["default".to_string(), "shop".to_string()].into(),
            "{spec}"
        );
    }
    let gone = index.delete(Kind::AuthorizationPolicy, &ObjKey::new("shop", "p"));
    assert_eq!(gone.namespaces, shop);
    let gone = index.delete(Kind::AuthorizationPolicy, &ObjKey::new("istio-system", "r"));
    assert_eq!(
        gone.namespaces,
        ["default".to_string(), "shop".to_string()].into()
    );
    // A namespace that is not injected gets no ConfigMap: nothing to re-render.
    namespace(&mut index, "plain", false);
    let plain = objects(&ap("plain", "p", "2024-01-01T00:00:00Z", "  {}\n")).remove(0);
    let a = index.apply(plain);
    assert!(a.namespaces.is_empty() && a.statuses);
}

#[test]
fn a_dry_run_is_rendered_as_audit_and_its_annotation_re_renders() {
    let dry = |value: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: dry, namespace: default, creationTimestamp: \"2024-01-01T00:00:00Z\", annotations: {{\"istio.io/dry-run\": \"{value}\"}}}}\nspec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{ports: [\"9080\"], paths: [\"/headers\"]}}}}]\n"
        )
    };
    let mut index = bookinfo();
    istio(&mut index, &dry("true"));
    // Istio never enforces a dry run: AUDIT never changes the decision.
    let a = authz(&index, &Scope::namespace("default")).unwrap();
    assert_eq!(a.policies[0].action, AuthzAction::Audit);
    let v = verdict(&index, Kind::AuthorizationPolicy, "default", "dry");
    assert!(v.accepted && v.reason == "Accepted", "{v:?}");
    assert_eq!(
        (v.findings[0].level, v.findings[0].field.as_str()),
        (Level::Warning, "metadata.annotations.istio.io/dry-run")
    );
    // Taking the annotation off is a change to re-render (the spec is the same): enforced.
    let Object::AuthorizationPolicy(p) = objects(&dry("false")).remove(0) else {
        unreachable!()
    };
    let affects = index.apply(Object::AuthorizationPolicy(p));
    assert!(affects.namespaces.contains("default"), "{affects:?}");
    let a = authz(&index, &Scope::namespace("default")).unwrap();
    assert_eq!(a.policies[0].action, AuthzAction::Deny);
    // A value Istio cannot read is refused naming the annotation.
    istio(&mut index, &dry("maybe").replace("name: dry", "name: odd"));
    let v = verdict(&index, Kind::AuthorizationPolicy, "default", "odd");
    assert!(!v.accepted);
    assert_eq!(v.findings[0].field, "metadata.annotations.istio.io/dry-run");
}
