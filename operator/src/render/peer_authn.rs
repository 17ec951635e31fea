//! The PeerAuthentication policies of a scope ([`rustmesh_xds::peer_authn::PeerAuthentication`]):
//! which policies can apply to the scope's pods, in Istio's precedence order. The sidecar, which
//! knows its own labels and ports, picks among them (`rustmesh_xds::peer_authn::effective_mode`).
//!
//! For a scope of namespace `ns` (the namespace scope and every selector Sidecar's scope alike:
//! the policies depend on the pod, not on the Sidecar), as Istio's `ComposePeerAuthentication`:
//! - `mesh`: the oldest policy without a selector (or with an empty `matchLabels`) in the root
//!   namespace;
//! - `namespace`: the oldest such policy in `ns`. In the root namespace itself that policy is
//!   already `mesh` (Istio files it as the mesh policy there), so `namespace` stays empty rather
//!   than repeat it;
//! - `workload`: the policies of `ns` with a selector, oldest first (creation time, then name),
//!   for the sidecar to take the first that selects it. Policies with a selector in the root
//!   namespace are ignored, as in Istio, even for the root namespace's own pods (validation
//!   warns about them).
//!
//! Which version of a policy: the current one when accepted; after an invalid update of a policy
//! accepted before, that last accepted version (as for every other kind: its verdict's
//! `serving_previous`, set by validation); a conflicting one (a second policy without selector
//! in a namespace) is left out. `None` when no policy applies: the sidecar's default is
//! PERMISSIVE, as Istio's.

use super::{MeshView, Scope};
use crate::index::ObjKey;
use rustmesh_api::PeerAuthentication as Policy;
use rustmesh_xds::peer_authn::{MtlsMode, PeerAuthentication, PeerAuthnPolicy};

/// The policies that can apply to the pods of `scope`, `None` when there are none.
pub(super) fn peer_authentication(
    view: &MeshView<'_>,
    scope: &Scope,
) -> Option<PeerAuthentication> {
    let root = view.index.mesh.root_namespace.as_str();
    let ns = scope.namespace.as_str();
    let without_selector = |policies: &[(&ObjKey, &Policy)]| {
        policies
            .iter()
            .find(|(_, p)| p.spec.workload_labels().is_none())
            .map(|(k, p)| policy(k, p))
    };
    let mesh = without_selector(&rendered(view, root));
    let (namespace, workload) = if ns == root {
        (None, Vec::new())
    } else {
        let own = rendered(view, ns);
        let workload = own
            .iter()
            .filter(|(_, p)| p.spec.workload_labels().is_some())
            .map(|(k, p)| policy(k, p))
            .collect();
        (without_selector(&own), workload)
    };
    let out = PeerAuthentication {
        mesh,
        namespace,
        workload,
    };
    (out != PeerAuthentication::default()).then_some(out)
}

/// The version of each policy of `ns` to render, oldest first (see the module's doc).
/// Whether the services of namespace `ns` refuse mutual TLS by policy: the first of its
/// namespace-wide and the mesh-wide policy that says anything says DISABLE. Istio's auto mTLS
/// then sends plain text to them (its `BestEffortInferServiceMTLSMode`: a workload policy may
/// select only some of a service's pods, so only these two count).
pub(super) fn disables_mtls(view: &MeshView<'_>, ns: &str) -> bool {
    let Some(p) = peer_authentication(view, &Scope::namespace(ns)) else {
        return false;
    };
    [p.namespace.as_ref(), p.mesh.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| p.mode)
        .find(|m| *m != MtlsMode::Unset)
        == Some(MtlsMode::Disable)
}

fn rendered<'a>(view: &MeshView<'a>, ns: &str) -> Vec<(&'a ObjKey, &'a Policy)> {
    super::rendered_in(view, ns)
}

fn policy(key: &ObjKey, p: &Policy) -> PeerAuthnPolicy {
    PeerAuthnPolicy {
        name: key.to_string(),
        selector: p.spec.workload_labels().cloned().unwrap_or_default(),
        mode: p.spec.mode(),
        // Validation refused keys that are no port, and port-level modes without a selector.
        port_level_mtls: p.spec.port_modes().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configmap::render;
    use crate::fixtures::{bookinfo, istio, namespace, verdict};
    use crate::index::{Index, Kind, Object};
    use crate::registry::Registry;
    use crate::validation::{Level, Validation, status_for};
    use rustmesh_xds::peer_authn::effective_mode;
    use std::collections::{BTreeMap, BTreeSet};

    fn pa(ns: &str, name: &str, created: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\", generation: 1}}\nspec:\n{spec}---\n"
        )
    }

    fn policies(index: &Index, scope: &Scope) -> Option<PeerAuthentication> {
        let config = render(index, scope);
        config.validate().expect("renders a valid configuration");
        config.peer_authentication
    }

    fn names(p: &PeerAuthentication) -> (Option<&str>, Option<&str>, Vec<&str>) {
        (
            p.mesh.as_ref().map(|m| m.name.as_str()),
            p.namespace.as_ref().map(|m| m.name.as_str()),
            p.workload.iter().map(|w| w.name.as_str()).collect(),
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_policy_renders_none_and_the_sidecar_stays_permissive() {
        let index = bookinfo();
        assert_eq!(policies(&index, &Scope::namespace("default")), None);
    }

    #[test]
    fn mesh_namespace_and_workload_policies_in_istios_precedence() {
        let mut index = bookinfo();
        let mut yaml = String::new();
        // Mesh: the oldest selector-less policy of the root namespace.
        yaml += &pa(
            "istio-system",
            "younger",
            "2024-03-01T00:00:00Z",
            "  mtls: {mode: PERMISSIVE}\n",
        );
        yaml += &pa(
            "istio-system",
            "default",
            "2024-01-01T00:00:00Z",
            "  mtls: {mode: STRICT}\n",
        );
        // Namespace: the oldest selector-less policy of `default`.
        yaml += &pa(
            "default",
            "ns-wide",
            "2024-02-01T00:00:00Z",
            "  mtls: {mode: UNSET}\n",
        );
        // Workload: oldest first, ties broken by name.
        yaml += &pa(
            "default",
            "reviews-b",
            "2024-02-02T00:00:00Z",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: DISABLE}\n",
        );
        yaml += &pa(
            "default",
            "reviews-a",
            "2024-02-02T00:00:00Z",
            "  selector: {matchLabels: {app: reviews, version: v1}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    9080: {mode: STRICT}\n",
        );
        yaml += &pa(
            "default",
            "oldest-selector",
            "2023-12-01T00:00:00Z",
            "  selector: {matchLabels: {app: ratings}}\n  mtls: {mode: STRICT}\n",
        );
        // A selector policy in the root namespace: ignored (and warned).
        yaml += &pa(
            "istio-system",
            "root-workload",
            "2020-01-01T00:00:00Z",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: DISABLE}\n",
        );
        istio(&mut index, &yaml);

        let p = policies(&index, &Scope::namespace("default")).expect("policies apply");
        assert_eq!(
            names(&p),
            (
                Some("istio-system/default"),
                Some("default/ns-wide"),
                vec![
                    "default/oldest-selector",
                    "default/reviews-a",
                    "default/reviews-b"
                ]
            )
        );
        let a = &p.workload[1];
        assert_eq!(a.selector, labels(&[("app", "reviews"), ("version", "v1")]));
        assert_eq!(
            a.port_level_mtls,
            BTreeMap::from([(9080, MtlsMode::Strict)])
        );
        assert_eq!(p.mesh.as_ref().unwrap().mode, MtlsMode::Strict);
        assert!(p.mesh.as_ref().unwrap().selector.is_empty());

        // What the sidecars make of it: reviews v1 takes reviews-a (older by name), 9080 STRICT
        // and PERMISSIVE elsewhere; reviews v2 takes reviews-b; an unselected pod inherits
        // through the UNSET namespace policy to the mesh's STRICT.
        let v1 = labels(&[("app", "reviews"), ("version", "v1")]);
        assert_eq!(
            effective_mode(&p, &v1, 9080),
            (MtlsMode::Strict, Some("default/reviews-a"))
        );
        assert_eq!(effective_mode(&p, &v1, 80).0, MtlsMode::Permissive);
        let v2 = labels(&[("app", "reviews"), ("version", "v2")]);
        assert_eq!(
            effective_mode(&p, &v2, 9080),
            (MtlsMode::Disable, Some("default/reviews-b"))
        );
        assert_eq!(
            effective_mode(&p, &labels(&[("app", "details")]), 9080),
            (MtlsMode::Strict, Some("istio-system/default"))
        );

        // The root-namespace selector policy is accepted but told it is ignored, by field, in
        // the Accepted condition itself.
        let v = verdict(
            &index,
            Kind::PeerAuthentication,
            "istio-system",
            "root-workload",
        );
        assert!(v.accepted);
        assert_eq!(v.findings.len(), 1);
        assert_eq!(
            (v.findings[0].level, v.findings[0].field.as_str()),
            (Level::Warning, "spec.selector")
        );
        assert!(
            v.findings[0].message.contains("ignored"),
            "{:?}",
            v.findings
        );
        let status = status_for(&v, Some(1), None, "t0");
        let accepted = &status.conditions[0];
        assert_eq!(accepted.status, "True");
        let message = accepted.message.as_deref().unwrap();
        assert!(
            message.contains("spec.selector: a PeerAuthentication with a selector in the root namespace istio-system is ignored"),
            "{message}"
        );
        assert_eq!(status.validation_messages[0].level, "Warning");
        // The younger mesh-wide policy conflicts with the older one.
        let younger = verdict(&index, Kind::PeerAuthentication, "istio-system", "younger");
        assert_eq!((younger.accepted, younger.reason), (false, "Conflict"));
        assert!(younger.findings[0].message.contains("istio-system/default"));

        // In the root namespace itself the mesh policy is all there is: root selector
        // policies are ignored there too.
        namespace(&mut index, "istio-system", true);
        let root = policies(&index, &Scope::namespace("istio-system")).unwrap();
        assert_eq!(names(&root), (Some("istio-system/default"), None, vec![]));
        // A namespace without policies of its own gets the mesh's.
        namespace(&mut index, "shop", true);
        let shop = policies(&index, &Scope::namespace("shop")).unwrap();
        assert_eq!(names(&shop), (Some("istio-system/default"), None, vec![]));
    }

    #[test]
    fn a_selector_sidecars_scope_gets_its_namespaces_policies() {
        let mut index = bookinfo();
        istio(
            &mut index,
            &(pa(
                "default",
                "ns",
                "2024-01-01T00:00:00Z",
                "  mtls: {mode: STRICT}\n",
            ) + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: ratings, namespace: default}\nspec:\n  workloadSelector: {labels: {app: ratings}}\n  egress: [{hosts: [\"./*\"]}]\n"),
        );
        let scoped = policies(&index, &Scope::sidecar("default", "ratings")).unwrap();
        assert_eq!(
            scoped,
            policies(&index, &Scope::namespace("default")).unwrap()
        );
        assert_eq!(names(&scoped).1, Some("default/ns"));
    }

    #[test]
    fn a_selector_without_labels_is_namespace_wide_with_a_warning() {
        let mut index = bookinfo();
        istio(
            &mut index,
            &pa(
                "default",
                "empty",
                "2024-01-01T00:00:00Z",
                "  selector: {}\n  mtls: {mode: STRICT}\n",
            ),
        );
        let p = policies(&index, &Scope::namespace("default")).unwrap();
        assert_eq!(names(&p), (None, Some("default/empty"), vec![]));
        let v = verdict(&index, Kind::PeerAuthentication, "default", "empty");
        assert!(v.accepted);
        assert_eq!(v.findings[0].field, "spec.selector.matchLabels");
    }

    #[test]
    fn an_invalid_update_keeps_the_last_good_policy_serving() {
        let mut index = bookinfo();
        let good = pa(
            "default",
            "fin",
            "2024-01-01T00:00:00Z",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n",
        );
        istio(&mut index, &good);
        let validation = Validation::compute(&index, &Registry::build(&index));
        index.remember_accepted(validation.accepted_keys());
        // Port 0 is invalid: the update is refused by name, the STRICT version keeps serving.
        istio(
            &mut index,
            &pa(
                "default",
                "fin",
                "2024-01-01T00:00:00Z",
                "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: DISABLE}\n  portLevelMtls:\n    0: {mode: DISABLE}\n",
            ),
        );
        let v = verdict(&index, Kind::PeerAuthentication, "default", "fin");
        assert_eq!((v.accepted, v.reason), (false, "Invalid"));
        assert_eq!(v.findings[0].field, "spec.portLevelMtls.0");
        assert_eq!(v.serving_previous, Some(1));
        let status = status_for(&v, Some(2), None, "t0");
        assert!(
            status.conditions[0]
                .message
                .as_deref()
                .unwrap()
                .starts_with("spec.portLevelMtls.0: port \"0\" must be a number in range 1..65535")
        );
        assert!(
            status.conditions[1]
                .message
                .as_deref()
                .unwrap()
                .contains("last accepted version (generation 1) keeps serving")
        );
        // Written to the kind's own group.
        let body = crate::controller::status_patch(Kind::PeerAuthentication, &status);
        assert_eq!(
            (body["apiVersion"].as_str(), body["kind"].as_str()),
            (Some("security.istio.io/v1"), Some("PeerAuthentication"))
        );
        let p = policies(&index, &Scope::namespace("default")).unwrap();
        assert_eq!(p.workload[0].mode, MtlsMode::Strict);

        // A policy invalid from the start is left out.
        istio(
            &mut index,
            &pa(
                "default",
                "bad",
                "2024-01-02T00:00:00Z",
                "  portLevelMtls:\n    80: {mode: STRICT}\n",
            ),
        );
        let v = verdict(&index, Kind::PeerAuthentication, "default", "bad");
        assert_eq!((v.accepted, v.serving_previous), (false, None));
        assert_eq!(v.findings[0].field, "spec.portLevelMtls");
        let p = policies(&index, &Scope::namespace("default")).unwrap();
        assert_eq!(names(&p), (None, None, vec!["default/fin"]));
    }

    #[test]
    fn a_policy_change_re_renders_its_namespace_or_every_namespace_from_the_root() {
        let mut index = bookinfo();
        namespace(&mut index, "shop", true);
        let objects = |yaml: &str| {
            let mut scratch = Index::default();
            istio(&mut scratch, yaml);
            scratch
                .peer_authentications
                .objects
                .into_values()
                .next()
                .unwrap()
        };
        let ns = objects(&pa(
            "shop",
            "p",
            "2024-01-01T00:00:00Z",
            "  mtls: {mode: STRICT}\n",
        ));
        let a = index.apply(Object::PeerAuthentication(Box::new(ns.clone())));
        // Its namespace, and every namespace that sees shop's services (auto mTLS towards them
        // depends on shop's namespace-wide mode): here all of them.
        let both: BTreeSet<String> = ["default".to_string(), "shop".to_string()].into();
        assert_eq!(a.namespaces, both);
        assert!(a.statuses);
        // The same content again (a status write): nothing.
        assert!(
            index
                .apply(Object::PeerAuthentication(Box::new(ns)))
                .is_empty()
        );
        let root = objects(&pa(
            "istio-system",
            "default",
            "2024-01-01T00:00:00Z",
            "  mtls: {mode: STRICT}\n",
        ));
        let a = index.apply(Object::PeerAuthentication(Box::new(root)));
        assert_eq!(
            a.namespaces,
            ["default".to_string(), "shop".to_string()].into()
        );
        let gone = index.delete(Kind::PeerAuthentication, &ObjKey::new("shop", "p"));
        assert_eq!(gone.namespaces, both);
    }
}
