//! Property tests of the DNS proxy: arbitrary packets never panic the decision, known names in
//! any case are always answered with their addresses, and the checked-in corpus
//! (`tests/corpus/dns/packets.hex`) is handled without a panic.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;
use rustmesh_proxy::dns::{Decision, DnsTable, decide};
use rustmesh_xds::config::DnsEntry;

fn table() -> DnsTable {
    DnsTable::new(&[
        DnsEntry {
            name: "reviews.default.svc.cluster.local".into(),
            aliases: vec![
                "reviews".into(),
                "reviews.default".into(),
                "reviews.default.svc".into(),
            ],
            addresses: vec!["10.96.10.4".parse().unwrap()],
        },
        DnsEntry {
            name: "details.default.svc.cluster.local".into(),
            aliases: vec!["details".into()],
            addresses: vec!["10.96.10.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        },
    ])
}

fn search() -> Vec<String> {
    vec![
        "default.svc.cluster.local".into(),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let t = table();
        for max in [Some(512), None] {
            if let Decision::Answer(a) = decide(&bytes, &t, &search(), max) {
                // Whatever is answered is a well-formed response to the same id.
                let m = Message::from_vec(&a).expect("answers parse");
                prop_assert_eq!(m.metadata.message_type, MessageType::Response);
                prop_assert_eq!(&a[..2], &bytes[..2]);
            }
        }
    }

    #[test]
    fn mutated_valid_queries_never_panic(
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..6),
        cut in 0usize..64,
    ) {
        let mut m = Message::new(77, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii("reviews.default.svc.cluster.local.").unwrap(), RecordType::A));
        let mut bytes = m.to_vec().unwrap();
        for (i, b) in flips {
            if i < bytes.len() {
                bytes[i] = b;
            }
        }
        bytes.truncate(bytes.len().min(cut.max(1) + 11));
        let _ = decide(&bytes, &table(), &search(), Some(512));
    }

    #[test]
    fn known_names_in_any_case_are_answered(
        idx in 0usize..5,
        upper in proptest::collection::vec(any::<bool>(), 64),
        dot in any::<bool>(),
        expand in proptest::option::of(0usize..3),
    ) {
        let names = ["reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local", "details"];
        let mut n: String = names[idx]
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c })
            .collect();
        if let Some(s) = expand {
            n = format!("{n}.{}", search()[s]);
        }
        if dot {
            n.push('.');
        }
        let mut m = Message::new(5, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(&n).unwrap(), RecordType::A));
        let d = decide(&m.to_vec().unwrap(), &table(), &search(), Some(512));
        let Decision::Answer(a) = d else { panic!("{n} not answered: {d:?}") };
        let a = Message::from_vec(&a).unwrap();
        let ips: Vec<String> = a.answers.iter().filter_map(|r| match &r.data {
            RData::A(ip) => Some(ip.0.to_string()),
            _ => None,
        }).collect();
        let want = if idx == 4 { "10.96.10.1" } else { "10.96.10.4" };
        prop_assert_eq!(ips, vec![want.to_string()], "{}", n);
    }
}

#[test]
fn corpus_is_handled() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/dns/packets.hex"
    ))
    .unwrap();
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let bytes: Vec<u8> = (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
            .collect();
        let _ = decide(&bytes, &table(), &search(), Some(512));
        let _ = decide(&bytes, &table(), &search(), None);
        n += 1;
    }
    assert!(n >= 8);
}
