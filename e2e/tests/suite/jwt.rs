//! Scenario 14 (issue #19, request authentication): Istio's "Authorization with JWT" task on
//! real sidecars, with a token issuer made by the test (an Ed25519 key generated here; its key
//! set served by an uninjected testapp pod, `serve --document`), so every packet stays in the
//! cluster.
//!
//! The flow, as Istio's task documents it: a RequestAuthentication on the server, whose
//! `jwksUri` the operator fetches and hands to the sidecar inline; then a request without a
//! token is served, one with an invalid token is answered 401 by the sidecar, one with a valid
//! token is served without its `Authorization` header and with the claim header the rule asks
//! for; then an AuthorizationPolicy requiring a request principal refuses requests without a
//! token (403) and serves the valid one; finally a `jwksUri` nothing answers is reported on the
//! object (`Accepted=False`, reason `JwksUnavailable`, naming the field) and fails closed
//! (tokens of that issuer are refused with Envoy's `Jwks remote fetch is failed`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustmesh_e2e::sample::{self, HTTP_PORT};
use rustmesh_e2e::{Ctx, poll, setup};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.rustmesh-e2e.test";
const JWKS_PORT: u16 = 8080;

fn api(ctx: &Ctx, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "security.istio.io".into(),
        version: "v1".into(),
        api_version: "security.istio.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

async fn apply(ctx: &Ctx, ns: &str, kind: &str, plural: &str, name: &str, spec: Value) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    api(ctx, ns, kind, plural)
        .patch(
            name,
            &PatchParams::apply("rustmesh-e2e").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
}

/// The test's issuer: a key, its key set, and tokens.
struct Issuer {
    key: Ed25519KeyPair,
}

impl Issuer {
    fn new() -> Issuer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Issuer {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    fn jwks(&self) -> String {
        let x = URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref());
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "e2e", "x": x}]}).to_string()
    }

    fn token(&self, sub: &str, exp_in_secs: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "EdDSA", "kid": "e2e", "typ": "JWT"})),
            b64(json!({"iss": ISSUER, "sub": sub, "groups": ["group1"], "exp": now + exp_in_secs}))
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// One GET from `pod`: the status, and what the app saw of `authorization` and `x-jwt-sub`
/// when served, else the answer's text.
async fn get(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    url: &str,
    headers: &[&str],
) -> Result<(u16, String), String> {
    match ctx.http_get(ns, pod, "productpage", url, headers).await {
        Ok(r) => Ok((
            200,
            format!(
                "authorization={} x-jwt-sub={}",
                r.headers.get("authorization").map_or("-", String::as_str),
                r.headers.get("x-jwt-sub").map_or("-", String::as_str)
            ),
        )),
        Err(e) => {
            let text = e.to_string();
            let code = text
                .split("status ")
                .nth(1)
                .and_then(|t| t.get(..3))
                .and_then(|c| c.parse().ok());
            match code {
                Some(c) => Ok((c, text)),
                None => Err(text),
            }
        }
    }
}

/// Waits until each (headers, status, text the answer contains) case holds.
async fn expect(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    url: &str,
    what: &str,
    cases: &[(&[&str], u16, &str)],
) {
    let start = std::time::Instant::now();
    poll(
        what,
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let mut wrong = Vec::new();
            for (headers, want, text) in cases {
                match get(ctx, ns, pod, url, headers).await {
                    Ok((code, got)) if code == *want && got.contains(text) => {}
                    other => wrong.push(format!(
                        "{:.40?}: {other:?}, want {want} with {text:?}",
                        headers
                    )),
                }
            }
            if wrong.is_empty() {
                Ok(Some(()))
            } else {
                Err(wrong.join("; "))
            }
        },
    )
    .await
    .unwrap();
    ctx.log(format!(
        "{what}: in force after {:.1} s",
        start.elapsed().as_secs_f64()
    ));
}

/// The `Accepted` condition of a RequestAuthentication, once its status is for its generation.
async fn accepted(ctx: &Ctx, ns: &str, name: &str, want: &str) -> Value {
    let ras = api(ctx, ns, "RequestAuthentication", "requestauthentications");
    poll(
        &format!("{name} Accepted={want}"),
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let o = ras.get(name).await.map_err(|e| e.to_string())?;
            let status = o.data.get("status").cloned().unwrap_or(Value::Null);
            let generation = o.metadata.generation.unwrap_or(0);
            if status["observedGeneration"].as_i64() != Some(generation) {
                return Err(format!("status not for generation {generation}: {status}"));
            }
            let cond = status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted"))
                .cloned()
                .unwrap_or(Value::Null);
            if cond["status"] == want {
                Ok(Some(cond))
            } else {
                Err(format!("Accepted condition {cond}"))
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn s14_request_authentication_follows_istios_jwt_task() {
    let Some(ctx) = setup("s14_jwt").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-jwt", true).await.unwrap();
    let issuer = Issuer::new();
    let client = sample::productpage();
    let server = sample::ratings();
    let jwks_server = sample::App {
        http: vec![JWKS_PORT],
        service_ports: vec![("http".into(), JWKS_PORT)],
        inject: Some(false),
        extra_args: vec!["--document".into(), format!("/jwks.json={}", issuer.jwks())],
        ..sample::App::http("jwks", "v1")
    };
    sample::deploy(&ctx, &ns, &[client.clone(), server.clone(), jwks_server])
        .await
        .unwrap();
    let pod = ctx.pod_name(&ns, &client.selector()).await.unwrap();
    ctx.wait_endpoints(&ns, &pod, "ratings", &ns, HTTP_PORT, 1)
        .await
        .unwrap();
    let url = format!(
        "http://{}:{HTTP_PORT}/ratings",
        ctx.cluster_ip(&ns, "ratings").await.unwrap()
    );
    // No DNS in the local cluster: the key set's URL by ClusterIP.
    let jwks_uri = format!(
        "http://{}:{JWKS_PORT}/jwks.json",
        ctx.cluster_ip(&ns, "jwks").await.unwrap()
    );

    let rule = |uri: &str| {
        json!({
            "selector": {"matchLabels": {"app": "ratings"}},
            "jwtRules": [{
                "issuer": ISSUER,
                "jwksUri": uri,
                "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}],
            }],
        })
    };
    apply(
        &ctx,
        &ns,
        "RequestAuthentication",
        "requestauthentications",
        "jwt-example",
        rule(&jwks_uri),
    )
    .await;
    let cond = accepted(&ctx, &ns, "jwt-example", "True").await;
    ctx.log(format!("jwt-example: {cond}"));

    let good = format!("Authorization: Bearer {}", issuer.token("alice", 3600));
    let expired = format!("Authorization: Bearer {}", issuer.token("alice", -3600));
    let forged = format!(
        "Authorization: Bearer {}",
        Issuer::new().token("alice", 3600)
    );
    let none: &[&str] = &[];
    expect(
        &ctx,
        &ns,
        &pod,
        &url,
        "RequestAuthentication: no token served, invalid refused, valid served and taken off",
        &[
            (none, 200, "authorization=- x-jwt-sub=-"),
            (
                &["Authorization: Bearer deadbeef"],
                401,
                "Jwt is not in the form",
            ),
            (&[expired.as_str()], 401, "Jwt is expired"),
            (&[forged.as_str()], 401, "Jwt verification fails"),
            (&[good.as_str()], 200, "authorization=- x-jwt-sub=alice"),
            // A client cannot send the claim header itself.
            (&["x-jwt-sub: mallory"], 200, "x-jwt-sub=-"),
        ],
    )
    .await;

    // Istio's task, next step: require a valid token with an AuthorizationPolicy.
    apply(
        &ctx,
        &ns,
        "AuthorizationPolicy",
        "authorizationpolicies",
        "require-jwt",
        json!({
            "selector": {"matchLabels": {"app": "ratings"}},
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"requestPrincipals": [format!("{ISSUER}/alice")]}}],
                "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}],
            }],
        }),
    )
    .await;
    let bob = format!("Authorization: Bearer {}", issuer.token("bob", 3600));
    expect(
        &ctx,
        &ns,
        &pod,
        &url,
        "AuthorizationPolicy requestPrincipals: only alice's valid token served",
        &[
            (none, 403, "RBAC: access denied"),
            (&[bob.as_str()], 403, "RBAC: access denied"),
            (&[good.as_str()], 200, "x-jwt-sub=alice"),
        ],
    )
    .await;

    // A key set nothing serves: reported on the object, and fail closed in the sidecar.
    let nowhere = format!(
        "http://{}:{}/jwks.json",
        ctx.cluster_ip(&ns, "jwks").await.unwrap(),
        JWKS_PORT + 1
    );
    apply(
        &ctx,
        &ns,
        "RequestAuthentication",
        "requestauthentications",
        "jwt-example",
        rule(&nowhere),
    )
    .await;
    let cond = accepted(&ctx, &ns, "jwt-example", "False").await;
    ctx.log(format!("jwt-example with an unreachable jwksUri: {cond}"));
    assert_eq!(cond["reason"], "JwksUnavailable", "{cond}");
    let message = cond["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.jwtRules[0].jwksUri") && message.contains(&nowhere),
        "{message}"
    );
    expect(
        &ctx,
        &ns,
        &pod,
        &url,
        "unreachable key set: the issuer's tokens refused",
        &[(&[good.as_str()], 401, "Jwks remote fetch is failed")],
    )
    .await;
    ctx.delete_namespace(&ns).await;
}
