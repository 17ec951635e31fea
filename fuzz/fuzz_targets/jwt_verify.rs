//! Tokens as the sidecar receives them from any client: arbitrary bytes as the token of
//! `Authorization: Bearer ...` and of the `access_token` query parameter (first byte: bit 0 puts
//! the rest in the header, bit 1 in the parameter), checked by a verifier compiled once from a
//! fixed key set (`proxy/tests/data/jwt-jwks.json`: RSA, EC P-256 and Ed25519 public keys; the
//! RSA one is the test key the seeds are signed with) with a second issuer whose key set failed.
//! Verification never panics, and what it accepts is consistent.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::jwt::{JwtVerifier, Outcome};
use rustmesh_xds::request_authn::{ClaimToHeader, JwtRule};

static VERIFIER: LazyLock<JwtVerifier> = LazyLock::new(|| {
    let good = JwtRule {
        issuer: "fuzz-issuer".into(),
        audiences: vec!["svc".into()],
        jwks: include_str!("../../proxy/tests/data/jwt-jwks.json").into(),
        output_payload_to_header: "x-jwt-payload".into(),
        output_claim_to_headers: vec![ClaimToHeader {
            header: "x-jwt-key1".into(),
            claim: "nested.key1".into(),
        }],
        ..Default::default()
    };
    let broken = JwtRule {
        issuer: "broken-issuer".into(),
        jwks_error: Some("fetch failed".into()),
        ..Default::default()
    };
    JwtVerifier::compile(&[("fuzz/good", &good), ("fuzz/broken", &broken)]).unwrap()
});

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            out.push(char::from(*b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, token)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    if which & 1 != 0
        && let Ok(value) = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), token].concat())
    {
        headers.insert(AUTHORIZATION, value);
    }
    let uri: Uri = if which & 2 != 0 {
        match format!("/p?access_token={}", encode(token)).parse() {
            Ok(uri) => uri,
            Err(_) => return,
        }
    } else {
        Uri::from_static("/p")
    };
    let now: SystemTime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    match VERIFIER.verify(&headers, &uri, now) {
        Outcome::NoToken => {}
        Outcome::Valid(a) => {
            assert_eq!(a.principal, format!("{}/{}", a.issuer, a.subject));
            assert_eq!(a.issuer, "fuzz-issuer");
            assert!(!a.found_in.is_empty());
        }
        Outcome::Invalid(r) => {
            assert!(r.status == 401 || r.status == 403, "{r:?}");
            assert!(!r.message.is_empty());
        }
    }
});
