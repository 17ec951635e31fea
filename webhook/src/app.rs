//! The command line and the wiring: certificates, settings, Kubernetes watches, the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustmesh_xds::serve::Gate;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::kube_sync;
use crate::metrics::Metrics;
use crate::server::{self, AppState, Readiness, ServerHandle};
use crate::settings::InjectionSettings;
use crate::shared_cert;
use crate::tls::{self, Authority, CertFiles, CertResolver};

/// `webhook`: the rustmesh sidecar injector (a mutating admission webhook).
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "webhook", version, about)]
pub struct Args {
    /// Address of the HTTPS listener (`POST /inject`, `/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,

    /// Optional plain-HTTP listener for `/healthz`, `/readyz` and `/metrics` only.
    #[arg(long, env = "WEBHOOK_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,

    /// Name of the webhook's Service (the generated certificate's DNS names).
    #[arg(long, env = "WEBHOOK_SERVICE", default_value = "rustmesh-webhook")]
    pub service: String,

    /// Namespace of the webhook (its Service and settings ConfigMap).
    #[arg(long, env = "POD_NAMESPACE", default_value = "rustmesh-system")]
    pub namespace: String,

    /// Extra DNS name or IP address for the generated certificate (repeatable).
    #[arg(long = "extra-san")]
    pub extra_sans: Vec<String>,

    /// Serving certificate (PEM, e.g. a mounted Secret's `tls.crt`); with `--tls-key-file`.
    /// Without both, a CA and certificate are generated at start.
    #[arg(long, env = "WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key of `--tls-cert-file` (PEM, e.g. `tls.key`).
    #[arg(long, env = "WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How often to check the mounted certificate files for a change, in seconds.
    #[arg(long, default_value_t = 10)]
    pub tls_reload_interval_secs: u64,

    /// Validity of the generated serving certificate, in days; it is renewed two thirds in.
    #[arg(long, default_value_t = 365)]
    pub cert_validity_days: u32,

    /// MutatingWebhookConfiguration whose `caBundle` is kept equal to the shared certificate's
    /// CA (the Secret `--tls-secret`). Ignored with `--tls-cert-file` (whoever issues that
    /// certificate owns the bundle).
    #[arg(long, env = "WEBHOOK_CONFIG_NAME")]
    pub webhook_config: Option<String>,

    /// ValidatingWebhookConfiguration (the Istio kinds' validation, `POST /validate`) whose
    /// `caBundle` is kept like `--webhook-config`'s. Ignored with `--tls-cert-file`.
    #[arg(long, env = "WEBHOOK_VALIDATING_CONFIG_NAME")]
    pub validating_webhook_config: Option<String>,

    /// Secret in `--namespace` holding the serving certificate every replica shares
    /// (`tls.crt`, `tls.key`, `ca.crt`), created by the first replica that finds it missing and
    /// rotated before expiry; used with `--webhook-config`/`--validating-webhook-config` and a
    /// generated certificate. Default: `<--service>-tls`.
    #[arg(long, env = "WEBHOOK_TLS_SECRET")]
    pub tls_secret: Option<String>,

    /// Settings file (YAML/JSON: flat keys, or a ConfigMap manifest). Read once at start.
    /// Invalid (or without `image`): the webhook runs but is not ready (`/readyz` says why).
    #[arg(long, env = "WEBHOOK_SETTINGS_FILE")]
    pub settings_file: Option<PathBuf>,

    /// Settings ConfigMap in `--namespace`, watched: changes apply without restart.
    #[arg(long, env = "WEBHOOK_SETTINGS_CONFIGMAP")]
    pub settings_configmap: Option<String>,

    /// Look namespaces' labels up (a cached watch of all namespaces) instead of trusting the
    /// webhook configuration's namespaceSelector alone. Needs list/watch on namespaces.
    #[arg(long, env = "WEBHOOK_NAMESPACE_LOOKUP")]
    pub namespace_lookup: bool,

    /// Largest accepted request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Time to receive a request body, in seconds; slower ones get 408.
    #[arg(long, default_value_t = server::DEFAULT_REQUEST_TIMEOUT.as_secs())]
    pub request_timeout_secs: u64,

    /// Most connections the HTTPS listener serves at once; more are closed as they are
    /// accepted (and counted in `rustmesh_webhook_connections_refused_total{port="https"}`).
    #[arg(long, env = "WEBHOOK_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
}

/// A started webhook: the HTTPS server and its background tasks.
pub struct Webhook {
    /// Where the HTTPS server listens.
    pub local_addr: SocketAddr,
    /// Where the plain ops listener listens, when enabled.
    pub ops_addr: Option<SocketAddr>,
    /// The generated CA (PEM), `None` with a mounted or shared certificate.
    pub ca_pem: Option<String>,
    /// What this replica wrote for the shared certificate (Secret, caBundle patches); `None`
    /// unless the certificate is shared.
    pub cert_writes: Option<Arc<shared_cert::Writes>>,
    /// The handler state (settings, metrics, readiness).
    pub state: AppState,
    authority: Option<Arc<Authority>>,
    dns_names: Vec<String>,
    cert_validity_days: u32,
    resolver: Arc<CertResolver>,
    server: ServerHandle,
    tasks: Vec<JoinHandle<()>>,
    ops_shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Sets everything up and starts serving. Kubernetes is only contacted when a flag asks for
    /// it (`--webhook-config` with a generated certificate, `--settings-configmap`,
    /// `--namespace-lookup`); without them the webhook runs anywhere.
    pub async fn start(args: Args) -> Result<Webhook> {
        Self::start_with_client(args, None).await
    }

    /// [`Webhook::start`] with this Kubernetes client instead of the environment's (tests).
    pub async fn start_with_client(args: Args, client: Option<kube::Client>) -> Result<Webhook> {
        let mounted = match (&args.tls_cert_file, &args.tls_key_file) {
            (Some(cert), Some(key)) => Some(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(Error::Flag {
                    flag: "--tls-cert-file/--tls-key-file",
                    reason: "give both or neither".to_owned(),
                });
            }
        };
        let managed_configs: Vec<shared_cert::WebhookConfig> = args
            .webhook_config
            .iter()
            .cloned()
            .map(shared_cert::WebhookConfig::Mutating)
            .chain(
                args.validating_webhook_config
                    .iter()
                    .cloned()
                    .map(shared_cert::WebhookConfig::Validating),
            )
            .collect();
        if mounted.is_some() && !managed_configs.is_empty() {
            tracing::warn!(
                "--webhook-config/--validating-webhook-config ignored: with a mounted certificate its issuer owns the caBundle"
            );
        }
        // A generated certificate with webhook configurations to keep: one shared by every
        // replica, through a Secret.
        let shared = mounted.is_none() && !managed_configs.is_empty();
        let needs_kube = shared || args.settings_configmap.is_some() || args.namespace_lookup;

        // Settings: the file's, replaced by the ConfigMap's (if any) once listed. There is no
        // built-in default (no published image to name): without valid settings the webhook
        // serves but is not ready, and `/readyz` says why.
        let (initial, problem) = match &args.settings_file {
            Some(path) => match InjectionSettings::from_file(path) {
                Ok(s) => (Some(s), None),
                Err(e) => {
                    tracing::error!(error = %e, "invalid injection settings: not ready");
                    (None, Some(format!("invalid injection settings: {e}")))
                }
            },
            None => (None, None),
        };
        let problem = match (&args.settings_configmap, problem) {
            (_, Some(p)) => Some(p),
            (Some(name), None) => Some(format!(
                "waiting for the settings ConfigMap {}/{name} to be listed",
                args.namespace
            )),
            (None, None) if initial.is_none() => Some(
                "no injection settings: give --settings-file or --settings-configmap (the `image` key is required)"
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if let (None, Some(p)) = (&args.settings_configmap, &problem) {
            tracing::error!("{p}");
        }

        let client = if let Some(c) = client.filter(|_| needs_kube) {
            Some(c)
        } else if needs_kube {
            Some(kube::Client::try_default().await?)
        } else if initial
            .as_ref()
            .is_some_and(|s| s.native_sidecars == crate::settings::NativeSidecars::Auto)
        {
            // Only needed for the /version probe: without a cluster, `auto` means off.
            match kube::Client::try_default().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "nativeSidecars: auto, but no Kubernetes API to ask; native sidecars off");
                    None
                }
            }
        } else {
            None
        };
        let native = match &client {
            Some(c) => kube_sync::probe_native_sidecars(c).await,
            None => None,
        };

        let ready = Arc::new(match problem {
            Some(p) => Readiness::not_ready(p),
            None => Readiness::ready(),
        });
        let state = AppState {
            settings: Arc::new(ArcSwapOption::from(
                initial.map(|s| Arc::new(s.resolve(native))),
            )),
            metrics: Arc::new(Metrics::new()),
            namespaces: None,
            ready: ready.clone(),
            max_body_bytes: args.max_body_bytes,
            request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        };
        let mut state = state;
        let mut tasks = Vec::new();

        // Certificates.
        let dns_names = tls::service_dns_names(&args.service, &args.namespace, &args.extra_sans);
        let mut cert_writes = None;
        let (resolver, authority) = match (&mounted, &client) {
            (Some(files), _) => {
                let key = tls::load_pem_files(&files.cert, &files.key)?;
                let resolver = CertResolver::new(key);
                tasks.push(tokio::spawn(tls::reload_files(
                    resolver.clone(),
                    files.clone(),
                    Duration::from_secs(args.tls_reload_interval_secs.max(1)),
                )));
                (resolver, None)
            }
            (None, Some(client)) if shared => {
                // Until the shared Secret is read, a throwaway certificate no bundle trusts
                // (the webhook is not ready meanwhile: readiness condition "certificate").
                let now = SystemTime::now();
                let placeholder = Authority::generate(now)?.issue(&dns_names, 1, now)?;
                let resolver = CertResolver::new(placeholder.certified);
                let writes = Arc::new(shared_cert::Writes::default());
                let secret = args
                    .tls_secret
                    .clone()
                    .unwrap_or_else(|| format!("{}-tls", args.service));
                tasks.push(tokio::spawn(shared_cert::run(
                    client.clone(),
                    shared_cert::SharedCertConfig {
                        namespace: args.namespace.clone(),
                        secret,
                        dns_names: dns_names.clone(),
                        validity_days: args.cert_validity_days,
                        configs: managed_configs.clone(),
                    },
                    resolver.clone(),
                    ready.clone(),
                    writes.clone(),
                )));
                cert_writes = Some(writes);
                (resolver, None)
            }
            (None, _) => {
                let now = SystemTime::now();
                let authority = Arc::new(Authority::generate(now)?);
                let issued = authority.issue(&dns_names, args.cert_validity_days, now)?;
                let resolver = CertResolver::new(issued.certified);
                tasks.push(tokio::spawn(tls::rotate(
                    authority.clone(),
                    resolver.clone(),
                    dns_names.clone(),
                    args.cert_validity_days,
                    issued.renew_at,
                )));
                (resolver, Some(authority))
            }
        };
        let ca_pem = authority.as_ref().map(|a| a.ca_pem().to_owned());

        // Kubernetes.
        if let Some(client) = &client {
            if let Some(name) = &args.settings_configmap {
                tasks.push(tokio::spawn(kube_sync::watch_settings(
                    client.clone(),
                    args.namespace.clone(),
                    name.clone(),
                    state.settings.clone(),
                    native,
                    ready.clone(),
                )));
            }
            if args.namespace_lookup {
                let (lookup, feed) = kube_sync::namespace_cache(client.clone());
                state.namespaces = Some(lookup);
                tasks.push(tokio::spawn(feed));
            }
        }

        // Listeners.
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: args.listen.to_string(),
                source,
            })?;
        let tls_config = tls::server_config(resolver.clone())?;
        let metrics = state.metrics.clone();
        let gate = Gate::new("webhook https", args.max_connections)
            .on_refused(move || metrics.refused("https"));
        let server = server::serve_tls(
            listener,
            tls_config,
            server::router(state.clone()),
            server::https_limits(args.max_connections),
            Arc::new(gate),
        );
        let local_addr = server.local_addr;

        let (ops_addr, ops_shutdown) = match args.ops_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Listen {
                        addr: addr.to_string(),
                        source,
                    })?;
                let bound = l.local_addr().ok();
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let app = server::ops_router(state.clone());
                let metrics = state.metrics.clone();
                let gate = Gate::new("webhook ops", server::OPS_LIMITS.max_connections)
                    .on_refused(move || metrics.refused("ops"));
                tasks.push(tokio::spawn(async move {
                    let stop = async move {
                        let _ = rx.await;
                    };
                    if let Err(e) = server::serve_plain(l, app, Arc::new(gate), stop).await {
                        tracing::error!(error = %e, "ops listener failed");
                    }
                }));
                (bound, Some(tx))
            }
            None => (None, None),
        };

        tracing::info!(
            addr = %local_addr,
            certificate = if mounted.is_some() { "mounted" } else if shared { "shared Secret" } else { "generated" },
            settings_configmap = ?args.settings_configmap,
            namespace_lookup = args.namespace_lookup,
            "webhook serving"
        );
        Ok(Webhook {
            local_addr,
            ops_addr,
            ca_pem,
            cert_writes,
            state,
            authority,
            dns_names,
            cert_validity_days: args.cert_validity_days,
            resolver,
            server,
            tasks,
            ops_shutdown,
        })
    }

    /// Issues a new serving certificate from the generated CA now and serves it to new
    /// connections (also done automatically before expiry, and on SIGHUP). No-op with a mounted
    /// or shared certificate (delete the Secret to have the replicas make a new one).
    pub fn renew_certificate(&self) -> Result<()> {
        if let Some(authority) = &self.authority {
            let issued =
                authority.issue(&self.dns_names, self.cert_validity_days, SystemTime::now())?;
            self.resolver.set(issued.certified);
            tracing::info!("serving certificate renewed on request");
        }
        Ok(())
    }

    /// The certificate chain currently served (DER, leaf first).
    pub fn served_chain(&self) -> Vec<Vec<u8>> {
        self.resolver
            .current()
            .cert
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect()
    }

    /// Stops: not ready, stop accepting, let in-flight requests finish, stop the watches.
    pub async fn shutdown(self) {
        self.state
            .ready
            .set_condition("shutdown", Some("shutting down".to_owned()));
        if let Some(tx) = self.ops_shutdown {
            let _ = tx.send(());
        }
        self.server.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Runs the webhook until SIGTERM or Ctrl-C; SIGHUP renews a generated certificate.
pub async fn run(args: Args) -> Result<()> {
    // kube's client and our server both use ring; make it the process default too, so that no
    // dependency can pick another provider (or panic for lack of one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Every connection costs a descriptor: the soft limit (often 1024) up to the hard one.
    rustmesh_xds::serve::raise_fd_limit_logged();
    let webhook = Webhook::start(args).await?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let stop = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = hup => {
                if let Err(e) = webhook.renew_certificate() {
                    tracing::error!(error = %e, "renewing the certificate");
                }
            }
            _ = stop => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    webhook.shutdown().await;
    Ok(())
}
