//! Property tests: the parser never panics, whatever it is given, and always says what is wrong.
//! Inputs: arbitrary text, and real fixtures with bytes cut, flipped or inserted.

use proptest::prelude::*;
use std::path::Path;

fn fixture_texts() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

fn check(text: &str) {
    for result in rustmesh_api::load_all(text) {
        if let Err(e) = result {
            // Every error says something and names a document.
            let shown = e.to_string();
            assert!(shown.starts_with("document "), "{shown}");
            assert!(!e.field_errors().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "([a-zA-Z:\\-\\[\\]{}\" 0-9.*/|>#&!]{0,12}\n){0,30}") {
        check(&text);
    }

    #[test]
    fn mutated_fixtures_never_panic(which in 0usize..5, at in 0usize..4000, len in 0usize..40, insert in "\\PC{0,8}") {
        let texts = fixture_texts();
        let text = &texts[which % texts.len()];
        let mut bytes = text.as_bytes().to_vec();
        let at = at % (bytes.len() + 1);
        let end = (at + len).min(bytes.len());
        bytes.splice(at..end, insert.bytes());
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn durations_never_panic(text in "[0-9.hmsuµn+\\-]{0,24}") {
        let _ = text.parse::<rustmesh_api::Duration>();
    }
}

#[test]
fn deep_nesting_and_huge_documents_are_refused_without_crashing() {
    check(&"[".repeat(200_000));
    check(&format!("a: {}1{}", "[".repeat(10_000), "]".repeat(10_000)));
    check(&"- ".repeat(50_000));
    // Alias expansion bombs (billion laughs) must not blow up memory.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let prev = (b'a' + i) as char;
        let next = (b'a' + i + 1) as char;
        bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    check(&bomb);
}
