//! The sniffer (`tls_inspector`/`http_inspector`'s job) on arbitrary first bytes: never a
//! panic, and it asks for more bytes only while under its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::sniff::{MAX_SNIFF_BYTES, Verdict, classify};

fuzz_target!(|data: &[u8]| {
    if let Verdict::NeedMore = classify(data) {
        assert!(
            data.len() < MAX_SNIFF_BYTES,
            "asked for more past the limit"
        );
    }
});
