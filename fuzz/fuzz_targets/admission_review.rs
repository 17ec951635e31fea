//! The injection webhook on an arbitrary request body (AdmissionReview JSON, the pod, its
//! annotations): an error for what is not a review, else an answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_webhook::review::review_body;
use rustmesh_webhook::settings::InjectionSettings;

fuzz_target!(|data: &[u8]| {
    let settings = InjectionSettings::default();
    let _ = review_body(data, &settings, &|_| None);
});
