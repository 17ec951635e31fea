//! Every Istio example of the repository, applied to bookinfo (with an ingress gateway pod in
//! istio-system, so Gateways get their gateway scopes), renders configurations that pass
//! `ProxyConfig::validate` in every scope of every injected namespace, and whose ConfigMap
//! round-trips through gzip.

use rustmesh_operator::configmap::{config_map, read_scope, render_namespace};
use rustmesh_operator::fixtures::{bookinfo_in, istio, namespace, router_pod};
use rustmesh_operator::render_view;
use rustmesh_operator::{Index, MeshView};
use std::path::Path;

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/tests/fixtures/valid");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("api fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("readable"),
            )
        })
        .collect();
    out.sort();
    out
}

fn check_all(index: &Index, label: &str) {
    let view = MeshView::new(index);
    let namespaces: Vec<String> = index.injected_namespaces().map(str::to_string).collect();
    assert!(!namespaces.is_empty());
    for ns in namespaces {
        let rendered =
            render_namespace(&view, &ns).unwrap_or_else(|e| panic!("{label}: namespace {ns}: {e}"));
        let cm = config_map(&rendered);
        for scope in view.scopes(&ns) {
            let key = scope.key();
            let back = read_scope(&cm, &key).unwrap_or_else(|e| panic!("{label}: {ns}/{key}: {e}"));
            let mut expected = render_view(&view, &scope);
            expected.version_info = back.version_info.clone();
            assert_eq!(back, expected, "{label}: {ns}/{key}");
        }
    }
}

#[test]
fn every_example_renders_valid_configurations() {
    let all = examples();
    assert!(all.len() >= 4, "examples found: {}", all.len());
    let ingress = [("app", "istio-ingressgateway"), ("istio", "ingressgateway")];
    let mut together = bookinfo_in("bookinfo");
    namespace(&mut together, "default", true);
    namespace(&mut together, "backend", true);
    router_pod(
        &mut together,
        "istio-system",
        "istio-ingressgateway-1",
        &ingress,
    );
    for (name, yaml) in &all {
        let mut one = bookinfo_in("bookinfo");
        namespace(&mut one, "default", true);
        router_pod(&mut one, "istio-system", "istio-ingressgateway-1", &ingress);
        istio(&mut one, yaml);
        check_all(&one, name);
        istio(&mut together, yaml);
    }
    check_all(&together, "all examples together");
    // The Gateway examples reached the ingress pod's namespace: its gateway scope rendered.
    let view = MeshView::new(&together);
    assert!(
        view.scope_index("istio-system")
            .selectors
            .iter()
            .any(|s| s.is_gateway())
    );
}
