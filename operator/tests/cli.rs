//! The real binary refuses bad flags with a message naming the flag, before touching a cluster.

use std::process::Command;

fn operator(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("operator runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_named() {
    let (ok, err) = operator(&["--outbound-traffic-policy", "DENY_ALL"]);
    assert!(!ok);
    assert!(err.contains("--outbound-traffic-policy"), "{err}");
    let (ok, err) = operator(&["--debounce-ms", "500", "--debounce-max-ms", "100"]);
    assert!(!ok);
    assert!(err.contains("--debounce-max-ms"), "{err}");
    let (ok, err) = operator(&["--metrics-addr", "not-an-address"]);
    assert!(!ok);
    assert!(err.contains("--metrics-addr"), "{err}");
}

#[test]
fn help_lists_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_operator"))
        .arg("--help")
        .output()
        .expect("operator runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--root-namespace",
        "--outbound-traffic-policy",
        "--metrics-addr",
        "--no-leader-election",
        "--lease-namespace",
    ] {
        assert!(text.contains(flag), "{flag} missing in --help");
    }
}
