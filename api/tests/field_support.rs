//! Every field of the Istio API types is either rendered or reported (#17 item 8).
//!
//! The fields are read from the CRD schemas generated from the types (what the API server
//! accepts), so a field added to a type shows up here. Each leaf field must be named by a
//! rendered entry of `rustmesh_api::support::table`, or lie under a reported one (warned or
//! refused). Each reported entry is then proved: an object holding that field, at every place
//! the schema has it, is run through validation, which must name the field (an error for a
//! refused one, a warning and no error for a warned one).

use rustmesh_api::support::{self, Entry, Support};
use rustmesh_api::validate::Validate;
use rustmesh_api::{
    AuthorizationPolicySpec, DestinationRuleSpec, PeerAuthenticationSpec,
    RequestAuthenticationSpec, ServiceEntrySpec, SidecarSpec, TelemetrySpec, VirtualServiceSpec,
};
use serde_json::{Value, json};

/// The entry covering one leaf field (given with the fields on the way to it), if any.
fn covering<'a>(table: &'a [Entry], trail: &[String]) -> Vec<&'a Entry> {
    let leaf = trail.last().unwrap();
    let mut out = Vec::new();
    for e in table {
        match e.support {
            Support::Rendered(_) if e.leaves.is_empty() => {
                if e.matches(leaf) {
                    out.push(e);
                }
            }
            Support::Rendered(_) => {
                if e.leaves.iter().any(|l| {
                    leaf.strip_suffix(l)
                        .and_then(|head| head.strip_suffix('.'))
                        .is_some_and(|head| e.matches(head))
                }) {
                    out.push(e);
                }
            }
            Support::Warned(_) | Support::Refused(_) | Support::ReportedBy(_) => {
                if trail.iter().any(|field| e.matches(field)) {
                    out.push(e);
                }
            }
        }
    }
    out
}

#[test]
fn every_field_of_every_kind_is_rendered_or_reported() {
    let mut problems = Vec::new();
    let mut counts = Vec::new();
    for kind in support::KINDS {
        let table = support::table(kind);
        let leaves = support::leaves(kind);
        assert!(!leaves.is_empty(), "{kind}: no schema");
        let (mut rendered, mut reported) = (0, 0);
        for trail in &leaves {
            let leaf = trail.last().unwrap();
            let by = covering(table, trail);
            let reports: Vec<_> = by.iter().filter(|e| e.reported()).collect();
            let renders: Vec<_> = by.iter().filter(|e| !e.reported()).collect();
            match (renders.len(), reports.len()) {
                (0, 0) => problems.push(format!(
                    "{kind} {leaf}: neither rendered nor reported; add it to \
                     rustmesh_api::support's table (render it, or warn or refuse naming it)"
                )),
                (_, 0) => rendered += 1,
                (0, 1) => reported += 1,
                _ => problems.push(format!(
                    "{kind} {leaf}: claimed by several entries: {:?}",
                    by.iter().map(|e| e.path).collect::<Vec<_>>()
                )),
            }
        }
        // No entry names a field the schema does not have.
        for e in table {
            let used = leaves
                .iter()
                .any(|trail| !covering(std::slice::from_ref(e), trail).is_empty());
            if !used {
                problems.push(format!(
                    "{kind}: entry {} names no field of the schema",
                    e.path
                ));
            }
            if let Support::Rendered(_) = e.support {
                for l in e.leaves {
                    let hit = leaves.iter().any(|t| {
                        let leaf = t.last().unwrap();
                        leaf.strip_suffix(l)
                            .and_then(|h| h.strip_suffix('.'))
                            .is_some_and(|h| e.matches(h))
                    });
                    if !hit {
                        problems.push(format!("{kind}: {}.{l} is not a field", e.path));
                    }
                }
            }
        }
        counts.push(format!("{kind}: {rendered} rendered, {reported} reported"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!("{}", counts.join("\n"));
}

/// (errors, warnings) of a `spec` of `kind`, through the API's validation.
/// (field, message) pairs.
type Named = Vec<(String, String)>;

fn findings(kind: &str, spec: Value) -> (Named, Named) {
    fn pairs(v: Vec<rustmesh_api::FieldError>) -> Named {
        v.into_iter().map(|e| (e.field, e.message)).collect()
    }
    fn read<T>(kind: &str, e: serde_json::Error) -> T {
        panic!("{kind}: the spec does not read: {e}")
    }
    match kind {
        "VirtualService" => {
            let s: VirtualServiceSpec =
                serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
        "DestinationRule" => {
            let s: DestinationRuleSpec =
                serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
        "Sidecar" => {
            let s: SidecarSpec = serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
        "AuthorizationPolicy" => {
            let s: AuthorizationPolicySpec =
                serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
        "RequestAuthentication" => {
            let s: RequestAuthenticationSpec =
                serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
        "Telemetry" => {
            let s: TelemetrySpec = serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
        "ServiceEntry" => {
            let s: ServiceEntrySpec =
                serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
        _ => {
            let s: PeerAuthenticationSpec =
                serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
            (pairs(s.validate()), pairs(support::warned_fields(kind, &s)))
        }
    }
}

#[test]
fn the_base_objects_are_valid_and_report_nothing() {
    for kind in support::KINDS {
        if kind == "ServiceEntry" {
            continue; // Not rendered yet: below.
        }
        let (errors, warnings) = findings(kind, support::base(kind));
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{kind}: {errors:?} {warnings:?}"
        );
    }
}

/// A ServiceEntry is not rendered yet (#20): its base object is valid for Istio (no error, no
/// warning), yet refused, each of its fields named as not rendered, and nothing else.
#[test]
fn a_valid_service_entry_is_refused_field_by_field_as_not_rendered_yet() {
    let spec: ServiceEntrySpec = serde_json::from_value(support::base("ServiceEntry")).unwrap();
    assert_eq!(spec.istio_errors(), vec![]);
    assert_eq!(spec.warnings(), vec![]);
    let (errors, warnings) = findings("ServiceEntry", support::base("ServiceEntry"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.hosts",
            "spec.location",
            "spec.ports",
            "spec.resolution"
        ]
    );
    for (field, message) in &errors {
        assert!(
            message.contains("not implemented")
                && message.contains(support::SERVICE_ENTRY_NOT_RENDERED),
            "{field}: {message}"
        );
    }
}

#[test]
fn each_reported_field_is_named_by_validation_wherever_it_appears() {
    let mut proved = 0;
    for kind in support::KINDS {
        for e in support::table(kind).iter().filter(|e| e.reported()) {
            let examples = support::examples(kind, e);
            assert!(!examples.is_empty(), "{kind} {}: no such field", e.path);
            for (at, spec) in examples {
                let (errors, warnings) = findings(kind, spec);
                match e.support {
                    Support::Refused(why) => {
                        let named = errors.iter().find(|(f, _)| *f == at);
                        let (_, message) = named.unwrap_or_else(|| {
                            panic!("{kind} {at}: refused, but no error names it: {errors:?}")
                        });
                        assert!(
                            message.contains("not implemented") && message.contains(why),
                            "{message}"
                        );
                        assert!(warnings.is_empty(), "{kind} {at}: {warnings:?}");
                    }
                    Support::Warned(why) => {
                        assert!(
                            errors.is_empty(),
                            "{kind} {at}: warned, yet refused: {errors:?}"
                        );
                        let named = warnings.iter().find(|(f, _)| *f == at);
                        let (_, message) = named.unwrap_or_else(|| {
                            panic!("{kind} {at}: warned, but no warning names it: {warnings:?}")
                        });
                        assert!(
                            message.contains("not implemented") && message.contains(why),
                            "{message}"
                        );
                    }
                    // Proved through the operator's validation (operator/tests/field_support.rs).
                    Support::ReportedBy(_) => continue,
                    Support::Rendered(_) => unreachable!(),
                }
                proved += 1;
            }
        }
    }
    assert!(proved > 30, "{proved}");
}

#[test]
fn harmless_values_of_a_reported_field_are_not_reported() {
    for capture in ["DEFAULT", "IPTABLES"] {
        let mut spec = support::base("Sidecar");
        spec["ingress"][0]["captureMode"] = json!(capture);
        spec["egress"][0]["captureMode"] = json!(capture);
        let (errors, warnings) = findings("Sidecar", spec);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
    }
    let mut spec = support::base("Sidecar");
    spec["egress"][0]["captureMode"] = json!("NONE");
    let (errors, _) = findings("Sidecar", spec);
    assert_eq!(errors[0].0, "spec.egress[0].captureMode");
}
