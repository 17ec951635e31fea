//! The bookinfo-like sample, made of `testapp serve` pods:
//!
//! ```text
//!  productpage v1 ──▶ reviews v1 | v2 | v3 ──▶ ratings v1
//!        └──────────▶ details v1
//!  tcp-echo v1 (TCP 9000)        external (no Service, not meshed: addressed by pod IP)
//! ```
//!
//! Every workload is a Deployment `<app>-<version>` (labels `app`, `version`) whose container is
//! named after the app, and every app has a Service `<app>` (HTTP port `http` 9080, TCP port
//! `tcp` 9000 for tcp-echo). Services are addressed by ClusterIP: the local cluster has no DNS.

use crate::{Ctx, Error, Result, TESTAPP_IMAGE, poll};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

pub const HTTP_PORT: u16 = 9080;
pub const TCP_PORT: u16 = 9000;
/// The external server's port: no Service of the mesh uses it, so a sidecar has no listener
/// for it and the outbound traffic policy decides.
pub const EXTERNAL_PORT: u16 = 8088;

/// One workload of the sample.
#[derive(Clone, Debug)]
pub struct App {
    pub app: String,
    pub version: String,
    pub replicas: i32,
    /// Ports `testapp serve` listens on for HTTP.
    pub http: Vec<u16>,
    pub tcp: Vec<u16>,
    /// Service ports (name, port); none means no Service for this app.
    pub service_ports: Vec<(String, u16)>,
    /// `sidecar.istio.io/inject` label, when set.
    pub inject: Option<bool>,
    /// More `testapp serve` arguments.
    pub extra_args: Vec<String>,
    /// More pod annotations (e.g. `proxy.istio.io/config`).
    pub annotations: BTreeMap<String, String>,
    /// The pod's `terminationGracePeriodSeconds` (2 s unless a test needs the drain).
    pub grace_seconds: i64,
    /// The pod's service account (created by [`deploy`]); `None`: the namespace's `default`.
    /// Its name is the pod's mesh identity: `cluster.local/ns/<ns>/sa/<name>`.
    pub service_account: Option<String>,
    /// The container's whole `testapp` command line instead of `serve` with the fields above
    /// (e.g. `collector --zipkin 9411`); `http` and `tcp` then only name the container ports.
    pub command: Option<Vec<String>>,
}

impl App {
    pub fn http(app: &str, version: &str) -> App {
        App {
            app: app.into(),
            version: version.into(),
            replicas: 1,
            http: vec![HTTP_PORT],
            tcp: vec![],
            service_ports: vec![("http".into(), HTTP_PORT)],
            inject: None,
            extra_args: vec![],
            annotations: BTreeMap::new(),
            grace_seconds: 2,
            service_account: None,
            command: None,
        }
    }

    pub fn deployment_name(&self) -> String {
        format!("{}-{}", self.app, self.version)
    }

    pub fn selector(&self) -> String {
        format!("app={},version={}", self.app, self.version)
    }

    fn args(&self) -> Vec<String> {
        if let Some(command) = &self.command {
            return command.clone();
        }
        let mut args = vec!["serve".to_string()];
        if !self.http.is_empty() {
            args.push("--http".into());
            args.push(join(&self.http));
        }
        if !self.tcp.is_empty() {
            args.push("--tcp-echo".into());
            args.push(join(&self.tcp));
        }
        args.extend(["--service".into(), self.app.clone()]);
        args.extend(["--version".into(), self.version.clone()]);
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn deployment(&self, ns: &str) -> serde_json::Value {
        let mut labels = json!({"app": self.app, "version": self.version});
        if let Some(inject) = self.inject {
            labels["sidecar.istio.io/inject"] = json!(inject.to_string());
        }
        let ports: Vec<_> = self
            .http
            .iter()
            .map(|p| json!({"name": format!("http-{p}"), "containerPort": p, "protocol": "TCP"}))
            .chain(self.tcp.iter().map(
                |p| json!({"name": format!("tcp-{p}"), "containerPort": p, "protocol": "TCP"}),
            ))
            .collect();
        // Small requests: the CI node has 2 CPUs and every sidecar asks for some.
        let mut annotations = json!({
            "sidecar.istio.io/proxyCPU": "10m",
            "sidecar.istio.io/proxyMemory": "32Mi",
        });
        for (k, v) in &self.annotations {
            annotations[k] = json!(v);
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.deployment_name(), "namespace": ns, "labels": labels},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": {"app": self.app, "version": self.version}},
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": annotations,
                    },
                    "spec": {
                        "serviceAccountName": self.service_account.as_deref().unwrap_or("default"),
                        "terminationGracePeriodSeconds": self.grace_seconds,
                        "containers": [{
                            "name": self.app,
                            "image": TESTAPP_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": self.args(),
                            // POD_IP lets an app bind its own address: `--bind $(POD_IP)`.
                            "env": [
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            ],
                            "ports": ports,
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }],
                    },
                },
            },
        })
    }

    fn service(&self, ns: &str) -> serde_json::Value {
        // `protocol` spelled out: server-side apply on 1.20 needs every key of the list's keys.
        let ports: Vec<_> = self
            .service_ports
            .iter()
            .map(|(name, port)| json!({"name": name, "port": port, "targetPort": port, "protocol": "TCP"}))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.app, "namespace": ns, "labels": {"app": self.app}},
            "spec": {"selector": {"app": self.app}, "ports": ports},
        })
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn productpage() -> App {
    App::http("productpage", "v1")
}
pub fn reviews(version: &str) -> App {
    App::http("reviews", version)
}
pub fn ratings() -> App {
    App::http("ratings", "v1")
}
pub fn details() -> App {
    App::http("details", "v1")
}
pub fn tcp_echo() -> App {
    App {
        http: vec![],
        tcp: vec![TCP_PORT],
        service_ports: vec![("tcp".into(), TCP_PORT)],
        ..App::http("tcp-echo", "v1")
    }
}
/// The server outside the mesh's registry: no Service, never injected, HTTP on 8088.
pub fn external() -> App {
    App {
        http: vec![EXTERNAL_PORT],
        service_ports: vec![],
        inject: Some(false),
        ..App::http("external", "v1")
    }
}

/// Subsets v1/v2/v3 of reviews, by the `version` label (bookinfo's destination-rule-reviews).
pub const REVIEWS_DESTINATION_RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
  - name: v3
    labels: {version: v3}
"#;

/// `end-user: jason` to v2, everyone else `v1`/`v2` by these weights (bookinfo's
/// virtual-service-reviews-jason-v2-v3 and -90-10, together).
pub fn reviews_virtual_service(v1: u32, v2: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"#
    )
}

/// Zipkin's port on the trace collector.
pub const ZIPKIN_PORT: u16 = 9411;
/// OTLP/gRPC's port on the trace collector.
pub const OTLP_GRPC_PORT: u16 = 4317;

/// A trace collector (`testapp collector`: Zipkin v2 JSON with Zipkin's query API on 9411,
/// OTLP/gRPC on 4317), never injected, behind a Service `zipkin` (ports `http-query` 9411 as in
/// Istio's Zipkin addon, `grpc-otlp` 4317). Deploy it in a namespace without injection.
pub fn zipkin_collector() -> App {
    App {
        http: vec![ZIPKIN_PORT, OTLP_GRPC_PORT],
        service_ports: vec![
            ("http-query".into(), ZIPKIN_PORT),
            ("grpc-otlp".into(), OTLP_GRPC_PORT),
        ],
        inject: Some(false),
        command: Some(
            [
                "collector",
                "--zipkin",
                &ZIPKIN_PORT.to_string(),
                "--otlp-grpc",
                &OTLP_GRPC_PORT.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        ),
        ..App::http("zipkin", "v1")
    }
}

/// The whole sample.
pub fn bookinfo() -> Vec<App> {
    vec![
        productpage(),
        reviews("v1"),
        reviews("v2"),
        reviews("v3"),
        ratings(),
        details(),
        tcp_echo(),
    ]
}

/// Applies the apps' Deployments and Services (server-side) and waits until every pod is Ready
/// and every Service's Endpoints list them all.
pub async fn deploy(ctx: &Ctx, ns: &str, apps: &[App]) -> Result<()> {
    let pp = PatchParams::apply(crate::MANAGER).force();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let mut per_service: BTreeMap<String, i32> = BTreeMap::new();
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    for sa in apps.iter().filter_map(|a| a.service_account.as_deref()) {
        let object = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": ns}});
        accounts.patch(sa, &pp, &Patch::Apply(object)).await?;
    }
    for app in apps {
        deployments
            .patch(
                &app.deployment_name(),
                &pp,
                &Patch::Apply(app.deployment(ns)),
            )
            .await?;
        if !app.service_ports.is_empty() {
            services
                .patch(&app.app, &pp, &Patch::Apply(app.service(ns)))
                .await?;
            *per_service.entry(app.app.clone()).or_default() += app.replicas;
        }
    }
    let start = std::time::Instant::now();
    for app in apps {
        wait_ready(ctx, ns, app).await?;
    }
    let endpoints: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    for (svc, want) in per_service {
        poll(
            &format!("endpoints of {ns}/{svc}"),
            Duration::from_secs(60),
            Duration::from_millis(300),
            || async {
                let ep = endpoints.get_opt(&svc).await.map_err(|e| e.to_string())?;
                let ready: usize = ep
                    .and_then(|e| e.subsets)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.addresses.as_ref().map_or(0, |a| a.len()))
                    .sum();
                if ready as i32 >= want {
                    Ok(Some(()))
                } else {
                    Err(format!("{ready} of {want} ready addresses"))
                }
            },
        )
        .await?;
    }
    ctx.log(format!(
        "{ns}: {} workloads ready in {:.1} s",
        apps.len(),
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Waits until the app's pods (exactly `replicas`) are Running with every container ready.
pub async fn wait_ready(ctx: &Ctx, ns: &str, app: &App) -> Result<Vec<Pod>> {
    let res = poll(
        &format!("{ns}/{} ready", app.deployment_name()),
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let pods = ctx
                .pods_with(ns, &app.selector())
                .await
                .map_err(|e| e.to_string())?;
            let ready = pods.iter().filter(|p| pod_ready(p)).count();
            if pods.len() == app.replicas as usize && ready == pods.len() {
                Ok(Some(pods))
            } else {
                Err(format!(
                    "{ready} of {} ready; {}",
                    app.replicas,
                    pods.iter().map(describe).collect::<Vec<_>>().join("; ")
                ))
            }
        },
    )
    .await;
    if res.is_err() {
        ctx.dump_events(ns).await;
    }
    res
}

/// Every container ready and the pod Running.
pub fn pod_ready(p: &Pod) -> bool {
    let st = match &p.status {
        Some(s) => s,
        None => return false,
    };
    st.phase.as_deref() == Some("Running")
        && st
            .container_statuses
            .as_ref()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

/// `name phase [container: state]...`, for failure messages.
pub fn describe(p: &Pod) -> String {
    let st = p.status.clone().unwrap_or_default();
    let mut parts = vec![format!(
        "{} {}",
        p.metadata.name.clone().unwrap_or_default(),
        st.phase.unwrap_or_default()
    )];
    for c in st
        .init_container_statuses
        .unwrap_or_default()
        .into_iter()
        .chain(st.container_statuses.unwrap_or_default())
    {
        let state = c.state.unwrap_or_default();
        let s = if let Some(w) = state.waiting {
            format!("waiting {}", w.reason.unwrap_or_default())
        } else if let Some(t) = state.terminated {
            format!(
                "terminated {} ({})",
                t.exit_code,
                t.reason.unwrap_or_default()
            )
        } else if state.running.is_some() {
            if c.ready {
                "ready".into()
            } else {
                "running, not ready".into()
            }
        } else {
            "unknown".into()
        };
        parts.push(format!("{}: {s}", c.name));
    }
    parts.join(" ")
}

/// Container names of a pod: (init containers, containers).
pub fn container_names(p: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = p.spec.clone().unwrap_or_default();
    (
        spec.init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect(),
        spec.containers.into_iter().map(|c| c.name).collect(),
    )
}

/// The pod IP of the first pod of an app.
pub async fn pod_ip(ctx: &Ctx, ns: &str, selector: &str) -> Result<String> {
    let pods = ctx.pods_with(ns, selector).await?;
    pods.first()
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        .ok_or_else(|| Error::Other(format!("no pod IP for {selector} in {ns}")))
}
