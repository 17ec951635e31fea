//! Validating admission for the Istio kinds the operator reads (VirtualService, DestinationRule,
//! Sidecar, ServiceEntry, Gateway of `networking.istio.io` in every served version, PeerAuthentication,
//! AuthorizationPolicy and RequestAuthentication of `security.istio.io`, Telemetry of
//! `telemetry.istio.io`), as istiod's validation webhook does: an invalid
//! object is refused at `kubectl apply`, naming the field, instead of being accepted and then
//! reported in its status.
//!
//! The rules are the operator's own object-local checks, one implementation in
//! `rustmesh_api::checks::object_findings`: what would make the operator set `Accepted=False`
//! refuses the object here, with the message the status condition would carry (the first
//! error, `field: message`, and how many more); what it would warn about becomes admission
//! warnings. Checks against other objects (an unknown subset, two namespace-wide Sidecars, a
//! host outside the registry) are left to the operator's status: at admission the other objects
//! may not exist yet (a VirtualService is often applied before its DestinationRule).
//!
//! One finding the operator reports with `Accepted=False` is only a warning here: an
//! AuthorizationPolicy's CUSTOM action (reason `Unsupported`, not `Invalid`). The operator renders
//! such a policy so that the requests it matches are denied (fail closed); refusing it at
//! admission would leave those requests unguarded instead, so it is allowed, with the warning
//! saying it denies what it matches.
//!
//! [`validate_review`] is pure (no I/O, no clock); [`validate_body`] wraps it for raw HTTP
//! bodies, answering in the request's `apiVersion`.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{DynamicObject, TypeMeta};
use rustmesh_api::checks::{Finding, Severity, object_findings};
use rustmesh_api::parse::{IstioObject, KINDS};
use rustmesh_api::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, RequestAuthentication,
    ServiceEntry, Sidecar, Telemetry, VirtualService,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Result;
use crate::review::{Envelope, response_document};

/// What happened to one validation review; the `result` label of its metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Allowed (possibly with warnings).
    Allowed,
    /// Refused: the object is invalid.
    Denied,
    /// Allowed unchecked: not a kind or operation this webhook validates, or a request it could
    /// not read (a warning says which).
    Skipped,
}

impl Verdict {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Skipped => "skipped",
        }
    }
}

/// The prefix of every warning, as the API server shows it to `kubectl` users.
const WARNING_PREFIX: &str = "rustmesh-validation";

fn warn(resp: AdmissionResponse, warnings: impl IntoIterator<Item = String>) -> AdmissionResponse {
    let mut resp = resp;
    for w in warnings {
        resp.warnings
            .get_or_insert_with(Vec::new)
            .push(format!("{WARNING_PREFIX}: {w}"));
    }
    resp
}

/// The denial message, as the operator's `Accepted=False` condition words it: the first
/// error, `field: message`, and how many more there are.
pub fn denial_message(errors: &[&Finding]) -> String {
    let mut message = errors
        .first()
        .map(|f| format!("{}: {}", f.field, f.message))
        .unwrap_or_default();
    if errors.len() > 1 {
        message.push_str(&format!(" (and {} more error(s))", errors.len() - 1));
    }
    message
}

fn typed<T: DeserializeOwned>(object: Value) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Reads `object` as the Istio kind `kind`; `None` for a kind not validated here.
fn read_object(kind: &str, object: Value) -> Option<std::result::Result<IstioObject, String>> {
    Some(match kind {
        "VirtualService" => {
            typed::<VirtualService>(object).map(|o| IstioObject::VirtualService(Box::new(o)))
        }
        "DestinationRule" => {
            typed::<DestinationRule>(object).map(|o| IstioObject::DestinationRule(Box::new(o)))
        }
        "Sidecar" => typed::<Sidecar>(object).map(|o| IstioObject::Sidecar(Box::new(o))),
        "PeerAuthentication" => typed::<PeerAuthentication>(object)
            .map(|o| IstioObject::PeerAuthentication(Box::new(o))),
        "AuthorizationPolicy" => typed::<AuthorizationPolicy>(object)
            .map(|o| IstioObject::AuthorizationPolicy(Box::new(o))),
        "RequestAuthentication" => typed::<RequestAuthentication>(object)
            .map(|o| IstioObject::RequestAuthentication(Box::new(o))),
        "Telemetry" => typed::<Telemetry>(object).map(|o| IstioObject::Telemetry(Box::new(o))),
        "ServiceEntry" => {
            typed::<ServiceEntry>(object).map(|o| IstioObject::ServiceEntry(Box::new(o)))
        }
        "Gateway" => typed::<Gateway>(object).map(|o| IstioObject::Gateway(Box::new(o))),
        _ => return None,
    })
}

/// Reviews one admission request for an Istio object. Pure. `has_ca`: whether the mesh CA is on
/// (some DestinationRule `tls` settings depend on it, as in the operator).
///
/// * CREATE or UPDATE of a kind and version in `rustmesh_api::parse::KINDS`, no subresource:
///   the object is read as the operator reads it (a field its types refuse is a denial naming
///   the field) and checked ([`object_findings`]); errors deny, warnings are returned as
///   warnings.
/// * An object being deleted (`metadata.deletionTimestamp`, e.g. a finalizer removed), another
///   operation, a subresource: allowed unchecked.
/// * Another kind or version (a misconfigured webhook): allowed, with a warning naming it.
pub fn validate_review(
    req: &AdmissionRequest<DynamicObject>,
    object: Option<Value>,
    has_ca: bool,
) -> (AdmissionResponse, Verdict) {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update)
        || req.sub_resource.as_deref().is_some_and(|s| !s.is_empty())
    {
        return (resp, Verdict::Skipped);
    }
    let kind = &req.kind;
    let known = KINDS.iter().any(|(k, group, versions)| {
        *k == kind.kind && *group == kind.group && versions.contains(&kind.version.as_str())
    });
    if !known {
        let warning = format!(
            "{}/{} {} is not a kind this webhook validates; allowed unchecked",
            kind.group, kind.version, kind.kind
        );
        return (warn(resp, [warning]), Verdict::Skipped);
    }
    let Some(object) = object.filter(|o| !o.is_null()) else {
        let warning = "the admission request has no object; allowed unchecked".to_owned();
        return (warn(resp, [warning]), Verdict::Skipped);
    };
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return (resp, Verdict::Skipped);
    }
    let obj = match read_object(&kind.kind, object) {
        Some(Ok(obj)) => obj,
        Some(Err(why)) => return (deny(resp, why), Verdict::Denied),
        None => return (resp, Verdict::Skipped),
    };
    let findings = object_findings(&obj, has_ca);
    let errors: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.level == Severity::Error)
        .collect();
    let warnings: Vec<String> = findings
        .iter()
        .filter(|f| f.level == Severity::Warning)
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect();
    if errors.is_empty() {
        (warn(resp, warnings), Verdict::Allowed)
    } else {
        let message = denial_message(&errors);
        (warn(deny(resp, message), warnings), Verdict::Denied)
    }
}

fn deny(resp: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut resp = resp.deny(message);
    resp.result.code = 422;
    resp.result.reason = "Invalid".to_owned();
    resp
}

/// The result of [`validate_body`]: the response document and what happened.
#[derive(Debug)]
pub struct BodyValidation {
    /// The `AdmissionReview` to send back (same `apiVersion` as the request).
    pub review: Value,
    /// The metric outcome.
    pub verdict: Verdict,
}

/// Reviews a raw HTTP body: not an `AdmissionReview` (not JSON, wrong `kind`/`apiVersion`, no
/// `request`, no string `request.uid`) → `Err` (the HTTP layer answers 400); a request whose
/// fields cannot be read → allowed with a warning naming the field (as `/inject` does: a
/// webhook problem never blocks the cluster); else [`validate_review`].
pub fn validate_body(body: &[u8], has_ca: bool) -> Result<BodyValidation> {
    let Envelope {
        types,
        uid,
        mut request,
    } = Envelope::parse(body)?;
    let object = request.remove("object");
    request.insert("object".to_owned(), Value::Null);
    request.insert("oldObject".to_owned(), Value::Null);
    let req: AdmissionRequest<DynamicObject> =
        match serde_path_to_error::deserialize(Value::Object(request)) {
            Ok(r) => r,
            Err(e) => {
                let warning = format!(
                    "admission request not understood at `request.{}`: {}; allowed unchecked",
                    e.path(),
                    e.inner()
                );
                let resp = crate::review::invalid_response(&uid, warning);
                return Ok(BodyValidation {
                    review: response_document(&types, resp),
                    verdict: Verdict::Skipped,
                });
            }
        };
    let mut req = req;
    req.types = TypeMeta {
        api_version: types.api_version.clone(),
        kind: "AdmissionReview".to_owned(),
    };
    let (resp, verdict) = validate_review(&req, object, has_ca);
    Ok(BodyValidation {
        review: response_document(&types, resp),
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(kind: &str, group: &str, version: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "3f2a",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
                "namespace": "shop",
                "name": "reviews",
                "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "object": object,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn vs(spec: Value, version: &str) -> Value {
        json!({
            "apiVersion": format!("networking.istio.io/{version}"),
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop", "generation": 1},
            "spec": spec,
        })
    }

    fn response(body: &[u8]) -> (Value, Verdict) {
        let out = validate_body(body, true).unwrap();
        assert_eq!(out.review["response"]["uid"], "3f2a");
        (out.review["response"].clone(), out.verdict)
    }

    #[test]
    fn a_valid_object_is_allowed_in_every_served_version() {
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}]}]});
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let body = review(
                "VirtualService",
                "networking.istio.io",
                version,
                vs(spec.clone(), version),
            );
            let (resp, verdict) = response(&body);
            assert_eq!(verdict, Verdict::Allowed, "{resp}");
            assert_eq!(resp["allowed"], true);
            assert!(resp.get("warnings").is_none(), "{resp}");
        }
    }

    #[test]
    fn an_invalid_object_is_denied_naming_the_field_as_the_status_would() {
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 60},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}]}]});
        let (resp, verdict) = response(&review(
            "VirtualService",
            "networking.istio.io",
            "v1",
            vs(spec, "v1"),
        ));
        assert_eq!(verdict, Verdict::Denied);
        assert_eq!(resp["allowed"], false);
        let message = resp["status"]["message"].as_str().unwrap();
        assert_eq!(
            message,
            "spec.http[0].route: weights of the destinations add up to 110, they must add up to 100"
        );
        assert_eq!(resp["status"]["code"], 422);

        // Several errors: the first, and how many more (the status condition's wording).
        let spec = json!({"hosts": ["bad host"], "http": [{"route": [
            {"destination": {"host": "reviews"}, "weight": -1},
            {"destination": {"host": "reviews"}, "weight": 50}]}]});
        let (resp, _) = response(&review(
            "VirtualService",
            "networking.istio.io",
            "v1",
            vs(spec, "v1"),
        ));
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(message.starts_with("spec.hosts[0]: "), "{message}");
        assert!(message.ends_with("more error(s))"), "{message}");

        // A field the operator's types refuse: denied naming it.
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews"}, "weight": "lots"}]}]});
        let (resp, verdict) = response(&review(
            "VirtualService",
            "networking.istio.io",
            "v1",
            vs(spec, "v1"),
        ));
        assert_eq!(verdict, Verdict::Denied);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.http[0].route[0].weight: "),
            "{message}"
        );
    }

    #[test]
    fn destination_rule_tls_and_peer_authentication_warnings_are_the_operators() {
        let dr = |tls: Value| {
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "metadata": {"name": "db", "namespace": "shop"},
                   "spec": {"host": "db.example.com", "trafficPolicy": {"tls": tls}}})
        };
        let body = review(
            "DestinationRule",
            "networking.istio.io",
            "v1",
            dr(json!({"mode": "SIMPLE", "caCrl": "etc/crl.pem"})),
        );
        let (resp, verdict) = response(&body);
        assert_eq!(verdict, Verdict::Denied);
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("spec.trafficPolicy.tls.caCrl: "),
            "{resp}"
        );
        // Without the mesh CA, ISTIO_MUTUAL is a warning (the operator's).
        let body = review(
            "DestinationRule",
            "networking.istio.io",
            "v1beta1",
            dr(json!({"mode": "ISTIO_MUTUAL"})),
        );
        let out = validate_body(&body, false).unwrap();
        assert_eq!(out.verdict, Verdict::Allowed);
        let w = out.review["response"]["warnings"][0].as_str().unwrap();
        assert!(
            w.starts_with("rustmesh-validation: spec.trafficPolicy.tls.mode: "),
            "{w}"
        );
        assert_eq!(response(&body).0.get("warnings"), None, "with the CA: fine");

        let pa = json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                        "metadata": {"name": "default", "namespace": "shop"},
                        "spec": {"selector": {"matchLabels": {}}, "mtls": {"mode": "STRICT"}}});
        let (resp, verdict) = response(&review(
            "PeerAuthentication",
            "security.istio.io",
            "v1beta1",
            pa,
        ));
        assert_eq!(verdict, Verdict::Allowed);
        assert!(
            resp["warnings"][0]
                .as_str()
                .unwrap()
                .contains("spec.selector.matchLabels"),
            "{resp}"
        );
    }

    fn authorization_policy(version: &str, spec: Value) -> Vec<u8> {
        let object = json!({"apiVersion": format!("security.istio.io/{version}"),
                            "kind": "AuthorizationPolicy",
                            "metadata": {"name": "httpbin", "namespace": "shop"},
                            "spec": spec});
        review("AuthorizationPolicy", "security.istio.io", version, object)
    }

    #[test]
    fn authorization_policies_are_validated_with_the_operators_rules() {
        // Istio's example, in both served versions.
        let spec = json!({"action": "ALLOW", "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}},
                     {"source": {"namespaces": ["test"]}}],
            "to": [{"operation": {"methods": ["GET"], "paths": ["/info*"]}}],
            "when": [{"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]}]}]});
        for version in ["v1", "v1beta1"] {
            let (resp, verdict) = response(&authorization_policy(version, spec.clone()));
            assert_eq!(verdict, Verdict::Allowed, "{resp}");
            assert!(resp.get("warnings").is_none(), "{resp}");
        }
        // Invalid: denied naming the field, the first error and how many more.
        let bad = json!({"action": "DENY", "rules": [{"to": [{"operation": {
            "ports": ["http"], "paths": ["/a*b"]}}]}]});
        let (resp, verdict) = response(&authorization_policy("v1", bad));
        assert_eq!(verdict, Verdict::Denied);
        assert_eq!(
            resp["status"]["message"].as_str().unwrap(),
            "spec.rules[0].to[0].operation.ports[0]: bad port (http): a number in range \
             0..65535 (and 1 more error(s))"
        );
        // A field its types refuse, a refused field and an unknown condition key.
        for (spec, field) in [
            (
                json!({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b"]}}]}]}),
                "spec.rules[0].from[0].source.serviceAccounts: ",
            ),
            (
                json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "w"}]}),
                "spec.targetRefs: not implemented by rustmesh",
            ),
            (
                json!({"rules": [{"when": [{"key": "experimental.envoy.filters.a[b]", "values": ["c"]}]}]}),
                "spec.rules[0].when[0].key: ",
            ),
        ] {
            let (resp, verdict) = response(&authorization_policy("v1", spec));
            assert_eq!(verdict, Verdict::Denied, "{resp}");
            let message = resp["status"]["message"].as_str().unwrap();
            assert!(message.starts_with(field), "{message}");
        }
        // CUSTOM: allowed (the operator renders it as a deny of what it matches), with the
        // operator's finding as a warning.
        let custom = json!({"action": "CUSTOM", "provider": {"name": "ext"},
                            "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]});
        let (resp, verdict) = response(&authorization_policy("v1", custom));
        assert_eq!(verdict, Verdict::Allowed, "{resp}");
        let w = resp["warnings"][0].as_str().unwrap();
        assert!(
            w.starts_with(
                "rustmesh-validation: spec.provider: CUSTOM action is not supported: requests \
                 it matches are denied"
            ),
            "{w}"
        );
        // Istio's dry-run annotation: a dry run is allowed with the operator's warning (it is
        // rendered as AUDIT, never enforced); a value that is no boolean is refused.
        for (value, verdict_wanted) in [("true", Verdict::Allowed), ("yes", Verdict::Denied)] {
            let mut doc: Value = serde_json::from_slice(&authorization_policy(
                "v1",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}),
            ))
            .unwrap();
            doc["request"]["object"]["metadata"]["annotations"] =
                json!({"istio.io/dry-run": value});
            let (resp, verdict) = response(&serde_json::to_vec(&doc).unwrap());
            assert_eq!(verdict, verdict_wanted, "{value}: {resp}");
            let said = if verdict == Verdict::Allowed {
                resp["warnings"][0].as_str().unwrap().to_string()
            } else {
                resp["status"]["message"].as_str().unwrap().to_string()
            };
            assert!(
                said.contains("metadata.annotations.istio.io/dry-run"),
                "{said}"
            );
        }
        // security.istio.io serves no v1alpha3: a misrouted review is allowed unchecked.
        let (_, verdict) = response(&authorization_policy("v1alpha3", json!({})));
        assert_eq!(verdict, Verdict::Skipped);
    }

    #[test]
    fn request_authentications_are_validated_with_the_operators_rules() {
        let object = |version: &str, spec: Value| {
            let object = json!({"apiVersion": format!("security.istio.io/{version}"),
                                "kind": "RequestAuthentication",
                                "metadata": {"name": "jwt", "namespace": "shop"},
                                "spec": spec});
            review(
                "RequestAuthentication",
                "security.istio.io",
                version,
                object,
            )
        };
        // Istio's example, in both served versions (`jwks_uri`, the protobuf name, too).
        for (version, field) in [("v1", "jwksUri"), ("v1beta1", "jwks_uri")] {
            let spec = json!({"selector": {"matchLabels": {"app": "httpbin"}},
                              "jwtRules": [{"issuer": "testing@secure.istio.io",
                                            field: "https://keys.example/jwks.json"}]});
            let (resp, verdict) = response(&object(version, spec));
            assert_eq!(verdict, Verdict::Allowed, "{resp}");
            assert!(resp.get("warnings").is_none(), "{resp}");
        }
        // Invalid: denied naming the field.
        let bad = json!({"jwtRules": [{"issuer": "a", "jwks": "{\"keys\":[]}",
                                       "jwksUri": "https://keys.example/jwks.json"}]});
        let (resp, verdict) = response(&object("v1", bad));
        assert_eq!(verdict, Verdict::Denied);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.jwtRules[0].jwks: only one of jwks or jwksUri"),
            "{message}"
        );
        // A field its types refuse.
        let (resp, verdict) = response(&object(
            "v1",
            json!({"jwtRules": [{"issuer": "a", "jwksUrl": "x"}]}),
        ));
        assert_eq!(verdict, Verdict::Denied);
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .contains("jwksUrl"),
            "{resp}"
        );
        // An issuer whose key set cannot be discovered: allowed, with Istio's warning.
        let (resp, verdict) = response(&object(
            "v1",
            json!({"jwtRules": [{"issuer": "not-a-url"}]}),
        ));
        assert_eq!(verdict, Verdict::Allowed);
        assert!(
            resp["warnings"][0]
                .as_str()
                .unwrap()
                .contains("spec.jwtRules[0].issuer"),
            "{resp}"
        );
    }

    #[test]
    fn service_entries_are_validated_with_what_rustmesh_renders() {
        let object = |version: &str, spec: Value| {
            let object = json!({"apiVersion": format!("networking.istio.io/{version}"),
                                "kind": "ServiceEntry",
                                "metadata": {"name": "external", "namespace": "shop"},
                                "spec": spec});
            // The resource is `serviceentries`; the review names the kind.
            review("ServiceEntry", "networking.istio.io", version, object)
        };
        // Istio's egress example (resolution NONE), in every served version.
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let spec = json!({"hosts": ["www.example.com"], "location": "MESH_EXTERNAL",
                              "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
                              "resolution": "NONE"});
            let (resp, verdict) = response(&object(version, spec));
            assert_eq!(verdict, Verdict::Allowed, "{version}: {resp}");
            assert!(resp.get("warnings").is_none(), "{resp}");
        }
        // Resolution DNS: rendered (the sidecar resolves the host): allowed.
        let dns = json!({"hosts": ["www.example.com"], "resolution": "DNS",
                         "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]});
        let (resp, verdict) = response(&object("v1", dns));
        assert_eq!(verdict, Verdict::Allowed, "{resp}");
        // A wildcard host with resolution DNS: valid for Istio with an endpoint, not rendered
        // yet: denied naming the field.
        let wildcard = json!({"hosts": ["*.example.com"], "resolution": "DNS",
                              "endpoints": [{"address": "egress.example.com"}],
                              "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]});
        let (resp, verdict) = response(&object("v1", wildcard));
        assert_eq!(verdict, Verdict::Denied);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.hosts: not implemented by rustmesh")
                && message.contains("spec.resolution DNS")
                && message.contains(rustmesh_api::support::SERVICE_ENTRY_NOT_RENDERED),
            "{message}"
        );
        // Istio's own rules: a full wildcard host.
        let (resp, verdict) = response(&object(
            "v1",
            json!({"hosts": ["*"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
        ));
        assert_eq!(verdict, Verdict::Denied);
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("spec.hosts[0]"),
            "{resp}"
        );
        // Istio's warning (a TCP port without addresses): allowed, warned.
        let (resp, verdict) = response(&object(
            "v1",
            json!({"hosts": ["db.example.com"], "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}]}),
        ));
        assert_eq!(verdict, Verdict::Allowed);
        assert!(
            resp["warnings"][0]
                .as_str()
                .unwrap()
                .contains("spec.ports[0]"),
            "{resp}"
        );
    }

    #[test]
    fn gateways_are_validated_with_what_rustmesh_renders() {
        let object = |version: &str, spec: Value| {
            let object = json!({"apiVersion": format!("networking.istio.io/{version}"),
                                "kind": "Gateway",
                                "metadata": {"name": "bookinfo-gateway", "namespace": "default"},
                                "spec": spec});
            review("Gateway", "networking.istio.io", version, object)
        };
        // Istio's bookinfo-gateway, in every served version: allowed without warnings.
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let spec = json!({"selector": {"istio": "ingressgateway"},
                              "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                                           "hosts": ["*"]}]});
            let (resp, verdict) = response(&object(version, spec));
            assert_eq!(verdict, Verdict::Allowed, "{version}: {resp}");
            assert!(resp.get("warnings").is_none(), "{resp}");
        }
        // An HTTPS server of Istio's secure ingress task: rendered, allowed.
        let https = |mode: &str| {
            json!({"selector": {"istio": "ingressgateway"},
                   "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                                "tls": {"mode": mode, "credentialName": "httpbin-credential"},
                                "hosts": ["httpbin.example.com"]}]})
        };
        let (resp, verdict) = response(&object("v1", https("SIMPLE")));
        assert_eq!(verdict, Verdict::Allowed, "{resp}");
        // PASSTHROUGH (Istio's SNI passthrough task): rendered, allowed once it carries no
        // credential; with one, denied naming the credential it would ignore.
        let (resp, verdict) = response(&object("v1", https("PASSTHROUGH")));
        assert_eq!(verdict, Verdict::Denied);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.servers[0].tls.credentialName: a PASSTHROUGH server"),
            "{message}"
        );
        let mut passthrough = https("PASSTHROUGH");
        passthrough["servers"][0]["tls"]
            .as_object_mut()
            .unwrap()
            .remove("credentialName");
        let (resp, verdict) = response(&object("v1", passthrough));
        assert_eq!(verdict, Verdict::Allowed, "{resp}");
        // ISTIO_MUTUAL (the gateway's workload certificate) and OPTIONAL_MUTUAL: rendered,
        // allowed; ISTIO_MUTUAL with a credential of its own is denied naming it (Istio's rule).
        let (resp, verdict) = response(&object("v1", https("OPTIONAL_MUTUAL")));
        assert_eq!(verdict, Verdict::Allowed, "{resp}");
        let (resp, verdict) = response(&object("v1", https("ISTIO_MUTUAL")));
        assert_eq!(verdict, Verdict::Denied);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.servers[0].tls.credentialName: ISTIO_MUTUAL"),
            "{message}"
        );
        let mut istio_mutual = https("ISTIO_MUTUAL");
        istio_mutual["servers"][0]["tls"]
            .as_object_mut()
            .unwrap()
            .remove("credentialName");
        let body = object("v1", istio_mutual);
        let (resp, verdict) = response(&body);
        assert_eq!(verdict, Verdict::Allowed, "{resp}");
        assert!(resp.get("warnings").is_none(), "{resp}");
        // Without the mesh CA the gateway has no workload certificate: allowed with a
        // warning naming the mode and the chart value, as a DestinationRule's ISTIO_MUTUAL.
        let out = validate_body(&body, false).unwrap();
        assert_eq!(out.verdict, Verdict::Allowed);
        let w = out.review["response"]["warnings"][0].as_str().unwrap();
        assert!(
            w.starts_with("rustmesh-validation: spec.servers[0].tls.mode: ")
                && w.contains("ca.enabled"),
            "{w}"
        );
        // AUTO_PASSTHROUGH (multi-network east-west gateways): not rendered, denied naming
        // the field and the issue.
        let mut auto = https("AUTO_PASSTHROUGH");
        auto["servers"][0]["tls"]
            .as_object_mut()
            .unwrap()
            .remove("credentialName");
        let (resp, verdict) = response(&object("v1", auto));
        assert_eq!(verdict, Verdict::Denied);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.servers[0].tls.mode: not implemented by rustmesh")
                && message.contains("AUTO_PASSTHROUGH")
                && message.contains(rustmesh_api::support::GATEWAY_NOT_RENDERED),
            "{message}"
        );
        // Istio's own rules: a server without hosts.
        let (resp, verdict) = response(&object(
            "v1",
            json!({"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}}]}),
        ));
        assert_eq!(verdict, Verdict::Denied);
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("spec.servers[0].hosts"),
            "{resp}"
        );
    }

    #[test]
    fn unknown_kinds_versions_operations_and_deletions_are_allowed_unchecked() {
        let spec = json!({"hosts": ["reviews"]}); // invalid: no routes
        let (resp, verdict) = response(&review(
            "WorkloadGroup",
            "networking.istio.io",
            "v1",
            vs(spec.clone(), "v1"),
        ));
        assert_eq!(verdict, Verdict::Skipped);
        assert_eq!(resp["allowed"], true);
        assert!(
            resp["warnings"][0].as_str().unwrap().contains(
                "networking.istio.io/v1 WorkloadGroup is not a kind this webhook validates"
            ),
            "{resp}"
        );
        let (_, verdict) = response(&review(
            "VirtualService",
            "networking.istio.io",
            "v2",
            vs(spec.clone(), "v1"),
        ));
        assert_eq!(verdict, Verdict::Skipped);
        let (_, verdict) = response(&review(
            "Sidecar",
            "security.istio.io",
            "v1",
            vs(spec.clone(), "v1"),
        ));
        assert_eq!(verdict, Verdict::Skipped, "right kind, wrong group");

        let mut doc: Value = serde_json::from_slice(&review(
            "VirtualService",
            "networking.istio.io",
            "v1",
            vs(spec.clone(), "v1"),
        ))
        .unwrap();
        doc["request"]["operation"] = json!("DELETE");
        let (resp, verdict) = response(&serde_json::to_vec(&doc).unwrap());
        assert_eq!(
            (verdict, resp["allowed"].clone()),
            (Verdict::Skipped, json!(true))
        );
        doc["request"]["operation"] = json!("UPDATE");
        let (_, verdict) = response(&serde_json::to_vec(&doc).unwrap());
        assert_eq!(verdict, Verdict::Denied, "an update is checked");
        doc["request"]["object"]["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let (_, verdict) = response(&serde_json::to_vec(&doc).unwrap());
        assert_eq!(
            verdict,
            Verdict::Skipped,
            "a finalizer may still be removed"
        );
        doc["request"]["subResource"] = json!("status");
        let (_, verdict) = response(&serde_json::to_vec(&doc).unwrap());
        assert_eq!(verdict, Verdict::Skipped);
    }

    #[test]
    fn malformed_reviews_are_errors_or_named_warnings() {
        assert!(validate_body(b"not json", true).is_err());
        assert!(validate_body(b"[]", true).is_err());
        assert!(
            validate_body(
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                true
            )
            .is_err()
        );
        assert!(validate_body(
            br#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{"uid":"x"}}"#,
            true
        )
        .is_err());
        assert!(validate_body(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
            true
        )
        .is_err());
        // A request with a field of the wrong type: allowed, the warning names it.
        let mut doc: Value = serde_json::from_slice(&review(
            "VirtualService",
            "networking.istio.io",
            "v1",
            vs(json!({}), "v1"),
        ))
        .unwrap();
        doc["request"]["operation"] = json!(42);
        let (resp, verdict) = response(&serde_json::to_vec(&doc).unwrap());
        assert_eq!(verdict, Verdict::Skipped);
        assert!(
            resp["warnings"][0]
                .as_str()
                .unwrap()
                .contains("request.operation"),
            "{resp}"
        );
        // v1beta1 is answered in v1beta1.
        doc["apiVersion"] = json!("admission.k8s.io/v1beta1");
        doc["request"]["operation"] = json!("CREATE");
        let out = validate_body(&serde_json::to_vec(&doc).unwrap(), true).unwrap();
        assert_eq!(out.review["apiVersion"], "admission.k8s.io/v1beta1");
        assert_eq!(out.verdict, Verdict::Denied);
    }
}
