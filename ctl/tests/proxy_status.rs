//! `rustmeshctl proxy-status` through the Kubernetes API, against a fake API server: which pods
//! it reads (injected and running ones only, in every namespace or in `-n`'s), that a sidecar it
//! cannot reach is listed after the table rather than failing the rest, and that a named pod's
//! error is the command's. The comparison itself is tested in `src/status.rs`, and the
//! `/server_info` it reads against the real sidecar in `tests/real_proxy.rs`.

mod support;

use serde_json::json;
use support::{Reply, Server, ctl, failure, kubeconfig, serve, stdout};

fn pod(name: &str, namespace: &str, containers: &[&str], phase: &str) -> serde_json::Value {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "x"}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
           "spec": {"containers": containers},
           "status": {"phase": phase}})
}

fn api_server() -> Server {
    serve(|_, target| {
        let path = target.split('?').next().unwrap_or(target);
        let list = |items: Vec<serde_json::Value>| {
            Reply::json(
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
                    .to_string(),
            )
        };
        match path {
            "/api/v1/pods" => list(vec![
                pod("plain", "default", &["nginx"], "Running"),
                pod("starting", "default", &["app", "istio-proxy"], "Pending"),
                pod("locked", "default", &["app", "istio-proxy"], "Running"),
            ]),
            "/api/v1/namespaces/shop/pods" => list(vec![]),
            "/api/v1/namespaces/default/pods/locked" => Reply::json(
                200,
                pod("locked", "default", &["app", "istio-proxy"], "Running").to_string(),
            ),
            "/api/v1/namespaces/default/pods/locked/portforward" => Reply::json(
                403,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "forbidden", "reason": "Forbidden", "code": 403})
                .to_string(),
            ),
            p => {
                let name = p.rsplit('/').next().unwrap_or_default();
                Reply::json(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "message": format!("pods \"{name}\" not found"),
                           "reason": "NotFound", "code": 404})
                    .to_string(),
                )
            }
        }
    })
}

fn run(server: &Server, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&dir, &server.url());
    let mut all = vec!["proxy-status"];
    all.extend_from_slice(args);
    all.extend(["--kubeconfig", &kc, "--timeout", "20s"]);
    ctl(&all)
}

#[test]
fn every_injected_running_pod_and_the_unreachable_after_the_table() {
    let api = api_server();
    let out = stdout(&run(&api, &[]));
    assert_eq!(
        out,
        "NAME     CLUSTER     CDS     LDS     EDS     RDS     SERVING     WRITTEN     VERSION\n\
         \n\
         could not read 1 sidecar(s):\n  \
         locked.default: you may not port-forward to pod default/locked: ask for the RBAC \
         permission to create pods/portforward in namespace default (get pods/portforward \
         before Kubernetes 1.35, which authorizes the WebSocket port-forward as a get)\n"
    );
    let asked = api.requests();
    assert_eq!(asked[0], "GET /api/v1/pods?");
    assert!(
        !asked
            .iter()
            .any(|r| r.contains("plain") || r.contains("starting")),
        "{asked:?}"
    );

    let out = stdout(&run(&api, &["-n", "shop"]));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        api.requests()
            .contains(&"GET /api/v1/namespaces/shop/pods?".to_string())
    );
}

#[test]
fn a_named_pod_fails_with_its_own_error() {
    let api = api_server();
    assert_eq!(
        failure(&run(&api, &["web-1.shop"])),
        "Error: pod \"web-1\" not found in namespace \"shop\""
    );
}
