//! Property: whatever VirtualService, DestinationRule and Sidecar users write (valid or not),
//! every rendered scope passes `ProxyConfig::validate` — invalid objects are left out, valid
//! ones always translate into a consistent configuration.

use proptest::prelude::*;
use rustmesh_api::IstioObject;
use rustmesh_operator::MeshView;
use rustmesh_operator::configmap::render_namespace;
use rustmesh_operator::fixtures::{apply_istio, bookinfo};
use serde_json::{Value, json};

fn destination() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "reviews",
            "ratings",
            "details",
            "nowhere.example.com",
            "mongodb",
        ]),
        prop::option::of(prop::sample::select(vec!["v1", "v2", "v3", "v9"])),
        prop::option::of(prop::sample::select(vec![9080u32, 27017, 1234])),
    )
        .prop_map(|(host, subset, port)| {
            let mut d = json!({"host": host});
            if let Some(s) = subset {
                d["subset"] = json!(s);
            }
            if let Some(p) = port {
                d["port"] = json!({"number": p});
            }
            d
        })
}

fn http_rule() -> impl Strategy<Value = Value> {
    let matches = prop::collection::vec(
        (prop::sample::select(vec![
            json!({"uri": {"prefix": "/api"}}),
            json!({"uri": {"exact": "/"}}),
            json!({"uri": {"regex": "/r/[0-9]+"}}),
            json!({"headers": {"end-user": {"exact": "jason"}}}),
            json!({"port": 9080}),
            json!({"port": 1234}),
            json!({"sourceLabels": {"app": "productpage"}, "ignoreUriCase": true}),
            json!({"withoutHeaders": {"x": {"prefix": "y"}}, "method": {"exact": "GET"}}),
        ]),),
        0..3,
    );
    let route = prop::collection::vec((destination(), prop::option::of(0i32..=100)), 1..4);
    (
        matches,
        route,
        0u8..6,
        prop::option::of(-1i32..4),
        prop::option::of(0.0f64..150.0),
        prop::sample::select(vec![300u32, 301, 302, 307]),
    )
        .prop_map(|(ms, route, action, attempts, pct, code)| {
            let mut r = json!({});
            if !ms.is_empty() {
                r["match"] = json!(ms.into_iter().map(|(m,)| m).collect::<Vec<_>>());
            }
            match action {
                0 => r["redirect"] = json!({"uri": "/new", "redirectCode": code}),
                1 => r["directResponse"] = json!({"status": 503, "body": {"string": "no"}}),
                _ => {
                    r["route"] = json!(
                        route
                            .into_iter()
                            .map(|(d, w)| {
                                let mut x = json!({"destination": d});
                                if let Some(w) = w {
                                    x["weight"] = json!(w);
                                }
                                x
                            })
                            .collect::<Vec<_>>()
                    );
                    if let Some(a) = attempts {
                        r["retries"] = json!({"attempts": a, "retryOn": "5xx,503"});
                    }
                    if let Some(p) = pct {
                        r["fault"] = json!({"abort": {"httpStatus": 503, "percentage": {"value": p}},
                                            "delay": {"fixedDelay": "1s", "percent": 50}});
                        r["mirror"] = json!({"host": "details"});
                        r["mirrorPercentage"] = json!({"value": p});
                    }
                    if action == 5 {
                        r["timeout"] = json!("0.5s");
                        r["rewrite"] = json!({"uri": "/x", "authority": "a"});
                    }
                }
            }
            r
        })
}

fn objects() -> impl Strategy<Value = Vec<Value>> {
    let vs = (
        prop::sample::select(vec![
            "reviews",
            "ratings",
            "*.default.svc.cluster.local",
            "mongodb",
        ]),
        prop::collection::vec(http_rule(), 0..4),
        prop::option::of(prop::sample::select(vec![".", "*", "other"])),
        prop::bool::ANY,
    )
        .prop_map(|(host, http, export, tcp)| {
            let mut spec = json!({"hosts": [host]});
            if !http.is_empty() {
                spec["http"] = json!(http);
            }
            if tcp {
                spec["tcp"] = json!([{"route": [
                    {"destination": {"host": "mongodb"}, "weight": 50},
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50}
                ]}]);
            }
            if let Some(e) = export {
                spec["exportTo"] = json!([e]);
            }
            spec
        });
    let dr = prop::sample::select(vec![
        json!({"host": "ratings", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}},
               "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
        json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}}),
        json!({"host": "details", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": -1}}}}),
        json!({"host": "*.default.svc.cluster.local", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]}}),
    ]);
    let sidecar = prop::sample::select(vec![
        Value::Null,
        json!({"egress": [{"hosts": ["./*"]}]}),
        json!({"egress": [{"hosts": ["~/*"]}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
        json!({"egress": [{"port": {"number": 9080, "protocol": "TCP", "name": "t"}, "hosts": ["*/*"]}, {"hosts": ["kube-system/*"]}]}),
        json!({"workloadSelector": {"labels": {"app": "reviews"}}, "egress": [{"hosts": ["./ratings.default.svc.cluster.local"]}],
               "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "defaultEndpoint": "127.0.0.1:9080"}]}),
    ]);
    (
        prop::collection::vec(vs, 0..4),
        prop::collection::vec(dr, 0..3),
        sidecar,
    )
        .prop_map(|(vss, drs, sidecar)| {
            let mut out = Vec::new();
            for (i, spec) in vss.into_iter().enumerate() {
                out.push(
                    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": format!("vs{i}"), "namespace": "default"}, "spec": spec}),
                );
            }
            for (i, spec) in drs.into_iter().enumerate() {
                out.push(
                    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                    "metadata": {"name": format!("dr{i}"), "namespace": "default"}, "spec": spec}),
                );
            }
            if !sidecar.is_null() {
                out.push(
                    json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                    "metadata": {"name": "sc", "namespace": "default"}, "spec": sidecar}),
                );
            }
            out
        })
}

fn typed(v: Value) -> IstioObject {
    match v["kind"].as_str().unwrap() {
        "VirtualService" => {
            IstioObject::VirtualService(Box::new(serde_json::from_value(v).unwrap()))
        }
        "DestinationRule" => {
            IstioObject::DestinationRule(Box::new(serde_json::from_value(v).unwrap()))
        }
        _ => IstioObject::Sidecar(Box::new(serde_json::from_value(v).unwrap())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_scope_renders_a_valid_configuration(objs in objects()) {
        let mut index = bookinfo();
        rustmesh_operator::fixtures::namespace(&mut index, "other", true);
        for o in objs {
            apply_istio(&mut index, typed(o));
        }
        let view = MeshView::new(&index);
        for ns in ["default", "other"] {
            let r = render_namespace(&view, ns);
            prop_assert!(r.is_ok(), "{ns}: {}", r.unwrap_err());
        }
    }
}
