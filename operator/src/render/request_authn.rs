//! The RequestAuthentication objects of a scope ([`rustmesh_xds::request_authn`]): every policy
//! that can apply to the scope's pods, with each rule's key set resolved; the sidecar, which
//! knows its own labels, keeps those whose selector it carries (`rules_for`) and verifies tokens
//! with them.
//!
//! For a scope of namespace `ns` (the namespace scope and every selector Sidecar's scope alike),
//! as Istio selects policies for a workload (and as [`super::authz`] lists AuthorizationPolicies):
//! - first the root namespace's policies, with or without a selector: without one it applies to
//!   every workload of the mesh, with one to the matching workloads of every namespace;
//! - then `ns`'s own policies (none more when `ns` is the root namespace).
//!
//! Each group is ordered by creation time, then name (objects without a creation time last), so
//! equal inputs render byte-equal lists. The order decides nothing in the sidecar (the rules of
//! every policy that applies are combined); it is the order `/config_dump` shows.
//!
//! A rule's key set ([`rustmesh_api::request_authentication::KeySource`]): its `jwks` as
//! written; else what the operator fetched ([`crate::jwks`]) from its `jwksUri` or by OpenID
//! discovery of its issuer, with the URL in `jwksUri` for display. When no set can be had (the
//! fetch failed and none was fetched before, over the limit of URLs, not fetched yet, an issuer
//! that cannot be discovered), `jwksError` says why and the sidecar refuses every token of that
//! issuer (fail closed); validation reports it in the object's status. Everything else is passed
//! through as written (`prefix` absent: empty; `forwardOriginalToken` absent: false; `timeout`
//! is the fetch's, not the sidecar's).
//!
//! Which version of a policy: the current one when accepted (one with an unavailable key set
//! included: it is rendered fail closed); after an invalid update of a policy accepted before,
//! that last accepted version; an invalid policy never accepted is left out. `None` when no
//! policy applies, so existing configurations are unchanged.

use super::{MeshView, Scope};
use crate::index::ObjKey;
use crate::jwks::{Resolved, Source};
use rustmesh_api::RequestAuthentication as Policy;
use rustmesh_api::request_authentication::{JwtRule as ApiRule, KeySource, no_discovery};
use rustmesh_xds::request_authn::{
    ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication, RequestAuthnPolicy,
};

/// The policies that can apply to the pods of `scope`, `None` when there are none.
pub(super) fn request_authentication(
    view: &MeshView<'_>,
    scope: &Scope,
) -> Option<RequestAuthentication> {
    let root = view.index.mesh.root_namespace.as_str();
    let ns = scope.namespace.as_str();
    let mut listed = rendered(view, root);
    if ns != root {
        listed.extend(rendered(view, ns));
    }
    let policies: Vec<RequestAuthnPolicy> = listed
        .into_iter()
        .map(|(k, p)| policy(view, k, p))
        .collect();
    (!policies.is_empty()).then_some(RequestAuthentication { policies })
}

fn rendered<'a>(view: &MeshView<'a>, ns: &str) -> Vec<(&'a ObjKey, &'a Policy)> {
    super::rendered_in(view, ns)
}

fn policy(view: &MeshView<'_>, key: &ObjKey, p: &Policy) -> RequestAuthnPolicy {
    RequestAuthnPolicy {
        name: key.to_string(),
        selector: p.spec.workload_labels().cloned().unwrap_or_default(),
        jwt_rules: p.spec.jwt_rules.iter().map(|r| rule(view, r)).collect(),
    }
}

fn rule(view: &MeshView<'_>, r: &ApiRule) -> JwtRule {
    let (jwks, jwks_uri, jwks_error) = match r.key_source() {
        KeySource::Inline(jwks) => (jwks.to_string(), String::new(), None),
        KeySource::Discovery { url: None, issuer } => {
            (String::new(), String::new(), Some(no_discovery(issuer)))
        }
        KeySource::Uri(_) | KeySource::Discovery { .. } => match Source::of(r) {
            // Validation refused a jwksUri that is not an http(s) URL: not rendered.
            None => (
                String::new(),
                String::new(),
                Some("no key set source".to_string()),
            ),
            Some(source) => {
                let resolved = view.index.key_sets.resolve(&view.key_sources, &source);
                match &resolved {
                    Resolved::Keys { uri, jwks, .. } => (jwks.to_string(), uri.to_string(), None),
                    Resolved::Unavailable { uri, .. } | Resolved::Pending { uri } => {
                        (String::new(), uri.to_string(), resolved.error())
                    }
                }
            }
        },
    };
    JwtRule {
        issuer: r.issuer().to_string(),
        audiences: r.audiences.clone(),
        jwks,
        jwks_uri,
        jwks_error,
        from_headers: r
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: r.from_params.clone(),
        from_cookies: r.from_cookies.clone(),
        output_payload_to_header: r.output_payload_to_header.clone().unwrap_or_default(),
        forward_original_token: r.forward_original_token(),
        output_claim_to_headers: r
            .output_claim_to_headers
            .iter()
            .map(|c| ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
    }
}
