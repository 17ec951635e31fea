//! Tests of JWT verification with real signatures: keys are made here (EC P-256/P-384 and
//! Ed25519 with `ring`; RSA from the fixed test key `proxy/tests/data/jwt-rsa-2048.pem`, since
//! `ring` cannot generate RSA keys), their public halves written as a JWKS, and tokens signed
//! with them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Uri};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use rustmesh_xds::request_authn::{ClaimToHeader, JwtHeader, JwtRule};
use serde_json::{Value, json};

use super::*;

const RSA_PEM: &str = include_str!("../../tests/data/jwt-rsa-2048.pem");
const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

/// A private key, its `kid`, and how to write its public half and sign with it.
enum Key {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct Signer {
    key: Key,
    kid: Option<&'static str>,
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa(kid: Option<&'static str>) -> Signer {
    let der = PrivatePkcs8KeyDer::from_pem_slice(RSA_PEM.as_bytes()).unwrap();
    let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    Signer {
        key: Key::Rsa(key),
        kid,
    }
}

fn p256(kid: Option<&'static str>) -> Signer {
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
    Signer {
        key: Key::P256(key),
        kid,
    }
}

fn p384(kid: Option<&'static str>) -> Signer {
    let alg = &signature::ECDSA_P384_SHA384_FIXED_SIGNING;
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
    Signer {
        key: Key::P384(key),
        kid,
    }
}

fn ed25519(kid: Option<&'static str>) -> Signer {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    Signer {
        key: Key::Ed(key),
        kid,
    }
}

impl Signer {
    /// The public key as a JWK.
    fn jwk(&self) -> Value {
        let mut jwk = match &self.key {
            Key::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::P256(k) | Key::P384(k) => {
                let point = k.public_key().as_ref();
                let (crv, size) = match &self.key {
                    Key::P256(_) => ("P-256", 32),
                    _ => ("P-384", 48),
                };
                json!({"kty": "EC", "crv": crv,
                       "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..])})
            }
            Key::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key())}),
        };
        if let Some(kid) = self.kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// The algorithm tokens are signed with by default.
    fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "RS256",
            Key::P256(_) => "ES256",
            Key::P384(_) => "ES384",
            Key::Ed(_) => "EdDSA",
        }
    }

    fn token(&self, claims: Value) -> String {
        self.token_with(self.alg(), json!({}), claims)
    }

    /// A token with header `alg`, `kid` and the fields of `extra_header`, signed with this key.
    fn token_with(&self, alg: &str, extra_header: Value, claims: Value) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = self.kid {
            header["kid"] = json!(kid);
        }
        for (k, v) in extra_header.as_object().unwrap() {
            header[k] = v.clone();
        }
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        format!("{input}.{}", b64(self.sign(alg, &input)))
    }

    /// The signature of `input` with `alg`.
    fn sign(&self, alg: &str, input: &str) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.key {
            Key::Rsa(k) => {
                let padding: &dyn signature::RsaEncoding = match alg {
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(padding, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            Key::P256(k) | Key::P384(k) => {
                k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
            }
            Key::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        }
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}

fn rule(issuer: &str, signers: &[&Signer]) -> JwtRule {
    JwtRule {
        issuer: issuer.into(),
        jwks: jwks(signers),
        ..Default::default()
    }
}

fn verifier(rules: &[JwtRule]) -> JwtVerifier {
    let named: Vec<(&str, &JwtRule)> = rules.iter().map(|r| ("foo/jwt", r)).collect();
    JwtVerifier::compile(&named).unwrap()
}

/// Standard claims valid at [`NOW`].
fn claims(iss: &str) -> Value {
    json!({"iss": iss, "sub": "alice", "exp": NOW + 3600, "iat": NOW - 10})
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    h
}

fn root() -> Uri {
    Uri::from_static("/")
}

fn valid(outcome: Outcome) -> Authenticated {
    match outcome {
        Outcome::Valid(a) => *a,
        other => panic!("expected a valid token, got {other:?}"),
    }
}

fn refused(outcome: Outcome) -> Refusal {
    match outcome {
        Outcome::Invalid(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The reason a bearer token is refused for.
fn reason(v: &JwtVerifier, token: &str) -> Status {
    refused(v.verify(&bearer(token), &root(), now())).reason
}

#[test]
fn a_valid_token_gives_the_principal_and_its_claims() {
    let key = rsa(Some("k1"));
    let v = verifier(&[rule("https://issuer.example", &[&key])]);
    let mut c = claims("https://issuer.example");
    c["aud"] = json!(["web", "mobile"]);
    c["azp"] = json!("frontend");
    c["groups"] = json!(["admins", "devs"]);
    let a = valid(v.verify(&bearer(&key.token(c)), &root(), now()));
    assert_eq!(a.principal, "https://issuer.example/alice");
    assert_eq!(a.issuer, "https://issuer.example");
    assert_eq!(a.subject, "alice");
    assert_eq!(a.audiences, ["web", "mobile"]);
    assert_eq!(a.presenter.as_deref(), Some("frontend"));
    assert_eq!(&*a.policy, "foo/jwt");
    assert_eq!(a.claims["groups"], json!(["admins", "devs"]));
    let authorization = TokenLocation::Header {
        name: AUTHORIZATION,
        prefix: "Bearer ".into(),
    };
    assert_eq!(a.found_in, std::slice::from_ref(&authorization));
    assert_eq!(a.remove_from, [authorization]);
    assert!(a.headers_to_add.is_empty());
}

#[test]
fn every_supported_algorithm_verifies() {
    let (r, e256, e384, ed) = (rsa(None), p256(None), p384(None), ed25519(None));
    let v = verifier(&[rule("iss", &[&r, &e256, &e384, &ed])]);
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let t = r.token_with(alg, json!({}), claims("iss"));
        valid(v.verify(&bearer(&t), &root(), now()));
    }
    for key in [&e256, &e384, &ed] {
        valid(v.verify(&bearer(&key.token(claims("iss"))), &root(), now()));
    }
}

#[test]
fn exp_and_nbf_are_checked_with_sixty_seconds_of_skew() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let with = |field: &str, at: u64| {
        let mut c = claims("iss");
        c[field] = json!(at);
        key.token(c)
    };
    assert_eq!(reason(&v, &with("exp", NOW - 61)), Status::Expired);
    let r = refused(v.verify(&bearer(&with("exp", NOW - 61)), &root(), now()));
    assert_eq!(
        (r.status, r.message),
        (StatusCode::UNAUTHORIZED, "Jwt is expired")
    );
    valid(v.verify(&bearer(&with("exp", NOW - 59)), &root(), now()));
    assert_eq!(reason(&v, &with("nbf", NOW + 61)), Status::NotYetValid);
    assert_eq!(Status::NotYetValid.message(), "Jwt not yet valid");
    valid(v.verify(&bearer(&with("nbf", NOW + 59)), &root(), now()));
    // No exp: never expires (as in jwt_verify_lib); a fractional NumericDate is truncated.
    let mut c = claims("iss");
    c.as_object_mut().unwrap().remove("exp");
    valid(v.verify(&bearer(&key.token(c)), &root(), now()));
    let mut c = claims("iss");
    c["exp"] = json!((NOW - 61) as f64 + 0.5);
    assert_eq!(reason(&v, &key.token(c)), Status::Expired);
}

#[test]
fn audiences_must_intersect_when_the_rule_has_some() {
    let key = p256(None);
    let mut r = rule("iss", &[&key]);
    r.audiences = vec!["https://bookstore.example/".into(), "mobile".into()];
    let v = verifier(&[r]);
    let with_aud = |aud: Value| {
        let mut c = claims("iss");
        c["aud"] = aud;
        key.token(c)
    };
    let r = refused(v.verify(&bearer(&with_aud(json!("web"))), &root(), now()));
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.message, "Audiences in Jwt are not allowed");
    // Scheme and trailing slash are ignored on both sides; one audience in common is enough.
    valid(v.verify(
        &bearer(&with_aud(json!("bookstore.example"))),
        &root(),
        now(),
    ));
    valid(v.verify(&bearer(&with_aud(json!(["web", "mobile"]))), &root(), now()));
    // No aud at all, while the rule requires one.
    let no_aud = key.token(claims("iss"));
    assert_eq!(reason(&v, &no_aud), Status::AudienceNotAllowed);
    // aud of the wrong type.
    assert_eq!(reason(&v, &with_aud(json!(7))), Status::AudNotString);
    // A rule without audiences accepts any.
    let open = verifier(&[rule("iss", &[&key])]);
    valid(open.verify(&bearer(&with_aud(json!("web"))), &root(), now()));
}

#[test]
fn a_token_of_an_issuer_no_rule_names_is_refused() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let r = refused(v.verify(&bearer(&key.token(claims("other"))), &root(), now()));
    assert_eq!(
        (r.status, r.message),
        (StatusCode::UNAUTHORIZED, "Jwt issuer is not configured")
    );
    let mut c = claims("iss");
    c["iss"] = json!(42);
    assert_eq!(reason(&v, &key.token(c)), Status::IssNotString);
}

#[test]
fn a_signature_by_another_key_or_over_other_claims_fails() {
    let (good, forger) = (p256(Some("k1")), p256(Some("k1")));
    let v = verifier(&[rule("iss", &[&good])]);
    let forged = forger.token(claims("iss"));
    let r = refused(v.verify(&bearer(&forged), &root(), now()));
    assert_eq!(r.message, "Jwt verification fails");
    // An RSA token whose payload was swapped after signing.
    let key = rsa(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let t = key.token(claims("iss"));
    let mut c = claims("iss");
    c["sub"] = json!("mallory");
    let parts: Vec<&str> = t.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(c.to_string()), parts[2]);
    assert_eq!(reason(&v, &tampered), Status::VerificationFail);
    // An EdDSA signature of the wrong length.
    let ed = ed25519(None);
    let v = verifier(&[rule("iss", &[&ed])]);
    let t = ed.token(claims("iss"));
    let short = format!("{}{}", &t[..t.rfind('.').unwrap() + 1], b64([1u8; 10]));
    assert_eq!(reason(&v, &short), Status::Ed25519SignatureWrongLength);
}

#[test]
fn kid_selects_the_key_and_alg_must_match_a_keys_alg() {
    let (k1, k2) = (p256(Some("k1")), p256(Some("k2")));
    let v = verifier(&[rule("iss", &[&k1, &k2])]);
    valid(v.verify(&bearer(&k2.token(claims("iss"))), &root(), now()));
    let stranger = p256(Some("k3"));
    let r = refused(v.verify(&bearer(&stranger.token(claims("iss"))), &root(), now()));
    assert_eq!(
        r.message,
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    // No kid in the token: every key is tried.
    let anonymous = Signer {
        key: k2.key,
        kid: None,
    };
    valid(v.verify(&bearer(&anonymous.token(claims("iss"))), &root(), now()));
    // A key that says RS256 is not tried for a PS256 token.
    let r = rsa(Some("r"));
    let mut jwk = r.jwk();
    jwk["alg"] = json!("RS256");
    let pinned = JwtRule {
        issuer: "iss".into(),
        jwks: json!({"keys": [jwk]}).to_string(),
        ..Default::default()
    };
    let v = verifier(&[pinned]);
    valid(v.verify(&bearer(&r.token(claims("iss"))), &root(), now()));
    let ps = r.token_with("PS256", json!({}), claims("iss"));
    assert_eq!(reason(&v, &ps), Status::KidAlgMismatch);
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let body = b64(claims("iss").to_string());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "None"}),
        json!({"alg": "ES512"}),
    ] {
        let t = format!("{}.{body}.{}", b64(header.to_string()), b64("x"));
        let r = refused(v.verify(&bearer(&t), &root(), now()));
        assert_eq!(r.message, "Jwt header [alg] is not supported", "{header}");
    }
    // An HS256 token, properly signed with a secret: refused by its alg, whatever the keys.
    let input = format!("{}.{body}", b64(json!({"alg": "HS256"}).to_string()));
    let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"shared secret");
    let t = format!(
        "{input}.{}",
        b64(ring::hmac::sign(&secret, input.as_bytes()))
    );
    assert_eq!(reason(&v, &t), Status::HeaderNotImplementedAlg);
    // An HMAC key in a set is skipped; a set of only HMAC keys is refused.
    let oct = json!({"kty": "oct", "k": b64("shared secret"), "alg": "HS256"});
    let only_oct = JwtRule {
        issuer: "iss".into(),
        jwks: json!({"keys": [oct]}).to_string(),
        ..Default::default()
    };
    let e = JwtVerifier::compile(&[("foo/jwt", &only_oct)]).unwrap_err();
    assert_eq!(e.field, "jwks");
    assert!(e.reason.contains("HMAC"), "{e}");
    let mixed = JwtRule {
        issuer: "iss".into(),
        jwks: json!({"keys": [oct, key.jwk()]}).to_string(),
        ..Default::default()
    };
    let v = verifier(&[mixed]);
    valid(v.verify(&bearer(&key.token(claims("iss"))), &root(), now()));
    assert_eq!(reason(&v, &t), Status::HeaderNotImplementedAlg);
}

#[test]
fn a_header_location_with_a_prefix() {
    let key = p256(None);
    let mut r = rule("iss", &[&key]);
    r.from_headers = vec![JwtHeader {
        name: "X-Jwt-Assertion".into(),
        prefix: "Token ".into(),
    }];
    let v = verifier(&[r]);
    let t = key.token(claims("iss"));
    let mut h = HeaderMap::new();
    h.insert("x-jwt-assertion", format!("token  {t} ").parse().unwrap());
    let a = valid(v.verify(&h, &root(), now()));
    let location = TokenLocation::Header {
        name: HeaderName::from_static("x-jwt-assertion"),
        prefix: "Token ".into(),
    };
    assert_eq!(a.remove_from, [location]);
    // The rule names its own location only: the default ones are not read.
    assert!(matches!(
        v.verify(&bearer(&t), &root(), now()),
        Outcome::NoToken
    ));
    let uri: Uri = format!("/?access_token={t}").parse().unwrap();
    assert!(matches!(
        v.verify(&HeaderMap::new(), &uri, now()),
        Outcome::NoToken
    ));
    // A value without the prefix is no token.
    h.insert("x-jwt-assertion", t.parse().unwrap());
    assert!(matches!(v.verify(&h, &root(), now()), Outcome::NoToken));
}

#[test]
fn query_parameter_and_cookie_locations() {
    let key = p256(None);
    let t = key.token(claims("iss"));
    // The default parameter.
    let v = verifier(&[rule("iss", &[&key])]);
    let uri: Uri = format!("/books?page=2&access_token={t}").parse().unwrap();
    let a = valid(v.verify(&HeaderMap::new(), &uri, now()));
    assert_eq!(a.found_in, [TokenLocation::Param("access_token".into())]);
    // Named ones.
    let mut r = rule("iss", &[&key]);
    r.from_params = vec!["jwt".into()];
    r.from_cookies = vec!["session".into()];
    r.forward_original_token = true;
    let v = verifier(&[r]);
    let uri: Uri = format!("/x?jwt={t}").parse().unwrap();
    let a = valid(v.verify(&HeaderMap::new(), &uri, now()));
    assert_eq!(a.found_in, [TokenLocation::Param("jwt".into())]);
    assert!(a.remove_from.is_empty(), "forwardOriginalToken keeps it");
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        format!("theme=dark; session={t}").parse().unwrap(),
    );
    let a = valid(v.verify(&h, &root(), now()));
    assert_eq!(a.found_in, [TokenLocation::Cookie("session".into())]);
    assert!(matches!(
        v.verify(&bearer(&t), &root(), now()),
        Outcome::NoToken
    ));
}

#[test]
fn rules_of_several_issuers_each_verify_their_own_tokens() {
    let (a_key, b_key, c_key) = (p256(None), rsa(None), ed25519(None));
    let mut c = rule("issuer-c", &[&c_key]);
    c.from_headers = vec![JwtHeader {
        name: "x-c-token".into(),
        prefix: String::new(),
    }];
    let rules = [rule("issuer-a", &[&a_key]), rule("issuer-b", &[&b_key]), c];
    let named: Vec<(&str, &JwtRule)> = vec![
        ("ns/a", &rules[0]),
        ("ns/b", &rules[1]),
        ("ns/c", &rules[2]),
    ];
    let v = JwtVerifier::compile(&named).unwrap();
    assert_eq!(
        v.issuers().collect::<Vec<_>>(),
        ["issuer-a", "issuer-b", "issuer-c"]
    );
    let a = valid(v.verify(&bearer(&a_key.token(claims("issuer-a"))), &root(), now()));
    assert_eq!(
        (a.principal.as_str(), &*a.policy),
        ("issuer-a/alice", "ns/a")
    );
    let b = valid(v.verify(&bearer(&b_key.token(claims("issuer-b"))), &root(), now()));
    assert_eq!(&*b.policy, "ns/b");
    // issuer-a's claim with issuer-b's key: a's keys are used, and fail.
    assert_eq!(
        reason(&v, &b_key.token(claims("issuer-a"))),
        Status::VerificationFail
    );
    // issuer-c only reads x-c-token: its token in Authorization has no rule there.
    assert_eq!(
        reason(&v, &c_key.token(claims("issuer-c"))),
        Status::UnknownIssuer
    );
    let mut h = HeaderMap::new();
    h.insert(
        "x-c-token",
        c_key.token(claims("issuer-c")).parse().unwrap(),
    );
    valid(v.verify(&h, &root(), now()));
    // And issuer-a's token there is not for issuer-c's location.
    h.insert(
        "x-c-token",
        a_key.token(claims("issuer-a")).parse().unwrap(),
    );
    assert_eq!(
        refused(v.verify(&h, &root(), now())).reason,
        Status::UnknownIssuer
    );
}

#[test]
fn a_jwks_error_fails_closed_for_that_issuer_only() {
    let (a_key, b_key) = (p256(None), p256(None));
    let broken = JwtRule {
        issuer: "issuer-a".into(),
        jwks_uri: "https://issuer-a.example/keys".into(),
        jwks_error: Some("fetching https://issuer-a.example/keys: timed out".into()),
        ..Default::default()
    };
    let v = verifier(&[broken, rule("issuer-b", &[&b_key])]);
    let r = refused(v.verify(&bearer(&a_key.token(claims("issuer-a"))), &root(), now()));
    assert_eq!(
        (r.status, r.message),
        (StatusCode::UNAUTHORIZED, "Jwks remote fetch is failed")
    );
    assert!(r.detail.unwrap().contains("timed out"));
    valid(v.verify(&bearer(&b_key.token(claims("issuer-b"))), &root(), now()));
    // Requests without a token still pass.
    assert!(matches!(
        v.verify(&HeaderMap::new(), &root(), now()),
        Outcome::NoToken
    ));
}

#[test]
fn nested_and_list_claims_are_read_as_istio_authorization_does() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let mut c = claims("iss");
    c["groups"] = json!(["admins", 7, "devs"]);
    c["nested"] = json!({"key": "value", "deeper": {"list": ["x", "y"]}, "n": 3});
    c["scope"] = json!("read  write");
    c["role"] = json!("editor admin");
    let a = valid(v.verify(&bearer(&key.token(c)), &root(), now()));
    assert_eq!(a.claim_strings(&["groups"]), ["admins", "devs"]);
    assert_eq!(a.claim_strings(&["nested", "key"]), ["value"]);
    assert_eq!(a.claim_strings(&["nested", "deeper", "list"]), ["x", "y"]);
    assert_eq!(a.claim_strings(&["scope"]), ["read", "write"]);
    assert_eq!(a.claim_strings(&["role"]), ["editor admin"]);
    assert_eq!(a.claim_strings(&["sub"]), ["alice"]);
    assert!(a.claim_strings(&["nested", "n"]).is_empty());
    assert!(a.claim_strings(&["nested", "missing"]).is_empty());
    assert!(a.claim_strings(&["sub", "x"]).is_empty());
    assert!(a.claim_strings(&[]).is_empty());
}

#[test]
fn payload_and_claims_are_copied_to_headers() {
    let key = p256(None);
    let mut r = rule("iss", &[&key]);
    r.output_payload_to_header = "x-jwt-payload".into();
    r.output_claim_to_headers = [
        "sub",
        "nested.key1",
        "level",
        "ratio",
        "admin",
        "groups",
        "missing",
        "nested",
    ]
    .iter()
    .map(|claim| ClaimToHeader {
        header: format!("x-claim-{}", claim.replace('.', "-")),
        claim: claim.to_string(),
    })
    .collect();
    let v = verifier(&[r]);
    let mut c = claims("iss");
    c["nested"] = json!({"key1": "v1"});
    c["level"] = json!(3);
    c["ratio"] = json!(0.5);
    c["admin"] = json!(true);
    c["groups"] = json!(["a", "b"]);
    let t = key.token(c);
    let a = valid(v.verify(&bearer(&t), &root(), now()));
    let get = |name: &str| {
        a.headers_to_add
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap().to_string())
    };
    let payload = t.split('.').nth(1).unwrap();
    assert_eq!(get("x-jwt-payload").as_deref(), Some(payload));
    let decoded: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(decoded["sub"], "alice");
    assert_eq!(get("x-claim-sub").as_deref(), Some("alice"));
    assert_eq!(get("x-claim-nested-key1").as_deref(), Some("v1"));
    assert_eq!(get("x-claim-level").as_deref(), Some("3"));
    assert_eq!(get("x-claim-ratio").as_deref(), Some("0.5"));
    assert_eq!(get("x-claim-admin").as_deref(), Some("true"));
    assert_eq!(get("x-claim-groups"), Some(STANDARD.encode(r#"["a","b"]"#)));
    assert_eq!(
        get("x-claim-nested"),
        Some(STANDARD.encode(r#"{"key1":"v1"}"#))
    );
    assert_eq!(get("x-claim-missing"), None);
    assert_eq!(a.headers_to_add.len(), 8);
    let names: Vec<&str> = v.output_headers().iter().map(HeaderName::as_str).collect();
    assert!(names.contains(&"x-jwt-payload") && names.contains(&"x-claim-missing"));
    assert_eq!(names.len(), 9);
}

#[test]
fn refusals_carry_envoys_www_authenticate() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let mut h = bearer("not-a-token");
    h.insert("host", "reviews.default:9080".parse().unwrap());
    let uri: Uri = "/reviews/1?user=me".parse().unwrap();
    let r = refused(v.verify(&h, &uri, now()));
    assert_eq!(
        r.message,
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
    assert_eq!(
        r.www_authenticate,
        "Bearer realm=\"http://reviews.default:9080/reviews/1?user=me\", error=\"invalid_token\""
    );
    // An absolute URI's scheme and authority win; a long path is cut at 256 bytes.
    let long = format!("https://user@api.example/{}", "a".repeat(400));
    let r = refused(v.verify(&h, &long.parse().unwrap(), now()));
    let expected = format!(
        "Bearer realm=\"https://api.example/{}\", error=\"invalid_token\"",
        "a".repeat(REALM_PATH_LIMIT - 1)
    );
    assert_eq!(
        r.www_authenticate,
        HeaderValue::from_str(&expected).unwrap()
    );
}

#[test]
fn malformed_tokens_are_refused_with_jwt_verify_libs_reasons() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let good = key.token(claims("iss"));
    let sig = good.rsplit('.').next().unwrap();
    let header = b64(json!({"alg": "ES256"}).to_string());
    let body = b64(claims("iss").to_string());
    let cases = [
        ("abc".to_string(), Status::BadFormat),
        ("a.b".into(), Status::BadFormat),
        ("a.b.c.d".into(), Status::BadFormat),
        (format!("{header}..{sig}"), Status::BadFormat),
        (format!("%%%.{body}.{sig}"), Status::HeaderBadBase64),
        (
            format!("{}.{body}.{sig}", b64("not json")),
            Status::HeaderBadJson,
        ),
        (
            format!("{}.{body}.{sig}", b64("[1]")),
            Status::HeaderBadJson,
        ),
        (
            format!("{}.{body}.{sig}", b64(r#"{"typ":"JWT"}"#)),
            Status::HeaderBadAlg,
        ),
        (
            format!("{}.{body}.{sig}", b64(r#"{"alg":1}"#)),
            Status::HeaderBadAlg,
        ),
        (
            format!("{}.{body}.{sig}", b64(r#"{"alg":"ES256","kid":1}"#)),
            Status::HeaderBadKid,
        ),
        (format!("{header}.!!.{sig}"), Status::PayloadBadBase64),
        (
            format!("{header}.{}.{sig}", b64("{")),
            Status::PayloadBadJson,
        ),
        (
            format!("{header}.{}.{sig}", b64("\"str\"")),
            Status::PayloadBadJson,
        ),
        (
            format!("{header}.{}.{sig}", b64(r#"{"iss":"iss","exp":"soon"}"#)),
            Status::ExpNotInteger,
        ),
        (
            format!("{header}.{}.{sig}", b64(r#"{"iss":"iss","exp":-1}"#)),
            Status::ExpOutOfRange,
        ),
        (
            format!("{header}.{}.{sig}", b64(r#"{"iss":"iss","nbf":1e300}"#)),
            Status::NbfOutOfRange,
        ),
        (
            format!("{header}.{}.{sig}", b64(r#"{"iss":"iss","sub":1}"#)),
            Status::SubNotString,
        ),
        (
            format!("{header}.{}.{sig}", b64(r#"{"iss":"iss","jti":[]}"#)),
            Status::JtiNotString,
        ),
        (
            format!("{header}.{}.{sig}", b64(r#"{"iss":"iss","iat":true}"#)),
            Status::IatNotInteger,
        ),
        (
            format!("{header}.{}.{sig}", b64(r#"{"iss":"iss","aud":["a",1]}"#)),
            Status::AudNotString,
        ),
        (format!("{header}.{body}.**"), Status::SignatureBadBase64),
    ];
    for (token, want) in cases {
        assert_eq!(reason(&v, &token), want, "{token}");
    }
    // Padded sections are accepted, as by jwt_verify_lib (the signature covers them as sent).
    let padded_claims = json!({"iss": "iss", "sub": "abc"});
    let padded_input = format!(
        "{}.{}",
        STANDARD.encode(json!({"alg": "ES256"}).to_string()),
        STANDARD.encode(padded_claims.to_string())
    );
    assert!(padded_input.contains('='), "{padded_input}");
    assert!(!padded_input.contains(['+', '/']), "{padded_input}");
    let padded = format!("{padded_input}.{}", b64(key.sign("ES256", &padded_input)));
    assert_eq!(
        valid(v.verify(&bearer(&padded), &root(), now())).subject,
        "abc"
    );
    // A critical header extension is refused, even when the signature is good.
    let crit = key.token_with("ES256", json!({"crit": ["exp"], "exp": 1}), claims("iss"));
    assert_eq!(reason(&v, &crit), Status::VerificationFail);
}

#[test]
fn a_token_over_the_length_limit_is_refused_before_decoding() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let mut c = claims("iss");
    c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let r = refused(v.verify(&bearer(&key.token(c)), &root(), now()));
    assert_eq!(r.message, "Jwt verification fails");
    assert!(r.detail.unwrap().contains("over the limit of 8192 bytes"));
    let mut c = claims("iss");
    c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES / 2));
    valid(v.verify(&bearer(&key.token(c)), &root(), now()));
}

#[test]
fn every_token_of_a_request_must_be_valid() {
    let (key, other) = (p256(None), p256(None));
    let v = verifier(&[rule("iss", &[&key])]);
    let good = key.token(claims("iss"));
    let bad = other.token(claims("iss"));
    let uri: Uri = format!("/?access_token={bad}").parse().unwrap();
    assert_eq!(
        refused(v.verify(&bearer(&good), &uri, now())).reason,
        Status::VerificationFail
    );
    // The same good token twice: one identity, both places.
    let uri: Uri = format!("/?access_token={good}").parse().unwrap();
    let a = valid(v.verify(&bearer(&good), &uri, now()));
    assert_eq!(a.found_in.len(), 2);
    // Too many tokens are refused without checking them.
    let mut h = HeaderMap::new();
    for _ in 0..=MAX_TOKENS_PER_REQUEST {
        h.append(AUTHORIZATION, format!("Bearer {good}").parse().unwrap());
    }
    let r = refused(v.verify(&h, &root(), now()));
    assert_eq!(r.message, "Found multiple Jwt tokens");
    h.remove(AUTHORIZATION);
    for _ in 0..MAX_TOKENS_PER_REQUEST {
        h.append(AUTHORIZATION, format!("Bearer {good}").parse().unwrap());
    }
    valid(v.verify(&h, &root(), now()));
}

#[test]
fn requests_without_a_token_pass_without_identity() {
    let key = p256(None);
    let v = verifier(&[rule("iss", &[&key])]);
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
    assert!(matches!(v.verify(&h, &root(), now()), Outcome::NoToken));
    h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
    assert!(matches!(v.verify(&h, &root(), now()), Outcome::NoToken));
    let none = JwtVerifier::compile(&[]).unwrap();
    assert!(none.is_empty());
    assert!(matches!(
        none.verify(&bearer("x.y.z"), &root(), now()),
        Outcome::NoToken
    ));
}

#[test]
fn bad_configuration_is_an_error_naming_the_policy_rule_and_field() {
    let key = p256(None);
    let good = rule("iss", &[&key]);
    let compile = |r: &JwtRule| {
        JwtVerifier::compile(&[("ns/first", &good), ("ns/p", &good), ("ns/p", r)]).unwrap_err()
    };
    let mut r = good.clone();
    r.jwks = "{not json".into();
    let e = compile(&r);
    assert_eq!(
        (e.policy.as_str(), e.rule, e.field.as_str()),
        ("ns/p", 1, "jwks")
    );
    assert!(
        e.to_string().starts_with(
            "RequestAuthentication ns/p: jwtRules[1] (issuer \"iss\"): jwks: not a JSON document"
        ),
        "{e}"
    );
    r.jwks = r#"{"keys": {}}"#.into();
    assert!(compile(&r).reason.contains("not an array"));
    r.jwks = r#"{"other": []}"#.into();
    assert!(compile(&r).reason.contains("no \"keys\""));
    // Keys that cannot be used, each with its reason.
    let mut short_ec = key.jwk();
    short_ec["x"] = json!(b64([1u8; 31]));
    let small_rsa = json!({"kty": "RSA", "n": b64([0xffu8; 128]), "e": "AQAB"});
    let p521 = json!({"kty": "EC", "crv": "P-521", "x": b64([1u8; 66]), "y": b64([1u8; 66])});
    let mut wrong_alg = key.jwk();
    wrong_alg["alg"] = json!("RS256");
    r.jwks =
        json!({"keys": [short_ec, small_rsa, p521, wrong_alg, {"kty": "XYZ"}, "str"]}).to_string();
    let e = compile(&r);
    for why in [
        "32 bytes",
        "1024 bits",
        "P-521",
        "does not fit an EC key",
        "\"XYZ\"",
        "keys[5]: not a JSON object",
    ] {
        assert!(e.reason.contains(why), "{why} in {e}");
    }
    r.jwks = String::new();
    assert!(compile(&r).reason.contains("no jwksError"));
    // A jwksError compiles whatever jwks holds.
    r.jwks_error = Some("too large".into());
    JwtVerifier::compile(&[("ns/p", &r)]).unwrap();

    let mut r = good.clone();
    r.issuer = String::new();
    assert_eq!(compile(&r).field, "issuer");
    let mut r = good.clone();
    r.from_headers = vec![JwtHeader {
        name: "bad header".into(),
        prefix: String::new(),
    }];
    assert_eq!(compile(&r).field, "fromHeaders[0].name");
    let mut r = good.clone();
    r.output_payload_to_header = "x:y".into();
    assert_eq!(compile(&r).field, "outputPayloadToHeader");
    let mut r = good.clone();
    r.output_claim_to_headers = vec![ClaimToHeader {
        header: "x-sub".into(),
        claim: String::new(),
    }];
    assert_eq!(compile(&r).field, "outputClaimToHeaders[0].claim");
    let mut r = good.clone();
    r.from_params = vec![String::new()];
    assert_eq!(compile(&r).field, "fromParams[0]");
}

#[test]
fn an_ec_key_without_crv_takes_its_curve_from_alg() {
    let key = p384(None);
    let mut jwk = key.jwk();
    jwk.as_object_mut().unwrap().remove("crv");
    jwk["alg"] = json!("ES384");
    let r = JwtRule {
        issuer: "iss".into(),
        jwks: json!({"keys": [jwk]}).to_string(),
        ..Default::default()
    };
    let v = verifier(&[r]);
    valid(v.verify(&bearer(&key.token(claims("iss"))), &root(), now()));
}

#[test]
fn tokens_signed_by_openssl_verify_with_the_shared_test_key_set() {
    // The fuzz seeds were signed with `openssl dgst -sha256 -sign` and the test RSA key, whose
    // public half (kid rsa-1) is in tests/data/jwt-jwks.json with an EC and an Ed25519 key.
    let r = JwtRule {
        issuer: "fuzz-issuer".into(),
        audiences: vec!["svc".into()],
        jwks: include_str!("../../tests/data/jwt-jwks.json").into(),
        ..Default::default()
    };
    let v = verifier(&[r]);
    let seed = |bytes: &'static [u8]| std::str::from_utf8(&bytes[1..]).unwrap();
    let good = seed(include_bytes!(
        "../../../fuzz/corpus/jwt_verify/valid-header"
    ));
    let a = valid(v.verify(&bearer(good), &root(), now()));
    assert_eq!(a.principal, "fuzz-issuer/alice");
    assert_eq!(a.claim_strings(&["scope"]), ["read", "write"]);
    let expired = seed(include_bytes!(
        "../../../fuzz/corpus/jwt_verify/expired-query"
    ));
    let uri: Uri = format!("/?access_token={expired}").parse().unwrap();
    assert_eq!(
        refused(v.verify(&HeaderMap::new(), &uri, now())).reason,
        Status::Expired
    );
    // And ring's signature with the same key verifies too.
    let mut c = claims("fuzz-issuer");
    c["aud"] = json!("svc");
    valid(v.verify(&bearer(&rsa(Some("rsa-1")).token(c)), &root(), now()));
}

mod fuzz_shaped {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// What `fuzz/fuzz_targets/jwt_verify.rs` does with coverage: arbitrary bytes as the
        /// Authorization header and the access_token parameter never panic, and only a
        /// well-formed token signed by the set's key could ever be valid.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), dots in 0usize..4) {
            let key = p256(None);
            let v = verifier(&[rule("iss", &[&key])]);
            let mut bytes = bytes;
            for i in 0..dots {
                bytes.insert(bytes.len() * (i + 1) / (dots + 1), b'.');
            }
            let text = String::from_utf8_lossy(&bytes);
            let mut h = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &bytes].concat()) {
                h.insert(AUTHORIZATION, value);
            }
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("access_token", &text)
                .finish();
            let uri: Uri = format!("/?{query}").parse().unwrap();
            let outcome = v.verify(&h, &uri, now());
            prop_assert!(!matches!(outcome, Outcome::Valid(_)));
        }
    }
}

#[test]
fn tokens_are_taken_out_of_headers_parameters_and_cookies_leaving_the_rest() {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer abc"));
    headers.append(
        http::header::COOKIE,
        HeaderValue::from_static("a=1; jwt=abc; b=2"),
    );
    headers.append(http::header::COOKIE, HeaderValue::from_static("jwt=abc"));
    headers.insert("x-other", HeaderValue::from_static("kept"));
    let mut uri: Uri = "http://h/p?x=1&access_token=abc&y=a%20b&access%5Ftoken=def"
        .parse()
        .unwrap();
    remove_tokens(
        &mut headers,
        &mut uri,
        &[
            TokenLocation::Header {
                name: HeaderName::from_static("authorization"),
                prefix: "Bearer ".into(),
            },
            TokenLocation::Param("access_token".into()),
            TokenLocation::Cookie("jwt".into()),
        ],
    );
    assert!(headers.get("authorization").is_none());
    assert_eq!(headers["x-other"], "kept");
    let cookies: Vec<_> = headers.get_all(http::header::COOKIE).iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    assert_eq!(uri.to_string(), "http://h/p?x=1&y=a%20b");

    // Only parameter: the query goes with it.
    let mut uri: Uri = "/p?access_token=abc".parse().unwrap();
    remove_tokens(
        &mut headers,
        &mut uri,
        &[TokenLocation::Param("access_token".into())],
    );
    assert_eq!(uri.to_string(), "/p");
}
