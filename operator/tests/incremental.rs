//! The incremental path of the [`Renderer`] (endpoint changes recompute only the endpoints they
//! touch) must give exactly what a full render gives: after any sequence of Endpoints changes,
//! every injected namespace's ConfigMap, as the renderer last produced it, is byte-identical to
//! a fresh full render of the same index.

use k8s_openapi::api::core::v1::Endpoints;
use proptest::prelude::*;
use rustmesh_operator::configmap::{config_map, read_scope, render_namespace};
use rustmesh_operator::fixtures::{
    as_router, bookinfo, istio, namespace, pod, pod_as, service, workload,
};
use rustmesh_operator::index::{Affects, Kind, Object};
use rustmesh_operator::renderer::{RenderPath, Renderer};
use rustmesh_operator::{Index, MeshView, ObjKey};
use serde_json::json;

/// Bookinfo in `default` (reviews v1/v2/v3 subsets), a selector Sidecar for `reviews` pods, a
/// second injected namespace seeing everything, a headless service and a service whose
/// targetPort is named (resolved through its Endpoints), and an ingress gateway in
/// istio-system (a gateway scope) routing to reviews' subsets and to cart.
fn mesh() -> Index {
    let mut index = bookinfo();
    workload(
        &mut index,
        "istio-system",
        "istio-ingressgateway",
        Some("10.96.40.1"),
        &[("http2", 80, 8080)],
        &[(
            "istio-ingressgateway-1",
            "10.244.2.10",
            &[("app", "istio-ingressgateway"), ("istio", "ingressgateway")],
        )],
    );
    as_router(&mut index, "istio-system", "istio-ingressgateway-1");
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [ingress]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v2}
  - route:
    - destination: {host: cart.shop.svc.cluster.local, subset: v1}
"#,
    );
    namespace(&mut index, "shop", true);
    workload(
        &mut index,
        "shop",
        "cart",
        Some("10.96.30.1"),
        &[("http", 8080, 8080)],
        &[(
            "cart-1",
            "10.244.1.10",
            &[("app", "cart"), ("version", "v1")],
        )],
    );
    workload(
        &mut index,
        "shop",
        "db",
        None,
        &[("tcp", 5432, 5432)],
        &[("db-0", "10.244.1.20", &[("app", "db")])],
    );
    let mut named = service("shop", "web", Some("10.96.30.2"), &[("http", 80, 8080)]);
    named.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("web".into()));
    index.apply(Object::Service(Box::new(named)));
    // Pods that endpoint changes may bring in (their labels are known before).
    for (ns, name, labels) in [
        (
            "default",
            "reviews-v2-2",
            &[("app", "reviews"), ("version", "v2")][..],
        ),
        (
            "default",
            "reviews-v9-1",
            &[("app", "reviews"), ("version", "v9")],
        ),
        (
            "default",
            "ratings-v1-2",
            &[("app", "ratings"), ("version", "v1")],
        ),
        ("shop", "cart-2", &[("app", "cart"), ("version", "v2")]),
        ("shop", "db-1", &[("app", "db")]),
        ("shop", "web-1", &[("app", "web")]),
    ] {
        pod(&mut index, ns, name, labels);
    }
    istio(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  egress: [{hosts: ["./*", "shop/*"]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#,
    );
    index
}

/// Services whose Endpoints the tests change, with the addresses they may get
/// (ip, pod, endpoints port name).
/// A service the tests change: namespace, name, candidate addresses (ip, pod), port name.
type Candidate = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

fn candidates() -> Vec<Candidate> {
    vec![
        (
            "default",
            "reviews",
            vec![
                ("10.244.0.32", "reviews-v1-1"),
                ("10.244.0.33", "reviews-v2-1"),
                ("10.244.0.34", "reviews-v3-1"),
                ("10.244.0.35", "reviews-v2-2"),
                ("10.244.0.36", "reviews-v9-1"),
            ],
            "http",
        ),
        (
            "default",
            "ratings",
            vec![
                ("10.244.0.31", "ratings-v1-1"),
                ("10.244.0.37", "ratings-v1-2"),
            ],
            "http",
        ),
        (
            "shop",
            "cart",
            vec![("10.244.1.10", "cart-1"), ("10.244.1.11", "cart-2")],
            "http",
        ),
        (
            "shop",
            "db",
            vec![("10.244.1.20", "db-0"), ("10.244.1.21", "db-1")],
            "tcp",
        ),
        ("shop", "web", vec![("10.244.1.30", "web-1")], "web"),
    ]
}

/// One Endpoints change: which service, which candidate addresses are ready, which are not
/// ready, whether addresses lose their pod reference, the port, or a deletion.
#[derive(Clone, Debug)]
struct Change {
    service: usize,
    ready: Vec<bool>,
    not_ready: Vec<bool>,
    no_pod: bool,
    port_shift: bool,
    delete: bool,
}

fn change() -> impl Strategy<Value = Change> {
    (
        0..candidates().len(),
        prop::collection::vec(any::<bool>(), 5),
        prop::collection::vec(any::<bool>(), 5),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.08),
    )
        .prop_map(
            |(service, ready, not_ready, no_pod, port_shift, delete)| Change {
                service,
                ready,
                not_ready,
                no_pod,
                port_shift,
                delete,
            },
        )
}

fn endpoints_object(c: &Change) -> (ObjKey, Option<Endpoints>) {
    let (ns, name, addrs, port_name) = &candidates()[c.service];
    let key = ObjKey::new(*ns, *name);
    if c.delete {
        return (key, None);
    }
    let address = |(ip, p): &(&str, &str)| {
        if c.no_pod {
            json!({"ip": ip})
        } else {
            json!({"ip": ip, "targetRef": {"kind": "Pod", "namespace": ns, "name": p}})
        }
    };
    let ready: Vec<_> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| c.ready[*i])
        .map(|(_, a)| address(a))
        .collect();
    let not_ready: Vec<_> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| !c.ready[*i] && c.not_ready[*i])
        .map(|(_, a)| address(a))
        .collect();
    let port = match (*name, c.port_shift) {
        ("db", false) => 5432,
        ("db", true) => 5433,
        (_, false) => 8080,
        (_, true) => 8081,
    };
    let port = if *name == "reviews" || *name == "ratings" {
        port + 1000
    } else {
        port
    };
    let eps: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "subsets": [{"addresses": ready, "notReadyAddresses": not_ready,
                     "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}],
    }))
    .unwrap();
    (key, Some(eps))
}

/// Applies one batch of changes; what the watcher path would note.
fn apply(index: &mut Index, changes: &[Change]) -> Affects {
    let mut affects = Affects::default();
    for c in changes {
        let (key, eps) = endpoints_object(c);
        affects.merge(match eps {
            Some(e) => index.apply(Object::Endpoints(Box::new(e))),
            None => index.delete(Kind::Endpoints, &key),
        });
    }
    affects
}

/// Renders a batch with the renderer; returns the paths taken.
fn render_batch(renderer: &mut Renderer, index: &Index, affects: &Affects) -> Vec<RenderPath> {
    let mut plan = renderer.plan(index, affects.endpoints_only.as_ref());
    let mut view = None;
    let injected: Vec<String> = index.injected_namespaces().map(str::to_string).collect();
    let mut paths = Vec::new();
    for ns in affects.namespaces.iter().filter(|n| injected.contains(n)) {
        let (_, path) = renderer.render(&mut plan, index, &mut view, ns).unwrap();
        paths.push(path);
    }
    paths
}

/// Every injected namespace's last output equals a fresh full render, byte for byte.
fn assert_same_as_full(renderer: &Renderer, index: &Index) -> Result<(), TestCaseError> {
    let view = MeshView::new(index);
    for ns in index.injected_namespaces() {
        let full = config_map(&render_namespace(&view, ns).unwrap());
        let last = config_map(renderer.last(ns).expect("rendered before"));
        prop_assert_eq!(&last.data, &full.data, "{}: scopes.json", ns);
        prop_assert_eq!(
            last.binary_data
                .as_ref()
                .map(|b| b.keys().collect::<Vec<_>>()),
            full.binary_data
                .as_ref()
                .map(|b| b.keys().collect::<Vec<_>>()),
            "{}: keys",
            ns
        );
        for (k, v) in full.binary_data.as_ref().unwrap() {
            prop_assert!(
                last.binary_data.as_ref().unwrap()[k] == *v,
                "{}: {} differs",
                ns,
                k
            );
        }
        prop_assert_eq!(&last.metadata.annotations, &full.metadata.annotations);
    }
    Ok(())
}

fn first_render(index: &Index) -> Renderer {
    // The ingress gateway's namespace is rendered, with its gateway scope.
    let view = MeshView::new(index);
    let gateway = render_namespace(&view, "istio-system").unwrap();
    assert!(gateway.index.selectors.iter().any(|s| s.is_gateway()));
    let mut renderer = Renderer::default();
    let all = Affects::full(
        index.injected_namespaces().map(str::to_string).collect(),
        true,
    );
    assert!(
        render_batch(&mut renderer, index, &all)
            .iter()
            .all(|p| *p == RenderPath::Full)
    );
    renderer
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn endpoint_batches_render_exactly_like_full_renders(
        batches in prop::collection::vec(prop::collection::vec(change(), 1..4), 1..6)
    ) {
        let mut index = mesh();
        let mut renderer = first_render(&index);
        for batch in &batches {
            let affects = apply(&mut index, batch);
            render_batch(&mut renderer, &index, &affects);
            assert_same_as_full(&renderer, &index)?;
        }
    }

    /// The same with the mesh CA: clusters expect the pods' service accounts and endpoints of
    /// pods with a sidecar carry `tlsMode` metadata, so pods under other accounts and with or
    /// without the label come and go.
    #[test]
    fn endpoint_batches_under_mutual_tls_render_exactly_like_full_renders(
        batches in prop::collection::vec(prop::collection::vec(change(), 1..4), 1..6)
    ) {
        let mut index = mesh_with_ca();
        let mut renderer = first_render(&index);
        for batch in &batches {
            let affects = apply(&mut index, batch);
            render_batch(&mut renderer, &index, &affects);
            assert_same_as_full(&renderer, &index)?;
        }
    }
}

/// [`mesh`] with the mesh CA; some pods have a sidecar (`security.istio.io/tlsMode: istio`),
/// some run under their own service account.
fn mesh_with_ca() -> Index {
    let mut index = mesh();
    index.mesh.ca_host = Some("istiod.istio-system.svc.cluster.local".into());
    let sidecar = ("security.istio.io/tlsMode", "istio");
    for (ns, name, account, labels) in [
        (
            "default",
            "reviews-v1-1",
            None,
            &[("app", "reviews"), ("version", "v1"), sidecar][..],
        ),
        (
            "default",
            "reviews-v2-2",
            Some("reviews-v2"),
            &[("app", "reviews"), ("version", "v2"), sidecar],
        ),
        (
            "default",
            "reviews-v9-1",
            Some("reviews-v9"),
            &[("app", "reviews"), ("version", "v9")],
        ),
        (
            "shop",
            "cart-2",
            Some("cart"),
            &[("app", "cart"), ("version", "v2"), sidecar],
        ),
        ("shop", "db-1", Some("db"), &[("app", "db"), sidecar]),
    ] {
        pod_as(&mut index, ns, name, account, labels);
    }
    index
}

fn paths_for(index: &mut Index, renderer: &mut Renderer, c: Change) -> Vec<RenderPath> {
    let affects = apply(index, &[c]);
    assert!(affects.endpoints_only.is_some());
    let paths = render_batch(renderer, index, &affects);
    assert_same_as_full(renderer, index).unwrap();
    paths
}

fn readiness(service: usize, ready: [bool; 5]) -> Change {
    Change {
        service,
        ready: ready.to_vec(),
        not_ready: vec![true; 5],
        no_pod: false,
        port_shift: false,
        delete: false,
    }
}

#[test]
fn which_endpoint_changes_are_incremental() {
    let mut index = mesh();
    let mut r = first_render(&index);
    // default, shop and istio-system (the ingress gateway's, whose gateway scope routes to
    // reviews and cart) see every service.
    let incremental = vec![RenderPath::Endpoints; 3];
    let full = vec![RenderPath::Full; 3];
    // reviews-v2-1 becomes unready: only endpoints change, in every namespace.
    let c = readiness(0, [true, false, true, false, false]);
    assert_eq!(paths_for(&mut index, &mut r, c), incremental);
    // ... and the v2 subset cluster has no endpoint left, as the proxy reads it.
    let cm = config_map(r.last("shop").unwrap());
    let shop = read_scope(&cm, "default.json.gz").unwrap();
    let v2 = shop
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "outbound|9080|v2|reviews.default.svc.cluster.local")
        .unwrap();
    assert_eq!(v2.lb_endpoints().count(), 0);
    // So does the gateway scope's, rendered incrementally too.
    let cm = config_map(r.last("istio-system").unwrap());
    let key = r.last("istio-system").unwrap().index.selectors[0]
        .key
        .clone();
    let gateway = read_scope(&cm, &key).unwrap();
    let v2 = gateway
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "outbound|9080|v2|reviews.default.svc.cluster.local")
        .unwrap();
    assert_eq!(v2.lb_endpoints().count(), 0);
    // A second reviews v2 pod: still reviews pods, same scopes: incremental.
    let c = readiness(0, [true, true, true, true, false]);
    assert_eq!(paths_for(&mut index, &mut r, c), incremental);
    // The last reviews pod goes: the service's ports stop being inbound ports of the reviews
    // Sidecar's scope: full.
    let c = readiness(0, [false; 5]);
    assert_eq!(paths_for(&mut index, &mut r, c), full);
    // Headless: its endpoint addresses are listeners: full.
    let c = readiness(3, [true, true, false, false, false]);
    assert_eq!(paths_for(&mut index, &mut r, c), full);
    // A named targetPort resolved through the Endpoints (the first endpoints: full).
    let c = readiness(4, [true, false, false, false, false]);
    assert_eq!(paths_for(&mut index, &mut r, c), full);
    // cart-2 (v2) joins: incremental, and its v2 subset gets it.
    let c = readiness(2, [true, true, false, false, false]);
    assert_eq!(paths_for(&mut index, &mut r, c), incremental);
}
