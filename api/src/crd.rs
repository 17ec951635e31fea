//! The CustomResourceDefinitions, generated from the Rust types.
//!
//! Each networking kind (ServiceEntry and Gateway included) is served as `v1`, `v1beta1` and `v1alpha3`, PeerAuthentication,
//! AuthorizationPolicy and RequestAuthentication (`security.istio.io`) as `v1` and `v1beta1`,
//! Telemetry (`telemetry.istio.io`) as `v1` and `v1alpha1`, each with one shared schema (as
//! Istio does), and stored as `v1`, so no conversion webhook is needed. `crds/` holds the
//! rendered YAML; `cargo run -p rustmesh-api --bin crdgen` rewrites it and a test fails when it
//! drifts.

use crate::error::Error;
use crate::parse::VERSIONS;
use crate::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, RequestAuthentication,
    ServiceEntry, Sidecar, Telemetry, VirtualService,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Removes `null` from every `enum` list (schemars writes it for optional enums, next to
/// `nullable: true`). Kubernetes 1.20's kubectl refuses such a CRD (`unknown object type "nil"`)
/// and its API server mangles the versions; `nullable` alone says the same thing.
fn drop_null_enum_values(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            map.values_mut().for_each(drop_null_enum_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_enum_values),
        _ => {}
    }
}

/// Adds the older served `versions` (the first is stored) to a generated single-version CRD,
/// labelled `istio: <istio_label>` as Istio labels its own (`networking`, `security`,
/// `telemetry`).
fn serve_versions(
    mut crd: CustomResourceDefinition,
    versions: &[&str],
    istio_label: &str,
) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).expect("a schema serialises");
            drop_null_enum_values(&mut value);
            *schema = serde_json::from_value(value).expect("the cleaned schema reads back");
        }
    }
    let stored = crd.spec.versions[0].clone();
    crd.spec.versions = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut version = stored.clone();
            version.name = (*v).to_string();
            version.served = true;
            version.storage = i == 0;
            version
        })
        .collect();
    crd.metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend([
            (
                "app.kubernetes.io/part-of".to_string(),
                "rustmesh".to_string(),
            ),
            ("istio".to_string(), istio_label.to_string()),
        ]);
    crd
}

/// Every CRD of the mesh, with the file name it is written to under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "virtualservices.networking.istio.io.yaml",
            serve_versions(VirtualService::crd(), &VERSIONS, "networking"),
        ),
        (
            "destinationrules.networking.istio.io.yaml",
            serve_versions(DestinationRule::crd(), &VERSIONS, "networking"),
        ),
        (
            "sidecars.networking.istio.io.yaml",
            serve_versions(Sidecar::crd(), &VERSIONS, "networking"),
        ),
        (
            "serviceentries.networking.istio.io.yaml",
            serve_versions(
                ServiceEntry::crd(),
                &crate::service_entry::VERSIONS,
                "networking",
            ),
        ),
        (
            "gateways.networking.istio.io.yaml",
            serve_versions(Gateway::crd(), &crate::gateway::VERSIONS, "networking"),
        ),
        (
            "peerauthentications.security.istio.io.yaml",
            serve_versions(
                PeerAuthentication::crd(),
                &crate::peer_authentication::VERSIONS,
                "security",
            ),
        ),
        (
            "authorizationpolicies.security.istio.io.yaml",
            serve_versions(
                AuthorizationPolicy::crd(),
                &crate::authorization_policy::VERSIONS,
                "security",
            ),
        ),
        (
            "requestauthentications.security.istio.io.yaml",
            serve_versions(
                RequestAuthentication::crd(),
                &crate::request_authentication::VERSIONS,
                "security",
            ),
        ),
        (
            "telemetries.telemetry.istio.io.yaml",
            serve_versions(Telemetry::crd(), &crate::telemetry::VERSIONS, "telemetry"),
        ),
    ]
}

/// The YAML text of one CRD, as checked in.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, Error> {
    let body = serde_norway::to_string(crd).map_err(|e| Error::Render(e.to_string()))?;
    Ok(format!(
        "# Generated by `cargo run -p rustmesh-api --bin crdgen` from api/src. Do not edit.\n{body}"
    ))
}
