//! Each field rustmesh does not implement reaches the object's status conditions by name
//! (#17 item 8): an object holding it, at every place the schema has it, goes through the
//! operator's validation; a refused field gives `Accepted=False` naming it, a warned one
//! `Accepted=True` with a warning naming it. A field reported by a check of its own may leave
//! the object rendered but not as written (an AuthorizationPolicy's CUSTOM `provider`: reason
//! `Unsupported`), still `Accepted=False` naming it. `rustmesh_api::support`'s table says which is which;
//! `api/tests/field_support.rs` checks that the table covers every field of the schemas.

use rustmesh_api::support::{self, Support};
use rustmesh_operator::fixtures::{bookinfo, istio};
use rustmesh_operator::index::{Kind, ObjKey};
use rustmesh_operator::providers::Providers;
use rustmesh_operator::registry::Registry;
use rustmesh_operator::validation::{Level, UNSUPPORTED, Validation, status_for};

fn kind_of(kind: &str) -> Kind {
    match kind {
        "VirtualService" => Kind::VirtualService,
        "DestinationRule" => Kind::DestinationRule,
        "Sidecar" => Kind::Sidecar,
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        "RequestAuthentication" => Kind::RequestAuthentication,
        "PeerAuthentication" => Kind::PeerAuthentication,
        "Telemetry" => Kind::Telemetry,
        "ServiceEntry" => Kind::ServiceEntry,
        "Gateway" => Kind::Gateway,
        other => panic!("kind {other} is not mapped: add it here"),
    }
}

fn group(kind: &str) -> &'static str {
    if [
        "PeerAuthentication",
        "AuthorizationPolicy",
        "RequestAuthentication",
    ]
    .contains(&kind)
    {
        "security.istio.io/v1"
    } else if kind == "Telemetry" {
        "telemetry.istio.io/v1"
    } else {
        "networking.istio.io/v1"
    }
}

#[test]
fn every_reported_field_is_named_in_the_status_conditions() {
    let mut proved = 0;
    for kind in support::KINDS {
        for entry in support::table(kind).iter().filter(|e| e.reported()) {
            for (field, spec) in support::examples(kind, entry) {
                let mut index = bookinfo();
                // The examples' Telemetry names a zipkin provider: the mesh defines one.
                index.mesh.telemetry = Providers::parse(
                    r#"[{"name": "zipkin", "zipkin": {"service": "zipkin.istio-system", "port": 9411}}]"#,
                )
                .and_then(|p| p.telemetry("", "", "prometheus", 1.0))
                .unwrap();
                let object = serde_json::json!({
                    "apiVersion": group(kind),
                    "kind": kind,
                    "metadata": {"name": "probe", "namespace": "default"},
                    "spec": spec,
                });
                istio(&mut index, &serde_json::to_string(&object).unwrap());
                let registry = Registry::build(&index);
                let verdicts = Validation::compute(&index, &registry).verdicts;
                let v = &verdicts[&(kind_of(kind), ObjKey::new("default", "probe"))];
                let named: Vec<_> = v.findings.iter().filter(|f| f.field == field).collect();
                assert!(
                    !named.is_empty(),
                    "{kind} {field}: no finding names it: {:?}",
                    v.findings
                );
                let status = status_for(v, Some(1), None, "t0");
                let accepted = &status.conditions[0];
                match entry.support {
                    Support::Refused(_) | Support::ReportedBy(_) => {
                        // Refused (not rendered), or rendered not as written (ReportedBy only).
                        let unsupported = v.accepted && v.reason == UNSUPPORTED;
                        assert!(
                            !v.accepted
                                || (unsupported && matches!(entry.support, Support::ReportedBy(_))),
                            "{kind} {field}: accepted: {:?}",
                            v.findings
                        );
                        assert!(named.iter().any(|f| f.level == Level::Error), "{named:?}");
                        assert_eq!(accepted.status, "False", "{kind} {field}");
                        let errors = v.findings.iter().filter(|f| f.level == Level::Error);
                        // The condition names the first error; every one is a validation message.
                        assert!(errors.clone().count() >= 1);
                        assert!(
                            status
                                .validation_messages
                                .iter()
                                .any(|m| m.field == field && m.level == "Error"),
                            "{kind} {field}: {:?}",
                            status.validation_messages
                        );
                    }
                    Support::Warned(_) => {
                        assert!(v.accepted, "{kind} {field}: refused: {:?}", v.findings);
                        assert!(named.iter().all(|f| f.level == Level::Warning), "{named:?}");
                        assert_eq!(accepted.status, "True");
                        assert!(
                            status
                                .validation_messages
                                .iter()
                                .any(|m| m.field == field && m.level == "Warning"),
                            "{kind} {field}: {:?}",
                            status.validation_messages
                        );
                    }
                    Support::Rendered(_) => unreachable!(),
                }
                proved += 1;
            }
        }
    }
    assert!(proved > 30, "{proved}");
}

#[test]
fn the_condition_message_names_a_refused_field() {
    let mut index = bookinfo();
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
  - redirect: {derivePort: FROM_REQUEST_PORT}
"#,
    );
    let registry = Registry::build(&index);
    let verdicts = Validation::compute(&index, &registry).verdicts;
    let v = &verdicts[&(Kind::VirtualService, ObjKey::new("default", "reviews"))];
    let status = status_for(v, Some(1), None, "t0");
    let message = status.conditions[0].message.as_deref().unwrap();
    assert!(
        message.starts_with("spec.http[1].redirect.derivePort: not implemented by rustmesh"),
        "{message}"
    );
}
