//! Property tests of the route engine and the connection manager:
//! * arbitrary hosts, paths and headers against the productpage fixture never panic and always
//!   find the route Istio's tables imply;
//! * random route tables agree with an independent reference matcher (first match wins,
//!   Envoy's virtual-host order);
//! * arbitrary bytes on a connection never panic `serve_connection` and never leave it stuck;
//! * the checked-in corpus (`tests/corpus/http/`) of odd requests is replayed the same way.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use rustmesh_proxy::access_log::Sink;
use rustmesh_proxy::cluster::ClusterManager;
use rustmesh_proxy::http::route::{RequestView, RouteTable};
use rustmesh_proxy::http::upstreams::ClusterUpstreams;
use rustmesh_proxy::http::{HttpContext, HttpSettings, Rng, serve_connection};
use rustmesh_proxy::metrics::{Destinations, Metrics, Reporter, WorkloadInfo};
use rustmesh_proxy::pool::PassthroughPools;
use rustmesh_xds::route::{
    HeaderMatcher, QueryParameterMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
    StringMatcher, VirtualHost,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn fixture_table() -> RouteTable {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../xds/tests/fixtures/productpage.json"
    ))
    .unwrap();
    let cfg = rustmesh_xds::ProxyConfig::from_json(&text).unwrap();
    RouteTable::compile(cfg.route("9080").unwrap(), &BTreeMap::new()).unwrap()
}

fn headers_from(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    h
}

fn known_host() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "reviews",
        "reviews:9080",
        "details.default.svc.cluster.local",
        "RATINGS.default:9080",
        "10.96.10.2:9080",
        "productpage.default.svc",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn fixture_routes_never_panic(
        host in prop_oneof![known_host(), "\\PC{0,40}"],
        path in "\\PC{0,60}",
        query in proptest::option::of("\\PC{0,30}"),
        headers in proptest::collection::vec(("[a-z:-]{1,12}", "[ -~]{0,20}"), 0..6),
    ) {
        let t = fixture_table();
        let h = headers_from(&headers);
        let view = RequestView {
            method: &Method::GET, scheme: "http", authority: &host, path: &path,
            query: query.as_deref(), headers: &h,
        };
        let found = t.find(&view);
        if path.starts_with('/') {
            // Every virtual host of the fixture ends with a `/` prefix route, and `*` catches
            // unknown hosts: some route always matches.
            let m = found.expect("a route for every path");
            let known = ["reviews", "details", "ratings", "productpage", "10.96.10."]
                .iter()
                .any(|k| host.to_ascii_lowercase().starts_with(k));
            if !known {
                prop_assert_eq!(m.vhost.name.as_str(), "allow_any");
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
}

fn small_path() -> impl Strategy<Value = String> {
    "(/[abAB]{0,2}){1,3}"
}

fn string_matcher() -> impl Strategy<Value = StringMatcher> {
    (0..4usize, "[abAB]{0,2}", any::<bool>()).prop_map(|(k, s, ic)| {
        let mut m = StringMatcher {
            ignore_case: ic,
            ..Default::default()
        };
        match k {
            0 => m.exact = Some(s),
            1 => m.prefix = Some(s),
            2 => m.suffix = Some(s),
            _ => m.contains = Some(s),
        }
        m
    })
}

fn header_matcher() -> impl Strategy<Value = HeaderMatcher> {
    (
        prop::sample::select(vec!["x-a", "x-b", ":method"]),
        proptest::option::of(string_matcher()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, sm, present, invert)| HeaderMatcher {
            name: name.to_string(),
            present_match: if sm.is_none() { Some(present) } else { None },
            string_match: sm,
            invert_match: invert,
        })
}

fn route() -> impl Strategy<Value = Route> {
    (
        0..2usize,
        small_path(),
        proptest::option::of(any::<bool>()),
        proptest::collection::vec(header_matcher(), 0..3),
        proptest::option::of(("[qr]", proptest::option::of("[ab]{0,2}"))),
    )
        .prop_map(|(kind, p, cs, headers, q)| Route {
            match_: RouteMatch {
                prefix: (kind == 0).then(|| p.clone()),
                path: (kind == 1).then(|| p.clone()),
                case_sensitive: cs,
                headers,
                query_parameters: q
                    .map(|(name, v)| QueryParameterMatcher {
                        name,
                        present_match: if v.is_none() { Some(true) } else { None },
                        string_match: v.map(|v| StringMatcher::exact(&v)),
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
            route: Some(RouteAction {
                cluster: Some("c".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec!["GET", "POST"]),
        small_path(),
        proptest::option::of("(q|r)(=[ab]{0,2})?(&(q|r)=[ab]{0,2})?"),
        proptest::collection::vec(
            (prop::sample::select(vec!["x-a", "x-b"]), "[abAB]{0,3}"),
            0..3,
        ),
    )
        .prop_map(|(m, path, query, headers)| Req {
            method: m,
            path,
            query,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })
}

/// Reference semantics, written from Envoy's documentation, independent of the engine.
fn ref_string(m: &StringMatcher, v: &str) -> bool {
    let ic = m.ignore_case;
    let cmp = |s: &String| {
        if ic {
            s.to_ascii_lowercase()
        } else {
            s.clone()
        }
    };
    let v = if ic {
        v.to_ascii_lowercase()
    } else {
        v.to_string()
    };
    if let Some(s) = &m.exact {
        v == cmp(s)
    } else if let Some(s) = &m.prefix {
        v.starts_with(&cmp(s))
    } else if let Some(s) = &m.suffix {
        v.ends_with(&cmp(s))
    } else if let Some(s) = &m.contains {
        v.contains(&cmp(s))
    } else {
        false
    }
}

fn ref_matches(r: &Route, q: &Req) -> bool {
    let m = &r.match_;
    let ci = m.case_sensitive == Some(false);
    let norm = |s: &str| {
        if ci {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let path_ok = match (&m.prefix, &m.path) {
        (Some(p), _) => norm(&q.path).starts_with(&norm(p)),
        (_, Some(p)) => norm(&q.path) == norm(p),
        _ => false,
    };
    let header_ok = m.headers.iter().all(|h| {
        let values: Vec<&str> = if h.name == ":method" {
            vec![q.method]
        } else {
            q.headers
                .iter()
                .filter(|(k, _)| *k == h.name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let joined = (!values.is_empty()).then(|| values.join(","));
        let result = match (&h.string_match, joined) {
            (None, v) => v.is_some() == h.present_match.unwrap_or(true),
            (Some(_), None) => false,
            (Some(sm), Some(v)) => ref_string(sm, &v),
        };
        result != h.invert_match
    });
    let query_ok = m.query_parameters.iter().all(|p| {
        let first = q.query.as_deref().and_then(|qs| {
            qs.split('&').find_map(|kv| match kv.split_once('=') {
                Some((k, v)) if k == p.name => Some(v.to_string()),
                None if kv == p.name => Some(String::new()),
                _ => None,
            })
        });
        match (&p.string_match, first) {
            (None, v) => v.is_some(),
            (Some(_), None) => false,
            (Some(sm), Some(v)) => ref_string(sm, &v),
        }
    });
    path_ok && header_ok && query_ok
}

/// Envoy's virtual host order, as a reference.
fn ref_vhost(domains: &[Vec<String>], host: &str) -> Option<usize> {
    let host = host.to_ascii_lowercase();
    let all: Vec<(usize, String)> = domains
        .iter()
        .enumerate()
        .flat_map(|(i, ds)| ds.iter().map(move |d| (i, d.to_ascii_lowercase())))
        .collect();
    if let Some((i, _)) = all.iter().find(|(_, d)| *d == host) {
        return Some(*i);
    }
    let mut suffixes: Vec<&(usize, String)> = all
        .iter()
        .filter(|(_, d)| d.starts_with('*') && d.len() > 1)
        .collect();
    suffixes.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
    if let Some((i, _)) = suffixes
        .iter()
        .find(|(_, d)| host.len() > d.len() - 1 && host.ends_with(&d[1..]))
    {
        return Some(*i);
    }
    let mut prefixes: Vec<&(usize, String)> = all
        .iter()
        .filter(|(_, d)| d.ends_with('*') && d.len() > 1 && !d.starts_with('*'))
        .collect();
    prefixes.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
    if let Some((i, _)) = prefixes
        .iter()
        .find(|(_, d)| host.len() > d.len() - 1 && host.starts_with(&d[..d.len() - 1]))
    {
        return Some(*i);
    }
    all.iter().find(|(_, d)| d == "*").map(|(i, _)| *i)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn first_match_agrees_with_the_reference(
        routes in proptest::collection::vec(route(), 1..6),
        reqs in proptest::collection::vec(request(), 1..8),
    ) {
        let rc = RouteConfiguration {
            name: "t".into(),
            virtual_hosts: vec![VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                routes: routes.clone(),
                include_request_attempt_count: false,
            }],
        };
        let table = RouteTable::compile(&rc, &BTreeMap::new()).unwrap();
        for q in &reqs {
            let h = headers_from(&q.headers);
            let method: Method = q.method.parse().unwrap();
            let view = RequestView {
                method: &method, scheme: "http", authority: "any", path: &q.path,
                query: q.query.as_deref(), headers: &h,
            };
            let got = table.find(&view).map(|m| m.index);
            let want = routes.iter().position(|r| ref_matches(r, q));
            prop_assert_eq!(got, want, "request {:?}", q);
        }
    }

    #[test]
    fn vhost_selection_agrees_with_the_reference(
        domains in proptest::collection::vec(
            proptest::collection::btree_set("(\\*\\.)?[ab]{1,3}(\\.\\*)?(:[89])?|\\*", 1..4), 1..5),
        hosts in proptest::collection::vec("[ab.]{0,6}(:[89])?", 1..10),
    ) {
        // Envoy refuses a domain listed twice; keep the first owner.
        let mut seen = std::collections::HashSet::new();
        let domains: Vec<Vec<String>> = domains
            .into_iter()
            .map(|ds| ds.into_iter().filter(|d| seen.insert(d.to_ascii_lowercase())).collect())
            .collect();
        let domains: Vec<Vec<String>> = domains
            .into_iter()
            .map(|ds: Vec<String>| if ds.is_empty() { vec!["unused.example".to_string()] } else { ds })
            .filter(|ds| !ds.iter().any(|d| d.starts_with("*.") && d.ends_with(".*")))
            .collect();
        prop_assume!(!domains.is_empty());
        let rc = RouteConfiguration {
            name: "t".into(),
            virtual_hosts: domains.iter().enumerate().map(|(i, ds)| VirtualHost {
                name: i.to_string(),
                domains: ds.clone(),
                routes: vec![],
                include_request_attempt_count: false,
            }).collect(),
        };
        let Ok(table) = RouteTable::compile(&rc, &BTreeMap::new()) else {
            // Only duplicates (e.g. "unused.example" twice) are refused.
            return Ok(());
        };
        for h in &hosts {
            let got = table.select_vhost(h).map(|v| v.name.parse::<usize>().unwrap());
            prop_assert_eq!(got, ref_vhost(&domains, h), "host {:?} domains {:?}", h, domains);
        }
    }

    #[test]
    fn regex_routes_never_panic(re in "[a-z.*+?()|\\[\\]^$\\\\/0-9]{0,12}", path in "\\PC{0,30}") {
        let rc = RouteConfiguration {
            name: "t".into(),
            virtual_hosts: vec![VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    match_: RouteMatch {
                        safe_regex: Some(rustmesh_xds::route::RegexMatcher { regex: re.clone() }),
                        ..Default::default()
                    },
                    route: Some(RouteAction { cluster: Some("c".into()), ..Default::default() }),
                    ..Default::default()
                }],
                include_request_attempt_count: false,
            }],
        };
        match RouteTable::compile(&rc, &BTreeMap::new()) {
            Ok(t) => {
                let h = HeaderMap::new();
                let view = RequestView {
                    method: &Method::GET, scheme: "http", authority: "x", path: &path,
                    query: None, headers: &h,
                };
                let full = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
                prop_assert_eq!(t.find(&view).is_some(), full.is_match(&path));
            }
            Err(e) => prop_assert_eq!(e.field, "virtualHosts[0].routes[0].match.safeRegex.regex"),
        }
    }
}

/// A cluster manager that has nothing to offer (the connection tests need no upstream).
/// Feeds `bytes` to `serve_connection`, then closes the client side; the connection must end
/// (within a generous bound: a stuck task is the failure, not slowness).
fn feed(bytes: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let table = fixture_table();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ctx = HttpContext {
            routes: Arc::new(arc_swap::ArcSwap::from_pointee(table)),
            // No clusters: every upstream request is answered locally (503 `NC`).
            upstreams: ClusterUpstreams::new(
                ClusterManager::new(rustmesh_proxy::stats::Metrics::default())
                    .build(&rustmesh_xds::ProxyConfig::from_json("{}").unwrap()),
                Arc::new(PassthroughPools::default()),
            ),
            metrics: Arc::new(Metrics::new()),
            workload: Arc::new(WorkloadInfo::default()),
            own_metadata: Arc::new(rustmesh_proxy::peer::OwnMetadata::of(
                &WorkloadInfo::default(),
                None,
            )),
            destinations: Arc::new(Destinations::default()),
            reporter: Reporter::Source,
            peer: addr,
            local: addr,
            settings: Arc::new(HttpSettings {
                header_read_timeout: Duration::from_millis(200),
                ..Default::default()
            }),
            rng: Arc::new(Rng::seeded(1)),
            access_log: Sink::new(|_| {}),
            access_logs: Default::default(),
            peer_identity: None,
            own_identity: None,
            client_cert_details: None,
            authz: None,
            trace: None,
            requested_server_name: None,
            metric_settings: Default::default(),
        };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move { serve_connection(server, ctx).await });
        let _ = client.write_all(bytes).await;
        let _ = client.shutdown().await;
        // Drain whatever the server answers so it never blocks on a full pipe.
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        });
        let ended = tokio::time::timeout(Duration::from_secs(10), serving).await;
        assert!(
            ended.is_ok(),
            "connection task stuck on input {:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(ended.unwrap().is_ok(), "connection task panicked");
        reader.abort();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_hang(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed(&bytes);
    }

    #[test]
    fn arbitrary_request_heads_never_panic_or_hang(
        method in "[A-Z]{1,8}",
        target in "\\PC{0,40}",
        headers in proptest::collection::vec(("[!-9;-~]{1,12}", "[ -~]{0,30}"), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut req = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(&body);
        feed(&bytes);
    }
}

#[test]
fn corpus_replays_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/http");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        // Files are written with LF line ends for readability; the wire wants CRLF.
        let text = String::from_utf8_lossy(&bytes)
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
        feed(text.as_bytes());
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} entries");
}
