//! The canonical service labels of an injected pod, as Istio's injection template derives them
//! (telemetry and `istioctl` group workloads by them):
//!
//! * `service.istio.io/canonical-name`: the pod's label of that name, else
//!   `app.kubernetes.io/name`, else `app`, else the workload's name
//!   ([`rustmesh_api::workload::workload_name`]);
//!   truncated to 63 characters with trailing `-` removed (Istio's `trunc 63 | trimSuffix "-"`).
//! * `service.istio.io/canonical-revision`: the pod's label of that name, else
//!   `app.kubernetes.io/version`, else `version`, else `latest`.
//!
//! An empty label counts as absent (the template's `default`), so a pod labelled `app: ""` gets
//! the workload name, and an empty canonical label is replaced.
//!
//! Deliberate differences: a pod with only a `generateName` and no controller (Istio: an empty
//! label) gets its `generateName` without the trailing `-` (and without a `pod-template-hash`
//! suffix); truncation removes every trailing `-`, `.` and `_`, not one `-`, so the label is
//! always a valid label value (`foo--` → `foo`); and the `deploymentconfig` label is left on the
//! pod (Istio deletes it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::names::LABEL_CANONICAL_NAME;

/// The longest label value.
pub const MAX_LABEL_VALUE: usize = 63;

/// `service.istio.io/canonical-name` (see the module doc), or `None` when there is nothing to
/// derive it from or what there is cannot be a label value (a warning says so).
pub fn canonical_name(pod: &Pod, warnings: &mut Vec<String>) -> Option<String> {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let name = rustmesh_api::workload::canonical_name_label(labels)
        .map(str::to_owned)
        .or_else(|| rustmesh_api::workload::workload_name(pod))?;
    let truncated = truncate(&name);
    if crate::settings::is_label_value(&truncated) && !truncated.is_empty() {
        Some(truncated)
    } else {
        warnings.push(format!(
            "label {LABEL_CANONICAL_NAME} not set: {name:?} does not make a label value"
        ));
        None
    }
}

/// Istio's `trunc 63 | trimSuffix "-"`, trimming every trailing `-`, `.` and `_` so that the
/// result can be a label value.
pub fn truncate(name: &str) -> String {
    let mut end = name.len().min(MAX_LABEL_VALUE);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches(['-', '.', '_']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(meta: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "metadata": meta })).unwrap()
    }

    fn owned(kind: &str, owner: &str, labels: serde_json::Value) -> Pod {
        pod(json!({
            "generateName": format!("{owner}-"),
            "labels": labels,
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Something", "name": "not-the-controller", "uid": "0"},
                {"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "1", "controller": true}
            ]
        }))
    }

    #[test]
    fn canonical_name_prefers_labels_then_the_workload() {
        let name = |labels: serde_json::Value| {
            let mut p = owned("ReplicaSet", "foo-6d8f9c7b5", labels);
            p.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert("pod-template-hash".into(), "6d8f9c7b5".into());
            canonical_name(&p, &mut Vec::new())
        };
        assert_eq!(name(json!({})).as_deref(), Some("foo"));
        assert_eq!(name(json!({"app": "a"})).as_deref(), Some("a"));
        assert_eq!(
            name(json!({"app": "a", "app.kubernetes.io/name": "b"})).as_deref(),
            Some("b")
        );
        assert_eq!(
            name(json!({"app": "a", "app.kubernetes.io/name": "b", "service.istio.io/canonical-name": "c"}))
                .as_deref(),
            Some("c")
        );
        // Empty labels count as absent, as the template's `default`.
        assert_eq!(
            name(json!({"app": "", "service.istio.io/canonical-name": ""})).as_deref(),
            Some("foo")
        );
    }

    #[test]
    fn long_workload_names_are_truncated_to_a_label_value() {
        let long = format!("{}-{}", "a".repeat(62), "tail");
        assert_eq!(truncate(&long), "a".repeat(62));
        assert_eq!(truncate("short"), "short");
        let dashes = format!("{}--b", "a".repeat(61));
        assert_eq!(truncate(&dashes), "a".repeat(61), "every trailing '-'");
        let dot = format!("{}.b", "a".repeat(62));
        assert_eq!(truncate(&dot), "a".repeat(62), "a '.' too");
        let p = owned(
            "StatefulSet",
            &format!("{}.example", "s".repeat(70)),
            json!({}),
        );
        let n = canonical_name(&p, &mut Vec::new()).unwrap();
        assert_eq!(n, "s".repeat(63));
        // Nothing usable: no label, and a warning.
        let mut warnings = Vec::new();
        let odd = pod(json!({"name": "a:b"}));
        assert_eq!(canonical_name(&odd, &mut warnings), None);
        assert!(warnings[0].contains("\"a:b\""), "{warnings:?}");
    }
}
