//! The pod's own `istio-proxy` and `istio-init`: not a reason to skip the pod, but overlays on
//! the injected containers, as Istio's injector treats them (`reapplyOverwrittenContainers`,
//! "customizing injection"). Istio's gateway chart relies on it: its Deployment declares an
//! `istio-proxy` container with `image: auto`, its ports, resources and security context, and
//! the injector fills in the rest.
//!
//! [`merge_container`] merges the pod's container onto the injected one as Kubernetes' strategic
//! merge patch merges a `Container` (what Istio uses):
//!
//! * a field the pod sets replaces the injected one; objects (`resources`, `securityContext`,
//!   probes, `lifecycle`...) are merged field by field, so `resources.limits.memory` alone
//!   keeps the injected requests and CPU limit;
//! * `env` is merged by `name`, `ports` by `containerPort`, `volumeMounts` by `mountPath`,
//!   `volumeDevices` by `devicePath`: the pod's entry replaces the injected one of that key,
//!   its others are added after the injected ones;
//! * every other list is replaced whole (`args`, `command`, `envFrom`, capability lists), as
//!   Kubernetes declares them atomic;
//! * `image: auto` (or no image) means the injector's image, and with it the injector's
//!   `imagePullPolicy` unless the pod says IfNotPresent or Never (the API server defaults the
//!   placeholder's policy to Always, which must not make the node pull a locally built image).
//!
//! What the pod declared is recorded in the annotation `proxy.istio.io/overrides` (Istio's
//! `{"containers": [...], "initContainers": [...]}`), so that injecting the pod again after the
//! injected containers were stripped ([`crate::reinject`]) applies the same overlay.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{INIT_CONTAINER_NAME, SIDECAR_CONTAINER_NAME};

/// The image value that means "the injector's image" (Istio's `AutoImage`).
pub const AUTO_IMAGE: &str = "auto";

/// The lists of a container merged by a key instead of replaced, and their keys (Kubernetes'
/// `patchMergeKey` of `Container`).
const MERGED_LISTS: [(&str, &str); 4] = [
    ("env", "name"),
    ("ports", "containerPort"),
    ("volumeMounts", "mountPath"),
    ("volumeDevices", "devicePath"),
];

/// Istio's `proxy.istio.io/overrides` annotation: the pod's own containers that were merged
/// onto injected ones, by the list the injected one is in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overrides {
    /// Overlays of injected containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Overlays of injected init containers (and of a native sidecar).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
}

impl Overrides {
    /// The overlay named `name`, from either list.
    pub fn get(&self, name: &str) -> Option<&Container> {
        self.containers
            .iter()
            .chain(&self.init_containers)
            .find(|c| c.name == name)
    }

    /// Reads the annotation's value.
    pub fn parse(value: &str) -> Result<Overrides, String> {
        let not = |e: &dyn std::fmt::Display| {
            format!(
                "not Istio's {{\"containers\": [...], \"initContainers\": [...]}} of containers: {e}"
            )
        };
        match serde_json::from_str::<Value>(value).map_err(|e| not(&e))? {
            v @ Value::Object(_) => serde_json::from_value(v).map_err(|e| not(&e)),
            _ => Err(not(&"not a JSON object")),
        }
    }

    /// The annotation's value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The pod's own `istio-proxy` and `istio-init`, taken out of the pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overlays {
    /// The pod's `istio-proxy` (from `containers` or `initContainers`).
    pub proxy: Option<Container>,
    /// The pod's `istio-init`.
    pub init: Option<Container>,
}

/// Takes the containers named `istio-proxy` (and `istio-init` when `with_init`) out of the
/// pod's `containers` and `initContainers`, wherever they are, and returns them; a name the pod
/// has several times keeps the first and adds a warning (the API server would refuse the pod
/// anyway).
pub fn take(pod: &mut Pod, with_init: bool, warnings: &mut Vec<String>) -> Overlays {
    let Some(spec) = pod.spec.as_mut() else {
        return Overlays::default();
    };
    let mut found: Vec<Container> = Vec::new();
    let mut take_from = |list: &mut Vec<Container>| {
        let (ours, rest): (Vec<Container>, Vec<Container>) =
            std::mem::take(list).into_iter().partition(|c| {
                c.name == SIDECAR_CONTAINER_NAME || (with_init && c.name == INIT_CONTAINER_NAME)
            });
        *list = rest;
        found.extend(ours);
    };
    take_from(&mut spec.containers);
    if let Some(inits) = spec.init_containers.as_mut() {
        take_from(inits);
    }
    let mut out = Overlays::default();
    for c in found {
        let slot = if c.name == SIDECAR_CONTAINER_NAME {
            &mut out.proxy
        } else {
            &mut out.init
        };
        if slot.is_some() {
            warnings.push(format!(
                "the pod has more than one container named {:?}; only the first is merged onto the \
                 injected one",
                c.name
            ));
        } else {
            *slot = Some(c);
        }
    }
    out
}

/// `overlay` (the pod's own container) merged onto `injected`, as the module doc says.
pub fn merge_container(injected: &Container, overlay: &Container) -> Result<Container, String> {
    let patch = serde_json::to_value(overlay).map_err(|e| e.to_string())?;
    merge_container_value(injected, &patch)
}

/// [`merge_container`] with the overlay as JSON, for an overlay that is not a whole container
/// (a custom template's fragment, [`crate::custom_templates`]): only the fields it writes are
/// merged (a typed container would add the defaults of its required fields, such as a probe's
/// `port: 0`).
pub fn merge_container_value(injected: &Container, overlay: &Value) -> Result<Container, String> {
    let mut base = serde_json::to_value(injected).map_err(|e| e.to_string())?;
    let mut patch = overlay.clone();
    if let Value::Object(p) = &mut patch
        && p.get("image")
            .and_then(Value::as_str)
            .is_some_and(|i| i.is_empty() || i == AUTO_IMAGE)
    {
        p.remove("image");
        // The API server defaulted `imagePullPolicy` to Always for the untagged placeholder
        // `auto` before the pod reached the injector: that says nothing about the real image,
        // whose policy is the injector's (`imagePullPolicy` setting). IfNotPresent or Never
        // can only come from the pod's author, and win.
        if p.get("imagePullPolicy").and_then(Value::as_str) == Some("Always") {
            p.remove("imagePullPolicy");
        }
    }
    merge_object_at(&mut base, &patch, true);
    serde_json::from_value(base).map_err(|e| e.to_string())
}

/// The overlay as recorded in `proxy.istio.io/overrides`: `image: auto` left out, as Istio
/// records it.
pub fn recorded(overlay: &Container) -> Container {
    let mut c = overlay.clone();
    if c.image
        .as_deref()
        .is_some_and(|i| i.is_empty() || i == AUTO_IMAGE)
    {
        c.image = None;
    }
    c
}

/// Merges `patch` into `base`; `container` says whether these are a container's own fields
/// (where [`MERGED_LISTS`] apply).
fn merge_object_at(base: &mut Value, patch: &Value, container: bool) {
    let (Value::Object(b), Value::Object(p)) = (&mut *base, patch) else {
        *base = patch.clone();
        return;
    };
    for (key, new) in p {
        if new.is_null() {
            b.remove(key);
            continue;
        }
        let merge_key = container
            .then(|| MERGED_LISTS.iter().find(|(list, _)| list == key))
            .flatten()
            .map(|(_, k)| *k);
        match (b.get_mut(key), new) {
            (Some(old @ Value::Object(_)), Value::Object(_)) => merge_object_at(old, new, false),
            (Some(Value::Array(old)), Value::Array(items)) if merge_key.is_some() => {
                merge_list(old, items, merge_key.unwrap_or_default());
            }
            _ => {
                b.insert(key.clone(), new.clone());
            }
        }
    }
}

/// Merges list items by `key`: an item whose key the list has is merged onto that item, the
/// others are appended in their order.
fn merge_list(base: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let id = item.get(key);
        match base
            .iter_mut()
            .find(|old| id.is_some() && old.get(key) == id)
        {
            Some(old) => merge_object_at(old, item, false),
            None => base.push(item.clone()),
        }
    }
}

/// Serialises the overlays into the annotation's value, each in the list its injected
/// container is in (`native`: `istio-proxy` is an init container).
pub fn overrides(overlays: &Overlays, native: bool) -> Overrides {
    let mut out = Overrides::default();
    if let Some(init) = &overlays.init {
        out.init_containers.push(recorded(init));
    }
    if let Some(proxy) = &overlays.proxy {
        if native {
            out.init_containers.push(recorded(proxy));
        } else {
            out.containers.push(recorded(proxy));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn injected() -> Container {
        container(json!({
            "name": "istio-proxy",
            "image": "registry/proxy:1",
            "args": ["run", "--config-dir", "/etc/rustmesh/config"],
            "env": [{"name": "POD_NAME", "value": "x"}, {"name": "ISTIO_META_MESH_ID", "value": "cluster.local"}],
            "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
            "securityContext": {"runAsUser": 1337, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}],
            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2}
        }))
    }

    #[test]
    fn image_auto_keeps_the_injectors_image_and_a_real_one_wins() {
        for image in [Some("auto"), Some(""), None] {
            let mut overlay = json!({"name": "istio-proxy"});
            if let Some(i) = image {
                overlay["image"] = json!(i);
            }
            let merged = merge_container(&injected(), &container(overlay)).unwrap();
            assert_eq!(
                merged.image.as_deref(),
                Some("registry/proxy:1"),
                "{image:?}"
            );
        }
        let merged = merge_container(
            &injected(),
            &container(json!({"name": "istio-proxy", "image": "mine/proxy:debug"})),
        )
        .unwrap();
        assert_eq!(merged.image.as_deref(), Some("mine/proxy:debug"));
    }

    /// `image: auto` carries the API server's default pull policy for an untagged image
    /// (Always): the injector's policy stays; one the pod's author chose wins.
    #[test]
    fn image_auto_keeps_the_injectors_pull_policy_unless_the_pod_chose_one() {
        let mut base = injected();
        base.image_pull_policy = Some("IfNotPresent".into());
        for (policy, want) in [
            ("Always", "IfNotPresent"),
            ("Never", "Never"),
            ("IfNotPresent", "IfNotPresent"),
        ] {
            let overlay = container(
                json!({"name": "istio-proxy", "image": "auto", "imagePullPolicy": policy}),
            );
            let merged = merge_container(&base, &overlay).unwrap();
            assert_eq!(merged.image_pull_policy.as_deref(), Some(want), "{policy}");
        }
        // A real image's policy is the pod's, Always included.
        let overlay = container(
            json!({"name": "istio-proxy", "image": "mine/proxy:1", "imagePullPolicy": "Always"}),
        );
        let merged = merge_container(&base, &overlay).unwrap();
        assert_eq!(merged.image_pull_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn the_gateway_charts_container_is_merged_field_by_field() {
        let overlay = container(json!({
            "name": "istio-proxy",
            "image": "auto",
            "env": [{"name": "ISTIO_META_MESH_ID", "value": "mesh1"}, {"name": "EXTRA", "value": "1"}],
            "ports": [
                {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"},
                {"containerPort": 8080, "name": "http", "protocol": "TCP"}
            ],
            "resources": {"limits": {"memory": "512Mi"}},
            "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
            "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": true}]
        }));
        let merged = serde_json::to_value(merge_container(&injected(), &overlay).unwrap()).unwrap();
        assert_eq!(
            merged["env"],
            json!([
                {"name": "POD_NAME", "value": "x"},
                {"name": "ISTIO_META_MESH_ID", "value": "mesh1"},
                {"name": "EXTRA", "value": "1"}
            ])
        );
        assert_eq!(
            merged["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["containerPort"].clone())
                .collect::<Vec<_>>(),
            [json!(15090), json!(8080)]
        );
        assert_eq!(
            merged["resources"],
            json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "512Mi"}})
        );
        assert_eq!(merged["securityContext"]["runAsUser"], 1000);
        assert_eq!(merged["securityContext"]["runAsNonRoot"], true);
        // A list of a struct is replaced whole.
        assert_eq!(
            merged["securityContext"]["capabilities"],
            json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
        );
        assert_eq!(merged["volumeMounts"].as_array().unwrap().len(), 2);
        assert_eq!(
            merged["args"],
            json!(["run", "--config-dir", "/etc/rustmesh/config"])
        );
        assert_eq!(merged["readinessProbe"]["periodSeconds"], 2);
    }

    #[test]
    fn atomic_lists_and_nested_objects() {
        let overlay = container(json!({
            "name": "istio-proxy",
            "args": ["run", "--concurrency", "4"],
            "readinessProbe": {"periodSeconds": 10},
            "volumeMounts": [{"name": "other", "mountPath": "/etc/istio/proxy"}],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        }));
        let merged = serde_json::to_value(merge_container(&injected(), &overlay).unwrap()).unwrap();
        assert_eq!(merged["args"], json!(["run", "--concurrency", "4"]));
        assert_eq!(merged["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(merged["readinessProbe"]["httpGet"]["port"], 15021);
        // Merged by mountPath: the pod's volume is mounted there instead.
        assert_eq!(
            merged["volumeMounts"],
            json!([{"name": "other", "mountPath": "/etc/istio/proxy"}])
        );
        // An env entry is merged field by field, as Kubernetes does (value and valueFrom both).
        assert_eq!(
            merged["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
    }

    #[test]
    fn take_finds_ours_in_either_list_and_leaves_the_rest() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "istio-init", "image": "auto"}, {"name": "migrate"}],
                "containers": [{"name": "app"}, {"name": "istio-proxy", "image": "auto"}, {"name": "istio-proxy"}]
            }
        }))
        .unwrap();
        let mut warnings = Vec::new();
        let o = take(&mut pod.clone(), false, &mut warnings);
        assert!(o.init.is_none(), "istio-init only when one is injected");
        let o = take(&mut pod, true, &mut warnings);
        assert_eq!(o.proxy.unwrap().image.as_deref(), Some("auto"));
        assert_eq!(o.init.unwrap().image.as_deref(), Some("auto"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.init_containers.unwrap()[0].name, "migrate");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("more than one container named \"istio-proxy\""));
    }

    #[test]
    fn overrides_round_trip_and_bad_values_are_named() {
        let overlays = Overlays {
            proxy: Some(container(
                json!({"name": "istio-proxy", "image": "auto", "resources": {"limits": {"memory": "1Gi"}}}),
            )),
            init: None,
        };
        let recorded = overrides(&overlays, false);
        let text = recorded.to_json();
        assert_eq!(
            text,
            r#"{"containers":[{"name":"istio-proxy","resources":{"limits":{"memory":"1Gi"}}}]}"#
        );
        assert_eq!(Overrides::parse(&text).unwrap(), recorded);
        assert!(
            Overrides::parse(&text)
                .unwrap()
                .get("istio-proxy")
                .is_some()
        );
        let native = overrides(&overlays, true);
        assert!(native.containers.is_empty() && native.init_containers.len() == 1);
        for bad in ["", "[]", r#"{"containers": "x"}"#, r#"{"sidecars": []}"#] {
            let e = Overrides::parse(bad).unwrap_err();
            assert!(e.starts_with("not Istio's"), "{bad}: {e}");
        }
    }
}
