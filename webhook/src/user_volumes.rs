//! `sidecar.istio.io/userVolume` and `sidecar.istio.io/userVolumeMount`: volumes the pod's
//! annotations add to the pod, and mounts they add to `istio-proxy`, as Istio's injection
//! template reads them: each a JSON object of volume names to a Kubernetes `Volume` (without its
//! name) or `VolumeMount` (the key is the volume it mounts):
//!
//! ```yaml
//! sidecar.istio.io/userVolume: '{"certs": {"secret": {"secretName": "my-certs"}}}'
//! sidecar.istio.io/userVolumeMount: '{"certs": {"mountPath": "/etc/certs", "readOnly": true}}'
//! ```
//!
//! The volumes are appended after the injected ones (and listed in the status annotation, as
//! Istio's are); the mounts after `istio-proxy`'s own. In key order, as Go's templates range
//! over a map.
//!
//! **Refused**, naming the annotation ([`crate::annotations`]), where Istio's injection or the
//! API server would fail, or a field would be dropped without a word: a value that is not a JSON
//! object of objects; a field Kubernetes does not have (`readonly` for `readOnly`: Kubernetes
//! would drop it); a value of the wrong type; a volume name that is not a DNS-1123 label, or
//! that the pod or the injection already uses; a volume with no source or several; a `name`
//! inside the value other than its key; a mount without `mountPath`, of a volume the pod will
//! not have, or at a path `istio-proxy` already mounts something at.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Volume, VolumeMount};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::annotations::Failures;
use crate::names::*;
use crate::values;

/// What the two annotations add.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserVolumes {
    /// Added to the pod, after the injected volumes.
    pub volumes: Vec<Volume>,
    /// Added to `istio-proxy`, after its own mounts.
    pub mounts: Vec<VolumeMount>,
}

/// Reads both annotations. `pod_volumes` are the pod's own volume names, `injected` the
/// injection's, `sidecar_mounts` the paths `istio-proxy` mounts at. Each invalid annotation is
/// added to `failures` (once, with the first problem found) and adds nothing.
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    pod_volumes: &[&str],
    injected: &[&str],
    sidecar_mounts: &[&str],
    failures: &mut Failures,
) -> UserVolumes {
    let mut out = UserVolumes::default();
    // The names the pod will have besides the pod's own and the injected: the user volumes
    // (their keys, even when one of them is invalid, so that its mount is not reported too).
    let mut user_names: Vec<String> = Vec::new();
    if let Some(raw) = annotations.get(ANNOTATION_USER_VOLUME) {
        match entries(raw, "volume") {
            Err(why) => failures.add(ANNOTATION_USER_VOLUME, raw, why),
            Ok(map) => {
                user_names = map.keys().cloned().collect();
                match volumes(map, pod_volumes, injected) {
                    Ok(v) => out.volumes = v,
                    Err(why) => failures.add(ANNOTATION_USER_VOLUME, raw, why),
                }
            }
        }
    }
    if let Some(raw) = annotations.get(ANNOTATION_USER_VOLUME_MOUNT) {
        let known = |name: &str| {
            pod_volumes.contains(&name)
                || injected.contains(&name)
                || user_names.iter().any(|n| n == name)
        };
        match entries(raw, "mount").and_then(|map| mounts(map, &known, sidecar_mounts)) {
            Ok(m) => out.mounts = m,
            Err(why) => failures.add(ANNOTATION_USER_VOLUME_MOUNT, raw, why),
        }
    }
    out
}

/// The annotation as a JSON object of names to objects, each with its key as `name`.
fn entries(raw: &str, what: &str) -> Result<BTreeMap<String, Map<String, Value>>, String> {
    let not_object = || {
        format!(
            "not a JSON object of volume names to {what}s (like {})",
            if what == "volume" {
                r#"{"certs": {"secret": {"secretName": "my-certs"}}}"#
            } else {
                r#"{"certs": {"mountPath": "/etc/certs"}}"#
            }
        )
    };
    let doc: Value = serde_json::from_str(raw).map_err(|e| format!("{}: {e}", not_object()))?;
    let Value::Object(doc) = doc else {
        return Err(not_object());
    };
    let mut out = BTreeMap::new();
    for (name, value) in doc {
        let Value::Object(mut fields) = value else {
            return Err(format!("{what} {name:?} is {value}, not a JSON object"));
        };
        match fields.get("name") {
            None => {}
            Some(Value::String(n)) if *n == name => {}
            Some(other) => {
                return Err(format!(
                    "{what} {name:?} has name {other}: the key is its name, leave `name` out"
                ));
            }
        }
        fields.insert("name".to_owned(), Value::String(name.clone()));
        out.insert(name, fields);
    }
    Ok(out)
}

/// Reads one entry as a Kubernetes type, refusing fields the type does not have (serde would
/// drop them, and so would the API server): the entry must come back the same once written.
fn typed<T: DeserializeOwned + serde::Serialize>(
    what: &str,
    name: &str,
    fields: Map<String, Value>,
) -> Result<T, String> {
    let input = Value::Object(fields);
    let parsed: T = serde_path_to_error::deserialize(&input)
        .map_err(|e| format!("{what} {name:?}: at `{}`: {}", e.path(), e.inner()))?;
    let output = serde_json::to_value(&parsed).unwrap_or(Value::Null);
    if let Some(path) = crate::values::unknown_field(&input, &output, "") {
        return Err(format!(
            "{what} {name:?}: unknown field `{path}` (Kubernetes would drop it)"
        ));
    }
    Ok(parsed)
}

fn volumes(
    map: BTreeMap<String, Map<String, Value>>,
    pod_volumes: &[&str],
    injected: &[&str],
) -> Result<Vec<Volume>, String> {
    let mut out = Vec::new();
    for (name, fields) in map {
        values::check_dns_label(&name).map_err(|e| format!("volume name {e}"))?;
        if pod_volumes.contains(&name.as_str()) {
            return Err(format!("the pod already has a volume named {name:?}"));
        }
        if injected.contains(&name.as_str()) {
            return Err(format!(
                "volume name {name:?} is one the injection adds (taken: {})",
                injected.join(", ")
            ));
        }
        let volume: Volume = typed("volume", &name, fields)?;
        let written = serde_json::to_value(&volume).unwrap_or(Value::Null);
        let sources: Vec<&String> = written
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "name").collect())
            .unwrap_or_default();
        match sources.len() {
            1 => {}
            0 => {
                return Err(format!(
                    "volume {name:?} has no source (such as secret, configMap, emptyDir)"
                ));
            }
            _ => {
                let list: Vec<&str> = sources.iter().map(|s| s.as_str()).collect();
                return Err(format!(
                    "volume {name:?} has several sources ({}); a volume has one",
                    list.join(", ")
                ));
            }
        }
        out.push(volume);
    }
    Ok(out)
}

fn mounts(
    map: BTreeMap<String, Map<String, Value>>,
    known: &dyn Fn(&str) -> bool,
    sidecar_mounts: &[&str],
) -> Result<Vec<VolumeMount>, String> {
    let mut out: Vec<VolumeMount> = Vec::new();
    for (name, fields) in map {
        if !known(&name) {
            return Err(format!(
                "mount {name:?}: the pod has no volume {name:?} (add it to the pod or to \
                 {ANNOTATION_USER_VOLUME})"
            ));
        }
        let mount: VolumeMount = typed("mount", &name, fields)?;
        if mount.mount_path.is_empty() {
            return Err(format!("mount {name:?} has no mountPath"));
        }
        if sidecar_mounts.contains(&mount.mount_path.as_str()) {
            return Err(format!(
                "mount {name:?}: istio-proxy already mounts a volume at {:?}",
                mount.mount_path
            ));
        }
        if let Some(other) = out.iter().find(|m| m.mount_path == mount.mount_path) {
            return Err(format!(
                "mounts {:?} and {name:?} are both at {:?}",
                other.name, mount.mount_path
            ));
        }
        out.push(mount);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECTED: [&str; 3] = ["istio-envoy", "istio-podinfo", "rustmesh-proxy-config"];
    const MOUNTS: [&str; 2] = ["/etc/istio/proxy", "/etc/istio/pod"];

    fn resolved(pairs: &[(&str, &str)], pod_volumes: &[&str]) -> Result<UserVolumes, Vec<String>> {
        let annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut failures = Failures::default();
        let out = resolve(&annotations, pod_volumes, &INJECTED, &MOUNTS, &mut failures);
        failures.into_result(out).map_err(|e| e.0)
    }

    #[test]
    fn volumes_and_mounts_as_istio_documents_them() {
        let out = resolved(
            &[
                (
                    ANNOTATION_USER_VOLUME,
                    r#"{"certs": {"secret": {"secretName": "my-certs", "defaultMode": 256}},
                        "cache": {"emptyDir": {}}}"#,
                ),
                (
                    ANNOTATION_USER_VOLUME_MOUNT,
                    r#"{"certs": {"mountPath": "/etc/certs", "readOnly": true},
                        "data": {"mountPath": "/data", "subPath": "proxy"}}"#,
                ),
            ],
            &["data"],
        )
        .unwrap();
        let volumes = serde_json::to_value(&out.volumes).unwrap();
        assert_eq!(
            volumes,
            serde_json::json!([
                {"name": "cache", "emptyDir": {}},
                {"name": "certs", "secret": {"secretName": "my-certs", "defaultMode": 256}}
            ])
        );
        let mounts = serde_json::to_value(&out.mounts).unwrap();
        assert_eq!(
            mounts,
            serde_json::json!([
                {"name": "certs", "mountPath": "/etc/certs", "readOnly": true},
                {"name": "data", "mountPath": "/data", "subPath": "proxy"}
            ])
        );
        // Mounting an injected volume elsewhere is the user's business.
        assert!(
            resolved(
                &[(
                    ANNOTATION_USER_VOLUME_MOUNT,
                    r#"{"istio-podinfo": {"mountPath": "/podinfo"}}"#
                )],
                &[]
            )
            .is_ok()
        );
        assert_eq!(resolved(&[], &[]).unwrap(), UserVolumes::default());
    }

    #[test]
    fn invalid_values_refuse_the_pod_naming_the_annotation_and_the_problem() {
        for (name, value, why) in [
            (
                ANNOTATION_USER_VOLUME,
                "{",
                "not a JSON object of volume names to volumes",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"[{"name": "a"}]"#,
                "not a JSON object of volume names",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"a": "secret"}"#,
                "volume \"a\" is \"secret\", not a JSON object",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"a": {}}"#,
                "volume \"a\" has no source",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"a": {"emptyDir": {}, "secret": {"secretName": "s"}}}"#,
                "volume \"a\" has several sources (emptyDir, secret)",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"a": {"secret": {"secretNam": "s"}}}"#,
                "volume \"a\": unknown field `secret.secretNam` (Kubernetes would drop it)",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"a": {"secret": {"defaultMode": "0644"}}}"#,
                "volume \"a\": at `secret.defaultMode`: invalid type",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"My_Certs": {"emptyDir": {}}}"#,
                "volume name \"My_Certs\" is not a DNS-1123 label",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"tmp": {"emptyDir": {}}}"#,
                "the pod already has a volume named \"tmp\"",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"istio-envoy": {"emptyDir": {}}}"#,
                "is one the injection adds",
            ),
            (
                ANNOTATION_USER_VOLUME,
                r#"{"a": {"name": "b", "emptyDir": {}}}"#,
                "has name \"b\": the key is its name",
            ),
            (
                ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"nope": {"mountPath": "/x"}}"#,
                "the pod has no volume \"nope\"",
            ),
            (
                ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"tmp": {"readOnly": true}}"#,
                "mount \"tmp\" has no mountPath",
            ),
            (
                ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"tmp": {"mountPath": ""}}"#,
                "mount \"tmp\" has no mountPath",
            ),
            (
                ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"tmp": {"mountPath": "/x", "readonly": true}}"#,
                "mount \"tmp\": unknown field `readonly`",
            ),
            (
                ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"tmp": {"mountPath": "/etc/istio/pod"}}"#,
                "istio-proxy already mounts a volume at \"/etc/istio/pod\"",
            ),
            (
                ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"tmp": {"mountPath": "/x"}, "istio-envoy": {"mountPath": "/x"}}"#,
                "mounts \"istio-envoy\" and \"tmp\" are both at \"/x\"",
            ),
        ] {
            let failures = resolved(&[(name, value)], &["tmp"]).unwrap_err();
            assert_eq!(failures.len(), 1, "{value}: {failures:?}");
            assert!(
                failures[0].starts_with(&format!(
                    "invalid value '{value}' for annotation '{name}': "
                )) && failures[0].contains(why),
                "{value}: {failures:?}"
            );
        }
    }

    #[test]
    fn a_mount_of_an_invalid_user_volume_is_not_reported_twice() {
        let failures = resolved(
            &[
                (
                    ANNOTATION_USER_VOLUME,
                    r#"{"certs": {"secret": {"bogus": 1}}}"#,
                ),
                (
                    ANNOTATION_USER_VOLUME_MOUNT,
                    r#"{"certs": {"mountPath": "/certs"}}"#,
                ),
            ],
            &[],
        )
        .unwrap_err();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("sidecar.istio.io/userVolume'"));
    }

    #[test]
    fn nulls_are_absent_fields_not_unknown_ones() {
        let out = resolved(
            &[(
                ANNOTATION_USER_VOLUME,
                r#"{"a": {"configMap": {"name": "cm", "optional": null}, "secret": null}}"#,
            )],
            &[],
        )
        .unwrap();
        assert_eq!(out.volumes[0].config_map.as_ref().unwrap().name, "cm");
    }
}
