//! Property: whatever VirtualService, DestinationRule, Sidecar, PeerAuthentication and
//! AuthorizationPolicy users write (valid or not), every rendered scope passes
//! `ProxyConfig::validate` — invalid objects are left out, valid ones always translate into a
//! consistent configuration.

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
        "PeerAuthentication" => {
            IstioObject::PeerAuthentication(Box::new(serde_json::from_value(v).unwrap()))
        }
        "AuthorizationPolicy" => {
            IstioObject::AuthorizationPolicy(Box::new(serde_json::from_value(v).unwrap()))
        }
        _ => IstioObject::Sidecar(Box::new(serde_json::from_value(v).unwrap())),
    }
}

/// PeerAuthentications in `default` and the root namespace, valid or not: selectors absent,
/// empty, with labels or a wildcard; every mode; port keys good and bad.
fn peer_authentications() -> impl Strategy<Value = Vec<Value>> {
    let policy = (
        prop::sample::select(vec!["default", "istio-system"]),
        prop::sample::select(vec![
            Value::Null,
            json!({}),
            json!({"matchLabels": {}}),
            json!({"matchLabels": {"app": "reviews"}}),
            json!({"matchLabels": {"app": "reviews", "version": "v2"}}),
            json!({"matchLabels": {"app": "rev*"}}),
        ]),
        prop::option::of(prop::sample::select(vec![
            "UNSET",
            "DISABLE",
            "PERMISSIVE",
            "STRICT",
        ])),
        prop::collection::btree_map(
            prop::sample::select(vec!["9080", "8080", "0", "70000", "http"]),
            prop::sample::select(vec!["UNSET", "DISABLE", "STRICT"]),
            0..3,
        ),
        0u32..4,
    );
    prop::collection::vec(policy, 0..6).prop_map(|policies| {
        policies
            .into_iter()
            .enumerate()
            .map(|(i, (ns, selector, mode, ports, day))| {
                let mut spec = json!({});
                if !selector.is_null() {
                    spec["selector"] = selector;
                }
                if let Some(m) = mode {
                    spec["mtls"] = json!({"mode": m});
                }
                if !ports.is_empty() {
                    spec["portLevelMtls"] = ports
                        .into_iter()
                        .map(|(p, m)| (p.to_string(), json!({"mode": m})))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": format!("pa{i}"), "namespace": ns,
                        "creationTimestamp": format!("2024-01-0{}T00:00:00Z", day + 1)},
                    "spec": spec})
            })
            .collect()
    })
}

/// AuthorizationPolicies in `default`, `other` and the root namespace, valid or not: selectors
/// absent, empty, labelled or a wildcard; every action, with or without a provider; rules with
/// good and bad ports, IP blocks, paths and condition keys, empty `from`/`to` entries.
fn authorization_policies() -> impl Strategy<Value = Vec<Value>> {
    let rule = (
        prop::sample::select(vec![
            Value::Null,
            json!([]),
            json!([{}]),
            json!([{"source": {"principals": ["cluster.local/ns/default/sa/productpage"]}}]),
            json!([{"source": {"namespaces": ["default"], "ipBlocks": ["10.0.0.0/8"]}}]),
            json!([{"source": {"ipBlocks": ["10.0.0.0/33"]}}]),
            json!([{"source": {"notRequestPrincipals": [""]}}]),
        ]),
        prop::sample::select(vec![
            Value::Null,
            json!([{"operation": {"ports": ["9080"], "methods": ["GET"]}}]),
            json!([{"operation": {"ports": ["http"]}}]),
            json!([{"operation": {"notPorts": ["0", "65535"], "paths": ["/api/{*}", "*.png"]}}]),
            json!([{"operation": {"paths": ["/a*b"]}}]),
            json!([{"operation": {}}]),
        ]),
        prop::sample::select(vec![
            Value::Null,
            json!([{"key": "request.headers[x-token]", "values": ["a"]}]),
            json!([{"key": "destination.port", "notValues": ["9080"]}]),
            json!([{"key": "source.ip"}]),
            json!([{"key": "experimental.envoy.filters.a[b]", "values": ["c"]}]),
        ]),
    )
        .prop_map(|(from, to, when)| {
            let mut r = json!({});
            for (k, v) in [("from", from), ("to", to), ("when", when)] {
                if !v.is_null() {
                    r[k] = v;
                }
            }
            r
        });
    let policy = (
        prop::sample::select(vec!["default", "other", "istio-system"]),
        prop::sample::select(vec![
            Value::Null,
            json!({}),
            json!({"matchLabels": {"app": "reviews"}}),
            json!({"matchLabels": {"app": "rev*"}}),
        ]),
        prop::option::of(prop::sample::select(vec![
            "ALLOW", "DENY", "AUDIT", "CUSTOM",
        ])),
        any::<bool>(),
        prop::collection::vec(rule, 0..3),
        0u32..4,
    );
    prop::collection::vec(policy, 0..6).prop_map(|policies| {
        policies
            .into_iter()
            .enumerate()
            .map(|(i, (ns, selector, action, provider, rules, day))| {
                let mut spec = json!({});
                if !selector.is_null() {
                    spec["selector"] = selector;
                }
                if let Some(a) = action {
                    spec["action"] = json!(a);
                }
                if provider {
                    spec["provider"] = json!({"name": "ext-authz"});
                }
                if !rules.is_empty() {
                    spec["rules"] = json!(rules);
                }
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": format!("ap{i}"), "namespace": ns,
                        "creationTimestamp": format!("2024-01-0{}T00:00:00Z", day + 1)},
                    "spec": spec})
            })
            .collect()
    })
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

    #[test]
    fn peer_authentications_render_only_accepted_policies(policies in peer_authentications()) {
        let mut index = bookinfo();
        rustmesh_operator::fixtures::namespace(&mut index, "other", true);
        rustmesh_operator::fixtures::namespace(&mut index, "istio-system", true);
        for o in policies {
            apply_istio(&mut index, typed(o));
        }
        let view = MeshView::new(&index);
        for ns in ["default", "other", "istio-system"] {
            let r = render_namespace(&view, ns);
            prop_assert!(r.is_ok(), "{ns}: {}", r.unwrap_err());
            let config = rustmesh_operator::render(&index, &rustmesh_operator::Scope::namespace(ns));
            let Some(p) = config.peer_authentication else { continue };
            let listed = p.mesh.iter().chain(&p.namespace).chain(&p.workload);
            for policy in listed {
                let (pns, name) = policy.name.split_once('/').unwrap();
                prop_assert!(
                    view.validation.accepted(
                        rustmesh_operator::index::Kind::PeerAuthentication,
                        &rustmesh_operator::ObjKey::new(pns, name)
                    ),
                    "{ns}: {} rendered but not accepted", policy.name
                );
                prop_assert!(policy.port_level_mtls.is_empty() || !policy.selector.is_empty());
            }
            let own = format!("{}/", ns);
            prop_assert!(p.workload.iter().all(|w| !w.selector.is_empty() && w.name.starts_with(&own)));
            prop_assert!(ns != "istio-system" || (p.namespace.is_none() && p.workload.is_empty()));
        }
    }

    #[test]
    fn authorization_policies_render_the_accepted_ones_of_the_root_then_the_namespace(
        policies in authorization_policies()
    ) {
        use rustmesh_operator::index::Kind;
        let mut index = bookinfo();
        rustmesh_operator::fixtures::namespace(&mut index, "other", true);
        rustmesh_operator::fixtures::namespace(&mut index, "istio-system", true);
        for o in policies {
            apply_istio(&mut index, typed(o));
        }
        let view = MeshView::new(&index);
        for ns in ["default", "other", "istio-system"] {
            let r = render_namespace(&view, ns);
            prop_assert!(r.is_ok(), "{ns}: {}", r.unwrap_err());
            let config = rustmesh_operator::render(&index, &rustmesh_operator::Scope::namespace(ns));
            let listed: Vec<String> = config
                .authorization
                .iter()
                .flat_map(|a| a.policies.iter().map(|p| p.name.clone()))
                .collect();
            // Exactly the accepted policies of the root namespace, then of `ns`.
            let wanted = |n: &str| -> Vec<String> {
                let mut keys: Vec<_> = index
                    .authorization_policies
                    .objects
                    .iter()
                    .filter(|(k, _)| k.namespace == n)
                    .filter(|(k, _)| view.validation.accepted(Kind::AuthorizationPolicy, k))
                    .map(|(k, p)| {
                        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string());
                        (created, k.to_string())
                    })
                    .collect();
                keys.sort();
                keys.into_iter().map(|(_, k)| k).collect()
            };
            let mut want = wanted("istio-system");
            if ns != "istio-system" {
                want.extend(wanted(ns));
            }
            prop_assert_eq!(&listed, &want, "{}", ns);
            prop_assert_eq!(config.authorization.is_none(), want.is_empty());
        }
    }
}
