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
    AuthorizationPolicySpec, DestinationRuleSpec, GatewaySpec, PeerAuthenticationSpec,
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
        "Gateway" => {
            let s: GatewaySpec = serde_json::from_value(spec).unwrap_or_else(|e| read(kind, e));
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
        let (errors, warnings) = findings(kind, support::base(kind));
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{kind}: {errors:?} {warnings:?}"
        );
    }
    // The ServiceEntry base is valid for Istio too, warnings included.
    let spec: ServiceEntrySpec = serde_json::from_value(support::base("ServiceEntry")).unwrap();
    assert_eq!(spec.istio_errors(), vec![]);
    assert_eq!(spec.warnings(), vec![]);
}

/// What a Gateway cannot have is refused saying rustmesh does not implement it, and a
/// field refused only for some values names the check that reports it; the HTTP and TCP
/// protocols are rendered, whatever their case.
#[test]
fn every_gateway_refusal_says_it_is_not_implemented() {
    for e in support::table("Gateway").iter().filter(|e| e.reported()) {
        match e.support {
            Support::Refused(why) => assert!(
                why.contains(support::GATEWAY_NOT_RENDERED),
                "{}: {why}",
                e.path
            ),
            Support::ReportedBy(why) => assert!(
                why.starts_with("rustmesh_api::gateway::GatewaySpec::"),
                "{}: {why}",
                e.path
            ),
            other => panic!("{}: {other:?}", e.path),
        }
    }
    for protocol in ["HTTP", "http", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "MONGO"] {
        let mut spec = support::base("Gateway");
        spec["servers"][0]["port"]["protocol"] = json!(protocol);
        if !protocol.eq_ignore_ascii_case("http")
            && !protocol.starts_with('G')
            && protocol != "HTTP2"
        {
            // Istio: no tls on a TCP server (the base redirects HTTP to HTTPS).
            spec["servers"][0].as_object_mut().unwrap().remove("tls");
        }
        let (errors, _) = findings("Gateway", spec);
        assert!(errors.is_empty(), "{protocol}: {errors:?}");
    }
    // HTTPS and TLS servers: the base's `tls` has no mode, Istio's default PASSTHROUGH, which
    // is rendered; the modes rustmesh does not render are refused naming `tls.mode`.
    for protocol in ["TLS", "HTTPS"] {
        let mut spec = support::base("Gateway");
        spec["servers"][0]["port"]["protocol"] = json!(protocol);
        let (errors, _) = findings("Gateway", spec.clone());
        assert!(errors.is_empty(), "{protocol}: {errors:?}");
        spec["servers"][0]["tls"] = json!({ "mode": "AUTO_PASSTHROUGH" });
        let (errors, _) = findings("Gateway", spec.clone());
        assert!(
            errors.iter().any(|(f, m)| f == "spec.servers[0].tls.mode"
                && m.contains("AUTO_PASSTHROUGH")
                && m.contains(support::GATEWAY_NOT_RENDERED)),
            "{protocol} AUTO_PASSTHROUGH: {errors:?}"
        );
    }
    // SIMPLE, MUTUAL and OPTIONAL_MUTUAL with a credentialName are rendered, and
    // ISTIO_MUTUAL with none.
    for (mode, tls) in [
        (
            "SIMPLE",
            json!({"mode": "SIMPLE", "credentialName": "gw-cert"}),
        ),
        (
            "MUTUAL",
            json!({"mode": "MUTUAL", "credentialName": "gw-cert"}),
        ),
        (
            "OPTIONAL_MUTUAL",
            json!({"mode": "OPTIONAL_MUTUAL", "credentialName": "gw-cert"}),
        ),
        ("ISTIO_MUTUAL", json!({"mode": "ISTIO_MUTUAL"})),
    ] {
        let mut spec = support::base("Gateway");
        spec["servers"][0]["port"]["protocol"] = json!("HTTPS");
        spec["servers"][0]["tls"] = tls;
        let (errors, _) = findings("Gateway", spec);
        assert!(errors.is_empty(), "{mode}: {errors:?}");
    }
}

/// What a ServiceEntry cannot have is refused saying rustmesh does not implement it, and
/// a field refused only for some values names the check that reports it.
#[test]
fn every_service_entry_refusal_says_it_is_not_implemented() {
    for e in support::table("ServiceEntry")
        .iter()
        .filter(|e| e.reported())
    {
        match e.support {
            Support::Refused(why) => assert!(
                why.contains(support::SERVICE_ENTRY_NOT_RENDERED),
                "{}: {why}",
                e.path
            ),
            Support::ReportedBy(why) => assert!(
                why.starts_with("rustmesh_api::service_entry::ServiceEntrySpec::unsupported"),
                "{}: {why}",
                e.path
            ),
            other => panic!("{}: {other:?}", e.path),
        }
    }
    // Every resolution is rendered: NONE, STATIC, and DNS and DNS_ROUND_ROBIN (the sidecar
    // resolves the endpoint, here an IP address, which resolves to itself).
    for resolution in ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] {
        let mut spec = support::base("ServiceEntry");
        spec["resolution"] = json!(resolution);
        if resolution == "NONE" {
            spec.as_object_mut().unwrap().remove("endpoints");
        }
        let (errors, _) = findings("ServiceEntry", spec);
        assert!(errors.is_empty(), "{resolution}: {errors:?}");
    }
}
