//! The DNS proxy's decision on an arbitrary packet, UDP and TCP sizes: answer, forward or
//! drop, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::dns::{Decision, DnsTable, decide};
use rustmesh_xds::config::DnsEntry;

fuzz_target!(|data: &[u8]| {
    let table = DnsTable::new(&[DnsEntry {
        name: "reviews.default.svc.cluster.local".into(),
        aliases: vec!["reviews".into(), "reviews.default".into()],
        addresses: vec!["10.96.10.4".parse().unwrap(), "fd00::4".parse().unwrap()],
    }]);
    let search = [
        "default.svc.cluster.local".to_string(),
        "cluster.local".to_string(),
    ];
    for max in [Some(512), None] {
        match decide(data, &table, &search, max) {
            Decision::Answer(_) | Decision::Forward | Decision::Drop => {}
        }
    }
});
