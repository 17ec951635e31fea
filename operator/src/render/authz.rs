//! The AuthorizationPolicy objects of a scope ([`rustmesh_xds::authz::Authorization`]): every
//! policy that can apply to the scope's pods, in Istio's own terms; the sidecar, which knows its
//! own labels, keeps those whose selector it carries (`Authorization::applicable`) and enforces
//! them (CUSTOM → DENY → ALLOW, as `rustmesh_xds::authz` describes).
//!
//! For a scope of namespace `ns` (the namespace scope and every selector Sidecar's scope alike:
//! the policies depend on the pod, not on the Sidecar), as Istio documents the scope of a policy:
//! - first the root namespace's policies, with or without a selector: without one it applies to
//!   every workload of the mesh, with one to the matching workloads of every namespace;
//! - then `ns`'s own policies (none more when `ns` is the root namespace): without a selector
//!   (or with an empty `matchLabels`) every workload of `ns`, with one the matching ones.
//!
//! Each group is ordered by creation time, then name (objects without a creation time last), so
//! equal inputs render byte-equal lists. The order decides nothing in Istio's evaluation (any
//! matching DENY denies, any matching ALLOW allows); it only decides which policy a denial names.
//!
//! A policy is flattened into the proxy's shape: `rules[].from[].source` and
//! `rules[].to[].operation` lose their wrapper (validation refused an entry without one),
//! `ports`/`notPorts` become numbers, everything else is passed through as written. The CUSTOM
//! action is rendered as CUSTOM, which the sidecar denies (validation reports it); a dry run
//! (`istio.io/dry-run: "true"` on an ALLOW or DENY policy) as AUDIT, never enforced, as Istio
//! never enforces it (validation warns that Istio's shadow metadata is not produced).
//!
//! Which version of a policy: the current one when accepted (a CUSTOM one included); after an
//! invalid update of a policy accepted before, that last accepted version (its verdict's
//! `serving_previous`, set by validation); an invalid policy never accepted is left out. `None`
//! when no policy applies, so the sidecar allows every request as before.

use super::{MeshView, Scope};
use crate::index::ObjKey;
use rustmesh_api::AuthorizationPolicy as Policy;
use rustmesh_api::authorization_policy::{Operation, Rule, Source, port_number};
use rustmesh_xds::authz::{
    Authorization, AuthzAction, AuthzCondition, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
};

/// The policies that can apply to the pods of `scope`, `None` when there are none.
pub(super) fn authorization(view: &MeshView<'_>, scope: &Scope) -> Option<Authorization> {
    let root = view.index.mesh.root_namespace.as_str();
    let ns = scope.namespace.as_str();
    let mut listed = rendered(view, root);
    if ns != root {
        listed.extend(rendered(view, ns));
    }
    let policies: Vec<AuthzPolicy> = listed.into_iter().map(|(k, p)| policy(k, p)).collect();
    (!policies.is_empty()).then_some(Authorization { policies })
}

fn rendered<'a>(view: &MeshView<'a>, ns: &str) -> Vec<(&'a ObjKey, &'a Policy)> {
    super::rendered_in(view, ns)
}

fn policy(key: &ObjKey, p: &Policy) -> AuthzPolicy {
    AuthzPolicy {
        name: key.to_string(),
        selector: p.spec.workload_labels().cloned().unwrap_or_default(),
        // A dry run is evaluated and never enforced: AUDIT (validation warns).
        action: if p.dry_run() {
            AuthzAction::Audit
        } else {
            p.spec.action()
        },
        rules: p.spec.rules.iter().map(rule).collect(),
    }
}

fn rule(r: &Rule) -> AuthzRule {
    AuthzRule {
        from: r
            .from
            .iter()
            .flatten()
            .filter_map(|f| f.source.as_ref())
            .map(source)
            .collect(),
        to: r
            .to
            .iter()
            .flatten()
            .filter_map(|t| t.operation.as_ref())
            .map(operation)
            .collect(),
        when: r
            .when
            .iter()
            .map(|c| AuthzCondition {
                key: c.key.clone(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}

fn source(s: &Source) -> AuthzSource {
    AuthzSource {
        principals: s.principals.clone(),
        not_principals: s.not_principals.clone(),
        request_principals: s.request_principals.clone(),
        not_request_principals: s.not_request_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
    }
}

fn operation(o: &Operation) -> AuthzOperation {
    // Validation refused a port that is not a number 0..65535: none is left out here.
    let ports = |v: &[String]| v.iter().filter_map(|p| port_number(p)).collect();
    AuthzOperation {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}
