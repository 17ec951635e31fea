//! The workload a pod belongs to, as Istio names it (`source_workload`,
//! `ISTIO_META_WORKLOAD_NAME`, the canonical service's last fallback): shared by the injector,
//! which writes it into the sidecar's environment, and the operator, which writes it into each
//! endpoint's metadata for the client sidecars' metric labels.
//!
//! The workload is found as Istio's `GetDeployMetaFromPod` finds it, for a pod with a
//! `generateName`: its controller owner reference's name; a ReplicaSet's without the
//! `pod-template-hash` (`reviews-v1-6d8f9c7b5` → `reviews-v1`, the Deployment), or without the
//! `rollouts-pod-template-hash` (an Argo Rollout); a Job's without a CronJob's `-<8 to 10
//! digits>` suffix (`backup-28391720` → `backup`); a ReplicationController's
//! `deploymentconfig` label (OpenShift); StatefulSet, DaemonSet and other owners as named.
//! Otherwise the pod's name.
//!
//! [`proxy_role`] tells a gateway's proxy (`proxy run --type router`) from a sidecar by its
//! container's arguments, as istiod tells them by the proxy's node type.
//!
//! Deliberate difference: a pod with only a `generateName` and no controller (Istio: an empty
//! name) gets its `generateName` without the trailing `-` (and without a `pod-template-hash`
//! suffix).

use k8s_openapi::api::core::v1::Pod;
use rustmesh_xds::scope::ProxyRole;
use rustmesh_xds::well_known::{ROUTER_ARGS, SIDECAR_CONTAINER_NAME};
use std::collections::BTreeMap;

/// The role of the pod's proxy: [`ProxyRole::Router`] when its `istio-proxy` container (an
/// ordinary or a native sidecar) runs with `--type router` (or `--type=router`), as the
/// injector's `gateway` template writes it; otherwise [`ProxyRole::Sidecar`].
pub fn proxy_role(pod: &Pod) -> ProxyRole {
    let spec = pod.spec.as_ref();
    let proxy = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == SIDECAR_CONTAINER_NAME);
    let args = proxy.and_then(|c| c.args.as_deref()).unwrap_or_default();
    let joined = format!("{}={}", ROUTER_ARGS[0], ROUTER_ARGS[1]);
    let router = args
        .windows(2)
        .any(|w| w[0] == ROUTER_ARGS[0] && w[1] == ROUTER_ARGS[1])
        || args.contains(&joined);
    if router {
        ProxyRole::Router
    } else {
        ProxyRole::Sidecar
    }
}

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

pub use rustmesh_xds::well_known::{LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION};

/// The label a pod's canonical service comes from, as Istio's template reads it:
/// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app` (an empty
/// label counts as absent); `None`: the workload's name is next.
pub fn canonical_name_label(labels: &BTreeMap<String, String>) -> Option<&str> {
    [LABEL_CANONICAL_NAME, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map(String::as_str)
}

/// `service.istio.io/canonical-revision`: the pod's label of that name, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
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

    #[test]
    fn a_gateways_proxy_is_told_by_its_router_arguments() {
        let with = |containers: serde_json::Value, init: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"containers": containers, "initContainers": init},
            }))
            .unwrap()
        };
        let proxy = |args: serde_json::Value| json!([{"name": "istio-proxy", "args": args}]);
        let router = json!(["run", "--type", "router", "--config-dir", "/etc/rustmesh"]);
        assert_eq!(
            proxy_role(&with(proxy(router.clone()), json!([]))),
            ProxyRole::Router
        );
        assert_eq!(
            proxy_role(&with(proxy(json!(["run", "--type=router"])), json!([]))),
            ProxyRole::Router
        );
        // A native sidecar (an init container) counts too.
        assert_eq!(
            proxy_role(&with(json!([{"name": "app"}]), proxy(router.clone()))),
            ProxyRole::Router
        );
        // A sidecar, another container with those arguments, or no spec at all.
        assert_eq!(
            proxy_role(&with(
                proxy(json!(["run", "--config-dir", "/x"])),
                json!([])
            )),
            ProxyRole::Sidecar
        );
        assert_eq!(
            proxy_role(&with(json!([{"name": "app", "args": router}]), json!([]))),
            ProxyRole::Sidecar
        );
        assert_eq!(proxy_role(&pod(json!({"name": "p"}))), ProxyRole::Sidecar);
    }
}
