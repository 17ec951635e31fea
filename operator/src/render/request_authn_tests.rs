//! RequestAuthentication through validation and the renderer (`render::request_authn`): which
//! policies a scope lists, how each rule's key set is resolved (inline, fetched, pending,
//! unavailable: fail closed and reported), and what an invalid update does.

use super::*;
use crate::configmap::render;
use crate::fixtures::{bookinfo, istio, namespace, verdict};
use crate::index::Kind;
use crate::jwks::{Report, Source};
use crate::validation::{JWKS_UNAVAILABLE, Level, status_for};
use rustmesh_xds::request_authn::RequestAuthentication;

const JWKS: &str = r#"{"keys":[{"kty":"OKP","kid":"ed-1","crv":"Ed25519","x":"keUzBvdTiZZTD82uAWEeMoYR9Ng_7-qrTQZGX6rvDu4"}]}"#;

fn ra(ns: &str, name: &str, created: &str, generation: i64, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\", generation: {generation}}}\nspec:\n{spec}---\n"
    )
}

fn authn(index: &Index, ns: &str) -> Option<RequestAuthentication> {
    let config = render(index, &Scope::namespace(ns));
    if let Err(e) = config.validate() {
        panic!("render of {ns} does not validate: {e}");
    }
    config.request_authentication
}

fn inline_spec(issuer: &str) -> String {
    format!(
        "  selector: {{matchLabels: {{app: productpage}}}}\n  jwtRules:\n  - issuer: {issuer}\n    audiences: [shop]\n    jwks: '{JWKS}'\n    fromHeaders: [{{name: x-jwt, prefix: \"Token \"}}]\n    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]\n    forwardOriginalToken: true\n"
    )
}

#[test]
fn no_policy_renders_none_and_other_namespaces_policies_do_not_reach() {
    let mut index = bookinfo();
    assert_eq!(authn(&index, "default"), None);
    namespace(&mut index, "shop", true);
    istio(
        &mut index,
        &ra("shop", "jwt", "2024-01-01T00:00:00Z", 1, &inline_spec("a")),
    );
    assert_eq!(authn(&index, "default"), None);
    let shop = authn(&index, "shop").expect("shop's policy");
    assert_eq!(shop.policies[0].name, "shop/jwt");
}

#[test]
fn an_inline_rule_is_passed_through_as_written() {
    let mut index = bookinfo();
    istio(
        &mut index,
        &ra(
            "default",
            "jwt",
            "2024-01-01T00:00:00Z",
            1,
            &inline_spec("https://a.example"),
        ),
    );
    let a = authn(&index, "default").unwrap();
    let p = &a.policies[0];
    assert_eq!(
        p.selector.get("app").map(String::as_str),
        Some("productpage")
    );
    let r = &p.jwt_rules[0];
    assert_eq!(r.issuer, "https://a.example");
    assert_eq!(r.audiences, ["shop"]);
    assert_eq!(r.jwks, JWKS);
    assert_eq!(r.jwks_error, None);
    assert_eq!(r.from_headers[0].name, "x-jwt");
    assert_eq!(r.from_headers[0].prefix, "Token ");
    assert_eq!(r.output_claim_to_headers[0].header, "x-sub");
    assert!(r.forward_original_token);
    let v = verdict(&index, Kind::RequestAuthentication, "default", "jwt");
    assert_eq!((v.accepted, v.reason), (true, "Accepted"));
}

#[test]
fn root_namespace_policies_come_first_and_reach_every_namespace() {
    let mut index = bookinfo();
    namespace(&mut index, "istio-system", false);
    istio(
        &mut index,
        &ra(
            "default",
            "local",
            "2023-01-01T00:00:00Z",
            1,
            &inline_spec("l"),
        ),
    );
    istio(
        &mut index,
        &ra(
            "istio-system",
            "mesh",
            "2024-01-01T00:00:00Z",
            1,
            &inline_spec("m"),
        ),
    );
    let names: Vec<String> = authn(&index, "default")
        .unwrap()
        .policies
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["istio-system/mesh", "default/local"]);
}

#[test]
fn a_jwks_uri_is_pending_then_fetched_then_fails_closed_when_none_can_be_had() {
    let mut index = bookinfo();
    let uri = "http://keys.default.svc:8080/jwks";
    istio(
        &mut index,
        &ra(
            "default",
            "jwt",
            "2024-01-01T00:00:00Z",
            1,
            &format!("  jwtRules:\n  - issuer: https://a.example\n    jwksUri: {uri}\n"),
        ),
    );
    let source = Source::Uri(uri.into());
    assert!(index.key_sources().fetch.contains_key(&source));

    // Not fetched yet: rendered fail closed, not reported (a fetch is in flight).
    let r = &authn(&index, "default").unwrap().policies[0].jwt_rules[0];
    assert!(r.jwks.is_empty());
    assert!(r.jwks_error.as_deref().unwrap().contains("not fetched yet"));
    assert_eq!(
        verdict(&index, Kind::RequestAuthentication, "default", "jwt").reason,
        "Accepted"
    );

    // Fetched: the keys, and where they came from.
    let affects = index.record_key_set(
        source.clone(),
        Report::Fetched {
            uri: uri.into(),
            jwks: JWKS.into(),
        },
    );
    assert!(affects.namespaces.contains("default"), "{affects:?}");
    let r = &authn(&index, "default").unwrap().policies[0].jwt_rules[0];
    assert_eq!((r.jwks.as_str(), r.jwks_uri.as_str()), (JWKS, uri));
    assert_eq!(r.jwks_error, None);

    // A failed refresh: the keys keep serving; the status warns, naming the field.
    index.record_key_set(
        source.clone(),
        Report::Failed {
            error: "GET: status 503".into(),
            keep: true,
        },
    );
    let r = &authn(&index, "default").unwrap().policies[0].jwt_rules[0];
    assert_eq!(r.jwks, JWKS);
    let v = verdict(&index, Kind::RequestAuthentication, "default", "jwt");
    assert_eq!((v.accepted, v.reason), (true, "Accepted"));
    assert_eq!(v.findings[0].level, Level::Warning);
    assert_eq!(v.findings[0].field, "spec.jwtRules[0].jwksUri");

    // No keys any more: every token of the issuer is refused; Accepted=False says why.
    index.record_key_set(
        source,
        Report::Failed {
            error: "GET: status 503".into(),
            keep: false,
        },
    );
    let r = &authn(&index, "default").unwrap().policies[0].jwt_rules[0];
    assert!(r.jwks.is_empty());
    assert_eq!(r.jwks_error.as_deref(), Some("GET: status 503"));
    let v = verdict(&index, Kind::RequestAuthentication, "default", "jwt");
    assert_eq!((v.accepted, v.reason), (true, JWKS_UNAVAILABLE));
    assert_eq!(v.findings[0].level, Level::Error);
    assert_eq!(v.findings[0].field, "spec.jwtRules[0].jwksUri");
    let status = status_for(&v, Some(1), None, "t0");
    let accepted = &status.conditions[0];
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_deref()),
        ("False", Some(JWKS_UNAVAILABLE))
    );
    assert!(accepted.message.as_deref().unwrap().contains("status 503"));
    assert_eq!(status.conditions[1].status, "True", "still rendered");
}

#[test]
fn an_issuer_that_cannot_be_discovered_renders_fail_closed_and_is_reported() {
    let mut index = bookinfo();
    istio(
        &mut index,
        &ra(
            "default",
            "jwt",
            "2024-01-01T00:00:00Z",
            1,
            "  jwtRules:\n  - issuer: not-a-url\n",
        ),
    );
    assert!(index.key_sources().fetch.is_empty());
    let r = &authn(&index, "default").unwrap().policies[0].jwt_rules[0];
    assert!(r.jwks_error.as_deref().unwrap().contains("not-a-url"));
    let v = verdict(&index, Kind::RequestAuthentication, "default", "jwt");
    assert_eq!(v.reason, JWKS_UNAVAILABLE);
    assert_eq!(v.findings[0].field, "spec.jwtRules[0].issuer");
    // Reported once, as the error (not also as the warning).
    assert_eq!(
        v.findings
            .iter()
            .filter(|f| f.field == "spec.jwtRules[0].issuer")
            .count(),
        1
    );
}

#[test]
fn an_invalid_update_keeps_the_last_accepted_version_serving() {
    let mut index = bookinfo();
    istio(
        &mut index,
        &ra(
            "default",
            "jwt",
            "2024-01-01T00:00:00Z",
            1,
            &inline_spec("good"),
        ),
    );
    let validation = MeshView::new(&index).validation.clone();
    index.remember_accepted(validation.accepted_keys());
    // Both jwks and jwksUri: Istio refuses it.
    istio(
        &mut index,
        &ra(
            "default",
            "jwt",
            "2024-01-01T00:00:00Z",
            2,
            &format!(
                "  jwtRules:\n  - issuer: bad\n    jwks: '{JWKS}'\n    jwksUri: http://k.example/jwks\n"
            ),
        ),
    );
    let v = verdict(&index, Kind::RequestAuthentication, "default", "jwt");
    assert_eq!((v.accepted, v.reason), (false, "Invalid"));
    assert_eq!(v.serving_previous, Some(1));
    let a = authn(&index, "default").unwrap();
    assert_eq!(a.policies[0].jwt_rules[0].issuer, "good");
    // The invalid version's URL is not fetched.
    assert!(index.key_sources().fetch.is_empty());
}
