//! Private PKI for the TLS scenarios: a CA made with rcgen, a server certificate for some names
//! and a client certificate, in PEM; and Secrets holding them, applied server-side. Keys live in
//! the test process and in the Secrets of the test namespaces only (deleted with them).
//!
//! Also what the scenarios with a TLS server outside the mesh share (s11, s20): the server
//! itself ([`deploy_https_server`]), its log of refused handshakes ([`wait_handshake_failed`])
//! and the right to `list` Secrets a sidecar needs for a `credentialName`
//! ([`grant_list_secrets`]).

use crate::sample::{self, App};
use crate::{Ctx, MANAGER, TESTAPP_IMAGE, poll};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, LogParams, ObjectMeta, Patch, PatchParams};
use rustmesh_testkit::pki::{TestCa, Usage};
use serde_json::json;
use std::time::Duration;

/// A private CA, a server's certificate and a client's, in PEM (`(certificate, key)`).
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    pub client: (String, String),
    /// The CA itself, to issue more or sign revocation lists.
    pub authority: TestCa,
}

impl Pki {
    /// A new CA (common name `ca_cn`), a server certificate for `server_names` (common name
    /// `server_cn`) and a client certificate with common name `client_cn`.
    pub fn new(ca_cn: &str, server_cn: &str, server_names: Vec<String>, client_cn: &str) -> Pki {
        let authority = TestCa::new(ca_cn);
        let names: Vec<&str> = server_names.iter().map(String::as_str).collect();
        Pki {
            server: authority.issue_with(server_cn, &names, None, Usage::Server),
            client: authority.issue_with(client_cn, &[], None, Usage::Client),
            ca: authority.pem.clone(),
            authority,
        }
    }
}

/// Applies Secret `ns/name` of type `kind` (`kubernetes.io/tls`, `Opaque`) holding `data`.
pub async fn put_secret(ctx: &Ctx, ns: &str, name: &str, kind: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some(kind.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("applying Secret {ns}/{name}: {e}"));
}

/// A TLS server outside the mesh: Deployment `<name>-v1` (labels `app: <name>`, `version: v1`,
/// never injected) running `testapp serve --https <port>` in container `<name>` with the
/// certificate and key of Secret `<name>` (`tls.crt`, `tls.key`), requiring a client
/// certificate signed by its `ca.crt` when `client_ca`. No Service: the caller makes one if the
/// scenario needs it.
pub struct HttpsServer<'a> {
    pub name: &'a str,
    pub port: u16,
    pub client_ca: bool,
}

/// Deploys `server` in `ns` and waits until it is ready. A port below 1024 (an external
/// server's 443) is served as root: the image's own user may not bind it.
pub async fn deploy_https_server(ctx: &Ctx, ns: &str, server: &HttpsServer<'_>) -> App {
    let name = server.name;
    let app = App {
        inject: Some(false),
        service_ports: vec![],
        http: vec![],
        ..App::http(name, "v1")
    };
    let labels = json!({"app": name, "version": "v1", "sidecar.istio.io/inject": "false"});
    let port = server.port.to_string();
    let mut args = vec![
        "serve",
        "--https",
        &port,
        "--tls-cert",
        "/etc/tls/tls.crt",
        "--tls-key",
        "/etc/tls/tls.key",
    ];
    if server.client_ca {
        args.extend(["--tls-client-ca", "/etc/tls/ca.crt"]);
    }
    args.extend(["--service", name, "--version", "v1"]);
    let security = if server.port < 1024 {
        json!({"runAsUser": 0, "runAsGroup": 0})
    } else {
        json!({})
    };
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app.deployment_name(), "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name, "version": "v1"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": name,
                        "image": TESTAPP_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "args": args,
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "https", "containerPort": server.port, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        "securityContext": security,
                        "volumeMounts": [{"name": "tls", "mountPath": "/etc/tls", "readOnly": true}],
                    }],
                    "volumes": [{"name": "tls", "secret": {"secretName": name}}],
                },
            },
        },
    });
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch(
            &app.deployment_name(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(deployment),
        )
        .await
        .unwrap_or_else(|e| panic!("applying Deployment {ns}/{}: {e}", app.deployment_name()));
    sample::wait_ready(ctx, ns, &app).await.unwrap();
    app
}

/// How many TLS handshakes from `ip` the server `pod` (container `container`, a
/// [`deploy_https_server`]) has logged as failed.
pub async fn handshake_failures(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    ip: &str,
) -> Result<usize, String> {
    let marker = format!("TLS handshake from {ip}:");
    let params = LogParams {
        container: Some(container.into()),
        ..Default::default()
    };
    let logs = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .logs(pod, &params)
        .await
        .map_err(|e| e.to_string())?;
    Ok(logs
        .lines()
        .filter(|l| l.contains(&marker) && l.contains("failed"))
        .count())
}

/// Waits until the TLS server `pod` has logged more than `before` failed handshakes from `ip`:
/// a connection reached it and was refused (plain text, or a client that did not trust its
/// certificate), rather than lost on the way.
pub async fn wait_handshake_failed(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    ip: &str,
    before: usize,
) {
    poll(
        &format!("the TLS server {ns}/{pod} logs a failed handshake from {ip}"),
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let n = handshake_failures(ctx, ns, pod, container, ip).await?;
            if n > before {
                Ok(Some(()))
            } else {
                Err(format!("{n} failed handshakes from {ip} logged"))
            }
        },
    )
    .await
    .unwrap();
}

/// Lets the namespace's `default` service account list its Secrets (Role and RoleBinding
/// `list-secrets`): the mesh CA serves a `credentialName` Secret to a sidecar only then, as
/// Istio's.
pub async fn grant_list_secrets(ctx: &Ctx, ns: &str) {
    let pp = PatchParams::apply(MANAGER).force();
    let role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "list-secrets", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "list-secrets", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
    }))
    .unwrap();
    Api::<Role>::namespaced(ctx.client.clone(), ns)
        .patch("list-secrets", &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(ctx.client.clone(), ns)
        .patch("list-secrets", &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
}
