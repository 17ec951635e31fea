//! A real Prometheus server for the suite: Debian's `/usr/bin/prometheus` (installed by
//! `scripts/install-deps.sh`), started by the test as a child process on the node, scraping the
//! sidecars the way Istio's standard Prometheus configuration does, and queried over its HTTP API
//! with the same PromQL as Istio's dashboards and Kiali's graph.
//!
//! - [`Prometheus::start`] runs it on `127.0.0.1:<free port>` with its own temporary directory
//!   (configuration, `--storage.tsdb.path`, the targets file and its log) and a short scrape
//!   interval ([`DEFAULT_SCRAPE_INTERVAL`]); it returns once `/-/ready` answers.
//! - Targets are a `file_sd_configs` JSON file that [`Prometheus::set_targets`] rewrites
//!   atomically: Prometheus watches it, so targets change without a restart. A [`Target`] is
//!   made from a pod by [`Target::from_pod`], as Istio's `kubernetes-pods` job does: pod IP and
//!   the `prometheus.io/port` / `prometheus.io/path` annotations the injector sets (15020,
//!   `/stats/prometheus`), with the target labels `namespace` and `pod` (and the pod's labels).
//!   The node reaches pod IPs directly, so nothing runs in the cluster for it.
//! - [`Prometheus::query`] is `/api/v1/query` (an instant query): one `(labels, value)` per
//!   series; [`Prometheus::wait_for`] polls a query until a predicate holds.
//! - Dropping the handle kills the server. When the thread is panicking (a failed test) its log
//!   is printed and its directory kept for inspection; otherwise the directory is removed. The
//!   server also gets a parent-death signal (`setpriv --pdeathsig KILL`), so a test process
//!   killed outright leaves no server behind; it ends with the thread that started it.
//!
//! The HTTP client is a few lines of HTTP/1.0 over a TCP stream (the answer is read to the end
//! of the connection, never chunked), so the suite needs no HTTP client crate.

use crate::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Debian's Prometheus server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// How often [`Prometheus::start`]'s server scrapes its targets.
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// The scrape job's name (Istio's standard configuration's, for pods).
pub const JOB: &str = "kubernetes-pods";
/// The annotations the injector sets on a meshed pod (and Istio's job reads).
pub const ANNOTATION_SCRAPE: &str = "prometheus.io/scrape";
pub const ANNOTATION_PORT: &str = "prometheus.io/port";
pub const ANNOTATION_PATH: &str = "prometheus.io/path";

/// A series' labels, by name.
pub type Labels = BTreeMap<String, String>;
/// What an instant query returns: one entry per series.
pub type Series = Vec<(Labels, f64)>;

/// One scrape target: `address` (`ip:port`), the metrics path, and the labels Prometheus adds
/// to every series scraped from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub path: String,
    pub labels: Labels,
}

impl Target {
    pub fn new(address: impl Into<String>, path: impl Into<String>) -> Target {
        Target {
            address: address.into(),
            path: path.into(),
            labels: Labels::new(),
        }
    }

    /// Adds a target label.
    pub fn label(mut self, name: &str, value: &str) -> Target {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// The pod as Istio's standard `kubernetes-pods` job sees it: scraped only when
    /// `prometheus.io/scrape` is `true` and the pod is Running with an IP; address
    /// `<pod IP>:<prometheus.io/port>`, path `prometheus.io/path` (default `/metrics`);
    /// labels `namespace`, `pod` and the pod's own labels (names made valid, like the job's
    /// `labelmap`). `None` for a pod that job would not scrape, or one without a port
    /// annotation (the job would fall back to a declared container port; the injector always
    /// sets one).
    pub fn from_pod(pod: &Pod) -> Option<Target> {
        let annotations = pod.metadata.annotations.as_ref()?;
        if annotations.get(ANNOTATION_SCRAPE).map(String::as_str) != Some("true") {
            return None;
        }
        let status = pod.status.as_ref()?;
        if status.phase.as_deref() != Some("Running") {
            return None;
        }
        let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
        let port: u16 = annotations.get(ANNOTATION_PORT)?.trim().parse().ok()?;
        let path = annotations
            .get(ANNOTATION_PATH)
            .filter(|p| !p.is_empty())
            .cloned()
            .unwrap_or_else(|| "/metrics".into());
        let address = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let mut target = Target::new(address, path);
        for (k, v) in pod.metadata.labels.iter().flatten() {
            target.labels.insert(label_name(k), v.clone());
        }
        target.labels.insert(
            "namespace".into(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        );
        target
            .labels
            .insert("pod".into(), pod.metadata.name.clone().unwrap_or_default());
        Some(target)
    }
}

/// A Kubernetes label key as a Prometheus label name (what `labelmap` of
/// `__meta_kubernetes_pod_label_<name>` gives): every character outside `[a-zA-Z0-9_]` is `_`.
pub fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// What `/api/v1/targets` says about one active target.
#[derive(Clone, Debug)]
pub struct TargetHealth {
    pub scrape_url: String,
    pub health: String,
    pub last_error: String,
    pub labels: Labels,
}

/// A running Prometheus server (see the module's documentation).
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    scrape_interval: Duration,
    startup: Duration,
}

impl Prometheus {
    /// Whether Debian's Prometheus is installed.
    pub fn available() -> bool {
        Path::new(PROMETHEUS_BIN).is_file()
    }

    /// Starts a server scraping every [`DEFAULT_SCRAPE_INTERVAL`], with no targets yet.
    pub async fn start() -> Result<Prometheus> {
        Prometheus::start_with(DEFAULT_SCRAPE_INTERVAL).await
    }

    /// Starts a server scraping every `scrape_interval` (at least 1 s), with no targets yet,
    /// and waits until it is ready (`/-/ready`).
    pub async fn start_with(scrape_interval: Duration) -> Result<Prometheus> {
        if !Prometheus::available() {
            return Err(Error::Other(format!(
                "{PROMETHEUS_BIN} is missing: run scripts/install-deps.sh as root (installs \
                 Debian's prometheus)"
            )));
        }
        let scrape_interval = scrape_interval.max(Duration::from_secs(1));
        let dir = temp_dir()?;
        let fail = |what: &str, e: std::io::Error| {
            Error::Other(format!("prometheus: {what} in {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir.join("targets")).map_err(|e| fail("targets dir", e))?;
        std::fs::create_dir_all(dir.join("data")).map_err(|e| fail("data dir", e))?;
        std::fs::write(dir.join("targets/pods.json"), "[]\n")
            .map_err(|e| fail("targets file", e))?;
        std::fs::write(dir.join("prometheus.yml"), config(&dir, scrape_interval))
            .map_err(|e| fail("config file", e))?;
        let start = Instant::now();
        // The free port is found by binding 127.0.0.1:0 and letting it go: another process may
        // take it in between, so a start that fails on the port is tried again on another.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port().map_err(|e| fail("free port", e))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let child = spawn(&dir, addr).map_err(|e| fail(PROMETHEUS_BIN, e))?;
            let mut prom = Prometheus {
                child,
                addr,
                dir: dir.clone(),
                scrape_interval,
                startup: Duration::ZERO,
            };
            match prom.wait_ready(Duration::from_secs(60)).await {
                Ok(()) => {
                    prom.startup = start.elapsed();
                    return Ok(prom);
                }
                Err(e) => {
                    last = e;
                    let in_use = prom.log().contains("address already in use");
                    prom.stop();
                    if !in_use {
                        break;
                    }
                }
            }
        }
        let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        Err(Error::Other(format!(
            "prometheus did not start: {last}\n--- {} ---\n{}",
            dir.join("prometheus.log").display(),
            tail(&log, 60)
        )))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if let Ok((200, _)) = http_get(self.addr, "/-/ready").await {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(format!("not ready within {} s", timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long [`Prometheus::start`] took until the server was ready.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The scrape interval it runs with.
    pub fn scrape_interval(&self) -> Duration {
        self.scrape_interval
    }

    /// Its temporary directory (configuration, data, targets, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Replaces the scrape targets (one target group per target, its labels as target labels
    /// and its path as `__metrics_path__`). The file is written to a temporary name and renamed,
    /// so Prometheus never reads half of it; it picks the change up without a restart.
    pub fn set_targets(&self, targets: &[Target]) -> Result<()> {
        let groups: Vec<serde_json::Value> = targets
            .iter()
            .map(|t| {
                let mut labels: serde_json::Map<String, serde_json::Value> = t
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                labels.insert("__metrics_path__".into(), t.path.clone().into());
                serde_json::json!({"targets": [t.address], "labels": labels})
            })
            .collect();
        let text = serde_json::to_string_pretty(&groups)
            .map_err(|e| Error::Other(format!("targets as JSON: {e}")))?;
        let (tmp, path) = (
            self.dir.join("targets/pods.json.tmp"),
            self.dir.join("targets/pods.json"),
        );
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Other(format!("writing {}: {e}", path.display())))
    }

    /// An instant query (`/api/v1/query`): each series' labels and value (a scalar result is
    /// one entry without labels).
    pub async fn query(&self, promql: &str) -> Result<Series> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let body = self.api(&path, promql).await?;
        parse_query(&body).map_err(|e| Error::Other(format!("query `{promql}`: {e}")))
    }

    /// Polls `promql` every scrape interval until `predicate` holds for its result (returned),
    /// or fails after `timeout` naming the query, the last result and the targets' health.
    pub async fn wait_for<F>(&self, promql: &str, predicate: F, timeout: Duration) -> Result<Series>
    where
        F: Fn(&Series) -> bool,
    {
        let start = Instant::now();
        let every = (self.scrape_interval / 2).max(Duration::from_millis(250));
        let last = loop {
            let last = match self.query(promql).await {
                Ok(r) if predicate(&r) => return Ok(r),
                Ok(r) => format!("last result:\n{}", format_series(&r)),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                break last;
            }
            tokio::time::sleep(every).await;
        };
        let targets = match self.targets().await {
            Ok(t) => format_targets(&t),
            Err(e) => e.to_string(),
        };
        Err(Error::Timeout {
            what: format!("`{promql}` as expected"),
            secs: timeout.as_secs(),
            detail: format!("{last}\ntargets:\n{targets}"),
        })
    }

    /// The active targets and their health (`/api/v1/targets`).
    pub async fn targets(&self) -> Result<Vec<TargetHealth>> {
        let body = self.api("/api/v1/targets?state=active", "targets").await?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| Error::Other(format!("/api/v1/targets: {e}: {body}")))?;
        let text = |t: &serde_json::Value, k: &str| t[k].as_str().unwrap_or_default().to_string();
        Ok(v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| TargetHealth {
                scrape_url: text(t, "scrapeUrl"),
                health: text(t, "health"),
                last_error: text(t, "lastError"),
                labels: labels_of(&t["labels"]),
            })
            .collect())
    }

    /// Waits until exactly `n` targets are active and every one is `up`.
    pub async fn wait_targets_up(&self, n: usize, timeout: Duration) -> Result<Vec<TargetHealth>> {
        let start = Instant::now();
        loop {
            let last = match self.targets().await {
                Ok(t) if t.len() == n && t.iter().all(|t| t.health == "up") => return Ok(t),
                Ok(t) => format_targets(&t),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("{n} Prometheus targets up"),
                    secs: timeout.as_secs(),
                    detail: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn api(&self, path: &str, what: &str) -> Result<String> {
        let (status, body) = http_get(self.addr, path)
            .await
            .map_err(|e| Error::Other(format!("prometheus {} ({what}): {e}", self.url())))?;
        // 400/422 carry the API's own error (e.g. a PromQL parse error) in the JSON body.
        if status == 200 || status == 400 || status == 422 {
            Ok(body)
        } else {
            Err(Error::Other(format!(
                "prometheus {}{path} ({what}): HTTP {status}: {body}",
                self.url()
            )))
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ({}, directory kept) ---\n{}\n--- end of prometheus log ---",
                self.dir.join("prometheus.log").display(),
                tail(&self.log(), 80)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The configuration: one job for the targets file, the scrape interval everywhere.
fn config(dir: &Path, interval: Duration) -> String {
    let every = format!("{}ms", interval.as_millis());
    // JSON strings are YAML strings: the path is quoted whatever it holds.
    let files = serde_json::to_string(&dir.join("targets/*.json").display().to_string())
        .expect("a string is JSON");
    [
        "# Written by rustmesh-e2e (e2e/src/prometheus.rs).".to_string(),
        "global:".into(),
        format!("  scrape_interval: {every}"),
        format!("  scrape_timeout: {every}"),
        format!("  evaluation_interval: {every}"),
        "scrape_configs:".into(),
        format!("  - job_name: {JOB}"),
        "    file_sd_configs:".into(),
        format!("      - files: [{files}]"),
        "        refresh_interval: 5s".into(),
        String::new(),
    ]
    .join("\n")
}

/// util-linux's `setpriv`, used to give the server a parent-death signal.
const SETPRIV: &str = "/usr/bin/setpriv";

fn spawn(dir: &Path, addr: SocketAddr) -> std::io::Result<Child> {
    let log = File::create(dir.join("prometheus.log"))?;
    // A test process killed outright (a CI time-out's SIGKILL) runs no Drop: through
    // `setpriv --pdeathsig KILL` (which then execs it, same pid) the kernel kills the server
    // when the thread that started it ends, so none is left behind. Without setpriv, a plain
    // child (killed by Drop only).
    let mut command = if Path::new(SETPRIV).is_file() {
        let mut c = Command::new(SETPRIV);
        c.args(["--pdeathsig", "KILL", "--", PROMETHEUS_BIN]);
        c
    } else {
        Command::new(PROMETHEUS_BIN)
    };
    command
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=1d")
        .arg("--log.level=info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn temp_dir() -> Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "rustmesh-prometheus-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Other(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// The last `n` lines of a text.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GET over HTTP/1.0 (the server closes the connection after an answer it cannot chunk):
/// status and body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_string())??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Percent-encoding of a query parameter's value (everything but RFC 3986's unreserved).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Reads an `/api/v1/query` answer: a vector (one entry per series) or a scalar.
pub fn parse_query(body: &str) -> Result<Series, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "{}: {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or(body)
        ));
    }
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| Ok((labels_of(&s["metric"]), sample_value(&s["value"])?)))
            .collect(),
        Some("scalar") => Ok(vec![(Labels::new(), sample_value(&data["result"])?)]),
        other => Err(format!(
            "result type {other:?} (only instant vectors and scalars are read): {body}"
        )),
    }
}

fn labels_of(v: &serde_json::Value) -> Labels {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// `[<unix time>, "<value>"]`; the value may be `NaN`, `+Inf` or `-Inf`.
fn sample_value(v: &serde_json::Value) -> Result<f64, String> {
    let text = v[1]
        .as_str()
        .ok_or_else(|| format!("no sample value in {v}"))?;
    text.parse::<f64>()
        .map_err(|e| format!("sample value {text:?}: {e}"))
}

/// `{a="1", b="2"} 0.5` per series, one a line, for messages.
pub fn format_series(series: &Series) -> String {
    if series.is_empty() {
        return "  (no series)".into();
    }
    series
        .iter()
        .map(|(labels, value)| format!("  {} {value}", format_labels(labels)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `{a="1", b="2"}`.
pub fn format_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn format_targets(targets: &[TargetHealth]) -> String {
    if targets.is_empty() {
        return "  (no active targets)".into();
    }
    targets
        .iter()
        .map(|t| {
            format!(
                "  {} {} pod={:?} {}",
                t.scrape_url,
                t.health,
                t.labels.get("pod").map(String::as_str).unwrap_or(""),
                t.last_error
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql_for_a_url() {
        assert_eq!(
            url_encode(r#"sum(rate(x{a="b"}[1m])) by (c)"#),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29%20by%20%28c%29"
        );
        assert_eq!(url_encode("a-b_c.d~é"), "a-b_c.d~%C3%A9");
    }

    #[test]
    fn reads_vector_scalar_and_error_answers() {
        let v = parse_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"pod":"p","le":"+Inf"},"value":[1700000000.1,"2.5"]},
                {"metric":{},"value":[1700000000.1,"NaN"]}]}}"#,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0["le"], "+Inf");
        assert_eq!(v[0].1, 2.5);
        assert!(v[1].1.is_nan());
        let s = parse_query(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#,
        )
        .unwrap();
        assert_eq!(s[0].1, f64::INFINITY);
        let e = parse_query(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .unwrap_err();
        assert_eq!(e, "bad_data: parse error");
    }

    #[test]
    fn a_pod_as_istios_kubernetes_pods_job_sees_it() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "reviews-v1-abc", "namespace": "e2e-telemetry",
                "labels": {"app": "reviews", "version": "v1",
                           "security.istio.io/tlsMode": "istio", "pod-template-hash": "abc"},
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                                "prometheus.io/path": "/stats/prometheus"},
            },
            "status": {"phase": "Running", "podIP": "10.244.0.12"},
        }))
        .unwrap();
        let t = Target::from_pod(&pod).unwrap();
        assert_eq!(t.address, "10.244.0.12:15020");
        assert_eq!(t.path, "/stats/prometheus");
        assert_eq!(t.labels["namespace"], "e2e-telemetry");
        assert_eq!(t.labels["pod"], "reviews-v1-abc");
        assert_eq!(t.labels["app"], "reviews");
        assert_eq!(t.labels["security_istio_io_tlsMode"], "istio");
        assert_eq!(t.labels["pod_template_hash"], "abc");

        let mut pending = pod.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(Target::from_pod(&pending), None);
        let mut opted_out = pod.clone();
        opted_out
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_SCRAPE.into(), "false".into());
        assert_eq!(Target::from_pod(&opted_out), None);
        let mut no_path = pod;
        no_path
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANNOTATION_PATH);
        assert_eq!(Target::from_pod(&no_path).unwrap().path, "/metrics");
    }

    #[test]
    fn config_names_the_targets_file_and_interval() {
        let c = config(Path::new("/tmp/x y"), Duration::from_secs(2));
        assert!(c.contains("scrape_interval: 2000ms"), "{c}");
        assert!(c.contains(r#"- files: ["/tmp/x y/targets/*.json"]"#), "{c}");
        assert!(c.ends_with("refresh_interval: 5s\n"), "{c}");
        assert!(c.contains("job_name: kubernetes-pods"), "{c}");
    }
}
