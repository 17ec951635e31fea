//! VirtualService delegation (`http[].delegate`) through the renderer and validation: the
//! delegate's routes merged into the root's, as Istio merges them (`crate::delegate`).

use super::*;
use crate::configmap::render;
use crate::fixtures::{bookinfo, istio, namespace, verdict};
use crate::index::Kind;
use crate::validation::{Level, Verdict};
use rustmesh_xds::route::{Route, RouteMatch};

const REVIEWS: &str = "reviews.default.svc.cluster.local:9080";

fn rendered(index: &Index, scope: &Scope) -> ProxyConfig {
    let c = render(index, scope);
    if let Err(e) = c.validate() {
        panic!("render of {scope} does not validate: {e}\n{}", c.to_json());
    }
    c
}

fn reviews_routes(index: &Index, ns: &str) -> Vec<Route> {
    rendered(index, &Scope::namespace(ns))
        .route("9080")
        .expect("route table 9080")
        .virtual_hosts
        .iter()
        .find(|v| v.name == REVIEWS)
        .expect("reviews virtual host")
        .routes
        .clone()
}

/// (route name, cluster) of each route.
fn summary(routes: &[Route]) -> Vec<(String, String)> {
    routes
        .iter()
        .map(|r| {
            (
                r.name.clone().unwrap_or_default(),
                r.route
                    .as_ref()
                    .and_then(|a| a.cluster.clone())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn warnings(v: &Verdict) -> Vec<(String, String)> {
    v.findings
        .iter()
        .filter(|f| f.level == Level::Warning)
        .map(|f| (f.field.clone(), f.message.clone()))
        .collect()
}

fn cluster(subset: &str) -> String {
    format!("outbound|9080|{subset}|reviews.default.svc.cluster.local")
}

/// A root for `reviews` in `default` whose first route (`/reviews`, 3 s timeout) delegates to
/// `delegate` and whose second sends the rest to v1.
fn root(delegate: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: main
    match: [{{uri: {{prefix: /reviews}}}}]
    timeout: 3s
    delegate: {delegate}
  - route:
    - destination: {{host: reviews, subset: v1}}
"#
    )
}

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-routes, namespace: default}
spec:
  http:
  - name: v2
    match:
    - uri: {prefix: /reviews/v2}
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
  - name: outside
    match: [{uri: {prefix: /details}}]
    route:
    - destination: {host: reviews, subset: v3}
  - timeout: 1s
    route:
    - destination: {host: reviews, subset: v3}
"#;

#[test]
fn a_delegates_routes_take_the_root_routes_place_with_combined_matches() {
    let mut index = bookinfo();
    istio(&mut index, &root("{name: reviews-routes}"));
    istio(&mut index, ROUTES);
    let routes = reviews_routes(&index, "default");
    assert_eq!(
        summary(&routes),
        [
            ("main-v2".to_string(), cluster("v2")),
            ("main-v2".to_string(), cluster("v2")),
            ("main".to_string(), cluster("v3")),
            (String::new(), cluster("v1")),
        ]
    );
    // The delegate's `/reviews/v2` lies within the root's `/reviews`: it stays.
    assert_eq!(
        routes[0].match_,
        RouteMatch {
            prefix: Some("/reviews/v2".into()),
            ..RouteMatch::default()
        }
    );
    // A header-only delegate match is narrowed to the root's `/reviews`.
    assert_eq!(routes[1].match_.prefix.as_deref(), Some("/reviews"));
    assert_eq!(routes[1].match_.headers.len(), 1);
    assert_eq!(routes[1].match_.headers[0].name, "end-user");
    // A delegate route without matches takes the root's.
    assert_eq!(routes[2].match_.prefix.as_deref(), Some("/reviews"));
    // What the delegate route leaves unset comes from the root route; its own wins.
    let timeout = |r: &Route| r.route.as_ref().unwrap().timeout;
    assert_eq!(timeout(&routes[0]), Some(Duration::from_secs(3)));
    assert_eq!(timeout(&routes[2]), Some(Duration::from_secs(1)));
    // Every route is the root's, as `proxy-config routes` shows it in Istio.
    assert!(
        routes[..3]
            .iter()
            .all(|r| r.virtual_service.as_deref() == Some("reviews.default"))
    );
    // `/details` is not within `/reviews`: that delegate route never applies, and the root
    // says so; the delegate itself is accepted as it is.
    let w = warnings(&verdict(&index, Kind::VirtualService, "default", "reviews"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "spec.http[0].delegate");
    assert!(
        w[0].1
            .contains("route spec.http[1] of delegate VirtualService default/reviews-routes")
            && w[0].1.contains("never applies"),
        "{}",
        w[0].1
    );
    let d = verdict(&index, Kind::VirtualService, "default", "reviews-routes");
    assert!(d.accepted && d.findings.is_empty(), "{d:?}");
    // On its own a delegate renders nothing: without the root, the default route.
    let mut alone = bookinfo();
    istio(&mut alone, ROUTES);
    assert_eq!(
        summary(&reviews_routes(&alone, "default")),
        [("default".to_string(), cluster(""))]
    );
}

#[test]
fn a_delegate_in_another_namespace_must_be_exported_to_the_roots() {
    let delegate = |export_to: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes, namespace: reviews-team}}
spec:
  exportTo: {export_to}
  http:
  - route:
    - destination: {{host: reviews.default.svc.cluster.local, subset: v2}}
    mirror: {{host: ratings}}
"#
        )
    };
    let mut index = bookinfo();
    namespace(&mut index, "reviews-team", false);
    istio(&mut index, &root("{name: routes, namespace: reviews-team}"));
    istio(&mut index, &delegate("[default]"));
    let routes = reviews_routes(&index, "default");
    assert_eq!(
        summary(&routes),
        [
            ("main".to_string(), cluster("v2")),
            (String::new(), cluster("v1")),
        ]
    );
    // Short names in the delegate are its namespace's (as it was validated): no `ratings`
    // there, so the mirror goes nowhere (and the delegate was warned about it).
    let mirror = &routes[0].route.as_ref().unwrap().request_mirror_policies;
    assert_eq!(mirror[0].cluster, rustmesh_xds::names::BLACKHOLE_CLUSTER);
    assert!(
        warnings(&verdict(
            &index,
            Kind::VirtualService,
            "reviews-team",
            "routes"
        ))
        .iter()
        .any(|(f, m)| f == "spec.http[0].mirror.host"
            && m.contains("ratings.reviews-team.svc.cluster.local"))
    );
    assert!(warnings(&verdict(&index, Kind::VirtualService, "default", "reviews")).is_empty());
    // Exported only to its own namespace, the root cannot use it: that route renders nothing.
    istio(&mut index, &delegate("[\".\"]"));
    assert_eq!(
        summary(&reviews_routes(&index, "default")),
        [(String::new(), cluster("v1"))]
    );
    let w = warnings(&verdict(&index, Kind::VirtualService, "default", "reviews"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "spec.http[0].delegate");
    assert!(
        w[0].1.contains(
            "delegate VirtualService reviews-team/routes is not exported to namespace default"
        ),
        "{}",
        w[0].1
    );
}

#[test]
fn a_missing_delegate_renders_nothing_for_its_route_and_warns_on_the_root() {
    let mut index = bookinfo();
    istio(&mut index, &root("{name: nope}"));
    assert_eq!(
        summary(&reviews_routes(&index, "default")),
        [(String::new(), cluster("v1"))]
    );
    let v = verdict(&index, Kind::VirtualService, "default", "reviews");
    assert!(v.accepted);
    let w = warnings(&v);
    assert_eq!(
        w,
        [(
            "spec.http[0].delegate".to_string(),
            "delegate VirtualService default/nope not found; this route renders nothing"
                .to_string()
        )]
    );
    // The status says so.
    let status = crate::validation::status_for(&v, Some(1), None, "now");
    let accepted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .unwrap();
    assert_eq!(accepted.status, "True");
    let message = accepted.message.clone().unwrap_or_default();
    assert!(
        message.contains("spec.http[0].delegate: delegate VirtualService default/nope not found"),
        "{message}"
    );
    // A VirtualService with hosts is a root, not a delegate.
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nope, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
"#,
    );
    let w = warnings(&verdict(&index, Kind::VirtualService, "default", "reviews"));
    assert!(
        w.iter().any(|(f, m)| f == "spec.http[0].delegate"
            && m.contains("default/nope has hosts, so it is not a delegate")),
        "{w:?}"
    );
    assert_eq!(
        summary(&reviews_routes(&index, "default")),
        [(String::new(), cluster("v1"))]
    );
}

#[test]
fn nested_delegation_is_refused_and_the_root_route_renders_nothing() {
    let mut index = bookinfo();
    istio(&mut index, &root("{name: reviews-routes}"));
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-routes, namespace: default}
spec:
  http:
  - delegate: {name: deeper}
"#,
    );
    istio(
        &mut index,
        ROUTES.replace("reviews-routes", "deeper").as_str(),
    );
    // The middle one is refused by its own validation (one level only, as Istio)...
    let middle = verdict(&index, Kind::VirtualService, "default", "reviews-routes");
    assert!(!middle.accepted);
    assert_eq!(middle.findings[0].field, "spec.http[0].delegate");
    assert!(
        middle.findings[0].message.contains("cannot delegate again"),
        "{}",
        middle.findings[0].message
    );
    // ... so the root's route renders nothing, and the root says why.
    assert_eq!(
        summary(&reviews_routes(&index, "default")),
        [(String::new(), cluster("v1"))]
    );
    let w = warnings(&verdict(&index, Kind::VirtualService, "default", "reviews"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].1.starts_with("delegate VirtualService default/reviews-routes is not accepted: spec.http[0].delegate: a delegate VirtualService"),
        "{}",
        w[0].1
    );
}

#[test]
fn an_invalid_update_of_a_delegate_keeps_its_last_accepted_version_serving() {
    let mut index = bookinfo();
    istio(&mut index, &root("{name: reviews-routes}"));
    istio(&mut index, ROUTES);
    let v = MeshView::new(&index).validation.clone();
    index.remember_accepted(v.accepted_keys());
    let before = reviews_routes(&index, "default");
    istio(&mut index, &ROUTES.replace("subset: v2", "subset: v9"));
    assert!(!verdict(&index, Kind::VirtualService, "default", "reviews-routes").accepted);
    assert_eq!(reviews_routes(&index, "default"), before);
    // The root still warns about the delegate route outside it, from the version serving.
    assert_eq!(
        warnings(&verdict(&index, Kind::VirtualService, "default", "reviews")).len(),
        1
    );
}
