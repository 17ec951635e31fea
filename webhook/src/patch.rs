//! The RFC 6902 JSON Patch that turns the submitted pod into the injected one, as Istio's
//! injector makes it (`createPatch`: the whole pod is rendered, then compared with what was
//! submitted), so that stripping a previous injection, merging the pod's own `istio-proxy` and
//! inserting containers are all one answer.
//!
//! [`diff`] compares two JSON documents:
//!
//! * objects key by key (a removed key is a `remove`, a new one an `add`, a changed one is
//!   compared further);
//! * lists of objects that all have a distinct `name` (containers, init containers, volumes,
//!   image pull secrets) **by name**: the items of the first list that the second keeps, in the
//!   same order, are compared in place; the others are removed (from the end) and the new ones
//!   added at their index. So an app container never moves under its own fields, and a field
//!   of it that the webhook's types do not know (a newer Kubernetes field) is never touched;
//! * anything else that differs is a `replace`.
//!
//! The API server applies the patch to the object it sent, which is not quite the typed pod the
//! webhook read: a required field it left out (a port without `containerPort`) reads as its
//! default, a field of a newer Kubernetes is not read at all. [`rebase`] therefore carries the
//! changes over onto the object as sent and compares that, so the patch always applies to it
//! and never touches what the webhook did not change.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::Value;

/// The operations that turn `from` into `to` (see the module doc). Empty when they are equal.
pub fn diff(from: &Value, to: &Value) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    diff_at(&mut Vec::new(), from, to, &mut ops);
    ops
}

/// The operations that turn `raw` (the object as the API server sent it) into `raw` with the
/// changes from `typed_from` to `typed_to` (the webhook's reading of it, and the injected pod):
/// the changes are applied to `raw` leniently (a replaced or removed member it lacks is added or
/// skipped), then `raw` is compared with the result, so every operation applies to `raw`.
pub fn rebase(raw: &Value, typed_from: &Value, typed_to: &Value) -> Vec<PatchOperation> {
    let mut target = raw.clone();
    for op in diff(typed_from, typed_to) {
        apply_leniently(&mut target, &op);
    }
    diff(raw, &target)
}

/// Applies one operation, adding what a `replace` names but `doc` lacks and skipping a `remove`
/// of what it lacks; missing parents are created as objects.
fn apply_leniently(doc: &mut Value, op: &PatchOperation) {
    let (path, value) = match op {
        PatchOperation::Add(o) => (&o.path, Some(&o.value)),
        PatchOperation::Replace(o) => (&o.path, Some(&o.value)),
        PatchOperation::Remove(o) => (&o.path, None),
        _ => return,
    };
    let tokens: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
    let Some((last, parents)) = tokens.split_last() else {
        if let Some(v) = value {
            *doc = v.clone();
        }
        return;
    };
    let mut cur = doc;
    for t in parents {
        if value.is_none() && cur.get(t.as_str()).is_none() && index(cur, t).is_none() {
            return; // nothing to remove
        }
        cur = match cur {
            Value::Array(items) => match t.parse::<usize>().ok().filter(|i| *i < items.len()) {
                Some(i) => &mut items[i],
                None => return,
            },
            other => {
                if !other.is_object() {
                    *other = Value::Object(Default::default());
                }
                let Value::Object(map) = other else { return };
                map.entry(t.clone()).or_insert(Value::Null)
            }
        };
    }
    match (cur, value) {
        (Value::Array(items), v) => {
            let at = last.parse::<usize>().ok();
            match (v, op) {
                (None, _) => {
                    if let Some(i) = at.filter(|i| *i < items.len()) {
                        items.remove(i);
                    }
                }
                (Some(v), PatchOperation::Add(_)) => match at.filter(|i| *i <= items.len()) {
                    Some(i) => items.insert(i, v.clone()),
                    None => items.push(v.clone()),
                },
                (Some(v), _) => match at.filter(|i| *i < items.len()) {
                    Some(i) => items[i] = v.clone(),
                    None => items.push(v.clone()),
                },
            }
        }
        (other, Some(v)) => {
            if !other.is_object() {
                *other = Value::Object(Default::default());
            }
            if let Value::Object(map) = other {
                map.insert(last.clone(), v.clone());
            }
        }
        (Value::Object(map), None) => {
            map.remove(last);
        }
        (_, None) => {}
    }
}

/// The array item `t` names, when `v` is an array and `t` an index in it.
fn index<'a>(v: &'a Value, t: &str) -> Option<&'a Value> {
    v.as_array()?.get(t.parse::<usize>().ok()?)
}

fn pointer(path: &[String]) -> PointerBuf {
    PointerBuf::from_tokens(path.iter().map(String::as_str))
}

fn diff_at(path: &mut Vec<String>, from: &Value, to: &Value, ops: &mut Vec<PatchOperation>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                path.push(key.clone());
                ops.push(PatchOperation::Remove(RemoveOperation {
                    path: pointer(path),
                }));
                path.pop();
            }
            for (key, new) in b {
                path.push(key.clone());
                match a.get(key) {
                    Some(old) => diff_at(path, old, new, ops),
                    None => ops.push(PatchOperation::Add(AddOperation {
                        path: pointer(path),
                        value: new.clone(),
                    })),
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => match (names(a), names(b)) {
            (Some(na), Some(nb)) => diff_named(path, a, &na, b, &nb, ops),
            _ => replace(path, to, ops),
        },
        _ => replace(path, to, ops),
    }
}

fn replace(path: &[String], to: &Value, ops: &mut Vec<PatchOperation>) {
    ops.push(PatchOperation::Replace(ReplaceOperation {
        path: pointer(path),
        value: to.clone(),
    }));
}

/// The `name` of every item, when every item is an object with a string `name` and no two
/// share one.
fn names(list: &[Value]) -> Option<Vec<&str>> {
    let names: Vec<&str> = list
        .iter()
        .map(|item| item.get("name").and_then(Value::as_str))
        .collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    (sorted.len() == names.len()).then_some(names)
}

fn diff_named(
    path: &mut Vec<String>,
    a: &[Value],
    names_a: &[&str],
    b: &[Value],
    names_b: &[&str],
    ops: &mut Vec<PatchOperation>,
) {
    // The items kept in place: those of `a` that `b` has too, in an order `b` keeps (an item
    // that `b` moves before an earlier kept one is removed and added again instead).
    let mut kept: Vec<Option<usize>> = vec![None; b.len()];
    let mut is_kept = vec![false; a.len()];
    let mut last = None;
    for (i, name) in names_a.iter().enumerate() {
        if let Some(j) = names_b.iter().position(|n| n == name)
            && last.is_none_or(|l| j > l)
        {
            kept[j] = Some(i);
            is_kept[i] = true;
            last = Some(j);
        }
    }
    for i in (0..a.len()).rev().filter(|i| !is_kept[*i]) {
        path.push(i.to_string());
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: pointer(path),
        }));
        path.pop();
    }
    // Now the list holds the kept items in order; walking `b` in order, each index either is
    // the next kept item (compared in place) or gets its new item inserted.
    for (j, item) in b.iter().enumerate() {
        path.push(j.to_string());
        match kept[j] {
            Some(i) => diff_at(path, &a[i], item, ops),
            None => ops.push(PatchOperation::Add(AddOperation {
                path: pointer(path),
                value: item.clone(),
            })),
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn applied(from: &Value, to: &Value) -> (Value, Vec<PatchOperation>) {
        let ops = diff(from, to);
        let mut doc = from.clone();
        json_patch::patch(&mut doc, &ops).unwrap();
        (doc, ops)
    }

    fn paths(ops: &[PatchOperation]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                PatchOperation::Add(o) => format!("add {}", o.path),
                PatchOperation::Remove(o) => format!("remove {}", o.path),
                PatchOperation::Replace(o) => format!("replace {}", o.path),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn equal_documents_give_no_operation() {
        let pod =
            json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "app"}]}});
        assert!(diff(&pod, &pod).is_empty());
    }

    #[test]
    fn objects_are_compared_key_by_key() {
        let from = json!({"metadata": {"labels": {"a": "1", "gone": "x"}, "name": "p"}});
        let to = json!({"metadata": {"labels": {"a": "2", "new": "y"}, "name": "p"}, "spec": {}});
        let (doc, ops) = applied(&from, &to);
        assert_eq!(doc, to);
        assert_eq!(
            paths(&ops),
            [
                "remove /metadata/labels/gone",
                "replace /metadata/labels/a",
                "add /metadata/labels/new",
                "add /spec"
            ]
        );
    }

    #[test]
    fn a_container_inserted_first_leaves_the_apps_in_place() {
        let from =
            json!({"containers": [{"name": "app", "image": "a"}, {"name": "log", "image": "l"}]});
        let to = json!({"containers": [
            {"name": "istio-proxy", "image": "p"},
            {"name": "app", "image": "a"},
            {"name": "log", "image": "l"}
        ]});
        let (doc, ops) = applied(&from, &to);
        assert_eq!(doc, to);
        assert_eq!(paths(&ops), ["add /containers/0"]);
    }

    #[test]
    fn a_field_the_types_do_not_know_survives_on_the_submitted_object() {
        // The diff is computed on the typed pod (without `futureField`), applied to the
        // object the API server holds (with it): the app container keeps it.
        let typed =
            json!({"containers": [{"name": "app", "readinessProbe": {"tcpSocket": {"port": 80}}}]});
        let injected = json!({"containers": [
            {"name": "istio-proxy"},
            {"name": "app", "readinessProbe": {"httpGet": {"path": "/app-health/app/readyz", "port": 15020}}}
        ]});
        let mut raw = json!({"containers": [{"name": "app", "futureField": 1, "readinessProbe": {"tcpSocket": {"port": 80}}}]});
        json_patch::patch(&mut raw, &diff(&typed, &injected)).unwrap();
        assert_eq!(raw["containers"][1]["futureField"], 1);
        assert_eq!(
            raw["containers"][1]["readinessProbe"],
            injected["containers"][1]["readinessProbe"]
        );
        assert_eq!(raw["containers"][0], json!({"name": "istio-proxy"}));
    }

    #[test]
    fn moved_removed_and_replaced_items() {
        // The pod's own istio-proxy, last, becomes the injected one, first; an old injected
        // volume goes; a renamed list item is removed and added.
        let from = json!({
            "containers": [{"name": "app"}, {"name": "istio-proxy", "image": "auto"}],
            "volumes": [{"name": "a"}, {"name": "istio-envoy", "emptyDir": {}}, {"name": "b"}]
        });
        let to = json!({
            "containers": [{"name": "istio-proxy", "image": "proxy"}, {"name": "app"}],
            "volumes": [{"name": "a"}, {"name": "b"}, {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}]
        });
        let (doc, _) = applied(&from, &to);
        assert_eq!(doc, to);
        // Emptied and filled lists.
        for (from, to) in [
            (json!({"l": [{"name": "x"}]}), json!({"l": []})),
            (
                json!({"l": []}),
                json!({"l": [{"name": "x"}, {"name": "y"}]}),
            ),
            (
                json!({"l": [{"name": "x"}, {"name": "y"}]}),
                json!({"l": [{"name": "y"}, {"name": "x"}]}),
            ),
        ] {
            assert_eq!(applied(&from, &to).0, to);
        }
    }

    #[test]
    fn lists_without_distinct_names_are_replaced_whole() {
        for (from, to) in [
            (
                json!({"args": ["run", "a"]}),
                json!({"args": ["run", "b", "c"]}),
            ),
            (
                json!({"l": [{"name": "x"}, {"name": "x"}]}),
                json!({"l": [{"name": "x"}]}),
            ),
            (json!({"l": [{"port": 1}]}), json!({"l": [{"port": 2}]})),
            (json!({"l": 1}), json!({"l": [1]})),
        ] {
            let (doc, ops) = applied(&from, &to);
            assert_eq!(doc, to);
            assert_eq!(
                paths(&ops),
                ["replace /l"].map(|p| if from.get("args").is_some() {
                    "replace /args"
                } else {
                    p
                })
            );
        }
    }

    #[test]
    fn rebased_onto_the_object_as_sent_every_operation_applies() {
        // The API server's object lacks a required field (read as its default) and has one
        // the types do not know; the typed reading has the default and lacks the unknown one.
        let raw = json!({"spec": {"containers": [
            {"name": "istio-proxy", "ports": [{"name": "http-envoy-prom"}], "terminationMessagePath": "/t"},
            {"name": "app", "futureField": {"a": 1}}
        ]}, "metadata": {"labels": {"a": "b"}}});
        let typed = json!({"spec": {"containers": [
            {"name": "istio-proxy", "ports": [{"name": "http-envoy-prom", "containerPort": 0}], "terminationMessagePath": "/t"},
            {"name": "app"}
        ]}, "metadata": {"labels": {"a": "b"}}});
        let injected = json!({"spec": {"containers": [
            {"name": "istio-proxy", "ports": [{"name": "http-envoy-prom", "containerPort": 15090}]},
            {"name": "app"}
        ], "volumes": [{"name": "v"}]}, "metadata": {"labels": {"a": "b", "c": "d"}}});
        // Straight from the typed reading, the patch would not apply.
        assert!(json_patch::patch(&mut raw.clone(), &diff(&typed, &injected)).is_err());
        let ops = rebase(&raw, &typed, &injected);
        let mut doc = raw.clone();
        json_patch::patch(&mut doc, &ops).unwrap();
        assert_eq!(
            doc["spec"]["containers"][0],
            injected["spec"]["containers"][0]
        );
        assert_eq!(doc["spec"]["containers"][1]["futureField"], json!({"a": 1}));
        assert_eq!(doc["spec"]["volumes"], injected["spec"]["volumes"]);
        assert_eq!(doc["metadata"], injected["metadata"]);
        // Nothing to change: nothing to send.
        assert!(rebase(&raw, &typed, &typed).is_empty());
    }

    #[test]
    fn lenient_application_adds_what_a_replace_names_and_skips_a_missing_remove() {
        let mut doc = json!({"a": {"l": [1, 2]}});
        let op = |v: Value| serde_json::from_value::<PatchOperation>(v).unwrap();
        apply_leniently(
            &mut doc,
            &op(json!({"op": "replace", "path": "/a/b", "value": 1})),
        );
        apply_leniently(
            &mut doc,
            &op(json!({"op": "remove", "path": "/a/missing/deeper"})),
        );
        apply_leniently(&mut doc, &op(json!({"op": "remove", "path": "/a/l/5"})));
        apply_leniently(
            &mut doc,
            &op(json!({"op": "add", "path": "/a/l/0", "value": 0})),
        );
        apply_leniently(
            &mut doc,
            &op(json!({"op": "replace", "path": "/a/l/9", "value": 3})),
        );
        apply_leniently(
            &mut doc,
            &op(json!({"op": "add", "path": "/n/m", "value": true})),
        );
        assert_eq!(
            doc,
            json!({"a": {"b": 1, "l": [0, 1, 2, 3]}, "n": {"m": true}})
        );
    }

    #[test]
    fn keys_needing_escapes() {
        let from = json!({"metadata": {"annotations": {}}});
        let to =
            json!({"metadata": {"annotations": {"sidecar.istio.io/status": "{}", "a~b": "c"}}});
        let (doc, ops) = applied(&from, &to);
        assert_eq!(doc, to);
        assert!(
            paths(&ops).contains(&"add /metadata/annotations/sidecar.istio.io~1status".to_owned())
        );
        assert!(paths(&ops).contains(&"add /metadata/annotations/a~0b".to_owned()));
    }
}
