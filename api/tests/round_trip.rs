//! Real Istio-style YAML, read into the typed API and written back: every field must survive.

use rustmesh_api::{Duration, Error, IstioObject, ServiceEntry, load, load_all};
use serde_json::Value;
use std::path::Path;

fn fixtures(dir: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// The documents of a YAML stream as plain JSON values, exactly as written.
fn raw_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn object_json(obj: &IstioObject) -> Value {
    match obj {
        IstioObject::VirtualService(o) => serde_json::to_value(o),
        IstioObject::DestinationRule(o) => serde_json::to_value(o),
        IstioObject::Sidecar(o) => serde_json::to_value(o),
        IstioObject::PeerAuthentication(o) => serde_json::to_value(o),
        IstioObject::AuthorizationPolicy(o) => serde_json::to_value(o),
        IstioObject::RequestAuthentication(o) => serde_json::to_value(o),
        IstioObject::Telemetry(o) => serde_json::to_value(o),
        IstioObject::ServiceEntry(o) => serde_json::to_value(o),
        IstioObject::Gateway(o) => serde_json::to_value(o),
    }
    .unwrap()
}

/// Compares what was written with what came back, treating `24h` and `86400s` as the same duration.
fn assert_same(path: &str, written: &Value, back: &Value) {
    match (written, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let child = format!("{path}.{k}");
                let other = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{child} was lost (written: {v})"));
                assert_same(&child, v, other);
            }
            for k in b.keys() {
                assert!(
                    a.contains_key(k),
                    "{path}.{k} appeared from nowhere: {}",
                    b[k]
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(&format!("{path}[{i}]"), x, y);
            }
        }
        (Value::String(a), Value::String(b)) if a != b => {
            let da: Result<Duration, _> = a.parse();
            let db: Result<Duration, _> = b.parse();
            assert!(da.is_ok() && da == db, "{path}: {a:?} came back as {b:?}");
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{path}: number changed");
        }
        _ => assert_eq!(written, back, "{path} changed"),
    }
}

/// Reads a valid fixture. Some of Istio's ServiceEntry examples use what rustmesh does not
/// render yet (#20: unix sockets): they are
/// refused naming only that (they are valid for Istio), so they are read here without
/// rustmesh's refusals.
fn load_valid(name: &str, text: &str) -> Vec<IstioObject> {
    load_all(text)
        .into_iter()
        .zip(raw_documents(text))
        .map(|(result, raw)| match result {
            Ok(obj) => obj,
            Err(Error::Invalid { errors, .. }) if raw["kind"] == "ServiceEntry" => {
                for e in &errors {
                    assert!(
                        e.message
                            .contains(rustmesh_api::support::SERVICE_ENTRY_NOT_RENDERED),
                        "{name}: {e}"
                    );
                }
                let se: ServiceEntry = serde_json::from_value(raw).unwrap();
                assert_eq!(se.spec.istio_errors(), vec![], "{name}");
                IstioObject::ServiceEntry(Box::new(se))
            }
            Err(e) => panic!("{name}: {e}"),
        })
        .collect()
}

#[test]
fn every_field_of_every_fixture_survives_a_round_trip() {
    let mut objects = 0;
    for (name, text) in fixtures("valid") {
        let parsed = load_valid(&name, &text);
        let raw = raw_documents(&text);
        assert_eq!(parsed.len(), raw.len(), "{name}: document count");
        for (obj, written) in parsed.iter().zip(&raw) {
            let back = object_json(obj);
            // apiVersion comes back as the stored version; everything else must be identical.
            let mut written = written.clone();
            written["apiVersion"] = back["apiVersion"].clone();
            assert_same(&format!("{name}:{}", obj.kind()), &written, &back);

            // And the written-back form reads in again to the same object.
            let again = load_valid(&name, &serde_json::to_string(&back).unwrap());
            assert_eq!(&again[0], obj, "{name}: second read differs");
            objects += 1;
        }
    }
    assert_eq!(objects, 43, "objects read");
}

#[test]
fn weighted_subsets_read_as_istio_means_them() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/reviews-90-10.yaml"),
    )
    .unwrap();
    let objs = load(&text).unwrap();
    let IstioObject::VirtualService(vs) = &objs[0] else {
        panic!("first is not a VirtualService")
    };
    assert_eq!(vs.metadata.namespace.as_deref(), Some("bookinfo"));
    let shift = &vs.spec.http[1];
    let weights: Vec<_> = shift
        .route
        .iter()
        .map(|r| (r.destination.subset.as_deref().unwrap(), r.weight.unwrap()))
        .collect();
    assert_eq!(weights, [("v1", 90), ("v2", 10)]);
    let jason = &vs.spec.http[0].match_[0].headers["end-user"];
    assert!(jason.matches("jason") && !jason.matches("jasonx"));

    let IstioObject::DestinationRule(dr) = &objs[1] else {
        panic!("second is not a DestinationRule")
    };
    let names: Vec<_> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2", "v3"]);
    assert_eq!(dr.spec.subsets[2].labels["version"], "v3");
}

#[test]
fn durations_and_percentages_have_their_meaning() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/ratings-fault-delay.yaml"),
    )
    .unwrap();
    let objs = load(&text).unwrap();
    let IstioObject::VirtualService(ratings) = &objs[0] else {
        panic!()
    };
    let delay = ratings.spec.http[0]
        .fault
        .as_ref()
        .unwrap()
        .delay
        .as_ref()
        .unwrap();
    assert_eq!(
        delay.fixed_delay.unwrap().as_std(),
        std::time::Duration::from_secs(2)
    );
    assert_eq!(delay.percentage.unwrap().value, 100.0);
    let abort = ratings.spec.http[1]
        .fault
        .as_ref()
        .unwrap()
        .abort
        .as_ref()
        .unwrap();
    assert_eq!(
        (abort.http_status, abort.percentage.unwrap().value),
        (Some(500), 0.1)
    );
    let IstioObject::VirtualService(reviews) = &objs[1] else {
        panic!()
    };
    assert_eq!(
        reviews.spec.http[0].timeout.unwrap().as_std(),
        std::time::Duration::from_millis(500)
    );
}

#[test]
fn sidecar_egress_scoping_reads_and_applies() {
    use rustmesh_api::sidecar::{EgressHost, OutboundTrafficPolicyMode};
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/sidecar-egress.yaml"),
    )
    .unwrap();
    let objs = load(&text).unwrap();
    let IstioObject::Sidecar(sc) = &objs[0] else {
        panic!()
    };
    assert_eq!(
        sc.spec.outbound_traffic_policy.as_ref().unwrap().mode,
        OutboundTrafficPolicyMode::RegistryOnly
    );
    let hosts: Vec<_> = sc.spec.egress[0]
        .hosts
        .iter()
        .map(|h| EgressHost::parse(h).unwrap())
        .collect();
    let visible = |ns: &str, fqdn: &str| hosts.iter().any(|h| h.exposes("bookinfo", ns, fqdn));
    assert!(visible("bookinfo", "reviews.bookinfo.svc.cluster.local"));
    assert!(visible(
        "istio-system",
        "istiod.istio-system.svc.cluster.local"
    ));
    assert!(!visible("default", "httpbin.default.svc.cluster.local"));
}
