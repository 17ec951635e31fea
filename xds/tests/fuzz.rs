//! Property tests: loading a configuration never panics; an invalid one is refused with a reason.

use proptest::prelude::*;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::scope::{EndpointPart, ScopeIndex};

const PRODUCTPAGE: &str = include_str!("fixtures/productpage.json");

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        if let Err(e) = ProxyConfig::from_json(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn mutated_fixture_is_loaded_or_refused_with_a_reason(at in 0usize..60_000, len in 0usize..30, insert in "[\\[\\]{}\":,a-zA-Z0-9|._ ]{0,10}") {
        let mut bytes = PRODUCTPAGE.as_bytes().to_vec();
        let at = at % (bytes.len() + 1);
        let end = (at + len).min(bytes.len());
        bytes.splice(at..end, insert.bytes());
        let text = String::from_utf8_lossy(&bytes);
        match ProxyConfig::from_json(&text) {
            Ok(config) => prop_assert!(config.validate().is_ok()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// The split layout's readers (endpoint parts, the scope index) and the assembly of a
    /// mutated endpoint part with the fixture never panic, and a refusal says why.
    #[test]
    fn mutated_endpoint_parts_are_assembled_or_refused(at in 0usize..4_000, len in 0usize..20, insert in "[\\[\\]{}\":,a-zA-Z0-9|._ ]{0,10}") {
        let whole = ProxyConfig::from_json(PRODUCTPAGE).unwrap();
        let mut base = whole.clone();
        let part = EndpointPart { endpoints: std::mem::take(&mut base.endpoints) };
        let mut bytes = serde_json::to_vec(&part).unwrap();
        let at = at % (bytes.len() + 1);
        let end = (at + len).min(bytes.len());
        bytes.splice(at..end, insert.bytes());
        let text = String::from_utf8_lossy(&bytes);
        match EndpointPart::from_json(&text).map_err(|e| e.to_string()).and_then(|p| {
            base.with_parts(vec![p], "v".into()).map_err(|e| e.to_string())
        }) {
            Ok(config) => prop_assert!(config.validate().is_ok()),
            Err(e) => prop_assert!(!e.is_empty()),
        }
        if let Err(e) = ScopeIndex::from_json(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn arbitrary_configmap_values_are_decoded_or_refused_naming_the_key(
        raw in proptest::collection::vec(any::<u8>(), 0..2048),
        gzipped in any::<bool>(),
    ) {
        use rustmesh_xds::configmap;
        // Untrusted bytes as a ConfigMap value: never a panic; a refusal names the key.
        if let Err(e) = configmap::decode_text("default.json.gz", &raw, gzipped) {
            prop_assert!(e.to_string().contains("default.json.gz"), "{e}");
        }
        if let Err(e) = configmap::decode("default.json.gz", &raw) {
            prop_assert!(e.to_string().contains("default.json.gz"), "{e}");
        }
        if let Err(e) = configmap::read_index("scopes.json", &raw) {
            prop_assert!(e.to_string().contains("scopes.json"), "{e}");
        }
    }

    #[test]
    fn corrupted_gzip_of_a_real_document_is_decoded_or_refused(at in 0usize..4_000, byte in any::<u8>()) {
        use rustmesh_xds::configmap;
        let mut raw = configmap::gzip(PRODUCTPAGE.as_bytes());
        let i = at % raw.len();
        raw[i] = byte;
        let _ = configmap::decode("default.json.gz", &raw);
    }
}
