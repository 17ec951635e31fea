//! Where the configuration comes from: a file, the admin API at a URL, or the admin API of a pod
//! reached by port-forward through the Kubernetes API. The admin API is spoken the same way over
//! a TCP connection and over a port-forward stream (HTTP/1.1, one connection, keep-alive).

use crate::admin::{CLUSTERS_PATH, CONFIG_DUMP_PATH, Clusters, parse_config};
use crate::error::Error;
use crate::secrets::{CERTS_PATH, Certs};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::well_known::ADMIN_PORT;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The sidecar container the webhook injects.
pub use rustmesh_xds::well_known::SIDECAR_CONTAINER_NAME as SIDECAR_CONTAINER;

/// Where to read the proxy's state from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A configuration document on disk (`--file`).
    File(PathBuf),
    /// The admin API at `http://host:port[/prefix]` (`--admin-url`).
    Admin(AdminUrl),
    /// The admin API of a pod's sidecar, through `pods/portforward`.
    Pod(PodRef),
}

/// A pod and, when given, its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: Option<String>,
}

impl PodRef {
    /// `<pod>[.<namespace>]` as istioctl reads it (the part after the last dot is the
    /// namespace), with `-n` as the other way to give the namespace.
    pub fn parse(arg: &str, namespace_flag: Option<&str>) -> Result<Self, Error> {
        let (name, suffix) = match arg.rsplit_once('.') {
            Some((n, ns)) if !n.is_empty() && !ns.is_empty() => (n, Some(ns)),
            _ => (arg, None),
        };
        if name.is_empty() {
            return Err(Error::Usage("the pod name is empty".into()));
        }
        let namespace = match (suffix, namespace_flag) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Usage(format!(
                    "pod {arg:?} names namespace {a:?} but -n says {b:?}: give the namespace once"
                )));
            }
            (Some(a), _) => Some(a.to_string()),
            (None, b) => b.map(str::to_string),
        };
        Ok(PodRef {
            name: name.to_string(),
            namespace,
        })
    }
}

/// A parsed `--admin-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminUrl {
    /// As the user wrote it, for messages.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Path prefix put before `/config_dump` (empty for the proxy itself).
    pub prefix: String,
}

impl AdminUrl {
    /// `http://host[:port][/prefix]`; the port defaults to 15000.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "--admin-url {url:?} {why}: write it as http://HOST:PORT, e.g. http://127.0.0.1:15000"
            ))
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("is not plain http (the admin API has no TLS)")),
            None => return Err(bad("has no http:// scheme")),
        }
        let host = uri.host().ok_or_else(|| bad("has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err(bad("has a query"));
        }
        Ok(AdminUrl {
            url: url.to_string(),
            host,
            port: uri.port_u16().unwrap_or(ADMIN_PORT),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// Kubeconfig selection (`--kubeconfig`, `--context`).
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// What to read besides the configuration (which is always read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// Live endpoint health (`/clusters?format=json`).
    pub clusters: bool,
    /// The certificates (`/certs`).
    pub certs: bool,
}

/// A request to the admin API besides the configuration reads (`/logging`, `/server_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// POST (a change) rather than GET.
    pub post: bool,
    /// Path and query, e.g. `/logging?http=debug`.
    pub path: String,
}

impl Call {
    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Self {
        Call {
            post: false,
            path: path.into(),
        }
    }

    /// `POST path`.
    pub fn post(path: impl Into<String>) -> Self {
        Call {
            post: true,
            path: path.into(),
        }
    }
}

/// What to do over the admin connection.
enum Plan<'a> {
    /// Read the configuration and what `Want` asks for.
    Read(Want),
    /// Make these calls, in order.
    Calls(&'a [Call]),
}

/// What a [`Plan`] got.
enum Got {
    Read(Box<Fetched>),
    Calls(Vec<String>),
}

/// What was read.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub config: ProxyConfig,
    /// Live endpoint health, when asked for (derived from the configuration for `--file`).
    pub clusters: Option<Clusters>,
    /// The proxy's certificates, when asked for (never from `--file`).
    pub certs: Option<Certs>,
    /// The pod's labels, when read from a pod.
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Reads the configuration and what `want` asks for besides.
pub async fn fetch(
    source: &Source,
    kube: &KubeOptions,
    want: Want,
    timeout: Duration,
) -> Result<Fetched, Error> {
    match source {
        Source::File(path) => {
            if want.certs {
                return Err(Error::Usage(format!(
                    "--file {} cannot show secrets: a configuration document holds no \
                     certificates (the proxy keeps its certificate and key in memory and serves \
                     them only on its admin API's /certs); read a running proxy with a pod name \
                     or --admin-url",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| Error::ReadFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let config = parse_config(&path.display().to_string(), &text)?;
            let clusters = want.clusters.then(|| Clusters::from_config(&config));
            Ok(Fetched {
                config,
                clusters,
                certs: None,
                labels: None,
            })
        }
        Source::Admin(url) => match fetch_admin(url, Plan::Read(want), timeout).await? {
            Got::Read(f) => Ok(*f),
            Got::Calls(_) => unreachable!("a read plan reads"),
        },
        Source::Pod(pod) => {
            let client = kube_client(kube).await?;
            match fetch_pod(&client, pod, Plan::Read(want), timeout).await? {
                (pod, Got::Read(f)) => Ok(Fetched {
                    labels: Some(pod.metadata.labels.clone().unwrap_or_default()),
                    ..*f
                }),
                (_, Got::Calls(_)) => unreachable!("a read plan reads"),
            }
        }
    }
}

/// Makes `calls` to the admin API of a pod or at `--admin-url`, in order over one connection,
/// and returns each answer's body (200 only: any other status is the error, naming the call).
pub async fn call(
    source: &Source,
    kube: &KubeOptions,
    calls: &[Call],
    timeout: Duration,
) -> Result<Vec<String>, Error> {
    let got = match source {
        Source::File(path) => {
            return Err(Error::Usage(format!(
                "--file {} is a saved configuration, not a running proxy: give a pod name or \
                 --admin-url",
                path.display()
            )));
        }
        Source::Admin(url) => fetch_admin(url, Plan::Calls(calls), timeout).await?,
        Source::Pod(pod) => {
            let client = kube_client(kube).await?;
            fetch_pod(&client, pod, Plan::Calls(calls), timeout)
                .await?
                .1
        }
    };
    match got {
        Got::Calls(bodies) => Ok(bodies),
        Got::Read(_) => unreachable!("a call plan calls"),
    }
}

/// [`call`] for a pod, with a client already made (`proxy-status` reads many pods); the pod
/// as read from the API with the answers.
pub async fn call_pod(
    client: &Client,
    pod: &PodRef,
    calls: &[Call],
    timeout: Duration,
) -> Result<(Pod, Vec<String>), Error> {
    match fetch_pod(client, pod, Plan::Calls(calls), timeout).await? {
        (pod, Got::Calls(bodies)) => Ok((pod, bodies)),
        (_, Got::Read(_)) => unreachable!("a call plan calls"),
    }
}

/// An HTTP/1.1 connection to an admin API.
struct AdminConnection {
    sender: SendRequest<Empty<Bytes>>,
    /// `Host` header.
    authority: String,
    prefix: String,
    /// `at http://...` or `in pod ns/name`, for messages.
    target: String,
}

/// Why a request did not get an answer.
enum Failure {
    Transport(String),
    Error(Error),
}

impl AdminConnection {
    async fn over<S>(
        io: S,
        authority: String,
        prefix: String,
        target: String,
    ) -> Result<Self, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            // Errors surface through the request that hits them.
            let _ = conn.await;
        });
        Ok(AdminConnection {
            sender,
            authority,
            prefix,
            target,
        })
    }

    /// `GET path`; the body on 200, a not-ready error on 503, a status error otherwise.
    async fn get(&mut self, path: &str) -> Result<String, Failure> {
        self.request(http::Method::GET, path).await
    }

    /// `method path`, answered as [`AdminConnection::get`] says.
    async fn request(&mut self, method: http::Method, path: &str) -> Result<String, Failure> {
        let req = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.prefix))
            .header(http::header::HOST, &self.authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Transport(describe_hyper(&e)))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transport(describe_hyper(&e)))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        let first_line = text.lines().next().unwrap_or("").trim().to_string();
        match status.as_u16() {
            200 => Ok(text),
            503 => Err(Failure::Error(Error::ProxyNotReady {
                target: self.target.clone(),
                reason: if first_line.is_empty() {
                    "its admin API answered 503 Service Unavailable".into()
                } else {
                    format!("its admin API answered 503 Service Unavailable: {first_line}")
                },
            })),
            code => Err(Failure::Error(Error::AdminStatus {
                target: self.target.clone(),
                method: method.to_string(),
                path: path.to_string(),
                status: code,
                detail: if first_line.is_empty() {
                    String::new()
                } else {
                    format!(": {first_line}")
                },
            })),
        }
    }
}

fn describe_hyper(e: &hyper::Error) -> String {
    if e.is_incomplete_message() || e.is_closed() {
        "the connection closed before an answer".into()
    } else {
        e.to_string()
    }
}

/// Reads `/config_dump` (and `/clusters`, `/certs`) over an established connection.
async fn read_all(
    conn: &mut AdminConnection,
    origin: &str,
    want: Want,
) -> Result<Fetched, Failure> {
    let text = conn.get(CONFIG_DUMP_PATH).await?;
    let config = parse_config(origin, &text).map_err(Failure::Error)?;
    let clusters = if want.clusters {
        let text = conn.get(CLUSTERS_PATH).await?;
        Some(Clusters::from_json(origin, &text).map_err(Failure::Error)?)
    } else {
        None
    };
    let certs = if want.certs {
        let text = conn.get(CERTS_PATH).await?;
        Some(Certs::from_json(origin, &text).map_err(Failure::Error)?)
    } else {
        None
    };
    Ok(Fetched {
        config,
        clusters,
        certs,
        labels: None,
    })
}

/// Carries out `plan` over an established connection.
async fn run_plan(
    conn: &mut AdminConnection,
    origin: &str,
    plan: Plan<'_>,
) -> Result<Got, Failure> {
    match plan {
        Plan::Read(want) => Ok(Got::Read(Box::new(read_all(conn, origin, want).await?))),
        Plan::Calls(calls) => {
            let mut bodies = Vec::with_capacity(calls.len());
            for c in calls {
                let method = if c.post {
                    http::Method::POST
                } else {
                    http::Method::GET
                };
                bodies.push(conn.request(method, &c.path).await?);
            }
            Ok(Got::Calls(bodies))
        }
    }
}

async fn within<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(Failure::Transport(format!(
            "no answer within {}",
            rustmesh_xds::Duration::from(timeout)
        )))
    })
}

async fn fetch_admin(url: &AdminUrl, plan: Plan<'_>, timeout: Duration) -> Result<Got, Error> {
    let unreachable = |reason: String| Error::AdminUnreachable {
        url: url.url.clone(),
        reason,
    };
    let work = async {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| {
                Failure::Transport(match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        "connection refused (is the proxy running, and is this its admin port?)"
                            .to_string()
                    }
                    _ => e.to_string(),
                })
            })?;
        let authority = match url.host.contains(':') {
            true => format!("[{}]:{}", url.host, url.port),
            false => format!("{}:{}", url.host, url.port),
        };
        let mut conn = AdminConnection::over(
            tcp,
            authority,
            url.prefix.clone(),
            format!("at {}", url.url),
        )
        .await
        .map_err(Failure::Transport)?;
        run_plan(&mut conn, &url.url, plan).await
    };
    within(timeout, work).await.map_err(|f| match f {
        Failure::Transport(reason) => unreachable(reason),
        Failure::Error(e) => e,
    })
}

/// Loads the kubeconfig (or the in-cluster configuration) and makes a client.
pub async fn kube_client(opts: &KubeOptions) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: opts.context.clone(),
        ..Default::default()
    };
    let config = match (&opts.kubeconfig, &opts.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::KubeConfig(e.to_string()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::KubeConfig(e.to_string()))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::KubeConfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| Error::KubeConfig(e.to_string()))
}

/// Refuses pods that have no sidecar, or whose sidecar cannot be running yet.
pub fn check_pod(pod: &Pod, name: &str, namespace: &str) -> Result<(), Error> {
    let spec = pod.spec.as_ref();
    let in_containers =
        spec.is_some_and(|s| s.containers.iter().any(|c| c.name == SIDECAR_CONTAINER));
    // Native sidecar (Kubernetes >= 1.29): an init container that keeps running.
    let native = spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|ics| {
            ics.iter().any(|c| {
                c.name == SIDECAR_CONTAINER && c.restart_policy.as_deref() == Some("Always")
            })
        });
    if !in_containers && !native {
        return Err(Error::NotInjected {
            pod: name.to_string(),
            namespace: namespace.to_string(),
        });
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_string());
    if phase != "Running" {
        return Err(Error::ProxyNotReady {
            target: format!("in pod {namespace}/{name}"),
            reason: format!("the pod is {phase}"),
        });
    }
    Ok(())
}

/// Turns a Kubernetes API error into the user's error.
pub fn kube_error(e: kube::Error, action: &str, pod: &str, namespace: &str) -> Error {
    if let kube::Error::Api(status) = &e {
        if status.is_not_found() || status.code == 404 {
            return Error::PodNotFound {
                pod: pod.to_string(),
                namespace: namespace.to_string(),
            };
        }
        if status.is_forbidden() || status.code == 403 {
            return if action.contains("port-forward") {
                Error::PortForwardForbidden {
                    pod: pod.to_string(),
                    namespace: namespace.to_string(),
                }
            } else {
                Error::PodForbidden {
                    pod: pod.to_string(),
                    namespace: namespace.to_string(),
                }
            };
        }
        let msg = if status.message.is_empty() {
            format!("{} {}", status.code, status.reason)
        } else {
            status.message.clone()
        };
        return Error::Kube {
            action: action.to_string(),
            reason: msg,
        };
    }
    Error::Kube {
        action: action.to_string(),
        reason: e.to_string(),
    }
}

async fn fetch_pod(
    client: &Client,
    pod_ref: &PodRef,
    plan: Plan<'_>,
    timeout: Duration,
) -> Result<(Pod, Got), Error> {
    let client = client.clone();
    let namespace = pod_ref
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let name = pod_ref.name.as_str();
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let pod = tokio::time::timeout(timeout, pods.get(name))
        .await
        .map_err(|_| Error::Kube {
            action: format!("reading pod {namespace}/{name}"),
            reason: "no answer from the API server".into(),
        })?
        .map_err(|e| {
            kube_error(
                e,
                &format!("reading pod {namespace}/{name}"),
                name,
                &namespace,
            )
        })?;
    check_pod(&pod, name, &namespace)?;

    let action = format!("opening a port-forward to port {ADMIN_PORT} of pod {namespace}/{name}");
    let mut forwarder = tokio::time::timeout(timeout, pods.portforward(name, &[ADMIN_PORT]))
        .await
        .map_err(|_| Error::Kube {
            action: action.clone(),
            reason: "no answer from the API server".into(),
        })?
        .map_err(|e| kube_error(e, &action, name, &namespace))?;
    let stream = forwarder
        .take_stream(ADMIN_PORT)
        .ok_or_else(|| Error::Kube {
            action: action.clone(),
            reason: "the port-forward gave no stream".into(),
        })?;
    // The kubelet says on the port's error channel why it could not connect (often while the
    // data stream stays open), so watch it alongside the HTTP exchange.
    let (said_tx, mut said) = tokio::sync::watch::channel(None::<String>);
    if let Some(port_error) = forwarder.take_error(ADMIN_PORT) {
        tokio::spawn(async move {
            if let Some(message) = port_error.await {
                let _ = said_tx.send(Some(message));
            }
        });
    }
    let target = format!("in pod {namespace}/{name}");
    let origin = format!("pod {namespace}/{name}");
    let exchange = async {
        let mut conn = AdminConnection::over(
            stream,
            format!("127.0.0.1:{ADMIN_PORT}"),
            String::new(),
            target.clone(),
        )
        .await
        .map_err(Failure::Transport)?;
        run_plan(&mut conn, &origin, plan).await
    };
    let mut watch = said.clone();
    let result = within(timeout, async {
        tokio::select! {
            r = exchange => r,
            Ok(m) = watch.wait_for(Option::is_some) => Err(Failure::Transport(m.clone().unwrap_or_default())),
        }
    })
    .await;
    forwarder.abort();
    match result {
        Ok(got) => Ok((pod, got)),
        Err(Failure::Error(e)) => Err(e),
        Err(Failure::Transport(reason)) => {
            // The message may come just after the stream broke.
            let message =
                tokio::time::timeout(Duration::from_secs(2), said.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(|r| r.ok().and_then(|m| m.clone()));
            Err(port_forward_failure(
                message.as_deref(),
                &reason,
                name,
                &namespace,
            ))
        }
    }
}

/// The error for a port-forward whose stream broke: not ready when nothing listens on the admin
/// port yet (the kubelet reports `connection refused`), unreachable otherwise.
pub fn port_forward_failure(
    kubelet_message: Option<&str>,
    transport: &str,
    pod: &str,
    namespace: &str,
) -> Error {
    match kubelet_message {
        Some(m) if m.contains("connection refused") => Error::ProxyNotReady {
            target: format!("in pod {namespace}/{pod}"),
            reason: format!("nothing listens on its admin port {ADMIN_PORT} yet"),
        },
        Some(m) => Error::AdminUnreachable {
            url: format!("port {ADMIN_PORT} of pod {namespace}/{pod}"),
            reason: m.trim().to_string(),
        },
        None => Error::AdminUnreachable {
            url: format!("port {ADMIN_PORT} of pod {namespace}/{pod}"),
            reason: transport.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_and_namespaces() {
        assert_eq!(
            PodRef::parse("productpage-v1-6c886ff494-7vxhs", None).unwrap(),
            PodRef {
                name: "productpage-v1-6c886ff494-7vxhs".into(),
                namespace: None
            }
        );
        assert_eq!(
            PodRef::parse("integration-86924652-bfsfs.istio-demo", None).unwrap(),
            PodRef {
                name: "integration-86924652-bfsfs".into(),
                namespace: Some("istio-demo".into())
            }
        );
        assert_eq!(
            PodRef::parse("test-f5b5d48b5-qdzft", Some("test"))
                .unwrap()
                .namespace
                .as_deref(),
            Some("test")
        );
        assert_eq!(
            PodRef::parse("x.test", Some("test")).unwrap().namespace,
            Some("test".into())
        );
        let e = PodRef::parse("x.a", Some("b")).unwrap_err().to_string();
        assert!(e.contains("\"a\"") && e.contains("\"b\""), "{e}");
    }

    #[test]
    fn admin_urls() {
        let u = AdminUrl::parse("http://127.0.0.1:15000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 15000, "")
        );
        let u = AdminUrl::parse("http://localhost/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("localhost", 15000));
        let u = AdminUrl::parse("http://[::1]:9000/proxy/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 9000, "/proxy")
        );
        for bad in [
            "127.0.0.1:15000",
            "https://127.0.0.1:15000",
            "http://x/?a=1",
        ] {
            let e = AdminUrl::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--admin-url"), "{e}");
        }
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pod_without_sidecar_is_not_injected() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "nginx", "namespace": "test"},
            "spec": {"containers": [{"name": "nginx"}]},
            "status": {"phase": "Running"}
        }));
        assert_eq!(
            check_pod(&p, "nginx", "test").unwrap_err().to_string(),
            "pod test/nginx has no istio-proxy container, so it is not in the mesh \
             (label its namespace istio-injection=enabled and recreate the pod)"
        );
    }

    #[test]
    fn starting_pod_is_not_ready_and_native_sidecars_count() {
        let p = pod(serde_json::json!({
            "spec": {"containers": [{"name": "app"}],
                     "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}]},
            "status": {"phase": "Pending"}
        }));
        assert_eq!(
            check_pod(&p, "app-1", "default").unwrap_err().to_string(),
            "the proxy in pod default/app-1 is not ready yet (the pod is Pending); try again in a few seconds"
        );
        let running = pod(serde_json::json!({
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
            "status": {"phase": "Running"}
        }));
        assert!(check_pod(&running, "app-1", "default").is_ok());
    }

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        let mut s = kube::core::Status::failure(message, reason);
        s.code = code;
        kube::Error::Api(s.boxed())
    }

    #[test]
    fn api_errors_become_sentences() {
        assert_eq!(
            kube_error(
                api_error(404, "NotFound", "pods \"x\" not found"),
                "reading pod default/x",
                "x",
                "default"
            )
            .to_string(),
            "pod \"x\" not found in namespace \"default\""
        );
        assert_eq!(
            kube_error(
                api_error(403, "Forbidden", "pods \"x\" is forbidden: User \"dev\" cannot create resource \"pods/portforward\""),
                "opening a port-forward to port 15000 of pod default/x",
                "x",
                "default"
            )
            .to_string(),
            "you may not port-forward to pod default/x: ask for the RBAC permission to create \
             pods/portforward in namespace default (get pods/portforward before Kubernetes 1.35, which \
             authorizes the WebSocket port-forward as a get)"
        );
        assert_eq!(
            kube_error(
                api_error(403, "Forbidden", "no"),
                "reading pod shop/x",
                "x",
                "shop"
            )
            .to_string(),
            "you may not read pod shop/x: ask for the RBAC permission to get pods in namespace shop"
        );
    }

    #[test]
    fn refused_inside_the_pod_means_not_ready() {
        let refused = "error forwarding port 15000 to pod 1f2e, uid : failed to execute portforward \
                       in network namespace \"/var/run/netns/cni-1\": failed to connect to localhost:15000 \
                       inside namespace \"1f2e\", IPv4: dial tcp4 127.0.0.1:15000: connect: connection refused";
        assert_eq!(
            port_forward_failure(Some(refused), "closed", "p", "default").to_string(),
            "the proxy in pod default/p is not ready yet (nothing listens on its admin port 15000 yet); \
             try again in a few seconds"
        );
        assert_eq!(
            port_forward_failure(
                None,
                "the connection closed before an answer",
                "p",
                "default"
            )
            .to_string(),
            "cannot reach the proxy admin API at port 15000 of pod default/p: the connection closed before an answer"
        );
    }
}
