//! The CRD YAML under `crds/` must be exactly what the Rust types generate.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut drift = Vec::new();
    for (file, crd) in rustmesh_api::crd::all() {
        let want = rustmesh_api::crd::render(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if want != have {
            let diff = similar::TextDiff::from_lines(&have, &want);
            let shown: String = diff
                .unified_diff()
                .context_radius(2)
                .header("checked in", "generated")
                .to_string();
            drift.push(format!(
                "crds/{file}:\n{}",
                shown.lines().take(40).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(
        drift.is_empty(),
        "CRD YAML is out of date; run `cargo run -p rustmesh-api --bin crdgen` and commit.\n{}",
        drift.join("\n")
    );
}

#[test]
fn every_kind_serves_istios_versions_and_stores_v1() {
    let mut kinds = Vec::new();
    for (file, crd) in rustmesh_api::crd::all() {
        kinds.push(crd.spec.names.kind.clone());
        let versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        if [
            "PeerAuthentication",
            "AuthorizationPolicy",
            "RequestAuthentication",
        ]
        .contains(&crd.spec.names.kind.as_str())
        {
            assert_eq!(crd.spec.group, "security.istio.io", "{file}");
            assert_eq!(
                versions,
                [("v1", true, true), ("v1beta1", true, false)],
                "{file}"
            );
        } else if crd.spec.names.kind == "Telemetry" {
            assert_eq!(crd.spec.group, "telemetry.istio.io", "{file}");
            assert_eq!(
                versions,
                [("v1", true, true), ("v1alpha1", true, false)],
                "{file}"
            );
        } else {
            assert_eq!(crd.spec.group, "networking.istio.io", "{file}");
            assert_eq!(
                versions,
                [
                    ("v1", true, true),
                    ("v1beta1", true, false),
                    ("v1alpha3", true, false)
                ],
                "{file}"
            );
        }
        assert_eq!(
            file,
            format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group)
        );
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let spec = &schema.properties.as_ref().unwrap()["spec"];
        assert!(
            spec.properties.as_ref().is_some_and(|p| !p.is_empty()),
            "{file}: spec schema is empty"
        );
        // Structural: no field may be left untyped except where explicitly preserved, and the
        // one such place is `status.lastAccepted.spec` (a copy of an accepted spec, whatever
        // the version: re-validated by the operator before use).
        let mut crd_json = serde_json::to_value(&crd).unwrap();
        for version in crd_json["spec"]["versions"].as_array_mut().unwrap() {
            let last = &mut version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
                ["lastAccepted"]["properties"];
            let spec = last
                .as_object_mut()
                .and_then(|p| p.remove("spec"))
                .unwrap_or_else(|| panic!("{file}: status.lastAccepted.spec"));
            assert_eq!(spec["type"], "object", "{file}");
            assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], true, "{file}");
        }
        let text = crd_json.to_string();
        assert!(
            !text.contains("x-kubernetes-preserve-unknown-fields"),
            "{file} preserves unknown fields outside status.lastAccepted.spec"
        );
    }
    assert_eq!(
        kinds,
        [
            "VirtualService",
            "DestinationRule",
            "Sidecar",
            "ServiceEntry",
            "Gateway",
            "PeerAuthentication",
            "AuthorizationPolicy",
            "RequestAuthentication",
            "Telemetry"
        ]
    );
}

/// No schema carries an empty-string `default`: the AuthorizationPolicy CRD's `provider.name`
/// had `default: ''` (schemars adds one for every `serde(default)` `String`), which reached
/// Kubernetes 1.20's API server through the Helm install as `null` and was refused
/// (`default: Invalid value: "null"`). Numeric defaults (`0`) install fine.
#[test]
fn no_schema_has_an_empty_string_default() {
    fn walk(v: &serde_json::Value, path: &str, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "default" && v.as_str() == Some("") {
                        found.push(format!("{path}.default = {v}"));
                    }
                    walk(v, &format!("{path}.{k}"), found);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (file, crd) in rustmesh_api::crd::all() {
        let json = serde_json::to_value(&crd.spec.versions).unwrap();
        walk(&json, file, &mut found);
    }
    assert!(
        found.is_empty(),
        "empty-string defaults in CRD schemas:\n{}",
        found.join("\n")
    );
}
