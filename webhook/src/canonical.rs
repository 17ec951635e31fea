//! The canonical service labels of an injected pod, as Istio's injection template derives them
//! (telemetry and `istioctl` group workloads by them):
//!
//! * `service.istio.io/canonical-name`: the pod's label of that name, else
//!   `app.kubernetes.io/name`, else `app`, else the workload's name ([`workload_name`]);
//!   truncated to 63 characters with trailing `-` removed (Istio's `trunc 63 | trimSuffix "-"`).
//! * `service.istio.io/canonical-revision`: the pod's label of that name, else
//!   `app.kubernetes.io/version`, else `version`, else `latest`.
//!
//! An empty label counts as absent (the template's `default`), so a pod labelled `app: ""` gets
//! the workload name, and an empty canonical label is replaced.
//!
//! The workload is found as Istio's `GetDeployMetaFromPod` finds it, for a pod with a
//! `generateName`: its controller owner reference's name; a ReplicaSet's without the
//! `pod-template-hash` (`reviews-v1-6d8f9c7b5` → `reviews-v1`, the Deployment), or without the
//! `rollouts-pod-template-hash` (an Argo Rollout); a Job's without a CronJob's `-<8 to 10
//! digits>` suffix (`backup-28391720` → `backup`); a ReplicationController's
//! `deploymentconfig` label (OpenShift); StatefulSet, DaemonSet and other owners as named.
//! Otherwise the pod's name.
//!
//! Deliberate differences: a pod with only a `generateName` and no controller (Istio: an empty
//! label) gets its `generateName` without the trailing `-` (and without a `pod-template-hash`
//! suffix); truncation removes every trailing `-`, `.` and `_`, not one `-`, so the label is
//! always a valid label value (`foo--` → `foo`); and the `deploymentconfig` label is left on the
//! pod (Istio deletes it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::names::{LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION};

/// The longest label value.
pub const MAX_LABEL_VALUE: usize = 63;

/// The workload the pod belongs to (see the module doc); `None` for a pod with neither a
/// controller, a name nor a `generateName`.
pub fn workload_name(pod: &Pod) -> Option<String> {
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref();
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let generate = meta.generate_name.as_deref().filter(|g| !g.is_empty());
    if generate.is_some() {
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        if let Some(owner) = controller {
            let name = owner.name.as_str();
            let without = |hash: Option<&str>| {
                hash.filter(|h| name.ends_with(h))
                    .and_then(|h| name.strip_suffix(&format!("-{h}")))
            };
            let derived = match owner.kind.as_str() {
                "ReplicaSet" => without(label("pod-template-hash"))
                    .or_else(|| without(label("rollouts-pod-template-hash"))),
                "ReplicationController" => label("deploymentconfig"),
                "Job" => cron_job_name(name),
                _ => None,
            };
            return Some(derived.unwrap_or(name).to_owned());
        }
    }
    if let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) {
        return Some(name.to_owned());
    }
    // rustmesh's: Istio would use the (still empty) pod name.
    let base = generate?.trim_end_matches('-');
    let base = match label("pod-template-hash") {
        Some(h) => base.strip_suffix(&format!("-{h}")).unwrap_or(base),
        None => base,
    };
    (!base.is_empty()).then(|| base.to_owned())
}

/// A CronJob's Job is named `<cronjob>-<scheduled time in minutes>`: Istio's `(.+)-\d{8,10}$`.
fn cron_job_name(job: &str) -> Option<&str> {
    let (base, digits) = job.rsplit_once('-')?;
    (!base.is_empty()
        && (8..=10).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit()))
    .then_some(base)
}

/// `service.istio.io/canonical-name` (see the module doc), or `None` when there is nothing to
/// derive it from or what there is cannot be a label value (a warning says so).
pub fn canonical_name(pod: &Pod, warnings: &mut Vec<String>) -> Option<String> {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let name = [LABEL_CANONICAL_NAME, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()).cloned())
        .or_else(|| workload_name(pod))?;
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

/// `service.istio.io/canonical-revision` (see the module doc).
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [
        LABEL_CANONICAL_REVISION,
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()).cloned())
    .unwrap_or_else(|| "latest".to_owned())
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
    fn workload_names_from_the_controller_as_istio() {
        for (kind, owner, labels, want) in [
            (
                "ReplicaSet",
                "foo-6d8f9c7b5",
                json!({"pod-template-hash": "6d8f9c7b5"}),
                "foo",
            ),
            (
                "ReplicaSet",
                "reviews-v1-545db77b95",
                json!({"pod-template-hash": "545db77b95"}),
                "reviews-v1",
            ),
            // A bare ReplicaSet (no hash label) or a hash that is not its suffix: its name.
            ("ReplicaSet", "frontend", json!({}), "frontend"),
            (
                "ReplicaSet",
                "frontend-abc",
                json!({"pod-template-hash": "xyz"}),
                "frontend-abc",
            ),
            (
                "ReplicaSet",
                "canary-7c4f8d9b6",
                json!({"rollouts-pod-template-hash": "7c4f8d9b6"}),
                "canary",
            ),
            ("StatefulSet", "web", json!({}), "web"),
            ("DaemonSet", "node-agent", json!({}), "node-agent"),
            ("Job", "migrate", json!({}), "migrate"),
            ("Job", "backup-28391720", json!({}), "backup"),
            (
                "Job",
                "hourly-report-1234567890",
                json!({}),
                "hourly-report",
            ),
            ("Job", "backup-1234567", json!({}), "backup-1234567"),
            ("Job", "backup-12345678901", json!({}), "backup-12345678901"),
            (
                "ReplicationController",
                "app-3",
                json!({"deploymentconfig": "app"}),
                "app",
            ),
            ("ReplicationController", "rc", json!({}), "rc"),
        ] {
            assert_eq!(
                workload_name(&owned(kind, owner, labels)).as_deref(),
                Some(want),
                "{kind} {owner}"
            );
        }
    }

    #[test]
    fn workload_names_of_bare_pods() {
        assert_eq!(
            workload_name(&pod(json!({"name": "solo"}))).as_deref(),
            Some("solo")
        );
        // A named pod with generateName but no controller: its name, as Istio.
        assert_eq!(
            workload_name(&pod(json!({"name": "web-0", "generateName": "web-"}))).as_deref(),
            Some("web-0")
        );
        // Only a generateName (rustmesh's fallback; Istio: empty).
        assert_eq!(
            workload_name(&pod(json!({"generateName": "batch-"}))).as_deref(),
            Some("batch")
        );
        assert_eq!(
            workload_name(&pod(json!({
                "generateName": "productpage-v1-64794f5db4-",
                "labels": {"pod-template-hash": "64794f5db4"}
            })))
            .as_deref(),
            Some("productpage-v1")
        );
        assert_eq!(workload_name(&pod(json!({}))), None);
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

    #[test]
    fn canonical_revision_prefers_labels_then_latest() {
        let rev = |pairs: &[(&str, &str)]| {
            canonical_revision(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(rev(&[]), "latest");
        assert_eq!(rev(&[("version", "v1")]), "v1");
        assert_eq!(
            rev(&[("version", "v1"), ("app.kubernetes.io/version", "1.2")]),
            "1.2"
        );
        assert_eq!(
            rev(&[
                ("version", "v1"),
                ("service.istio.io/canonical-revision", "blue")
            ]),
            "blue"
        );
        assert_eq!(rev(&[("version", "")]), "latest");
    }
}
