//! Custom injection templates: the `templates` setting, Istio's
//! `sidecarInjectorWebhook.templates`, selected by a pod with `inject.istio.io/templates`
//! (`sidecar,custom`; see [`crate::templates`]).
//!
//! Istio's custom templates are Go templates rendered into a pod and merged onto the injected
//! pod with a Kubernetes strategic merge. rustmesh runs no Go templates: a custom template is a
//! **static pod fragment**, the same for every pod that selects it. The setting's value is one
//! YAML or JSON document (read within [`LIMITS`] by the bounded reader,
//! [`rustmesh_xds::yaml`]): a mapping of template names to fragments,
//!
//! ```yaml
//! custom:     # or, as Istio's values write it, a string holding this YAML (`custom: |`)
//!   metadata: {labels: {team: payments}}
//!   spec:
//!     containers:
//!     - name: istio-proxy
//!       env: [{name: FOO, value: bar}]
//! ```
//!
//! Each name is a DNS-1123 label other than the built-in `sidecar` and `gateway`; each fragment
//! has only `metadata.labels`, `metadata.annotations` and `spec`, reads as those fields of a
//! Kubernetes `Pod` (an unknown field is an error, not dropped), and holds no `{{` (a Go
//! template action: nothing in a fragment is evaluated), no `null` (strategic merge's delete)
//! and no `$patch`-style directive. Anything else is an error naming the template and the
//! field, which makes the settings invalid ([`crate::settings`]).
//!
//! [`apply`] merges a fragment onto the injected pod as Kubernetes' strategic merge merges a
//! `Pod`:
//!
//! * `metadata.labels` and `metadata.annotations`: key by key, the template's value winning;
//! * `spec.containers` and `spec.initContainers`: by `name`; a container of that name is merged
//!   with [`crate::overlay::merge_container`]'s rules (`env` by name, objects field by field,
//!   other lists replaced, `image: auto` keeping the image), another name is appended (it must
//!   have an image). An entry for `istio-proxy` (or an injected `istio-init`) is merged onto the
//!   injected container wherever it is, `containers` or `initContainers` (a native sidecar),
//!   before the pod's own `istio-proxy` overlay, as Istio re-applies the pod's containers after
//!   its templates ([`crate::inject::inject`] does that part with [`Fragment::containers_named`]);
//! * `spec.volumes`: by `name`, a volume of that name replaced whole, another appended;
//! * `spec.imagePullSecrets`: by `name`, a new one appended;
//! * any other `spec` field: objects merged field by field, lists and values replaced.
//!
//! What a template adds (containers, init containers, volumes, pull secrets) is recorded in
//! `sidecar.istio.io/status`, so that re-injection ([`crate::reinject`]) removes it first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use rustmesh_xds::yaml;
use serde_json::{Map, Value};

use crate::names::{ANNOTATION_OVERRIDES, ANNOTATION_STATUS};
use crate::overlay::AUTO_IMAGE;
use crate::templates::KNOWN;

/// The setting's key.
pub const KEY: &str = "templates";

/// What the setting's value may expand to: 256 KiB of text (pod fragments are a few hundred
/// bytes each), 32 levels, 64 Ki nodes and 1 MiB of text with every alias expanded.
pub const LIMITS: yaml::Limits = yaml::Limits {
    max_bytes: 256 * 1024,
    max_depth: 32,
    max_nodes: 64 * 1024,
    max_text_bytes: 1024 * 1024,
};

/// Why a Go template action is refused.
const STATIC: &str = "rustmesh's templates are static pod fragments, nothing in them is evaluated";

/// The custom templates, by name.
pub type Templates = BTreeMap<String, Fragment>;

/// The `spec` lists merged by `name`.
const CONTAINER_LISTS: [&str; 2] = ["containers", "initContainers"];
const NAMED_LISTS: [&str; 4] = [
    "containers",
    "initContainers",
    "volumes",
    "imagePullSecrets",
];

/// The annotations the injector writes itself; a template may not set them.
const RESERVED_ANNOTATIONS: [&str; 2] = [ANNOTATION_STATUS, ANNOTATION_OVERRIDES];

/// One custom template: a checked pod fragment (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// The fragment's `spec`, as written (its fields read as a `PodSpec`'s).
    spec: Map<String, Value>,
}

/// What templates added to the pod, for `sidecar.istio.io/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Containers appended to `spec.containers`.
    pub containers: Vec<String>,
    /// Containers appended to `spec.initContainers`.
    pub init_containers: Vec<String>,
    /// Volumes appended to `spec.volumes` (not those replaced).
    pub volumes: Vec<String>,
    /// Secrets of `spec.imagePullSecrets` the templates list, appended or already there (as the
    /// `imagePullSecrets` setting's: re-injection removes no pull secret, so the status lists
    /// the same ones every time).
    pub image_pull_secrets: Vec<String>,
}

/// Reads the setting's value (see the module doc); empty (or an empty document) is no
/// templates. The error names the template and the field; the caller names the key.
pub fn parse(text: &str) -> Result<Templates, String> {
    if text.trim().is_empty() {
        return Ok(Templates::new());
    }
    let doc = yaml::from_str(text, &LIMITS)
        .map_err(|e| format!("not a YAML or JSON document within the limits: {e}"))?;
    let map = match doc {
        serde_norway::Value::Null => return Ok(Templates::new()),
        serde_norway::Value::Mapping(m) => m,
        _ => {
            return Err(
                "not a mapping of template names to pod fragments ({\"<name>\": {\"metadata\": \
                 ..., \"spec\": ...}})"
                    .to_owned(),
            );
        }
    };
    let mut out = Templates::new();
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            return Err(format!("template name {key:?} is not a string"));
        };
        check_name(name)?;
        // Istio's values give each template as text: a string is read as the fragment's YAML.
        let value = match value {
            serde_norway::Value::String(text) => {
                if text.contains("{{") {
                    return Err(format!(
                        "template {name:?}: holds a Go template action (\"{{{{\"); {STATIC}"
                    ));
                }
                yaml::from_str(&text, &LIMITS).map_err(|e| {
                    format!("template {name:?}: its text is not a YAML pod fragment: {e}")
                })?
            }
            other => other,
        };
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("template {name:?}: not a JSON-like document: {e}"))?;
        let fragment =
            Fragment::from_value(&json).map_err(|e| format!("template {name:?}: {e}"))?;
        out.insert(name.to_owned(), fragment);
    }
    Ok(out)
}

/// A custom template's name: not a built-in one, and a DNS-1123 label (so that it reads in
/// the annotation's comma-separated list).
fn check_name(name: &str) -> Result<(), String> {
    if KNOWN.iter().any(|(n, _)| *n == name) {
        return Err(format!(
            "template {name:?} is built in; a custom template needs another name"
        ));
    }
    crate::values::check_dns_label(name).map_err(|e| format!("template name {e}"))
}

impl Fragment {
    /// Checks a fragment (see the module doc).
    pub fn from_value(v: &Value) -> Result<Fragment, String> {
        check_values(v, "")?;
        let Value::Object(top) = v else {
            return Err(format!(
                "{v} is not a pod fragment (an object of metadata.labels, metadata.annotations \
                 and spec)"
            ));
        };
        let mut out = Fragment::default();
        for (key, value) in top {
            match key.as_str() {
                "metadata" => {
                    let Value::Object(meta) = value else {
                        return Err(format!("metadata: {value} is not an object"));
                    };
                    for (key, value) in meta {
                        let path = format!("metadata.{key}");
                        match key.as_str() {
                            "labels" => out.labels = string_map(value, &path)?,
                            "annotations" => out.annotations = string_map(value, &path)?,
                            _ => return Err(not_allowed(&path)),
                        }
                    }
                }
                "spec" => {
                    let Value::Object(spec) = value else {
                        return Err(format!("spec: {value} is not an object"));
                    };
                    check_spec(spec)?;
                    out.spec = spec.clone();
                }
                _ => return Err(not_allowed(key)),
            }
        }
        for (k, v) in &out.labels {
            check_qualified_name(k).map_err(|e| format!("metadata.labels: {e}"))?;
            if !crate::settings::is_label_value(v) {
                return Err(format!(
                    "metadata.labels.{k}: {v:?} is not a valid label value (at most 63 letters, \
                     digits, '-', '_' and '.', starting and ending with a letter or digit)"
                ));
            }
        }
        for k in out.annotations.keys() {
            check_qualified_name(k).map_err(|e| format!("metadata.annotations: {e}"))?;
            if RESERVED_ANNOTATIONS.contains(&k.as_str()) {
                return Err(format!(
                    "metadata.annotations.{k}: written by the injector; a template may not set it"
                ));
            }
        }
        Ok(out)
    }

    /// The fragment's entries for the container `name`, from `spec.containers` then
    /// `spec.initContainers`.
    pub fn containers_named(&self, name: &str) -> Vec<&Value> {
        CONTAINER_LISTS
            .iter()
            .filter_map(|list| self.spec.get(*list).and_then(Value::as_array))
            .flatten()
            .filter(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .collect()
    }

    /// The names of the fragment's `spec.volumes`.
    pub fn volume_names(&self) -> Vec<&str> {
        self.spec
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .collect()
    }
}

fn not_allowed(path: &str) -> String {
    format!(
        "{path}: not allowed; a template sets only metadata.labels, metadata.annotations and spec"
    )
}

/// `path` joined with `key` (`spec` + `containers` = `spec.containers`).
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Refuses what a static fragment cannot mean: a Go template action (`{{` in a key or a
/// string), a `null` (strategic merge's delete) and a directive key (`$patch`, `$retainKeys`...).
fn check_values(v: &Value, path: &str) -> Result<(), String> {
    let shown = |path: &str| {
        if path.is_empty() {
            "the template".to_owned()
        } else {
            path.to_owned()
        }
    };
    let action = |path: &str, text: &str| {
        format!(
            "{}: {text:?} holds a Go template action (\"{{{{\"); {STATIC}",
            shown(path)
        )
    };
    match v {
        Value::Null => Err(format!(
            "{}: null is not supported (a strategic merge patch's delete); a template only adds \
             and replaces fields",
            shown(path)
        )),
        Value::String(s) if s.contains("{{") => Err(action(path, s)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_values(item, &format!("{}[{i}]", shown(path)))),
        Value::Object(map) => map.iter().try_for_each(|(k, item)| {
            if k.contains("{{") {
                return Err(action(path, k));
            }
            if k.starts_with('$') {
                return Err(format!(
                    "{}: strategic merge directives such as {k:?} are not supported; a template \
                     only adds and replaces fields",
                    join(path, k)
                ));
            }
            check_values(item, &join(path, k))
        }),
        _ => Ok(()),
    }
}

/// `metadata.labels` or `metadata.annotations`: an object of strings.
fn string_map(v: &Value, path: &str) -> Result<BTreeMap<String, String>, String> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        format!(
            "{}: {}",
            join(path, &e.path().to_string()).trim_end_matches('.'),
            e.inner()
        )
    })
}

/// Checks a fragment's `spec`: it reads as a `PodSpec`, every field it writes is one a
/// `PodSpec` has, and the lists merged by name have a distinct, non-empty name in each entry.
fn check_spec(spec: &Map<String, Value>) -> Result<(), String> {
    let value = Value::Object(spec.clone());
    let typed: PodSpec = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." {
            "spec".to_owned()
        } else {
            join("spec", &at)
        };
        format!("{at}: {}", e.inner())
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("spec: {e}"))?;
    if let Some(path) = crate::values::unknown_field(&value, &back, "spec") {
        return Err(format!(
            "{path}: not a field of a Kubernetes Pod (the API server would drop it)"
        ));
    }
    let mut containers: Vec<&str> = Vec::new();
    for list in NAMED_LISTS {
        let mut seen: Vec<&str> = Vec::new();
        for (i, item) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                return Err(format!(
                    "spec.{list}[{i}]: has no name (entries merge by name)"
                ));
            }
            if seen.contains(&name) {
                return Err(format!("spec.{list}[{i}]: {name:?} is listed twice"));
            }
            seen.push(name);
        }
        if CONTAINER_LISTS.contains(&list) {
            if let Some(twice) = seen.iter().find(|n| containers.contains(n)) {
                return Err(format!(
                    "spec.{list}: {twice:?} is also in spec.containers (a container name is \
                     unique in a pod)"
                ));
            }
            containers.extend(seen);
        }
    }
    Ok(())
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of at most
/// 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty() && crate::settings::is_label_value(name);
    if !name_ok || prefix.is_some_and(|p| crate::values::check_dns_subdomain(p).is_err()) {
        return Err(format!(
            "{key:?} is not a Kubernetes key (an optional DNS subdomain and '/', then at most 63 \
             letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Merges `fragment` onto `pod` (see the module doc), recording what it adds in `added`.
/// `injected` names the containers whose entries the caller already merged
/// ([`Fragment::containers_named`]); they are skipped. Returns the names of the containers
/// merged or added, for the caller's checks.
///
/// Refused, naming the container: an entry for a container the pod has in the other list
/// (names are unique in a pod), and a new container without an image (or with `image: auto`,
/// which means the injector's image only for a container it injects).
pub fn apply(
    pod: &mut Pod,
    fragment: &Fragment,
    injected: &[&str],
    added: &mut Added,
) -> Result<Vec<String>, String> {
    if !fragment.labels.is_empty() {
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.extend(fragment.labels.clone());
    }
    if !fragment.annotations.is_empty() {
        let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.extend(fragment.annotations.clone());
    }
    if fragment.spec.is_empty() {
        return Ok(Vec::new());
    }
    let spec = pod.spec.get_or_insert_with(Default::default);
    let mut value = serde_json::to_value(&*spec).map_err(|e| format!("spec: {e}"))?;
    let Value::Object(target) = &mut value else {
        return Err("spec: not an object".to_owned());
    };
    let mut touched = Vec::new();
    for (key, patch) in &fragment.spec {
        let items = || patch.as_array().into_iter().flatten();
        match key.as_str() {
            "containers" | "initContainers" => {
                for item in items() {
                    let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                    if injected.contains(&name) {
                        continue;
                    }
                    merge_container_entry(target, key, name, item, added)?;
                    touched.push(name.to_owned());
                }
            }
            "volumes" | "imagePullSecrets" => {
                let list = list_mut(target, key);
                for item in items() {
                    let name = item.get("name");
                    let text = name.and_then(Value::as_str).unwrap_or_default().to_owned();
                    let new = match list.iter_mut().find(|v| v.get("name") == name) {
                        Some(old) => {
                            *old = item.clone();
                            false
                        }
                        None => {
                            list.push(item.clone());
                            true
                        }
                    };
                    if key == "imagePullSecrets" {
                        added.image_pull_secrets.push(text);
                    } else if new {
                        added.volumes.push(text);
                    }
                }
            }
            _ => merge_value(target.entry(key.clone()).or_insert(Value::Null), patch),
        }
    }
    *spec = serde_json::from_value(value)
        .map_err(|e| format!("the merged pod spec does not read as one: {e}"))?;
    Ok(touched)
}

/// The list `key` of the spec, made empty when absent.
fn list_mut<'a>(target: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = target
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(list) => list,
        _ => unreachable!("made a list above"),
    }
}

/// Merges one entry of the fragment's `containers`/`initContainers` (`key`) onto the pod's.
fn merge_container_entry(
    target: &mut Map<String, Value>,
    key: &str,
    name: &str,
    item: &Value,
    added: &mut Added,
) -> Result<(), String> {
    let other = if key == "containers" {
        "initContainers"
    } else {
        "containers"
    };
    let named = |c: &Value| c.get("name").and_then(Value::as_str) == Some(name);
    if target
        .get(other)
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(named))
    {
        return Err(format!(
            "spec.{key}: {name:?} is in the pod's spec.{other} (a container name is unique in a \
             pod)"
        ));
    }
    let list = list_mut(target, key);
    match list.iter_mut().find(|c| named(c)) {
        Some(old) => {
            let existing: Container = serde_json::from_value(old.clone())
                .map_err(|e| format!("spec.{key}: {name:?}: {e}"))?;
            let merged = crate::overlay::merge_container_value(&existing, item)
                .map_err(|e| format!("spec.{key}: {name:?} cannot be merged: {e}"))?;
            *old = serde_json::to_value(merged).map_err(|e| e.to_string())?;
        }
        None => {
            let image = item
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if image.is_empty() || image == AUTO_IMAGE {
                return Err(format!(
                    "spec.{key}: container {name:?} is not in the pod, so the template adds it, \
                     and it has no image (image: auto means the injector's image only for a \
                     container it injects)"
                ));
            }
            list.push(item.clone());
            if key == "containers" {
                added.containers.push(name.to_owned());
            } else {
                added.init_containers.push(name.to_owned());
            }
        }
    }
    Ok(())
}

/// Objects merged field by field; anything else replaced.
fn merge_value(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge_value(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Fragment {
        parse(text).unwrap().remove("custom").unwrap()
    }

    fn refused(text: &str) -> String {
        parse(text).unwrap_err()
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"app": "a", "x": "old"}, "annotations": {"a": "1"}},
            "spec": {
                "initContainers": [{"name": "istio-init", "image": "proxy"}],
                "containers": [
                    {"name": "istio-proxy", "image": "proxy",
                     "env": [{"name": "POD_NAME", "value": "p"}],
                     "resources": {"limits": {"cpu": "2"}}},
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}],
                     "args": ["serve"], "securityContext": {"runAsUser": 1000}}
                ],
                "volumes": [{"name": "istio-envoy", "emptyDir": {}}, {"name": "data", "emptyDir": {}}],
                "imagePullSecrets": [{"name": "regcred"}],
                "securityContext": {"fsGroup": 1337},
                "tolerations": [{"key": "a", "operator": "Exists"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn json_and_yaml_documents_are_read_and_empty_is_none() {
        for empty in ["", "  ", "{}", "~"] {
            assert_eq!(parse(empty).unwrap(), Templates::new(), "{empty:?}");
        }
        let json = one(
            r#"{"custom": {"metadata": {"labels": {"x": "y"}}, "spec": {"containers": [{"name": "istio-proxy", "env": [{"name": "FOO", "value": "bar"}]}]}}}"#,
        );
        let yaml = one(
            "custom:\n  metadata:\n    labels: {x: y}\n  spec:\n    containers:\n    - name: istio-proxy\n      env:\n      - {name: FOO, value: bar}\n",
        );
        assert_eq!(json, yaml);
        assert_eq!(json.labels["x"], "y");
        assert_eq!(json.containers_named("istio-proxy").len(), 1);
        assert!(json.containers_named("istio-init").is_empty());
        let two =
            parse(r#"{"a": {}, "b-2": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}}"#)
                .unwrap();
        assert_eq!(two.keys().collect::<Vec<_>>(), ["a", "b-2"]);
        assert_eq!(two["b-2"].volume_names(), ["v"]);
        // Istio's values form: the fragment as YAML text.
        assert_eq!(
            one(
                "custom: |\n  metadata:\n    labels: {x: y}\n  spec:\n    containers:\n    - name: istio-proxy\n      env: [{name: FOO, value: bar}]\n"
            ),
            json
        );
        // YAML numbers where Kubernetes takes them (quantities) are fine.
        one("custom: {spec: {containers: [{name: app, resources: {limits: {cpu: 1}}}]}}");
    }

    #[test]
    fn bad_documents_and_names_are_refused_naming_the_template() {
        for (text, says) in [
            ("[a, b]", "not a mapping of template names"),
            ("custom: [", "not a YAML or JSON document"),
            ("sidecar: {}", "template \"sidecar\" is built in"),
            ("gateway: {}", "template \"gateway\" is built in"),
            (
                "Custom: {}",
                "template name \"Custom\" is not a DNS-1123 label",
            ),
            ("a,b: {}", "template name \"a,b\" is not a DNS-1123 label"),
            ("1: {}", "template name Number(1) is not a string"),
            ("custom: 3", "template \"custom\": 3 is not a pod fragment"),
            (
                "custom: ~",
                "template \"custom\": the template: null is not supported",
            ),
            (
                "custom: \"spec: [\"",
                "template \"custom\": its text is not a YAML pod fragment",
            ),
            (
                "custom: |\n  spec:\n    containers:\n    - name: istio-proxy\n      image: \"{{ .ProxyImage }}\"\n",
                "template \"custom\": holds a Go template action (\"{{\"); rustmesh's templates are static pod fragments",
            ),
        ] {
            let e = refused(text);
            assert!(e.contains(says), "{text}: {e}");
        }
        let bomb = format!("custom: {}", "x".repeat(LIMITS.max_bytes));
        assert!(refused(&bomb).contains("over the limit of 262144 bytes"));
    }

    #[test]
    fn fragments_are_pod_shaped_static_and_known_to_kubernetes() {
        for (fragment, says) in [
            (
                json!({"kind": "Pod"}),
                "kind: not allowed; a template sets only metadata.labels",
            ),
            (
                json!({"metadata": {"name": "x"}}),
                "metadata.name: not allowed",
            ),
            (
                json!({"metadata": {"labels": {"x": 1}}}),
                "metadata.labels.x: invalid type",
            ),
            (
                json!({"metadata": {"labels": {"x": "a b"}}}),
                "metadata.labels.x: \"a b\" is not a valid label value",
            ),
            (
                json!({"metadata": {"labels": {"-x": "y"}}}),
                "metadata.labels: \"-x\" is not a Kubernetes key",
            ),
            (
                json!({"metadata": {"annotations": {"sidecar.istio.io/status": "{}"}}}),
                "written by the injector",
            ),
            (json!({"spec": []}), "spec: [] is not an object"),
            (
                json!({"spec": {"containres": []}}),
                "spec.containres: not a field of a Kubernetes Pod",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "evn": []}]}}),
                "spec.containers[0].evn: not a field",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "env": [{"name": "A", "value": 1}]}]}}),
                "spec.containers[0].env[0].value: invalid type",
            ),
            (
                json!({"spec": {"containers": [{"image": "x"}]}}),
                "spec.containers[0]: has no name",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]}}),
                "spec.volumes[1]: \"v\" is listed twice",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x"}], "initContainers": [{"name": "a", "image": "x"}]}}),
                "spec.initContainers: \"a\" is also in spec.containers",
            ),
            (
                json!({"spec": {"containers": [{"name": "istio-proxy", "image": "{{ .Values.global.hub }}/proxy"}]}}),
                "spec.containers[0].image: \"{{ .Values.global.hub }}/proxy\" holds a Go template action (\"{{\"); rustmesh's templates are static pod fragments",
            ),
            (
                json!({"metadata": {"annotations": {"{{ .Name }}": "x"}}}),
                "Go template action",
            ),
            (
                json!({"spec": {"securityContext": null}}),
                "spec.securityContext: null is not supported",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
                "spec.containers[0].$patch: strategic merge directives",
            ),
        ] {
            let text = json!({"custom": fragment}).to_string();
            let e = refused(&text);
            assert!(e.starts_with("template \"custom\": "), "{e}");
            assert!(e.contains(says), "{fragment}: {e}");
        }
    }

    fn applied(fragment: Value, injected: &[&str]) -> Result<(Value, Added, Vec<String>), String> {
        let f = Fragment::from_value(&fragment).unwrap();
        let mut p = pod();
        let mut added = Added::default();
        let touched = apply(&mut p, &f, injected, &mut added)?;
        Ok((serde_json::to_value(p).unwrap(), added, touched))
    }

    #[test]
    fn metadata_is_merged_key_by_key() {
        let (p, added, touched) = applied(
            json!({"metadata": {"labels": {"x": "new", "team": "t"}, "annotations": {"b": "2"}}}),
            &[],
        )
        .unwrap();
        assert_eq!(
            p["metadata"]["labels"],
            json!({"app": "a", "x": "new", "team": "t"})
        );
        assert_eq!(p["metadata"]["annotations"], json!({"a": "1", "b": "2"}));
        assert_eq!(added, Added::default());
        assert!(touched.is_empty());
    }

    #[test]
    fn containers_merge_by_name_and_new_ones_are_appended() {
        let (p, added, touched) = applied(
            json!({"spec": {
                "containers": [
                    {"name": "app", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "9"}],
                     "securityContext": {"runAsGroup": 3000}, "args": ["run"]},
                    {"name": "log", "image": "fluent:1"}
                ],
                "initContainers": [{"name": "setup", "image": "busybox", "command": ["true"]}]
            }}),
            &["istio-proxy", "istio-init"],
        )
        .unwrap();
        let spec = &p["spec"];
        let app = &spec["containers"][1];
        assert_eq!(
            app["env"],
            json!([{"name": "A", "value": "9"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(
            app["securityContext"],
            json!({"runAsUser": 1000, "runAsGroup": 3000})
        );
        assert_eq!(app["args"], json!(["run"]), "other lists are replaced");
        assert_eq!(app["image"], "app:1");
        assert_eq!(spec["containers"][2]["name"], "log");
        assert_eq!(spec["initContainers"][1]["name"], "setup");
        assert_eq!(added.containers, ["log"]);
        assert_eq!(added.init_containers, ["setup"]);
        assert_eq!(touched, ["app", "log", "setup"]);
    }

    #[test]
    fn injected_containers_are_left_to_the_caller() {
        let fragment = json!({"spec": {"containers": [{"name": "istio-proxy", "env": [{"name": "FOO", "value": "bar"}]}]}});
        let (p, _, touched) = applied(fragment.clone(), &["istio-proxy"]).unwrap();
        assert_eq!(
            p["spec"]["containers"][0]["env"],
            json!([{"name": "POD_NAME", "value": "p"}])
        );
        assert!(touched.is_empty());
        let f = Fragment::from_value(&fragment).unwrap();
        let proxy = pod().spec.unwrap().containers[0].clone();
        let merged =
            crate::overlay::merge_container_value(&proxy, f.containers_named("istio-proxy")[0])
                .unwrap();
        assert_eq!(
            serde_json::to_value(merged.env).unwrap(),
            json!([{"name": "POD_NAME", "value": "p"}, {"name": "FOO", "value": "bar"}])
        );
        // A partial probe keeps the injected port: the fragment is merged as written.
        let probe = json!({"name": "istio-proxy", "readinessProbe": {"periodSeconds": 5}});
        let base: Container = serde_json::from_value(json!({"name": "istio-proxy", "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}}})).unwrap();
        let merged = crate::overlay::merge_container_value(&base, &probe).unwrap();
        let rp = merged.readiness_probe.unwrap();
        assert_eq!(rp.period_seconds, Some(5));
        assert_eq!(
            rp.http_get.unwrap().port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15021)
        );
    }

    #[test]
    fn bad_container_entries_are_refused_naming_them() {
        let e = applied(json!({"spec": {"containers": [{"name": "log"}]}}), &[]).unwrap_err();
        assert!(e.contains("spec.containers: container \"log\" is not in the pod, so the template adds it, and it has no image"), "{e}");
        let e = applied(
            json!({"spec": {"containers": [{"name": "log", "image": "auto"}]}}),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("has no image"), "{e}");
        let e = applied(
            json!({"spec": {"containers": [{"name": "istio-init", "image": "x"}]}}),
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("spec.containers: \"istio-init\" is in the pod's spec.initContainers"),
            "{e}"
        );
    }

    #[test]
    fn volumes_and_pull_secrets_by_name_other_fields_merged_or_replaced() {
        let (p, added, _) = applied(
            json!({"spec": {
                "volumes": [{"name": "data", "configMap": {"name": "cm"}}, {"name": "extra", "emptyDir": {"medium": "Memory"}}],
                "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}],
                "securityContext": {"runAsNonRoot": true},
                "tolerations": [{"key": "b", "operator": "Exists"}],
                "nodeSelector": {"disk": "ssd"},
                "priorityClassName": "high"
            }}),
            &[],
        )
        .unwrap();
        let spec = &p["spec"];
        assert_eq!(
            spec["volumes"],
            json!([
                {"name": "istio-envoy", "emptyDir": {}},
                {"name": "data", "configMap": {"name": "cm"}},
                {"name": "extra", "emptyDir": {"medium": "Memory"}}
            ]),
            "a volume of the same name is replaced whole"
        );
        assert_eq!(
            spec["imagePullSecrets"],
            json!([{"name": "regcred"}, {"name": "mirror"}])
        );
        assert_eq!(
            spec["securityContext"],
            json!({"fsGroup": 1337, "runAsNonRoot": true})
        );
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "b", "operator": "Exists"}])
        );
        assert_eq!(spec["nodeSelector"], json!({"disk": "ssd"}));
        assert_eq!(spec["priorityClassName"], "high");
        assert_eq!(added.volumes, ["extra"]);
        assert_eq!(added.image_pull_secrets, ["regcred", "mirror"]);
    }

    #[test]
    fn applying_twice_gives_the_same_pod() {
        let f = Fragment::from_value(&json!({
            "metadata": {"labels": {"t": "1"}},
            "spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "2"}]}],
                     "volumes": [{"name": "extra", "emptyDir": {}}]}
        }))
        .unwrap();
        let mut once = pod();
        apply(&mut once, &f, &[], &mut Added::default()).unwrap();
        let mut twice = once.clone();
        let mut added = Added::default();
        apply(&mut twice, &f, &[], &mut added).unwrap();
        assert_eq!(once, twice);
        assert!(added.volumes.is_empty(), "already there: not added again");
    }

    #[test]
    fn qualified_names() {
        for ok in ["app", "example.com/team", "a.b_c-d", "x/y"] {
            assert!(check_qualified_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/x", "x/", "-a", "Ex ample/x", &"a".repeat(64)] {
            assert!(check_qualified_name(bad).is_err(), "{bad}");
        }
    }
}
