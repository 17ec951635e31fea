//! Telemetry access-log filters (`accessLogging[].filter.expression`, a user's CEL text that
//! every sidecar compiles): the first line of the input is the expression, the other lines a
//! request's `name: value` headers (`:method`, `:path`... included) and, on a line `status N`,
//! its response code. The expression compiles or is refused with a position inside it, never a
//! panic; a compiled one is evaluated against the request (never a panic, whatever the
//! headers), and the headers it declares are the only ones it may read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_xds::access_log::Entry;
use rustmesh_xds::cel::Filter;
use std::cell::RefCell;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let expr = lines.next().unwrap_or_default();
    let filter = match Filter::compile(expr) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.position <= expr.len(), "{e} beyond {expr:?}");
            return;
        }
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut code = 0u16;
    for l in lines {
        if let Some(n) = l.strip_prefix("status ") {
            code = n.trim().parse().unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(": ") {
            headers.push((k.to_ascii_lowercase(), v.to_string()));
        }
    }
    let read = RefCell::new(Vec::<String>::new());
    let lookup = |n: &str| {
        read.borrow_mut().push(n.to_string());
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let response = |n: &str| {
        read.borrow_mut().push(n.to_string());
        None
    };
    let e = Entry {
        start_time: SystemTime::UNIX_EPOCH,
        protocol: (code != 0).then_some("HTTP/1.1"),
        response_code: code,
        response_flags: "",
        response_code_details: Some("via_upstream"),
        connection_termination_details: None,
        upstream_transport_failure_reason: None,
        bytes_received: 1,
        bytes_sent: 2,
        duration: Duration::from_millis(3),
        upstream_host: Some("10.0.0.7:9080".parse().unwrap()),
        upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local"),
        upstream_local_address: None,
        downstream_local_address: Some("10.0.0.1:9080".parse().unwrap()),
        downstream_remote_address: Some("10.0.0.2:40000".parse().unwrap()),
        requested_server_name: None,
        route_name: Some("default"),
        request_header: &lookup,
        response_header: &response,
        response_trailer: &response,
    };
    let _ = filter.accepts(&e);
    for n in read.borrow().iter() {
        assert!(
            filter.request_headers().contains(n)
                || filter.response_headers().contains(n)
                || filter.response_trailers().contains(n),
            "{expr:?} read {n:?}, which it did not declare: the proxy would not have copied it"
        );
    }
});
