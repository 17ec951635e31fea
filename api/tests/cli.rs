//! `istio-validate`, the command-line face of the parser.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_istio-validate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_files_pass_and_are_listed() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/valid/reviews-90-10.yaml"
    );
    let (code, out, err) = run(&[file], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("VirtualService bookinfo/reviews: valid"),
        "{out}"
    );
    assert!(
        out.contains("DestinationRule bookinfo/reviews: valid"),
        "{out}"
    );
}

#[test]
fn a_bad_document_fails_with_field_and_line() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    lables: {version: v1}\n";
    let (code, _, err) = run(&["-"], yaml);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 9") && err.contains("spec.subsets[0].lables"),
        "{err}"
    );
}

#[test]
fn usage_and_missing_files() {
    assert_eq!(run(&[], "").0, 2);
    let (code, _, err) = run(&["/nonexistent/file.yaml"], "");
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn fields_rustmesh_does_not_implement_are_warned_or_refused_by_name() {
    let warned = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      warmupDurationSecs: 10s\n";
    let (code, out, err) = run(&["-"], warned);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid, with 1 warning(s)"), "{out}");
    assert!(
        out.contains("warning: spec.trafficPolicy.loadBalancer.warmupDurationSecs: ignored, not implemented by rustmesh"),
        "{out}"
    );
    let refused = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [reviews]\n  http:\n  - redirect: {derivePort: FROM_REQUEST_PORT}\n";
    let (code, _, err) = run(&["-"], refused);
    assert_eq!(code, 1);
    assert!(
        err.contains("spec.http[0].redirect.derivePort: not implemented by rustmesh"),
        "{err}"
    );
}
