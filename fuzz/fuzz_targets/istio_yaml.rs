//! Istio documents (VirtualService, DestinationRule, Sidecar...) from arbitrary YAML, aliases
//! included: refused with an error or loaded, within the reader's expansion bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rustmesh_api::load(text);
    }
});
