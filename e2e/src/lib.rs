//! The end-to-end suite's harness: a real cluster (the local provider, kind, or any cluster given
//! by `KUBECONFIG`) with rustmesh installed, a bookinfo-like sample made of `testapp` pods, and
//! requests sent from inside meshed pods (exec of `testapp get` / `testapp tcp` in the app
//! container), so they go through the client's sidecar capture like an application's own.
//!
//! Every test calls [`setup`]: without `RUSTMESH_E2E=1` it prints why it skips and the test
//! passes (so `cargo test --workspace` stays green on machines without a cluster); with it, any
//! missing piece (no cluster, mesh not installed) is a failure. Tests take a process-wide lock:
//! some change cluster-wide state (the webhook's failurePolicy, the mesh-wide traffic policy,
//! the operator's pod), so they run one at a time.
#![forbid(unsafe_code)]

pub mod pki;
pub mod prometheus;
pub mod sample;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{
    AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams, ResourceExt,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rustmesh_api::{
    AuthorizationPolicy, DestinationRule, Gateway, IstioObject, PeerAuthentication,
    RequestAuthentication, ServiceEntry, Sidecar, Telemetry, VirtualService,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, MutexGuard};

/// The local provider's admin kubeconfig (`e2e/local-cluster kubeconfig`).
pub const LOCAL_KUBECONFIG: &str = "/var/lib/rustmesh-e2e/kubeconfig/admin.kubeconfig";
/// Where the mesh is installed.
pub const MESH_NAMESPACE: &str = "istio-system";
/// The sample's image (imported by `images/build`, never pulled).
pub const TESTAPP_IMAGE: &str = "docker.io/rustmesh/testapp:dev";
/// Field manager of everything the suite applies.
pub const MANAGER: &str = "rustmesh-e2e";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("{what} did not happen within {secs} s: {detail}")]
    Timeout {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error("exec {command:?} in {pod}: {reason}")]
    Exec {
        pod: String,
        command: Vec<String>,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One test at a time (each `#[tokio::test]` has its own runtime; tokio's Mutex works across them).
static LOCK: Mutex<()> = Mutex::const_new(());

/// A test's connection to the cluster. Holds the suite's lock until dropped.
pub struct Ctx {
    pub client: Client,
    /// The kubeconfig file in use (passed on to `rustmeshctl`), if any.
    pub kubeconfig: Option<PathBuf>,
    test: String,
    _guard: MutexGuard<'static, ()>,
}

/// Whether the suite must run (and fail rather than skip): `RUSTMESH_E2E=1`.
pub fn required() -> bool {
    std::env::var("RUSTMESH_E2E").as_deref() == Ok("1")
}

/// Connects for one test, or returns `None` (after printing why) when the suite is not asked for.
/// With `RUSTMESH_E2E=1` a cluster that cannot be reached, or a mesh that is not installed,
/// panics: the test fails.
pub async fn setup(test: &str) -> Option<Ctx> {
    if !required() {
        eprintln!(
            "SKIP {test}: RUSTMESH_E2E is not 1. The end-to-end suite needs a cluster with \
             rustmesh installed: run e2e/run (local provider), or set RUSTMESH_E2E=1 and \
             KUBECONFIG after installing (see e2e/README.md)."
        );
        return None;
    }
    let ctx = match Ctx::connect(test).await {
        Ok(c) => c,
        Err(e) => panic!("{test}: RUSTMESH_E2E=1 but no cluster: {e}"),
    };
    ctx.log("start");
    if let Err(e) = ctx.wait_mesh_ready(Duration::from_secs(180)).await {
        panic!("{test}: rustmesh is not installed and ready: {e}");
    }
    Some(ctx)
}

async fn connect() -> Result<(Client, Option<PathBuf>)> {
    let path = match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::path::Path::new(LOCAL_KUBECONFIG).exists() => {
            Some(PathBuf::from(LOCAL_KUBECONFIG))
        }
        _ => None,
    };
    let config = match &path {
        Some(p) => {
            let bad = |reason: String| Error::Kubeconfig {
                path: p.display().to_string(),
                reason,
            };
            let kc = Kubeconfig::read_from(p).map_err(|e| bad(e.to_string()))?;
            let options = KubeConfigOptions {
                context: std::env::var("RUSTMESH_E2E_CONTEXT").ok(),
                ..Default::default()
            };
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| Error::Kubeconfig {
            path: "(in-cluster / default)".into(),
            reason: e.to_string(),
        })?,
    };
    let client = Client::try_from(config)?;
    // Fail early and clearly when nothing answers.
    client.apiserver_version().await?;
    Ok((client, path))
}

/// Polls `check` every `every` until it returns `Ok(Some(_))`, or times out with the last
/// `Ok(None)`/error text as the detail.
pub async fn poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let start = Instant::now();
    let mut last = String::from("never checked");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
                detail: last,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// What `testapp get -n N` prints.
#[derive(Debug, Default, Deserialize)]
pub struct Summary {
    pub requests: u64,
    /// Answers per `service/version`.
    pub backends: BTreeMap<String, u64>,
    /// Answers per status code (JSON object keys are strings).
    pub statuses: BTreeMap<String, u64>,
    pub errors: u64,
    pub latency_ms: BTreeMap<String, f64>,
}

impl Summary {
    pub fn backend(&self, name: &str) -> u64 {
        self.backends.get(name).copied().unwrap_or(0)
    }
    pub fn status(&self, code: u16) -> u64 {
        self.statuses.get(&code.to_string()).copied().unwrap_or(0)
    }
    /// Requests that did not get a 200 (other statuses and transport errors).
    pub fn failed(&self) -> u64 {
        self.requests - self.status(200)
    }
}

/// An answer of a `testapp serve` HTTP port (the fields the suite reads).
#[derive(Debug, Deserialize)]
pub struct Report {
    pub service: String,
    pub version: String,
    pub pod: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub local: String,
    #[serde(default)]
    pub upstream: Option<Box<Report>>,
    #[serde(default)]
    pub upstream_error: Option<String>,
}

/// The output of an exec.
#[derive(Debug)]
pub struct Exec {
    pub stdout: String,
    pub stderr: String,
    /// `None` when the command exited 0, else the API server's message.
    pub failure: Option<String>,
}

impl Ctx {
    /// Takes the suite's lock and connects: `KUBECONFIG` (context `RUSTMESH_E2E_CONTEXT` when
    /// set), else the local provider's admin kubeconfig, else the in-cluster/default config.
    pub async fn connect(name: &str) -> Result<Ctx> {
        let guard = LOCK.lock().await;
        let (client, kubeconfig) = connect().await?;
        Ok(Ctx {
            client,
            kubeconfig,
            test: name.to_string(),
            _guard: guard,
        })
    }

    pub fn log(&self, msg: impl std::fmt::Display) {
        eprintln!("[e2e {} {}] {msg}", self.test, clock());
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Sets one environment variable of the operator (a mesh setting such as
    /// `OUTBOUND_TRAFFIC_POLICY` or `ACCESS_LOG_FILE`) and waits for its rollout.
    pub async fn set_operator_env(&self, name: &str, value: &str) -> Result<()> {
        self.set_operator_envs(&[(name, value)]).await
    }

    /// Sets several environment variables of the operator in one change of its Deployment (one
    /// restart, not one per variable) and waits for the rollout.
    pub async fn set_operator_envs(&self, vars: &[(&str, &str)]) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), MESH_NAMESPACE);
        let env: Vec<_> = vars
            .iter()
            .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
            .collect();
        let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "operator", "env": env}
        ]}}}});
        api.patch(
            "rustmesh-operator",
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await?;
        self.wait_mesh_ready(Duration::from_secs(180)).await?;
        let shown: Vec<String> = vars.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
        self.log(format!("operator restarted with {}", shown.join(" ")));
        Ok(())
    }

    /// The literal value of an environment variable of the operator's container (`None`: not
    /// set, or set from a reference), to put a setting back as it was.
    pub async fn operator_env(&self, name: &str) -> Result<Option<String>> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), MESH_NAMESPACE);
        let d = api.get("rustmesh-operator").await?;
        Ok(d.spec
            .and_then(|s| s.template.spec)
            .into_iter()
            .flat_map(|s| s.containers)
            .filter(|c| c.name == "operator")
            .flat_map(|c| c.env.unwrap_or_default())
            .find(|e| e.name == name)
            .and_then(|e| e.value))
    }

    /// The webhook and operator Deployments are available (their rollouts done).
    pub async fn wait_mesh_ready(&self, timeout: Duration) -> Result<()> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), MESH_NAMESPACE);
        for name in ["rustmesh-webhook", "rustmesh-operator"] {
            poll(
                &format!("deployment {MESH_NAMESPACE}/{name} available"),
                timeout,
                Duration::from_millis(500),
                || async {
                    let d = deployments
                        .get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("{name} not found (install the mesh first)"))?;
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let generation = d.metadata.generation.unwrap_or(0);
                    let st = d.status.unwrap_or_default();
                    let ok = want > 0
                        && st.observed_generation.unwrap_or(0) >= generation
                        && st.available_replicas.unwrap_or(0) >= want
                        && st.updated_replicas.unwrap_or(0) >= want
                        && st.replicas.unwrap_or(0) == want;
                    if ok {
                        Ok(Some(()))
                    } else {
                        Err(format!(
                            "{name}: want {want}, available {:?}, updated {:?}, total {:?}",
                            st.available_replicas, st.updated_replicas, st.replicas
                        ))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes the namespace if it exists (waiting until it is gone) and creates it again,
    /// `istio-injection=enabled` when `injected`.
    pub async fn fresh_namespace(&self, name: &str, injected: bool) -> Result<String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api.get_opt(name).await?.is_some() {
            self.log(format!("deleting namespace {name} left by an earlier run"));
            let _ = api.delete(name, &DeleteParams::background()).await;
            poll(
                &format!("namespace {name} deleted"),
                Duration::from_secs(180),
                Duration::from_millis(500),
                || async {
                    match api.get_opt(name).await {
                        Ok(None) => Ok(Some(())),
                        Ok(Some(_)) => Err("still terminating".into()),
                        Err(e) => Err(e.to_string()),
                    }
                },
            )
            .await?;
        }
        let mut labels = serde_json::Map::new();
        labels.insert("rustmesh-e2e".into(), "true".into());
        if injected {
            labels.insert("istio-injection".into(), "enabled".into());
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels}
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        api.create(&PostParams::default(), &ns).await?;
        // Pods are refused until the service-account controller has created "default"; the
        // ReplicaSet controller would retry, but only after a back-off that slows every test.
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), name);
        poll(
            &format!("namespace {name}'s default service account"),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(Some(())),
                    Ok(None) => Err("not created yet".into()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        Ok(name.to_string())
    }

    /// Creates the namespace, or keeps it when it exists; either way labelled like
    /// [`Ctx::fresh_namespace`]'s.
    pub async fn ensure_namespace(&self, name: &str, injected: bool) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut labels = serde_json::json!({"rustmesh-e2e": "true"});
        if injected {
            labels["istio-injection"] = "enabled".into();
        }
        let ns = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        });
        api.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(ns),
        )
        .await?;
        Ok(())
    }

    /// Deletes a namespace without waiting (called at the end of a passing test; a failing
    /// test leaves its namespace for inspection, and the next run deletes it first).
    pub async fn delete_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(name, &DeleteParams::background()).await;
    }

    /// The ClusterIP of a Service.
    pub async fn cluster_ip(&self, ns: &str, service: &str) -> Result<String> {
        let svc = Api::<Service>::namespaced(self.client.clone(), ns)
            .get(service)
            .await?;
        svc.spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None")
            .ok_or_else(|| Error::Other(format!("service {ns}/{service} has no ClusterIP")))
    }

    /// Running pods with these labels (`app=reviews,version=v1`), by name.
    pub async fn pods_with(&self, ns: &str, selector: &str) -> Result<Vec<Pod>> {
        let mut pods: Vec<Pod> = self
            .pods(ns)
            .list(&ListParams::default().labels(selector))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by_key(|p| p.name_any());
        Ok(pods)
    }

    /// The name of the (first) pod with these labels.
    pub async fn pod_name(&self, ns: &str, selector: &str) -> Result<String> {
        self.pods_with(ns, selector)
            .await?
            .first()
            .map(|p| p.name_any())
            .ok_or_else(|| Error::Other(format!("no pod in {ns} with labels {selector}")))
    }

    /// Runs `command` (a `testapp get --body ...` call) in a container: the JSON report it
    /// printed, or why it failed (the command's failure with its output, or output that is no
    /// JSON). An exec that could not run at all is a failure too.
    pub async fn testapp_report(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> std::result::Result<serde_json::Value, String> {
        let out = self
            .exec(ns, pod, container, command)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(f) = out.failure {
            return Err(format!(
                "{f}; stdout: {}; stderr: {}",
                out.stdout.trim(),
                out.stderr.trim()
            ));
        }
        serde_json::from_str(out.stdout.trim())
            .map_err(|e| format!("not a testapp report ({e}): {:?}", out.stdout))
    }

    /// Runs a command in a container and collects its output.
    pub async fn exec(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> Result<Exec> {
        let fail = |reason: String| Error::Exec {
            pod: format!("{ns}/{pod}"),
            command: command.iter().map(|s| s.to_string()).collect(),
            reason,
        };
        let ap = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut attached = self
            .pods(ns)
            .exec(pod, command.to_vec(), &ap)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut out = attached.stdout().ok_or_else(|| fail("no stdout".into()))?;
        let mut err = attached.stderr().ok_or_else(|| fail("no stderr".into()))?;
        let status = attached.take_status();
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let (ro, re) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
        ro.map_err(|e| fail(format!("reading stdout: {e}")))?;
        re.map_err(|e| fail(format!("reading stderr: {e}")))?;
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = attached.join().await;
        let failure = match status {
            Some(s) if s.status.as_deref() == Some("Success") => None,
            Some(s) => Some(s.message.clone().unwrap_or_else(|| format!("{s:?}"))),
            None => Some("no exit status from the API server".into()),
        };
        Ok(Exec {
            stdout: String::from_utf8_lossy(&o).into_owned(),
            stderr: String::from_utf8_lossy(&e).into_owned(),
            failure,
        })
    }

    /// `testapp get URL -n N -c C -H ...` inside `pod` (container `container`): the summary.
    #[allow(clippy::too_many_arguments)] // the command line's own arguments, named
    pub async fn http_load(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        url: &str,
        n: u64,
        concurrency: usize,
        headers: &[&str],
    ) -> Result<Summary> {
        let (n, c) = (n.to_string(), concurrency.to_string());
        let mut cmd = vec!["testapp", "get", url, "-n", &n, "-c", &c];
        for h in headers {
            cmd.push("-H");
            cmd.push(h);
        }
        let out = self.exec(ns, pod, container, &cmd).await?;
        if let Some(f) = &out.failure {
            return Err(Error::Exec {
                pod: format!("{ns}/{pod}"),
                command: cmd.iter().map(|s| s.to_string()).collect(),
                reason: format!("{f}; stderr: {}", out.stderr.trim()),
            });
        }
        serde_json::from_str(out.stdout.trim()).map_err(|e| {
            Error::Other(format!(
                "testapp get printed no summary ({e}): {:?} / {:?}",
                out.stdout, out.stderr
            ))
        })
    }

    /// One GET from inside `pod`; the answering server's report (fails on a status >= 400).
    pub async fn http_get(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        url: &str,
        headers: &[&str],
    ) -> Result<Report> {
        let mut cmd = vec!["testapp", "get", "--body", url];
        for h in headers {
            cmd.push("-H");
            cmd.push(h);
        }
        let out = self.exec(ns, pod, container, &cmd).await?;
        if let Some(f) = &out.failure {
            return Err(Error::Exec {
                pod: format!("{ns}/{pod}"),
                command: cmd.iter().map(|s| s.to_string()).collect(),
                reason: format!(
                    "{f}; stdout: {}; stderr: {}",
                    out.stdout.trim(),
                    out.stderr.trim()
                ),
            });
        }
        serde_json::from_str(out.stdout.trim())
            .map_err(|e| Error::Other(format!("not a testapp report ({e}): {:?}", out.stdout)))
    }

    /// `testapp tcp ADDR --send TEXT` inside `pod`: what came back, or the failure.
    pub async fn tcp_send(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        addr: &str,
        text: &str,
    ) -> Result<Result<String, String>> {
        let out = self
            .exec(
                ns,
                pod,
                container,
                &["testapp", "tcp", addr, "--send", text],
            )
            .await?;
        Ok(match out.failure {
            None => Ok(out.stdout),
            Some(f) => Err(format!("{f}; stderr: {}", out.stderr.trim())),
        })
    }

    /// GET `path` from `port` of a pod through a port-forward (reaches ports the pod only
    /// serves on its own addresses, e.g. the sidecar's 15090 metrics). Returns the body.
    pub async fn pod_port_get(&self, ns: &str, pod: &str, port: u16, path: &str) -> Result<String> {
        Ok(self.pod_port_answer(ns, pod, port, path).await?.1)
    }

    /// [`Ctx::pod_port_get`] with the answer's status code.
    pub async fn pod_port_answer(
        &self,
        ns: &str,
        pod: &str,
        port: u16,
        path: &str,
    ) -> Result<(u16, String)> {
        let fail = |e: String| Error::Other(format!("GET {path} on {ns}/{pod}:{port}: {e}"));
        let mut pf = self.pods(ns).portforward(pod, &[port]).await?;
        let mut stream = pf
            .take_stream(port)
            .ok_or_else(|| fail("no port-forward stream".into()))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        let body = loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .map_err(|_| fail("no answer within 10 s".into()))?
                .map_err(|e| fail(e.to_string()))?;
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(len) = len
                    && buf.len() >= end + 4 + len
                {
                    break text[end + 4..end + 4 + len].to_string();
                }
            }
            if n == 0 {
                break text
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or_default();
            }
        };
        drop(stream);
        let _ = tokio::time::timeout(Duration::from_secs(5), pf.join()).await;
        let status = String::from_utf8_lossy(&buf)
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| fail("not an HTTP answer".into()))?;
        Ok((status, body))
    }

    /// Sum of a Prometheus counter on a pod's sidecar (15090 `/stats/prometheus`), over the
    /// series whose labels contain every `label_parts` text (e.g. `reporter="destination"`).
    pub async fn sidecar_metric(
        &self,
        ns: &str,
        pod: &str,
        name: &str,
        label_parts: &[&str],
    ) -> Result<f64> {
        let text = self
            .pod_port_get(ns, pod, 15090, "/stats/prometheus")
            .await?;
        Ok(sum_metric(&text, name, label_parts))
    }

    /// `rustmeshctl proxy-config listeners POD -n NS` (the ctl crate, through a port-forward to
    /// the sidecar's admin port): the table as the user sees it.
    pub async fn proxy_config(&self, ns: &str, pod: &str, view: &[&str]) -> Result<String> {
        let mut command = vec!["proxy-config"];
        command.extend(view);
        self.rustmeshctl(ns, pod, &command).await
    }

    /// `rustmeshctl x authz check <pod> -n <ns>`: the policies the pod's sidecar applies.
    pub async fn authz_check(&self, ns: &str, pod: &str) -> Result<String> {
        self.rustmeshctl(ns, pod, &["x", "authz", "check"]).await
    }

    /// `rustmeshctl <command...> <pod> -n <ns>` against this cluster, in process.
    pub async fn rustmeshctl(&self, ns: &str, pod: &str, command: &[&str]) -> Result<String> {
        use clap::Parser;
        let mut args: Vec<String> = vec!["rustmeshctl".into()];
        args.extend(command.iter().map(|s| s.to_string()));
        args.extend([pod.to_string(), "-n".into(), ns.to_string()]);
        if let Some(k) = &self.kubeconfig {
            args.extend(["--kubeconfig".into(), k.display().to_string()]);
        }
        if let Ok(ctx) = std::env::var("RUSTMESH_E2E_CONTEXT") {
            args.extend(["--context".into(), ctx]);
        }
        let cli = rustmesh_ctl::cli::Cli::try_parse_from(&args)
            .map_err(|e| Error::Other(format!("rustmeshctl {args:?}: {e}")))?;
        let mut out = Vec::new();
        rustmesh_ctl::run(cli, &mut out)
            .await
            .map_err(|e| Error::Other(format!("rustmeshctl {}: {e}", args[1..].join(" "))))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Waits until `pod`'s sidecar lists `n` HEALTHY endpoints for the service's cluster
    /// `outbound|<port>||<service>.<service_ns>.svc.cluster.local`
    /// (`rustmeshctl proxy-config endpoints --cluster ...`): the operator has seen the
    /// service's pods and the sidecar has loaded that configuration.
    pub async fn wait_endpoints(
        &self,
        ns: &str,
        pod: &str,
        service: &str,
        service_ns: &str,
        port: u16,
        n: usize,
    ) -> Result<()> {
        let cluster = format!("outbound|{port}||{service}.{service_ns}.svc.cluster.local");
        self.wait_cluster_endpoints(ns, pod, &cluster, n).await
    }

    /// Waits until `pod`'s sidecar lists `n` HEALTHY endpoints for `cluster` (any cluster name,
    /// e.g. a ServiceEntry host's `outbound|80||secure.e2e.test`).
    pub async fn wait_cluster_endpoints(
        &self,
        ns: &str,
        pod: &str,
        cluster: &str,
        n: usize,
    ) -> Result<()> {
        let start = Instant::now();
        poll(
            &format!("{n} healthy endpoints of {cluster} in {ns}/{pod}'s sidecar"),
            Duration::from_secs(180),
            Duration::from_millis(500),
            || async {
                let table = self
                    .proxy_config(ns, pod, &["endpoints", "--cluster", cluster])
                    .await
                    .map_err(|e| e.to_string())?;
                let healthy = table
                    .lines()
                    .filter(|l| l.split_whitespace().nth(1) == Some("HEALTHY"))
                    .filter(|l| l.trim_end().ends_with(cluster))
                    .count();
                if healthy >= n {
                    Ok(Some(()))
                } else {
                    Err(format!("{healthy} healthy:\n{table}"))
                }
            },
        )
        .await?;
        self.log(format!(
            "{pod}: {n} endpoint(s) of {cluster} after {:.1} s",
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Applies Istio YAML (one or more documents) into `ns` with server-side apply. The YAML is
    /// read by `rustmesh_api` (the operator's own parser), so a typo fails here, clearly.
    pub async fn apply_istio(&self, ns: &str, yaml: &str) -> Result<()> {
        let objects = rustmesh_api::load(yaml).map_err(|e| Error::Other(format!("{e}")))?;
        let pp = PatchParams::apply(MANAGER).force();
        for o in objects {
            match o {
                IstioObject::VirtualService(mut v) => {
                    v.metadata.namespace = Some(ns.into());
                    let api: Api<VirtualService> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&v.name_any(), &pp, &Patch::Apply(&*v)).await?;
                }
                IstioObject::DestinationRule(mut d) => {
                    d.metadata.namespace = Some(ns.into());
                    let api: Api<DestinationRule> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&d.name_any(), &pp, &Patch::Apply(&*d)).await?;
                }
                IstioObject::Sidecar(mut s) => {
                    s.metadata.namespace = Some(ns.into());
                    let api: Api<Sidecar> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&s.name_any(), &pp, &Patch::Apply(&*s)).await?;
                }
                IstioObject::PeerAuthentication(mut p) => {
                    p.metadata.namespace = Some(ns.into());
                    let api: Api<PeerAuthentication> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&p.name_any(), &pp, &Patch::Apply(&*p)).await?;
                }
                IstioObject::AuthorizationPolicy(mut p) => {
                    p.metadata.namespace = Some(ns.into());
                    let api: Api<AuthorizationPolicy> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&p.name_any(), &pp, &Patch::Apply(&*p)).await?;
                }
                IstioObject::RequestAuthentication(mut r) => {
                    r.metadata.namespace = Some(ns.into());
                    let api: Api<RequestAuthentication> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&r.name_any(), &pp, &Patch::Apply(&*r)).await?;
                }
                IstioObject::Telemetry(mut t) => {
                    t.metadata.namespace = Some(ns.into());
                    let api: Api<Telemetry> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&t.name_any(), &pp, &Patch::Apply(&*t)).await?;
                }
                IstioObject::ServiceEntry(mut e) => {
                    e.metadata.namespace = Some(ns.into());
                    let api: Api<ServiceEntry> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&e.name_any(), &pp, &Patch::Apply(&*e)).await?;
                }
                IstioObject::Gateway(mut g) => {
                    g.metadata.namespace = Some(ns.into());
                    let api: Api<Gateway> = Api::namespaced(self.client.clone(), ns);
                    api.patch(&g.name_any(), &pp, &Patch::Apply(&*g)).await?;
                }
            }
        }
        Ok(())
    }

    /// Applies a VirtualService given as raw JSON, bypassing the client-side parser (for
    /// objects that are meant to be invalid).
    pub async fn apply_raw_virtual_service(
        &self,
        ns: &str,
        name: &str,
        object: &serde_json::Value,
    ) -> Result<()> {
        let api: Api<VirtualService> = Api::namespaced(self.client.clone(), ns);
        api.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
        Ok(())
    }

    /// Deletes every VirtualService, DestinationRule, Sidecar, ServiceEntry and Gateway in `ns`.
    pub async fn delete_istio(&self, ns: &str) -> Result<()> {
        let dp = DeleteParams::default();
        let lp = ListParams::default();
        Api::<VirtualService>::namespaced(self.client.clone(), ns)
            .delete_collection(&dp, &lp)
            .await?;
        Api::<DestinationRule>::namespaced(self.client.clone(), ns)
            .delete_collection(&dp, &lp)
            .await?;
        Api::<Sidecar>::namespaced(self.client.clone(), ns)
            .delete_collection(&dp, &lp)
            .await?;
        Api::<ServiceEntry>::namespaced(self.client.clone(), ns)
            .delete_collection(&dp, &lp)
            .await?;
        Api::<Gateway>::namespaced(self.client.clone(), ns)
            .delete_collection(&dp, &lp)
            .await?;
        Ok(())
    }

    /// Waits until no pod with these labels is left in `ns` (terminating pods count as gone).
    pub async fn wait_no_pods(&self, ns: &str, selector: &str, timeout: Duration) -> Result<()> {
        poll(
            &format!("no pods {selector} in {ns}"),
            timeout,
            Duration::from_millis(500),
            || async {
                let n = self
                    .pods_with(ns, selector)
                    .await
                    .map_err(|e| e.to_string())?
                    .len();
                if n == 0 {
                    Ok(Some(()))
                } else {
                    Err(format!("{n} left"))
                }
            },
        )
        .await
    }

    /// Streams the events of `ns` into the log (for failure diagnosis).
    pub async fn dump_events(&self, ns: &str) {
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), ns);
        if let Ok(list) = api.list(&ListParams::default()).await {
            for e in list.items.iter().rev().take(20) {
                self.log(format!(
                    "event {} {}: {}",
                    e.involved_object.name.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                ));
            }
        }
    }
}

/// Sum of a counter's series in Prometheus text whose label set contains every part.
pub fn sum_metric(text: &str, name: &str, label_parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, v) = r.split_once('}')?;
                    (labels, v)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if !label_parts.iter().all(|p| labels.contains(p)) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `HH:MM:SS.mmm` UTC, for the log.
pub fn clock() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_matching_series() {
        let text = "# TYPE istio_tcp_connections_opened_total counter\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",destination_service=\"tcp-echo\"} 3\n\
            istio_tcp_connections_opened_total{reporter=\"source\",destination_service=\"tcp-echo\"} 5\n\
            istio_tcp_connections_opened_total_other{reporter=\"destination\"} 100\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",destination_service=\"x\"} 2\n";
        assert_eq!(
            sum_metric(
                text,
                "istio_tcp_connections_opened_total",
                &["reporter=\"destination\""]
            ),
            5.0
        );
        assert_eq!(
            sum_metric(
                text,
                "istio_tcp_connections_opened_total",
                &["reporter=\"source\"", "tcp-echo"]
            ),
            5.0
        );
        assert_eq!(sum_metric(text, "missing", &[]), 0.0);
    }

    #[test]
    fn summary_reads_testapp_output() {
        let s: Summary = serde_json::from_str(
            r#"{"requests":10,"backends":{"reviews/v1":9,"reviews/v2":1},"statuses":{"200":9,"504":1},"errors":0,"latency_ms":{"p50":1.0}}"#,
        )
        .unwrap();
        assert_eq!(s.backend("reviews/v1"), 9);
        assert_eq!(s.status(504), 1);
        assert_eq!(s.failed(), 1);
    }
}
