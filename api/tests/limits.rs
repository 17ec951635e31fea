//! Hostile YAML: what a document may expand to is bounded (`rustmesh_xds::yaml::Limits::MANIFESTS`),
//! and a document over a limit is refused with an error naming the limit and the document, by
//! `load_all`, `from_yaml` and `istio-validate` alike.

use std::io::Write;
use std::process::{Command, Stdio};

use rustmesh_api::{IstioObject, VirtualServiceSpec, load, load_all};

const GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: bookinfo\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";

/// A "billion laughs" mapping: `levels` anchors, each a list of `width` aliases of the previous
/// one, indented by `indent`; the last expands to `width^levels` scalars.
fn alias_bomb(levels: usize, width: usize, indent: &str) -> String {
    let mut s = format!("{indent}a0: &a0 [{}]\n", vec!["x"; width].join(", "));
    for l in 1..levels {
        let refs = vec![format!("*a{}", l - 1); width].join(", ");
        s.push_str(&format!("{indent}a{l}: &a{l} [{refs}]\n"));
    }
    s
}

/// A VirtualService with the bomb in its labels: 102^3 = 1,061,208 scalars from 1.2 KB, more
/// than the 1 Mi nodes a stream may expand to. serde_norway's own guard lets it through.
fn bomb_document() -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bomb\n  labels:\n{}spec:\n  hosts: [reviews]\n",
        alias_bomb(3, 102, "    ")
    )
}

#[test]
fn an_alias_bomb_is_refused_naming_the_node_limit_and_the_document() {
    let text = format!("{GOOD}---\n{}---\n{GOOD}", bomb_document());
    assert!(text.len() < 2000);
    let out = load_all(&text);
    // The good document before it is read; the stream stops at the bomb.
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].is_ok());
    let err = out[1].as_ref().unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("document 2"), "{shown}");
    assert!(
        shown.contains("expands to more than the limit of 1048576 nodes"),
        "{shown}"
    );
    assert!(err.field_errors()[0].line.is_some(), "{shown}");
}

#[test]
fn from_yaml_refuses_an_alias_bomb_naming_the_limit() {
    let err = rustmesh_api::parse::from_yaml::<VirtualServiceSpec>(&alias_bomb(3, 102, ""))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("document 1"), "{err}");
    assert!(err.contains("limit of 1048576 nodes"), "{err}");
}

#[test]
fn a_deeply_nested_document_is_refused_naming_the_depth_limit() {
    // 70 levels: within serde_norway's own 128, over the limit of 64.
    let deep = format!("[{}]", "[".repeat(69) + &"]".repeat(69));
    let text = format!(
        "{GOOD}---\n{}  x: {deep}\n",
        GOOD.replace("reviews\n  namespace", "deep\n  namespace")
    );
    let out = load_all(&text);
    let err = out.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(err.starts_with("document 2"), "{err}");
    assert!(
        err.contains("nested deeper than the limit of 64 levels"),
        "{err}"
    );
}

#[test]
fn aliases_of_a_long_string_are_refused_naming_the_text_limit() {
    // 1 MiB of text used 40 times: 40 MiB, over the 32 MiB a stream may expand to.
    let text = format!(
        "{GOOD}  headers: &big \"{}\"\n  copies: [{}]\n",
        "x".repeat(1024 * 1024),
        vec!["*big"; 40].join(", ")
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.starts_with("document 1"), "{err}");
    assert!(err.contains("limit of 33554432 bytes of text"), "{err}");
}

#[test]
fn a_stream_over_the_length_limit_is_refused_before_parsing() {
    let text = format!("{GOOD}#{}\n", "x".repeat(16 * 1024 * 1024));
    let out = load_all(&text);
    assert_eq!(out.len(), 1);
    let err = out[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("over the limit of 16777216 bytes"), "{err}");
}

#[test]
fn documents_with_a_few_anchors_still_load() {
    let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  labels: &labels {app: reviews}\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels: &v1 {version: v1}\n  - name: v1-again\n    labels: *v1\n";
    let objects = load(text).unwrap();
    let [IstioObject::DestinationRule(dr)] = &objects[..] else {
        panic!("{objects:?}")
    };
    let subsets = &dr.spec.subsets;
    assert_eq!(subsets[0].labels, subsets[1].labels);
}

#[test]
fn istio_validate_names_the_limit_and_the_document() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_istio-validate"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = format!("{GOOD}---\n{}", bomb_document());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("-: document 2") && stderr.contains("limit of 1048576 nodes"),
        "{stderr}"
    );
}
