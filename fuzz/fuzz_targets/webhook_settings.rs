//! The webhook's settings file (YAML, user-written through the chart): loaded or refused
//! naming the field, within the YAML reader's bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_webhook::settings::InjectionSettings;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = InjectionSettings::from_yaml(text);
    }
});
