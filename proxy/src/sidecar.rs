//! `proxy run`: the sidecar. Binds every port first (a bad address fails at start), loads the
//! configuration and watches it ([`crate::config`]), serves the capture listeners
//! ([`crate::listener`]) and the admin, readiness and Prometheus endpoints ([`crate::admin`]), and
//! on SIGTERM (or SIGINT, or `POST /quitquitquit`) drains as Istio's agent drives Envoy
//! ([`crate::drain`]): readiness turns 503, inbound HTTP connections close after their request,
//! both capture listeners keep accepting and outbound keeps serving the app for
//! `--drain-timeout` (Istio's `terminationDrainDuration`, default 5 s), or with
//! `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` until `MINIMUM_DRAIN_DURATION` has passed and no
//! connection is left; then the listeners close and the process exits 0.
//!
//! `proxy run --type router` is a gateway (Istio's `pilot-agent proxy router`): no capture
//! listener is bound; the configuration's own listeners are, as it changes
//! ([`crate::listener::bound`]); everything else is the same.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustmesh_xds::scope::ProxyRole;
use rustmesh_xds::well_known;
use tokio::sync::Notify;

use crate::admin::{AdminState, Endpoints, Server};
use crate::cluster::ClusterManager;
use crate::config::api::{self, ApiTarget};
use crate::config::{ConfigSource, DEFAULT_POLL_INTERVAL, Watcher};
use crate::dns::{DnsServer, DnsTable, ResolvConf, SharedTable};
use crate::http::HttpSettings;
use crate::http::handler::ConnectionManager;
use crate::listener::bound::{BindStatus, Router};
use crate::listener::{Direction, Shared, VirtualListener};
use crate::metrics::{Metrics as IstioMetrics, WorkloadInfo};
use crate::snapshot::Store;
use crate::stats::Metrics;
use crate::{Error, Result, drain};

/// Istio's `terminationDrainDuration` default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn duration(s: &str) -> std::result::Result<Duration, String> {
    s.parse::<rustmesh_xds::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

/// Flags of `proxy run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// What the proxy is (Istio's `pilot-agent proxy <type>`): `sidecar` binds the capture
    /// listeners (--outbound-port, --inbound-port); `router` (a gateway) captures nothing and
    /// binds the configuration's own listeners (`bindToPort`, not `useOriginalDst`) as the
    /// configuration changes ([`crate::listener::bound`]).
    #[arg(
        long = "type",
        value_enum,
        value_name = "TYPE",
        default_value = "sidecar"
    )]
    pub proxy_type: ProxyType,
    /// Istio's router metadata (`ISTIO_META_ROUTER_MODE`, which the webhook sets on a
    /// gateway): `sni-dnat` or `standard`. What it changes is rendered by the control plane;
    /// the proxy checks the value and logs it. Only with `--type router`.
    #[arg(long, value_enum, value_name = "MODE", env = "ISTIO_META_ROUTER_MODE")]
    pub router_mode: Option<RouterMode>,
    /// A ProxyConfig JSON file (instead of --config-dir). Replace it atomically (rename) to
    /// change the configuration.
    #[arg(long, value_name = "FILE", conflicts_with = "config_dir")]
    pub config: Option<PathBuf>,
    /// The mounted ConfigMap (scopes.json + <key>.json.gz, or config.json) [default:
    /// /etc/rustmesh/config].
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// The pod's labels (downward API, `key="value"` lines), which pick the scope in
    /// --config-dir [default: /etc/istio/pod/labels].
    #[arg(long, value_name = "FILE")]
    pub pod_labels: Option<PathBuf>,
    /// Follow this ConfigMap (in --config-namespace) through the Kubernetes API: changes apply
    /// as soon as the API server has them. The mounted --config-dir serves at start and
    /// whenever the API cannot be used. The webhook sets PROXY_CONFIGMAP=rustmesh-proxy-config.
    #[arg(long, value_name = "NAME", env = "PROXY_CONFIGMAP")]
    pub config_configmap: Option<String>,
    /// Namespace of --config-configmap (the pod's).
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE")]
    pub config_namespace: Option<String>,
    /// Never use the API: only poll the mounted --config-dir.
    #[arg(long)]
    pub no_api_watch: bool,
    /// How often the configuration is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = duration)]
    pub config_poll_interval: Duration,
    /// Port of virtualOutbound, where the capture rules send outbound connections.
    #[arg(long, default_value_t = well_known::OUTBOUND_CAPTURE_PORT)]
    pub outbound_port: u16,
    /// Port of virtualInbound, where the capture rules send inbound connections.
    #[arg(long, default_value_t = well_known::INBOUND_CAPTURE_PORT)]
    pub inbound_port: u16,
    /// How the pod's traffic is captured (the injector sets `ISTIO_META_INTERCEPTION_MODE` from
    /// `sidecar.istio.io/interceptionMode`): REDIRECT (nat), TPROXY (virtualInbound binds with
    /// IP_TRANSPARENT, and connections to the app leave from the client's address,
    /// [`crate::dial::ClusterDialer::with_original_source`]; needs CAP_NET_ADMIN) or NONE
    /// (nothing is captured; the listeners are bound all the same and see no traffic).
    #[arg(
        long,
        value_enum,
        env = "ISTIO_META_INTERCEPTION_MODE",
        default_value = "REDIRECT"
    )]
    pub interception_mode: Interception,
    /// Admin API port (on 127.0.0.1): /config_dump, /listeners, /clusters, /stats, /ready.
    #[arg(long, default_value_t = well_known::ADMIN_PORT)]
    pub admin_port: u16,
    /// Readiness port: GET /healthz/ready.
    #[arg(long, default_value_t = well_known::HEALTH_PORT)]
    pub health_port: u16,
    /// Prometheus port: GET /stats/prometheus.
    #[arg(long, default_value_t = well_known::PROMETHEUS_PORT)]
    pub prometheus_port: u16,
    /// Port of the DNS proxy on 127.0.0.1 (UDP and TCP), where the capture rules send the
    /// app's DNS queries; 0 turns it off.
    #[arg(long, default_value_t = well_known::DNS_PORT)]
    pub dns_port: u16,
    /// The resolvers the DNS proxy forwards unknown names to, and that resolve the names of
    /// DNS clusters (STRICT_DNS, LOGICAL_DNS).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Largest HTTP request head (request line and headers; HTTP/2 header list) in KiB; larger
    /// requests get 431 (Envoy's `max_request_headers_kb`).
    #[arg(long, value_name = "KIB", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub max_request_headers_kb: u32,
    /// Most headers in an HTTP request; more get 431 (Envoy's `max_headers_count`).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub max_request_headers_count: u32,
    /// Time allowed for an HTTP/1.1 request head to arrive, then the connection is closed
    /// (Envoy's `request_headers_timeout`; stops slowloris).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub request_headers_timeout: Duration,
    /// Request body bytes kept for retries and mirrors, in KiB (Envoy's
    /// `per_request_buffer_limit_bytes`); larger bodies are streamed and not retried.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    pub retry_buffer_kb: u32,
    /// HTTP/2 streams at once per downstream connection.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// Istio's `terminationDrainDuration`: after SIGTERM the capture listeners keep serving
    /// (inbound HTTP connections close after their request) for this long, then the sidecar
    /// stops accepting and exits, closing what is still open. The webhook passes the pod's
    /// `proxy.istio.io/config` value or the mesh default.
    #[arg(long, visible_alias = "termination-drain-duration", value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Istio's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`: instead of draining for --drain-timeout, drain
    /// for --minimum-drain-duration, then exit as soon as no connection to the capture listeners
    /// is open (checked every second; kubelet's grace period is the only bound).
    #[arg(long, env = "EXIT_ON_ZERO_ACTIVE_CONNECTIONS", value_name = "BOOL", num_args = 0..=1,
        default_value = "false", default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub exit_on_zero_active_connections: bool,
    /// Istio's `MINIMUM_DRAIN_DURATION`: with --exit-on-zero-active-connections, how long to
    /// drain before the first look at the open connections.
    #[arg(long, env = "MINIMUM_DRAIN_DURATION", value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub minimum_drain_duration: Duration,
    /// Worker threads (Istio's `concurrency`): 0 uses every core the process may run on; 1
    /// serves everything from one thread, with no cross-thread scheduling at all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub concurrency: usize,
    /// The mesh CA (`host:port`, Istio's `CA_ADDR`): with it the sidecar gets a workload
    /// certificate for its SPIFFE id and is not ready until it holds a valid one. The webhook
    /// sets it when the mesh CA is enabled.
    #[arg(long, value_name = "HOST:PORT", env = "CA_ADDR")]
    pub ca_addr: Option<String>,
    /// The trust domain of the workload's SPIFFE id.
    #[arg(long, value_name = "DOMAIN", env = "TRUST_DOMAIN", default_value = rustmesh_xds::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The pod's service account (the webhook sets it from `spec.serviceAccountName`).
    #[arg(long, value_name = "NAME", env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Lifetime asked for the workload certificate (Istio's `SECRET_TTL`).
    #[arg(long, value_name = "DURATION", env = "SECRET_TTL", default_value = "24h", value_parser = duration)]
    pub secret_ttl: Duration,
    /// The projected `istio-ca` service-account token.
    #[arg(long, value_name = "FILE", default_value = crate::identity::ca_client::TOKEN_PATH)]
    pub ca_token: PathBuf,
    /// The mesh root (`root-cert.pem` of ConfigMap `istio-ca-root-cert`).
    #[arg(long, value_name = "FILE", default_value = crate::identity::ca_client::ROOT_CERT_PATH)]
    pub ca_root_cert: PathBuf,
    /// Use the workload certificate in this directory instead of asking a CA (Istio's
    /// file-mounted certificates, `/etc/certs`: `cert-chain.pem`, `key.pem`, `root-cert.pem`).
    /// Read once at start (restart the sidecar to rotate); not with `--ca-addr`.
    #[arg(long, value_name = "DIR", conflicts_with = "ca_addr")]
    pub file_mounted_certs: Option<PathBuf>,
    /// The status port and the app's probes it runs ([`crate::status`]).
    #[command(flatten)]
    pub status: crate::status::StatusArgs,
}

impl RunArgs {
    /// The CA client and the workload's identity, when `--ca-addr` is set; an error names the
    /// missing or bad setting.
    pub fn identity(
        &self,
    ) -> Result<
        Option<(
            crate::identity::ca_client::CaClient,
            rustmesh_xds::identity::SpiffeId,
        )>,
    > {
        let Some(addr) = self.ca_addr.clone().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let bad = |what: &str, why: String| Error::Identity(format!("{what}: {why}"));
        let namespace = self
            .config_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("POD_NAMESPACE", "needed with CA_ADDR, not set".into()))?;
        let account = self
            .service_account
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("SERVICE_ACCOUNT", "needed with CA_ADDR, not set".into()))?;
        let id = rustmesh_xds::identity::SpiffeId::new(&self.trust_domain, &namespace, &account)
            .map_err(|e| bad("the workload identity", e.to_string()))?;
        let client = crate::identity::ca_client::CaClient::new(
            &addr,
            &self.ca_token,
            &self.ca_root_cert,
            self.secret_ttl,
        )
        .map_err(|e| bad("CA_ADDR", e.to_string()))?;
        Ok(Some((client, id)))
    }

    /// Whether the flags fit the proxy type: a router captures nothing, so TPROXY interception
    /// (which changes how the capture listener binds and how the app is dialed) is refused,
    /// naming the flag; `ISTIO_META_ROUTER_MODE` on a sidecar is said to mean nothing there.
    pub fn check_type(&self) -> Result<()> {
        match self.proxy_type {
            ProxyType::Router if self.interception_mode == Interception::Tproxy => {
                Err(Error::InvalidFlag {
                    flag: "--interception-mode (ISTIO_META_INTERCEPTION_MODE)",
                    value: "TPROXY".into(),
                    reason: "a router (--type router) captures no traffic: REDIRECT or NONE".into(),
                })
            }
            ProxyType::Sidecar if self.router_mode.is_some() => {
                tracing::warn!(
                    router_mode = ?self.router_mode,
                    "--router-mode (ISTIO_META_ROUTER_MODE) is a router's metadata: a sidecar \
                     does not use it (run with --type router for a gateway)"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The ConfigMap to follow through the API: with --config-configmap and --config-namespace
    /// both set, reading --config-dir (not --config), and without --no-api-watch.
    pub fn api_target(&self) -> Option<ApiTarget> {
        let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        if self.config.is_some() || self.no_api_watch {
            return None;
        }
        Some(ApiTarget {
            name: set(&self.config_configmap)?,
            namespace: set(&self.config_namespace)?,
        })
    }

    /// The HTTP server limits these flags set.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            max_request_headers_bytes: self.max_request_headers_kb as usize * 1024,
            max_request_headers: self.max_request_headers_count as usize,
            header_read_timeout: self.request_headers_timeout,
            retry_buffer_bytes: self.retry_buffer_kb as usize * 1024,
            max_concurrent_streams: self.max_concurrent_streams,
        }
    }

    /// Where the configuration is read from.
    pub fn source(&self) -> ConfigSource {
        match &self.config {
            Some(file) => ConfigSource::File(file.clone()),
            None => ConfigSource::Dir {
                dir: self
                    .config_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(well_known::PROXY_CONFIG_MOUNT)),
                pod_labels: self
                    .pod_labels
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(well_known::POD_INFO_MOUNT).join("labels")),
                role: self.proxy_type.role(),
            },
        }
    }
}

/// Istio's proxy types (`pilot-agent proxy sidecar|router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyType {
    /// A pod's sidecar: the capture listeners, 15001 and 15006.
    #[value(name = "sidecar")]
    Sidecar,
    /// A gateway: no capture; the configuration's `bindToPort` listeners are bound.
    #[value(name = "router")]
    Router,
}

impl ProxyType {
    /// Which scopes of the ConfigMap this proxy reads (a router only gateway scopes).
    pub fn role(self) -> ProxyRole {
        match self {
            ProxyType::Sidecar => ProxyRole::Sidecar,
            ProxyType::Router => ProxyRole::Router,
        }
    }
}

/// Istio's router modes (`ISTIO_META_ROUTER_MODE`): metadata for the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouterMode {
    /// Istio's default: `AUTO_PASSTHROUGH` servers get SNI-DNAT clusters.
    #[value(name = "sni-dnat")]
    SniDnat,
    /// Without them.
    #[value(name = "standard")]
    Standard,
}

/// Istio's interception modes (`ISTIO_META_INTERCEPTION_MODE`), as the sidecar sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Interception {
    /// nat `REDIRECT`: original destinations come from `SO_ORIGINAL_DST`.
    #[value(name = "REDIRECT")]
    Redirect,
    /// mangle `TPROXY`: virtualInbound is transparent; a connection's local address is its
    /// original destination, and its peer the real client.
    #[value(name = "TPROXY")]
    Tproxy,
    /// No capture (no `istio-init`).
    #[value(name = "NONE")]
    None,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            proxy_type: ProxyType::Sidecar,
            router_mode: None,
            config: None,
            config_dir: None,
            pod_labels: None,
            config_configmap: None,
            config_namespace: None,
            no_api_watch: false,
            config_poll_interval: DEFAULT_POLL_INTERVAL,
            outbound_port: well_known::OUTBOUND_CAPTURE_PORT,
            inbound_port: well_known::INBOUND_CAPTURE_PORT,
            interception_mode: Interception::Redirect,
            admin_port: well_known::ADMIN_PORT,
            health_port: well_known::HEALTH_PORT,
            prometheus_port: well_known::PROMETHEUS_PORT,
            dns_port: well_known::DNS_PORT,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            max_request_headers_kb: 60,
            max_request_headers_count: 100,
            request_headers_timeout: Duration::from_secs(10),
            retry_buffer_kb: 1024,
            max_concurrent_streams: 1024,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            exit_on_zero_active_connections: false,
            minimum_drain_duration: DEFAULT_DRAIN_TIMEOUT,
            concurrency: 0,
            ca_addr: None,
            trust_domain: rustmesh_xds::identity::DEFAULT_TRUST_DOMAIN.to_string(),
            service_account: None,
            secret_ttl: Duration::from_secs(24 * 3600),
            ca_token: PathBuf::from(crate::identity::ca_client::TOKEN_PATH),
            ca_root_cert: PathBuf::from(crate::identity::ca_client::ROOT_CERT_PATH),
            file_mounted_certs: None,
            status: Default::default(),
        }
    }
}

/// The HTTP connection manager the listeners hand HTTP chains to, built once at start with
/// Istio's metrics (whose registry everything is in) and this pod's workload (metric labels,
/// `sourceLabels`).
pub fn http_handler(
    istio: &Arc<IstioMetrics>,
    workload: &Arc<WorkloadInfo>,
    settings: HttpSettings,
) -> Arc<ConnectionManager> {
    let instance_ip = std::env::var("INSTANCE_IP")
        .ok()
        .and_then(|ip| ip.parse().ok());
    Arc::new(
        ConnectionManager::new(istio.clone(), workload.clone())
            .with_settings(settings)
            .with_instance_ip(instance_ip),
    )
}

/// This pod's workload, for the labels of Istio's metrics: `ISTIO_META_WORKLOAD_NAME` (else the
/// pod name without its ReplicaSet and pod suffixes, as Istio guesses), `POD_NAMESPACE`, and
/// the labels file (downward API; none if it cannot be read), `ISTIO_META_CLUSTER_ID` (else
/// Istio's `Kubernetes`) and `POD_NAME`.
pub fn workload_info(labels_file: &std::path::Path) -> WorkloadInfo {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let name = env("ISTIO_META_WORKLOAD_NAME")
        .or_else(|| env("POD_NAME").map(|pod| workload_from_pod_name(&pod)))
        .unwrap_or_default();
    let labels = std::fs::read_to_string(labels_file)
        .ok()
        .and_then(|t| rustmesh_xds::scope::parse_pod_labels(&t).ok())
        .unwrap_or_default();
    WorkloadInfo {
        name,
        namespace: env("POD_NAMESPACE").unwrap_or_default(),
        labels,
        // Istio's default cluster id.
        cluster: env("ISTIO_META_CLUSTER_ID").unwrap_or_else(|| "Kubernetes".to_string()),
        pod: env("POD_NAME").unwrap_or_default(),
    }
}

/// `productpage-v1-6c886ff494-7vxhs` → `productpage-v1` (Deployment pods); other names as
/// they are.
fn workload_from_pod_name(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    let hashy = |s: &str| {
        s.len() >= 5
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    if parts.len() >= 3 && hashy(parts[parts.len() - 1]) && hashy(parts[parts.len() - 2]) {
        parts[..parts.len() - 2].join("-")
    } else {
        pod.to_string()
    }
}

/// Keeps the DNS proxy's table equal to the `dns` entries of the current configuration.
async fn follow_dns(store: Arc<Store>, table: SharedTable) {
    let mut seen = None;
    loop {
        let current = store.changed(seen.as_ref()).await;
        table.store(Arc::new(DnsTable::new(&current.config.dns)));
        seen = Some(current);
    }
}

/// Raises the soft limit of open files to the hard one, as Envoy and Istio's agent do: every
/// proxied connection costs two descriptors, and the default soft limit (often 1024) would
/// cap the sidecar at a few hundred connections. One implementation for every part.
pub use rustmesh_xds::serve::raise_fd_limit;

impl RunArgs {
    /// What SIGTERM does: Istio's agent's choice between a fixed drain and
    /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`.
    pub fn drain_plan(&self) -> drain::Plan {
        if self.exit_on_zero_active_connections {
            drain::Plan::UntilIdle {
                minimum: self.minimum_drain_duration,
            }
        } else {
            drain::Plan::For(self.drain_timeout)
        }
    }
}

/// Runs the sidecar until SIGTERM and the drain are done.
pub fn run(args: &RunArgs) -> Result<()> {
    match raise_fd_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(e) => tracing::warn!("could not raise the open files limit: {e}"),
    }
    let workers = match args.concurrency {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
        .enable_all()
        .thread_name("proxy")
        .build()
        .map_err(Error::Runtime)?;
    let result = runtime.block_on(serve(args.clone()));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// [`run`] on the current runtime.
pub async fn serve(args: RunArgs) -> Result<()> {
    args.check_type()?;
    // One registry for everything: Istio's metrics own it, ours are registered into it.
    let istio = Arc::new(IstioMetrics::new());
    let mut metrics = Metrics::default();
    istio.register(|registry| metrics = Metrics::register(registry));
    let source = args.source();
    let labels_file = match &source {
        ConfigSource::Dir { pod_labels, .. } => pod_labels.clone(),
        ConfigSource::File(_) => args
            .pod_labels
            .clone()
            .unwrap_or_else(|| PathBuf::from(well_known::POD_INFO_MOUNT).join("labels")),
    };
    let workload = Arc::new(workload_info(&labels_file));
    let store = Arc::new(Store::new());
    let http = http_handler(&istio, &workload, args.http_settings());

    let identity = args.identity()?;
    // The workload certificate: empty (and staying so) without a CA, then every chain or
    // endpoint that needs mutual TLS refuses its connections.
    let certs = Arc::new(crate::identity::Store::default());
    if let Some(dir) = &args.file_mounted_certs {
        let cert = crate::identity::WorkloadCert::from_dir(dir, std::time::SystemTime::now())
            .map_err(|e| Error::InvalidFlag {
                flag: "--file-mounted-certs",
                value: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        tracing::info!(identity = %cert.identity, serial = %cert.serial, "workload certificate from files");
        certs.install(cert);
    }
    // DNS clusters (STRICT_DNS, LOGICAL_DNS) ask the resolvers the DNS proxy forwards to.
    let clusters = Arc::new(
        ClusterManager::with_identity(metrics.clone(), certs.clone()).with_lookup(Arc::new(
            crate::cluster::resolver::UpstreamLookup::new(&args.resolv_conf),
        )),
    );
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics: metrics.clone(),
        istio: istio.clone(),
        workload,
        http: http.clone(),
        identity: certs.clone(),
        original_source: args.proxy_type == ProxyType::Sidecar
            && args.interception_mode == Interception::Tproxy,
        router: args.proxy_type == ProxyType::Router,
    });

    // Everything is bound before anything is served: a bad address fails the start. A
    // router binds no capture listener: its own come with the configuration.
    let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let capture = match args.proxy_type {
        ProxyType::Sidecar => {
            let outbound =
                VirtualListener::new(Direction::Outbound, any(args.outbound_port), shared.clone())?;
            let inbound = match args.interception_mode {
                Interception::Tproxy => VirtualListener::new_transparent(
                    Direction::Inbound,
                    any(args.inbound_port),
                    shared.clone(),
                )?,
                Interception::Redirect | Interception::None => VirtualListener::new(
                    Direction::Inbound,
                    any(args.inbound_port),
                    shared.clone(),
                )?,
            };
            Some((outbound, inbound))
        }
        ProxyType::Router => None,
    };
    let router_status = (args.proxy_type == ProxyType::Router).then(BindStatus::default);
    let (signal, watch) = drain::channel();
    let quit = Arc::new(Notify::new());
    let mut bound: Vec<(String, SocketAddr)> = Vec::new();
    if let Some((outbound, inbound)) = &capture {
        for a in outbound.local_addrs() {
            bound.push((rustmesh_xds::names::VIRTUAL_OUTBOUND.into(), a));
        }
        for a in inbound.local_addrs() {
            bound.push((rustmesh_xds::names::VIRTUAL_INBOUND.into(), a));
        }
    }
    let state = Arc::new(AdminState {
        identity: (identity.is_some() || args.file_mounted_certs.is_some()).then(|| certs.clone()),
        store: store.clone(),
        metrics: metrics.clone(),
        prometheus: istio,
        draining: signal.flag(),
        quit: quit.clone(),
        bound,
        router: router_status.clone(),
    });
    let servers = [
        Server::bind(
            "admin",
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.admin_port),
            Endpoints::Admin,
            state.clone(),
        )?,
        Server::bind(
            "readiness",
            any(args.health_port),
            Endpoints::Health,
            state.clone(),
        )?,
        Server::bind(
            "prometheus",
            any(args.prometheus_port),
            Endpoints::Prometheus,
            state.clone(),
        )?,
    ];
    let app_metrics = args.status.app_metrics()?;
    let status = args.status.bind()?.map(|s| {
        s.with_agent(crate::status::Agent {
            admin: state.clone(),
            drain: signal.starter(),
            app_metrics,
        })
    });
    let dns = match args.dns_port {
        0 => None,
        port => {
            let resolv = ResolvConf::read(&args.resolv_conf).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "DNS proxy: no upstream resolvers, only mesh names are answered");
                ResolvConf::default()
            });
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            Some(
                DnsServer::bind(addr, DnsTable::default(), resolv)
                    .await
                    .map_err(|e| Error::Dns(Box::new(e)))?,
            )
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Runtime)?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(Error::Runtime)?;
    match &capture {
        Some((outbound, inbound)) => tracing::info!(
            outbound = ?outbound.local_addrs(),
            inbound = ?inbound.local_addrs(),
            admin = args.admin_port,
            readiness = args.health_port,
            prometheus = args.prometheus_port,
            ?source,
            api = ?args.api_target().map(|t| t.to_string()),
            "sidecar started"
        ),
        None => tracing::info!(
            router_mode = ?args.router_mode,
            admin = args.admin_port,
            readiness = args.health_port,
            prometheus = args.prometheus_port,
            ?source,
            api = ?args.api_target().map(|t| t.to_string()),
            "router started: no capture listeners; the configuration's bindToPort listeners \
             are bound as it comes"
        ),
    }

    let mut watcher = Watcher::new(
        source,
        store.clone(),
        clusters,
        metrics.clone(),
        http,
        args.config_poll_interval,
    );
    match args.api_target() {
        Some(target) => {
            let feed = api::follow(target.clone(), None);
            watcher.follow_api(target, feed);
        }
        None if args.config.is_none() && !args.no_api_watch => tracing::info!(
            "not following the configuration through the API (needs --config-configmap and \
             --config-namespace, or PROXY_CONFIGMAP and POD_NAMESPACE); polling the mount"
        ),
        None => {}
    }
    watcher.poll();
    tokio::spawn(watcher.run());
    // The sidecar's own connections by name (CA, tracing collectors) look in the mesh's name
    // table first.
    let names = name_table(store.clone());
    crate::trace::export::set_name_table(names.clone());
    if let Some((client, id)) = identity {
        let client = client.with_resolver(names);
        tracing::info!(identity = %id, "workload identity: asking the mesh CA for a certificate");
        certs.credentials().set_client(client.clone());
        tokio::spawn(crate::identity::manager::run(
            client,
            id,
            certs,
            watch.clone(),
        ));
    }
    for server in servers {
        tokio::spawn(server.run());
    }
    if let Some(status) = status {
        tokio::spawn(status.run(watch.clone()));
    }
    if let Some(dns) = dns {
        tokio::spawn(follow_dns(store.clone(), dns.table()));
        tokio::spawn(dns.run());
    }
    let listeners = match capture {
        Some((outbound, inbound)) => tokio::spawn({
            let (o, i) = (watch.clone(), watch.clone());
            async move {
                tokio::join!(outbound.run(o), inbound.run(i));
            }
        }),
        None => tokio::spawn(
            Router::new(shared.clone(), router_status.unwrap_or_default()).run(watch.clone()),
        ),
    };
    drop(watch);

    let why = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        () = quit.notified() => "/quitquitquit",
    };
    let plan = args.drain_plan();
    match plan {
        drain::Plan::For(duration) => tracing::info!(
            why,
            ?duration,
            "draining: not ready; the listeners keep serving, inbound connections close after \
             their request; exiting when the termination drain duration ends"
        ),
        drain::Plan::UntilIdle { minimum } => tracing::info!(
            why,
            ?minimum,
            "draining: not ready; the listeners keep serving, inbound connections close after \
             their request; exiting once the minimum drain duration has passed and no \
             connection is open"
        ),
    }
    let open = signal.terminate(plan).await;
    // The listeners stop accepting; what is still open closes with the process.
    let _ = tokio::time::timeout(Duration::from_secs(1), listeners).await;
    crate::access_log::flush();
    if open == 0 {
        tracing::info!("drained: no connection open; exiting");
    } else {
        tracing::info!(
            open,
            "drain over: exiting, closing the connections still open"
        );
    }
    Ok(())
}

/// The mesh's name table of the configuration `store` serves now (each lookup reads the
/// current one): an entry's FQDN or alias gives its first address.
fn name_table(store: Arc<crate::snapshot::Store>) -> crate::dns::NameTable {
    Arc::new(move |host: &str| {
        let snapshot = store.load()?;
        snapshot
            .config
            .dns
            .iter()
            .find(|e| e.name == host || e.aliases.iter().any(|a| a == host))?
            .addresses
            .first()
            .copied()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_from_pod_names() {
        assert_eq!(
            workload_from_pod_name("productpage-v1-6c886ff494-7vxhs"),
            "productpage-v1"
        );
        assert_eq!(workload_from_pod_name("web-0"), "web-0");
        assert_eq!(workload_from_pod_name("standalone"), "standalone");
    }

    #[test]
    fn flags_and_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let a = Cli::parse_from(["proxy"]).run;
        assert_eq!(
            a.source(),
            ConfigSource::Dir {
                dir: "/etc/rustmesh/config".into(),
                pod_labels: "/etc/istio/pod/labels".into(),
                role: ProxyRole::Sidecar,
            }
        );
        assert_eq!(a.drain_timeout, Duration::from_secs(5));
        assert_eq!((a.outbound_port, a.inbound_port), (15001, 15006));
        let a = Cli::parse_from([
            "proxy",
            "--config",
            "/tmp/c.json",
            "--drain-timeout",
            "1m30s",
        ])
        .run;
        assert_eq!(a.source(), ConfigSource::File("/tmp/c.json".into()));
        assert_eq!(a.api_target(), None, "--config never uses the API");
        assert_eq!(a.drain_timeout, Duration::from_secs(90));
        assert_eq!(a.drain_plan(), drain::Plan::For(Duration::from_secs(90)));
        let a = Cli::try_parse_from([
            "proxy",
            "--termination-drain-duration",
            "20s",
            "--exit-on-zero-active-connections",
            "--minimum-drain-duration",
            "2s",
        ])
        .unwrap()
        .run;
        assert_eq!(a.drain_timeout, Duration::from_secs(20));
        assert_eq!(
            a.drain_plan(),
            drain::Plan::UntilIdle {
                minimum: Duration::from_secs(2)
            }
        );
        for (value, on) in [("true", true), ("false", false), ("1", true), ("0", false)] {
            let a = Cli::try_parse_from(["proxy", "--exit-on-zero-active-connections", value])
                .unwrap()
                .run;
            assert_eq!(a.exit_on_zero_active_connections, on, "{value}");
        }
        assert!(
            Cli::try_parse_from(["proxy", "--exit-on-zero-active-connections", "sometimes"])
                .is_err(),
            "a value that is not a boolean is refused, never taken as on or off"
        );
        let a = Cli::parse_from([
            "proxy",
            "--config-configmap",
            "rustmesh-proxy-config",
            "--config-namespace",
            "shop",
        ])
        .run;
        assert_eq!(
            a.api_target(),
            Some(ApiTarget {
                namespace: "shop".into(),
                name: "rustmesh-proxy-config".into()
            })
        );
        let a = Cli::parse_from([
            "proxy",
            "--config-configmap",
            "rustmesh-proxy-config",
            "--config-namespace",
            "shop",
            "--no-api-watch",
        ])
        .run;
        assert_eq!(a.api_target(), None);
        assert!(Cli::try_parse_from(["proxy", "--config", "a", "--config-dir", "b"]).is_err());
        assert!(Cli::try_parse_from(["proxy", "--drain-timeout", "soon"]).is_err());
        // HTTP limits: defaults are Envoy's, flags change them, nonsense is refused.
        let d = Cli::parse_from(["proxy"]).run.http_settings();
        let e = crate::http::HttpSettings::default();
        assert_eq!(
            (
                d.max_request_headers_bytes,
                d.max_request_headers,
                d.header_read_timeout
            ),
            (
                e.max_request_headers_bytes,
                e.max_request_headers,
                e.header_read_timeout
            )
        );
        assert_eq!(
            (d.retry_buffer_bytes, d.max_concurrent_streams),
            (e.retry_buffer_bytes, e.max_concurrent_streams)
        );
        let s = Cli::parse_from([
            "proxy",
            "--max-request-headers-kb",
            "8",
            "--request-headers-timeout",
            "2s",
        ])
        .run
        .http_settings();
        assert_eq!(
            (s.max_request_headers_bytes, s.header_read_timeout),
            (8192, Duration::from_secs(2))
        );
        assert!(Cli::try_parse_from(["proxy", "--max-request-headers-kb", "0"]).is_err());
    }

    #[test]
    fn the_proxy_type_is_sidecar_or_router_and_a_router_refuses_tproxy() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let a = Cli::parse_from(["proxy"]).run;
        assert_eq!(a.proxy_type, ProxyType::Sidecar);
        assert!(a.check_type().is_ok());
        let a = Cli::parse_from(["proxy", "--type", "router", "--router-mode", "sni-dnat"]).run;
        assert_eq!(a.proxy_type, ProxyType::Router);
        assert_eq!(a.router_mode, Some(RouterMode::SniDnat));
        assert!(a.check_type().is_ok());
        let e = Cli::try_parse_from(["proxy", "--type", "ingress"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--type"), "{e}");
        let e = Cli::try_parse_from(["proxy", "--type", "router", "--router-mode", "dnat"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--router-mode"), "{e}");
        let a = Cli::parse_from(["proxy", "--type", "router", "--interception-mode", "TPROXY"]).run;
        let e = a.check_type().unwrap_err().to_string();
        assert!(
            e.contains("--interception-mode") && e.contains("router"),
            "{e}"
        );
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = raise_fd_limit().unwrap();
        assert_eq!(soft, hard);
    }

    #[test]
    fn the_identity_needs_namespace_and_service_account_and_names_what_is_missing() {
        let mut args = RunArgs::default();
        assert!(
            args.identity().unwrap().is_none(),
            "no CA_ADDR: no identity"
        );
        args.ca_addr = Some("istiod.istio-system.svc:15012".into());
        args.config_namespace = Some("bookinfo".into());
        let e = args.identity().unwrap_err().to_string();
        assert!(e.contains("SERVICE_ACCOUNT"), "{e}");
        args.service_account = Some("reviews".into());
        let (_, id) = args.identity().unwrap().unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
        args.trust_domain = "Not A Domain".into();
        let e = args.identity().unwrap_err().to_string();
        assert!(e.contains("trust domain"), "{e}");
        args.trust_domain = "cluster.local".into();
        args.ca_addr = Some("istiod:notaport".into());
        let e = args.identity().unwrap_err().to_string();
        assert!(e.contains("CA_ADDR"), "{e}");
    }
}
