//! AuthorizationPolicy evaluation: a JSON object holding an `authorization` (the proxy
//! configuration's shape), the pod's `labels` and a list of `requests` (connection and, unless
//! `tcp`, HTTP attributes, with an optional `jwt` identity). The policies are compiled as the
//! sidecar compiles them; a policy that does not compile is an error naming a field, never a
//! panic. Each request's path goes through Istio's normalization, then the compiled engine
//! (indexed) and the plain reference evaluator (`rustmesh_proxy::authz::reference`) must give
//! the same decision: allowed or not, deciding action and rule, AUDIT rule and counters.
#![no_main]

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::authz::normalize::normalize;
use rustmesh_proxy::authz::{Attributes, Authz, Connection, Request, RequestAuth, reference};
use rustmesh_xds::authz::Authorization;
use rustmesh_xds::identity::SpiffeId;
use serde_json::Value;

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A request's attributes from its JSON (missing or malformed parts take defaults).
struct Case {
    conn: Connection,
    host: String,
    method: String,
    path: String,
    headers: HeaderMap,
    jwt: Option<RequestAuth>,
    tcp: bool,
}

fn case(r: &Value) -> Case {
    let peer = text(r, "principal").and_then(|p| format!("spiffe://{p}").parse::<SpiffeId>().ok());
    let source = text(r, "source")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| "10.0.0.1:40000".parse().unwrap());
    let destination = text(r, "destination")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| "10.0.0.2:8000".parse().unwrap());
    let sni = text(r, "sni");
    let mut headers = HeaderMap::new();
    if let Some(h) = r.get("headers").and_then(Value::as_object) {
        for (name, values) in h {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            let values: Vec<&Value> = match values {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            for v in values.into_iter().filter_map(Value::as_str) {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.append(name.clone(), v);
                }
            }
        }
    }
    let jwt = r.get("jwt").map(|j| RequestAuth {
        principal: text(j, "principal").unwrap_or_default(),
        audiences: j
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        presenter: text(j, "presenter"),
        claims: j
            .get("claims")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    });
    Case {
        conn: Connection::new(peer.as_ref(), source, destination, sni.as_deref()),
        host: text(r, "host").unwrap_or_default(),
        method: text(r, "method").unwrap_or_else(|| "GET".to_string()),
        path: text(r, "path").unwrap_or_else(|| "/".to_string()),
        headers,
        jwt,
        tcp: r.get("tcp").and_then(Value::as_bool).unwrap_or(false),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(Ok(auth)) = input
        .get("authorization")
        .map(|a| serde_json::from_value::<Authorization>(a.clone()))
    else {
        return;
    };
    let labels: BTreeMap<String, String> = input
        .get("labels")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let compiled = match Authz::compile(&auth, &labels) {
        Ok(c) => c,
        Err((field, message)) => {
            assert!(
                field.starts_with("authorization.policies["),
                "{field}: {message}"
            );
            return;
        }
    };
    let requests = input.get("requests").and_then(Value::as_array);
    for r in requests.into_iter().flatten().take(64) {
        let c = case(r);
        let Ok(path) = normalize(&c.path) else {
            continue;
        };
        let attrs = Attributes {
            conn: &c.conn,
            http: (!c.tcp).then_some(Request {
                host: &c.host,
                method: &c.method,
                path: &path,
                headers: &c.headers,
                auth: c.jwt.as_ref(),
            }),
        };
        let want = reference::evaluate(&auth, &labels, &attrs);
        match &compiled {
            Some(z) => {
                let got = z.evaluate(&attrs);
                assert_eq!(got, want, "engine and reference disagree");
                if !got.allowed {
                    let _ = z.denial_details(&got);
                }
            }
            None => assert!(
                want.allowed && want.by.is_none(),
                "no policy applies: {want:?}"
            ),
        }
    }
});
