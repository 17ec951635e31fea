//! The sidecar's inputs from its pod and its peers that are not mesh configuration:
//! `/etc/resolv.conf` (the nameservers DNS capture is limited to), `ISTIO_PROMETHEUS_ANNOTATIONS`
//! (the app's metrics to merge on 15020), `ISTIO_KUBE_APP_PROBERS` (the app's probes and hooks)
//! a peer's `x-envoy-peer-metadata` or TCP preface (the metadata exchange, `rustmesh_proxy::peer`) and a
//! request's trace context (`traceparent`, `b3`, `x-b3-*`, `rustmesh_proxy::trace::context`). The first byte
//! picks the reader; each returns a value or an error, never a panic, and what it accepts holds
//! its documented promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::capture::rules::nameservers;
use rustmesh_proxy::merge_metrics;
use rustmesh_xds::probe::{AppProbers, parse_app_health_path};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 5 == 4 {
        // Four header values, split at NUL bytes: whatever they hold, parsing never panics,
        // and the context this proxy injects reads back as the next hop's parent.
        use rustmesh_proxy::trace::context::{Formats, Incoming, SpanContext, inject};
        let mut h = http::HeaderMap::new();
        for (name, value) in ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"]
            .into_iter()
            .zip(rest.split(|b| *b == 0))
        {
            if let Ok(v) = http::HeaderValue::from_bytes(value) {
                h.insert(name, v);
            }
        }
        let incoming = Incoming::parse(&h);
        let span = SpanContext {
            trace_id: incoming.parent.map_or(1, |p| p.trace_id),
            trace_id_64bit: incoming.parent.is_some_and(|p| p.trace_id_64bit),
            span_id: 7,
            parent_span_id: incoming.parent.map(|p| p.span_id),
            sampled: incoming.sampled.unwrap_or(false),
        };
        // As the Zipkin provider: B3 always, and every format the request came with.
        let formats = Formats {
            b3_multi: true,
            ..incoming.formats
        };
        inject(&mut h, &span, formats);
        let next = Incoming::parse(&h);
        let parent = next.parent.expect("an injected context parses");
        assert_eq!((parent.span_id, parent.trace_id), (7, span.trace_id));
        assert_eq!(next.sampled, Some(span.sampled));
        return;
    }
    if which % 5 == 3 {
        // Any bytes: a header value is not necessarily text.
        if let Some(peer) = rustmesh_proxy::peer::decode(rest) {
            assert!(rest.len() <= rustmesh_proxy::peer::MAX_HEADER_BYTES);
            assert!(peer.labels.len() <= rustmesh_proxy::peer::MAX_LABELS);
        }
        // The same bytes as the start of a TCP peer's stream (`istio-peer-exchange`): a
        // preface is never longer than what came, nor than the limit.
        use rustmesh_proxy::peer::tcp::{MAX_PREFACE_BYTES, Parsed, parse};
        match parse(rest) {
            Parsed::Preface { len, peer } => {
                assert!(len <= rest.len() && len <= MAX_PREFACE_BYTES + 8);
                if let Some(peer) = peer {
                    assert!(peer.labels.len() <= rustmesh_proxy::peer::MAX_LABELS);
                }
            }
            Parsed::TooLarge(n) => assert!(n as usize > MAX_PREFACE_BYTES),
            Parsed::NeedMore => assert!(rest.len() < MAX_PREFACE_BYTES + 8),
            Parsed::NotPreface => assert!(!rest.is_empty()),
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 5 {
        0 => {
            let found = nameservers(text);
            assert!(found.len() <= text.lines().count());
        }
        1 => {
            if let Ok(Some(app)) = merge_metrics::parse(text, 15020) {
                assert_ne!(app.port, 15020, "the app's port is never the sidecar's own");
                assert!(app.path.starts_with('/'));
            }
        }
        _ => {
            if let Ok(probers) = AppProbers::parse(text) {
                for key in probers.0.keys() {
                    assert!(parse_app_health_path(key).is_some(), "{key}");
                }
                // What the sidecar accepted, written back, reads the same.
                assert_eq!(AppProbers::parse(&probers.to_json()).unwrap(), probers);
            }
        }
    }
});
