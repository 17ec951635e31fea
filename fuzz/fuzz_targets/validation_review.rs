//! The validating webhook (`POST /validate`) on an arbitrary request body (AdmissionReview JSON
//! carrying an Istio object in any version): an error for what is not a review, else allowed or
//! denied naming a field, never a panic. The first byte picks whether a mesh CA is on (some
//! `tls` rules depend on it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_webhook::validation::validate_body;

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let _ = validate_body(body, first & 1 == 1);
});
