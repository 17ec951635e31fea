//! The examples in `ctl/README.md` are what the program prints: every ```text block that starts
//! with `$ rustmeshctl ...` is run (from the repository root) and its output compared line by
//! line (trailing spaces aside, which Markdown editors strip).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn readme_examples_are_real_output() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
    let mut checked = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```text" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let Some(command) = block.first().and_then(|l| l.strip_prefix("$ rustmeshctl ")) else {
            continue;
        };
        let out = Command::new(env!("CARGO_BIN_EXE_rustmeshctl"))
            .args(command.split_whitespace())
            .current_dir(crate_dir.join(".."))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let actual: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        let expected: Vec<String> = block[1..]
            .iter()
            .map(|l| l.trim_end().to_string())
            .collect();
        assert_eq!(actual, expected, "README example `rustmeshctl {command}`");
        checked += 1;
    }
    assert_eq!(checked, 6, "examples found in the README");
}
