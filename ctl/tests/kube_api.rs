//! `rustmeshctl proxy-config <pod>` through the Kubernetes API, against a fake API server (plain
//! HTTP, named by a kubeconfig written for the test): each error a user meets before the
//! port-forward carries any bytes, as the exact sentence printed.

mod support;

use serde_json::json;
use support::{Reply, Server, ctl, failure, kubeconfig, serve};

fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::json(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code})
        .to_string(),
    )
}

fn pod(name: &str, namespace: &str, containers: &[&str], phase: &str) -> Reply {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "x"}))
        .collect();
    Reply::json(
        200,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace},
               "spec": {"containers": containers},
               "status": {"phase": phase}})
        .to_string(),
    )
}

/// The API server of a cluster with a few pods in `default` and a namespace `secret` the user
/// may not read.
fn api_server() -> Server {
    serve(|_, target| {
        let path = target.split('?').next().unwrap_or(target);
        match path {
            "/api/v1/namespaces/default/pods/plain" => {
                pod("plain", "default", &["nginx"], "Running")
            }
            "/api/v1/namespaces/default/pods/starting" => {
                pod("starting", "default", &["app", "istio-proxy"], "Pending")
            }
            "/api/v1/namespaces/default/pods/locked" => {
                pod("locked", "default", &["app", "istio-proxy"], "Running")
            }
            "/api/v1/namespaces/default/pods/locked/portforward" => status(
                403,
                "Forbidden",
                "pods \"locked\" is forbidden: User \"dev\" cannot create resource \
                 \"pods/portforward\" in API group \"\" in the namespace \"default\"",
            ),
            p if p.starts_with("/api/v1/namespaces/secret/") => status(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: User \"dev\" cannot get resource \"pods\"",
            ),
            p => {
                let name = p.rsplit('/').next().unwrap_or_default();
                status(404, "NotFound", &format!("pods \"{name}\" not found"))
            }
        }
    })
}

fn run(server: &Server, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&dir, &server.url());
    let mut all = vec!["pc"];
    all.extend_from_slice(args);
    all.extend(["--kubeconfig", &kc, "--timeout", "20s"]);
    failure(&ctl(&all))
}

#[test]
fn pod_not_found() {
    let api = api_server();
    assert_eq!(
        run(&api, &["listeners", "productpage-v1-6c886ff494-7vxhs"]),
        "Error: pod \"productpage-v1-6c886ff494-7vxhs\" not found in namespace \"default\""
    );
    // `<pod>.<namespace>` and `-n` pick the namespace.
    assert_eq!(
        run(&api, &["routes", "productpage.bookinfo"]),
        "Error: pod \"productpage\" not found in namespace \"bookinfo\""
    );
    assert_eq!(
        run(&api, &["clusters", "productpage", "-n", "shop"]),
        "Error: pod \"productpage\" not found in namespace \"shop\""
    );
    let asked = api.requests();
    assert_eq!(
        asked,
        [
            "GET /api/v1/namespaces/default/pods/productpage-v1-6c886ff494-7vxhs",
            "GET /api/v1/namespaces/bookinfo/pods/productpage",
            "GET /api/v1/namespaces/shop/pods/productpage",
        ]
    );
}

#[test]
fn pod_not_injected() {
    let api = api_server();
    assert_eq!(
        run(&api, &["listeners", "plain"]),
        "Error: pod default/plain has no istio-proxy container, so it is not in the mesh \
         (label its namespace istio-injection=enabled and recreate the pod)"
    );
}

#[test]
fn pod_starting_is_not_ready() {
    let api = api_server();
    assert_eq!(
        run(&api, &["endpoints", "starting"]),
        "Error: the proxy in pod default/starting is not ready yet (the pod is Pending); try \
         again in a few seconds"
    );
}

#[test]
fn rbac_forbids_port_forward() {
    let api = api_server();
    assert_eq!(
        run(&api, &["listeners", "locked"]),
        "Error: you may not port-forward to pod default/locked: ask for the RBAC permission to \
         create pods/portforward in namespace default (get pods/portforward before Kubernetes \
         1.35, which authorizes the WebSocket port-forward as a get)"
    );
    let asked = api.requests();
    assert_eq!(asked[0], "GET /api/v1/namespaces/default/pods/locked");
    let (path, query) = asked[1].split_once('?').unwrap();
    assert_eq!(
        path,
        "GET /api/v1/namespaces/default/pods/locked/portforward"
    );
    assert!(query.split('&').any(|p| p == "ports=15000"), "{query}");
    assert_eq!(asked.len(), 2);
}

#[test]
fn rbac_forbids_reading_the_pod() {
    let api = api_server();
    assert_eq!(
        run(&api, &["listeners", "x.secret"]),
        "Error: you may not read pod secret/x: ask for the RBAC permission to get pods in \
         namespace secret"
    );
}

#[test]
fn no_kubeconfig() {
    let err = failure(&ctl(&["pc", "listeners", "productpage"]));
    assert!(
        err.starts_with(
            "Error: cannot load the Kubernetes configuration (give --kubeconfig, or reach a \
             proxy without Kubernetes with --admin-url or --file): "
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
