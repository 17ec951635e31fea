//! Key sets as the operator receives them from any `jwksUri` (or as a user writes `jwks`):
//! arbitrary text checked with the operator's and the validating webhook's rule
//! (`rustmesh_api::request_authentication::jwks_problem`), then compiled as the sidecar compiles
//! a rule's key set. Neither panics, and they agree: a set the operator lets through must compile
//! in the sidecar (else one bad key set from the network would make every sidecar of the mesh
//! refuse its whole configuration). The reverse need not hold: the operator may be stricter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_api::request_authentication::jwks_problem;
use rustmesh_proxy::jwt::JwtVerifier;
use rustmesh_xds::request_authn::JwtRule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let problem = jwks_problem(text);
    let rule = JwtRule {
        issuer: "fuzz-issuer".into(),
        jwks: text.into(),
        ..Default::default()
    };
    let compiled = JwtVerifier::compile(&[("fuzz/keys", &rule)]);
    if problem.is_none() {
        if let Err(e) = compiled {
            panic!("the operator accepts a key set the sidecar refuses: {e}\n{text}");
        }
    }
});
