//! The proxy configuration model against a realistic document: the bookinfo productpage sidecar
//! of seeds 000/003, with Istio's listener, route and cluster names.

use rustmesh_xds::listener::{HTTP_PROTOCOLS, NetworkFilter};
use rustmesh_xds::names::{self, ClusterName};
use rustmesh_xds::{Error, ProxyConfig};
use serde_json::{Value, json};

const PRODUCTPAGE: &str = include_str!("fixtures/productpage.json");

fn fixture_value() -> Value {
    serde_json::from_str(PRODUCTPAGE).unwrap()
}

fn load_value(v: &Value) -> Result<ProxyConfig, Error> {
    ProxyConfig::from_json(&v.to_string())
}

#[test]
fn productpage_fixture_loads_and_round_trips_exactly() {
    let config = ProxyConfig::from_json(PRODUCTPAGE).unwrap();
    let back: Value = serde_json::from_str(&config.to_json()).unwrap();
    assert_eq!(back, fixture_value(), "serialising changed the document");
}

#[test]
fn istio_names_are_where_users_expect_them() {
    let c = ProxyConfig::from_json(PRODUCTPAGE).unwrap();
    let outbound = c.listener(names::VIRTUAL_OUTBOUND).unwrap();
    assert_eq!(outbound.address.socket_addr().to_string(), "0.0.0.0:15001");
    assert!(outbound.use_original_dst && outbound.bind_to_port);
    let inbound = c.listener(names::VIRTUAL_INBOUND).unwrap();
    assert_eq!(inbound.address.socket_addr().port(), 15006);

    let http = c.listener("0.0.0.0_9080").unwrap();
    assert!(!http.bind_to_port);
    assert_eq!(
        http.filter_chains[0].filters[0].destination(),
        "Route: 9080"
    );
    assert_eq!(
        http.default_filter_chain.as_ref().unwrap().filters[0].destination(),
        "PassthroughCluster"
    );
    assert_eq!(
        http.filter_chains[0]
            .filter_chain_match
            .application_protocols,
        HTTP_PROTOCOLS
    );
    let dns = c.listener("10.96.0.10_53").unwrap();
    assert_eq!(
        dns.filter_chains[0].filters[0].destination(),
        "outbound|53||kube-dns.kube-system.svc.cluster.local"
    );

    let table = c.route("9080").unwrap();
    assert_eq!(table.virtual_hosts[0].name, names::ALLOW_ANY_VHOST);
    let reviews = table
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .unwrap();
    assert!(
        reviews.domains.contains(&"reviews".to_string())
            && reviews.domains.contains(&"10.96.10.4:9080".to_string())
    );

    for name in [
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "inbound|9080||",
        names::PASSTHROUGH_CLUSTER,
        names::BLACKHOLE_CLUSTER,
        names::INBOUND_PASSTHROUGH_CLUSTER_V4,
    ] {
        assert!(c.cluster(name).is_some(), "cluster {name} missing");
    }
    let v1 = c
        .cluster("outbound|9080|v1|reviews.default.svc.cluster.local")
        .unwrap();
    let eps: Vec<_> = c
        .load_assignment(v1)
        .unwrap()
        .lb_endpoints()
        .map(|e| e.endpoint.address.socket_addr().unwrap().to_string())
        .collect();
    assert_eq!(eps, ["10.244.0.32:9080"]);
    let parsed = ClusterName::parse(&v1.name).unwrap();
    assert_eq!((parsed.port, parsed.subset.as_str()), (9080, "v1"));
    let inbound_app = c.cluster("inbound|9080||").unwrap();
    let app: Vec<_> = c
        .load_assignment(inbound_app)
        .unwrap()
        .lb_endpoints()
        .map(|e| e.endpoint.address.socket_addr().unwrap().to_string())
        .collect();
    assert_eq!(app, ["127.0.0.1:9080"]);
}

#[test]
fn inbound_http_chain_has_the_inline_route_of_seed_004() {
    let c = ProxyConfig::from_json(PRODUCTPAGE).unwrap();
    let chain = c
        .listener(names::VIRTUAL_INBOUND)
        .unwrap()
        .filter_chains
        .iter()
        .find(|fc| !fc.filter_chain_match.application_protocols.is_empty())
        .unwrap();
    let NetworkFilter::HttpConnectionManager(hcm) = &chain.filters[0] else {
        panic!("not HTTP")
    };
    let rc = hcm.route_config.as_ref().unwrap();
    assert_eq!(rc.name, "inbound|9080||");
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    assert_eq!(
        rc.virtual_hosts[0].routes[0]
            .route
            .as_ref()
            .unwrap()
            .cluster
            .as_deref(),
        Some("inbound|9080||")
    );
}

fn invalid_fields(v: &Value) -> Vec<(String, String)> {
    match load_value(v) {
        Err(Error::Invalid(list)) => list,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn dangling_references_are_refused_naming_the_field() {
    let mut v = fixture_value();
    // Drop the cluster `outbound|9080||details...` that the route table and endpoints refer to.
    let clusters = v["clusters"].as_array_mut().unwrap();
    clusters.retain(|c| c["name"] != "outbound|9080||details.default.svc.cluster.local");
    let errors = invalid_fields(&v);
    assert!(
        errors.iter().any(
            |(f, m)| f == "routes[0].virtualHosts[1].routes[0].route.cluster"
                && m.contains("is not defined")
        ),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|(f, _)| f.starts_with("endpoints[")),
        "{errors:?}"
    );

    let mut v = fixture_value();
    v["listeners"][2]["filterChains"][0]["filters"][0]["typedConfig"]["rds"]["routeConfigName"] =
        json!("9081");
    let errors = invalid_fields(&v);
    assert_eq!(
        errors,
        [(
            "listeners[2].filterChains[0].filters[0].typedConfig.rds.routeConfigName".to_string(),
            "route table \"9081\" is not defined".to_string()
        )]
    );
}

#[test]
fn consistency_rules() {
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|v| v["listeners"][1]["name"] = json!("virtualOutbound")),
            "listeners[1].name",
        ),
        (
            Box::new(|v| {
                v["routes"][0]["virtualHosts"][1]["routes"][0]["match"] =
                    json!({"prefix": "/", "path": "/x"})
            }),
            "routes[0].virtualHosts[1].routes[0].match",
        ),
        (
            Box::new(|v| {
                v["routes"][0]["virtualHosts"][1]["routes"][0]["match"] =
                    json!({"safeRegex": {"regex": "(["}})
            }),
            "routes[0].virtualHosts[1].routes[0].match.safeRegex.regex",
        ),
        (
            Box::new(|v| {
                v["routes"][0]["virtualHosts"][1]["routes"][0]["directResponse"] =
                    json!({"status": 200})
            }),
            "routes[0].virtualHosts[1].routes[0]",
        ),
        (
            Box::new(|v| v["routes"][0]["virtualHosts"][1]["domains"] = json!([])),
            "routes[0].virtualHosts[1].domains",
        ),
        (
            Box::new(|v| v["clusters"][0]["lbPolicy"] = json!("CLUSTER_PROVIDED")),
            "clusters[0].lbPolicy",
        ),
        (
            Box::new(|v| {
                v["clusters"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("edsClusterConfig");
            }),
            "clusters[0].edsClusterConfig",
        ),
        (
            Box::new(|v| v["listeners"][0]["filterChains"] = json!([])),
            "listeners[0].filterChains",
        ),
        (
            Box::new(|v| v["listeners"][1]["address"]["socketAddress"]["portValue"] = json!(15001)),
            "listeners[1].address",
        ),
        (
            Box::new(|v| {
                v["routes"][0]["virtualHosts"][1]["routes"][0]["route"]["retryPolicy"]["retriableStatusCodes"] =
                    json!([999])
            }),
            "routes[0].virtualHosts[1].routes[0].route.retryPolicy.retriableStatusCodes[0]",
        ),
    ];
    for (mutate, field) in cases {
        let mut v = fixture_value();
        mutate(&mut v);
        let errors = invalid_fields(&v);
        assert!(
            errors.iter().any(|(f, _)| f == field),
            "expected an error at {field}, got {errors:?}"
        );
    }
}

#[test]
fn shape_errors_name_field_line_and_column() {
    let mut v = fixture_value();
    v["clusters"][0]["connectTimeout"] = json!("ten seconds");
    let pretty = serde_json::to_string_pretty(&v).unwrap();
    let line = pretty
        .lines()
        .position(|l| l.contains("ten seconds"))
        .unwrap()
        + 1;
    match ProxyConfig::from_json(&pretty) {
        Err(Error::Parse {
            field,
            line: l,
            message,
            ..
        }) => {
            assert_eq!(field, "clusters[0].connectTimeout");
            assert_eq!(l, line);
            assert!(message.contains("invalid duration"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }

    let mut v = fixture_value();
    v["listeners"][0]["adress"] = json!({});
    let err = load_value(&v).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { field, message, .. } if field == "listeners[0].adress" && message.contains("unknown field `adress`")),
        "{err}"
    );

    let mut v = fixture_value();
    v["listeners"][2]["filterChains"][0]["filters"][0]["name"] =
        json!("envoy.filters.network.redis_proxy");
    let err = load_value(&v).unwrap_err();
    assert!(
        err.to_string()
            .contains("listeners[2].filterChains[0].filters[0]")
            && err.to_string().contains("unknown variant"),
        "{err}"
    );

    let mut v = fixture_value();
    v["listeners"][0]["address"]["socketAddress"]["address"] = json!("0.0.0.256");
    let err = load_value(&v).unwrap_err();
    assert!(
        err.to_string()
            .contains("listeners[0].address.socketAddress.address"),
        "{err}"
    );

    let err = ProxyConfig::from_json("{\"listeners\": [}").unwrap_err();
    assert!(matches!(err, Error::Parse { line: 1, .. }), "{err}");
    assert!(ProxyConfig::from_json("").is_err());
}

#[test]
fn an_empty_document_is_a_valid_empty_config() {
    let c = ProxyConfig::from_json("{}").unwrap();
    assert!(c.listeners.is_empty() && c.clusters.is_empty());
}

/// A configuration split the way the operator writes it (endpoints in parts keyed by host) is put
/// back together exactly; a split that gives a cluster's endpoints twice, or a part that is not
/// an endpoint part, is refused naming what is wrong.
#[test]
fn a_split_configuration_is_put_back_together() {
    use rustmesh_xds::scope::{EndpointPart, endpoint_part_of};
    let whole = ProxyConfig::from_json(PRODUCTPAGE).unwrap();
    assert!(whole.endpoints.len() > 1, "the fixture has EDS clusters");
    let mut base = whole.clone();
    let endpoints = std::mem::take(&mut base.endpoints);
    base.version_info.clear();
    let mut parts = vec![EndpointPart::default(); 4];
    for cla in endpoints {
        parts[endpoint_part_of(&cla.cluster_name, 4)]
            .endpoints
            .push(cla);
    }
    // Parts are read back from their JSON, in any order.
    let texts: Vec<String> = parts
        .iter()
        .rev()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    let read: Vec<EndpointPart> = texts
        .iter()
        .map(|t| EndpointPart::from_json(t).unwrap())
        .collect();
    let base = ProxyConfig::from_json_unvalidated(&serde_json::to_string(&base).unwrap()).unwrap();
    let assembled = base
        .clone()
        .with_parts(read.clone(), whole.version_info.clone())
        .unwrap();
    // Assembled endpoints come sorted by cluster name (the operator renders them so).
    let mut expected = whole.clone();
    expected
        .endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    assert_eq!(assembled, expected);

    let mut twice = read.clone();
    twice.push(
        read.iter()
            .find(|p| !p.endpoints.is_empty())
            .unwrap()
            .clone(),
    );
    let e = base
        .clone()
        .with_parts(twice, "v".into())
        .unwrap_err()
        .to_string();
    assert!(e.contains("are given twice"), "{e}");

    let e = EndpointPart::from_json(r#"{"listeners": []}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("listeners"), "{e}");
}

/// The route of the fixture's `details` virtual host with `match` replaced.
fn details_route_with_match(v: &mut Value, m: Value) {
    v["routes"][0]["virtualHosts"][1]["routes"][0]["match"] = m;
}

#[test]
fn a_regex_bomb_is_refused_naming_the_field() {
    // 300 routes with `\w{60}` took a sidecar from 21 MB to 1 GB: each is refused alone.
    let mut v = fixture_value();
    details_route_with_match(&mut v, json!({"safeRegex": {"regex": r"\w{60}"}}));
    let errors = invalid_fields(&v);
    assert!(
        errors.iter().any(|(f, m)| f
            == "routes[0].virtualHosts[1].routes[0].match.safeRegex.regex"
            && m.contains(r#"regex "\\w{60}" compiles to more than 524288 bytes"#)),
        "{errors:?}"
    );

    let mut v = fixture_value();
    details_route_with_match(
        &mut v,
        json!({"prefix": "/", "headers": [{"name": "x-id", "stringMatch": {"safeRegex": {"regex": r"\w{60}"}}}]}),
    );
    let errors = invalid_fields(&v);
    assert!(
        errors.iter().any(|(f, m)| f
            == "routes[0].virtualHosts[1].routes[0].match.headers[0].stringMatch.safeRegex.regex"
            && m.contains("compiles to more than")),
        "{errors:?}"
    );

    let mut v = fixture_value();
    v["routes"][0]["virtualHosts"][1]["routes"][0]["route"]["regexRewrite"] =
        json!({"pattern": {"regex": r"\w{60}"}, "substitution": "/"});
    let errors = invalid_fields(&v);
    assert!(
        errors.iter().any(|(f, m)| f
            == "routes[0].virtualHosts[1].routes[0].route.regexRewrite.pattern.regex"
            && m.contains("compiles to more than")),
        "{errors:?}"
    );
}

#[test]
fn regexes_allowed_one_by_one_cannot_add_up_past_the_configuration_budget() {
    use rustmesh_xds::regex::{Anchor, CONFIG_SIZE_BUDGET, PATTERN_SIZE_LIMIT, compile};
    // A pattern well inside the per-pattern limit...
    let medium = "[a-z]{4000}";
    let size = compile(medium, Anchor::Whole).unwrap().size;
    assert!(size < PATTERN_SIZE_LIMIT, "{size}");
    // ...repeated until the document's patterns pass the budget.
    let n = CONFIG_SIZE_BUDGET / size + 2;
    let mut v = fixture_value();
    let template = v["routes"][0]["virtualHosts"][1]["routes"][0].clone();
    let routes: Vec<Value> = (0..n)
        .map(|i| {
            let mut r = template.clone();
            r["name"] = json!(format!("r{i}"));
            r["match"] = json!({"safeRegex": {"regex": medium}});
            r
        })
        .collect();
    v["routes"][0]["virtualHosts"][1]["routes"] = json!(routes);
    let errors = invalid_fields(&v);
    let first_over = CONFIG_SIZE_BUDGET / size;
    assert_eq!(
        errors.first().map(|(f, _)| f.as_str()),
        Some(
            format!("routes[0].virtualHosts[1].routes[{first_over}].match.safeRegex.regex")
                .as_str()
        ),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|(_, m)| m.contains("over the budget of 16777216 bytes")
                && m.contains("proxy configuration")),
        "{errors:?}"
    );
    assert_eq!(errors.len(), n - first_over, "{errors:?}");

    // One route fewer than the budget holds is accepted.
    let mut v = fixture_value();
    v["routes"][0]["virtualHosts"][1]["routes"] = json!(routes[..first_over]);
    load_value(&v).unwrap();
}

#[test]
fn cors_origins_are_checked_and_counted_like_every_regex() {
    let mut v = fixture_value();
    v["routes"][0]["virtualHosts"][1]["routes"][0]["cors"] = json!({
        "allowOriginStringMatch": [ { "exact": "https://a" }, { "safeRegex": { "regex": r"\w{60}" } } ],
        "maxAge": "1.5"
    });
    let errors = invalid_fields(&v);
    assert!(
        errors.iter().any(|(f, m)| f
            == "routes[0].virtualHosts[1].routes[0].cors.allowOriginStringMatch[1].safeRegex.regex"
            && m.contains("compiles to more than")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(f, _)| f == "routes[0].virtualHosts[1].routes[0].cors.maxAge"),
        "{errors:?}"
    );
    // A good policy loads; an old document without one loads as before (the fixture).
    v["routes"][0]["virtualHosts"][1]["routes"][0]["cors"] = json!({
        "allowOriginStringMatch": [ { "safeRegex": { "regex": r"https://.*\.example\.com" } } ],
        "maxAge": "86400",
        "forwardNotMatchingPreflights": false
    });
    load_value(&v).unwrap();
}

#[test]
fn istio_documented_regexes_are_accepted() {
    for re in [
        "^/api/v[0-9]+/.*",
        r".*\.jpg",
        r"^(.*?;)?(user=jason)(;.*)?$",
        "/productpage|/login|/logout",
        r"^/reviews/\d+(/.*)?$",
        r"^/users/\w+/profile$",
    ] {
        let mut v = fixture_value();
        details_route_with_match(
            &mut v,
            json!({"safeRegex": {"regex": re}, "headers": [{"name": "cookie", "stringMatch": {"safeRegex": {"regex": re}}}]}),
        );
        load_value(&v).unwrap_or_else(|e| panic!("{re}: {e}"));
    }
}
