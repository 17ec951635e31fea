//! The generated CRD schemas accept the same Istio YAML the Rust types read, and reject what the
//! API server should reject. This is what `kubectl apply` meets, so it must agree with the types.

use rustmesh_api::crd;
use serde_json::Value;
use std::path::Path;

fn schema_for(kind: &str) -> jsonschema::Validator {
    let (_, crd) = crd::all()
        .into_iter()
        .find(|(_, c)| c.spec.names.kind == kind)
        .unwrap();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    jsonschema::options().build(&schema).unwrap()
}

fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn every_valid_fixture_passes_its_crd_schema() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        for doc in documents(&std::fs::read_to_string(&path).unwrap()) {
            let kind = doc["kind"].as_str().unwrap().to_string();
            let validator = schema_for(&kind);
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{}: {kind} rejected by its CRD schema: {errors:?}",
                path.display()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 43);
}

#[test]
fn the_schema_rejects_what_the_types_reject() {
    let vs = schema_for("VirtualService");
    let doc = |spec: Value| serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r"}, "spec": spec});
    // A StringMatch with two kinds violates oneOf.
    let two = doc(
        serde_json::json!({"hosts": ["r"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": [{"destination": {"host": "r"}}]}]}),
    );
    assert!(!vs.is_valid(&two));
    // A weight that is not an integer.
    let w = doc(
        serde_json::json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": "ninety"}]}]}),
    );
    assert!(!vs.is_valid(&w));
    // A destination without host.
    let h = doc(
        serde_json::json!({"hosts": ["r"], "http": [{"route": [{"destination": {"subset": "v1"}}]}]}),
    );
    assert!(!vs.is_valid(&h));
    let dr = schema_for("DestinationRule");
    let bad_lb = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "r"}, "spec": {"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}});
    assert!(!dr.is_valid(&bad_lb));
    let pa = schema_for("PeerAuthentication");
    let policy = |spec: Value| serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "p"}, "spec": spec});
    assert!(pa.is_valid(&policy(
        serde_json::json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}})
    )));
    // A mode Istio does not know, at the top and per port.
    assert!(!pa.is_valid(&policy(serde_json::json!({"mtls": {"mode": "LOOSE"}}))));
    assert!(!pa.is_valid(&policy(
        serde_json::json!({"portLevelMtls": {"8080": {"mode": "ON"}}})
    )));
    assert!(!pa.is_valid(&policy(
        serde_json::json!({"selector": {"matchLabels": {"app": 1}}})
    )));
    let ap = schema_for("AuthorizationPolicy");
    let authz = |spec: Value| serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"}, "spec": spec});
    assert!(
        ap.is_valid(&authz(serde_json::json!({"action": "DENY", "rules": [
        {"to": [{"operation": {"ports": ["8080"], "methods": ["POST"]}}]}]})))
    );
    // An action Istio does not know; ports as numbers (Istio's are strings); a targetRef
    // without its required kind and name (the API server refuses them, as Istio's CRD does).
    assert!(!ap.is_valid(&authz(serde_json::json!({"action": "REJECT"}))));
    assert!(!ap.is_valid(&authz(serde_json::json!({"rules": [
        {"to": [{"operation": {"ports": [8080]}}]}]}))));
    assert!(!ap.is_valid(&authz(
        serde_json::json!({"targetRef": {"group": "gateway.networking.k8s.io"}})
    )));
    let ra = schema_for("RequestAuthentication");
    let authn = |spec: Value| serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": "r"}, "spec": spec});
    assert!(ra.is_valid(&authn(serde_json::json!({"jwtRules": [
        {"issuer": "i", "jwks_uri": "https://x/k", "fromHeaders": [{"name": "x-jwt"}],
         "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}], "timeout": "2s"}]}))));
    // A header location without its name, a claim-to-header without its claim, audiences that
    // are not strings, forwardOriginalToken that is not a boolean.
    for bad in [
        serde_json::json!({"jwtRules": [{"issuer": "i", "fromHeaders": [{"prefix": "Bearer "}]}]}),
        serde_json::json!({"jwtRules": [{"issuer": "i", "outputClaimToHeaders": [{"header": "x"}]}]}),
        serde_json::json!({"jwtRules": [{"issuer": "i", "audiences": [1]}]}),
        serde_json::json!({"jwtRules": [{"issuer": "i", "forwardOriginalToken": "yes"}]}),
    ] {
        assert!(!ra.is_valid(&authn(bad.clone())), "{bad}");
    }
    let tm = schema_for("Telemetry");
    let telemetry = |spec: Value| serde_json::json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "t"}, "spec": spec});
    assert!(tm.is_valid(&telemetry(serde_json::json!({
        "selector": {"matchLabels": {"app": "reviews"}},
        "tracing": [{"match": {"mode": "CLIENT"}, "providers": [{"name": "zipkin"}],
                     "randomSamplingPercentage": 54.54,
                     "customTags": {"env": {"environment": {"name": "NAME", "defaultValue": "d"}},
                                    "hdr": {"header": {"name": "x-name"}},
                                    "lit": {"literal": {"value": "v"}}}}],
        "metrics": [{"providers": [{"name": "prometheus"}], "reportingInterval": "5s",
                     "overrides": [{"match": {"metric": "GRPC_REQUEST_MESSAGES", "mode": "SERVER"},
                                    "disabled": true}]}],
        "accessLogging": [{"match": {"mode": "SERVER"}, "disabled": false,
                           "filter": {"expression": "response.code >= 400"}}],
    }))));
    // A mode, metric or tag operation Istio does not know, a provider or a literal tag without
    // its required field, a sampling percentage that is not a number, disabled that is not a
    // boolean.
    for bad in [
        serde_json::json!({"tracing": [{"match": {"mode": "INBOUND"}}]}),
        serde_json::json!({"metrics": [{"overrides": [{"match": {"metric": "REQUESTS"}}]}]}),
        serde_json::json!({"accessLogging": [{"providers": [{}]}]}),
        serde_json::json!({"tracing": [{"customTags": {"t": {"literal": {}}}}]}),
        serde_json::json!({"tracing": [{"randomSamplingPercentage": "10"}]}),
        serde_json::json!({"metrics": [{"overrides": [{"disabled": "yes"}]}]}),
        serde_json::json!({"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "DELETE"}}}]}]}),
    ] {
        assert!(!tm.is_valid(&telemetry(bad.clone())), "{bad}");
    }
}
