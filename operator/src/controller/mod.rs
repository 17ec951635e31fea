//! The live part: watchers feed the [`Index`](crate::index::Index), changes are debounced, the affected namespaces are
//! re-rendered and their ConfigMaps server-side applied when (and only when) their content hash
//! differs from what is in the cluster; CR statuses are applied the same way.
//!
//! Guarantees:
//! - nothing is written before every watch has finished its initial list (a resync never writes
//!   an empty configuration: a relist replaces a kind atomically when it completes);
//! - only the Lease holder writes; the other replica keeps its index warm;
//! - a ConfigMap edited or deleted by hand is re-applied (the ConfigMaps are watched too and their
//!   live content hash compared with the rendered one).
//!
//! By job:
//! - `watches`: the watch streams (one per kind, EndpointSlices merged by [`crate::slices`]),
//!   turned into [`Msg`]s;
//! - `state`: the loop's state and decisions ([`State::handle`]: relists, sync gate, live
//!   ConfigMap hashes), pure and testable without an API server;
//! - `write`: the writes of a batch (render, ConfigMap and reader RBAC by server-side apply,
//!   retries);
//! - `status`: the CR statuses (computed from the validation, applied with the field manager
//!   `rustmesh-operator`) and `Invalid` events;
//! - this module: the wiring ([`run`]: client, metrics and health server, leader election, the
//!   loop).

mod state;
mod status;
#[cfg(test)]
mod tests;
mod watches;
mod write;

pub use state::{Msg, State};
pub use status::{status_changes, status_patch};

use crate::debounce::Debouncer;
use crate::error::Error;
use crate::index::MeshConfig;
use crate::leader::{self, LeaseConfig};
use crate::metrics::{Health, Metrics};
use crate::renderer::Renderer;
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use rustmesh_xds::well_known::OPERATOR_FIELD_MANAGER;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use watches::{serves_endpoint_slices, streams};
use write::Writer;

/// Everything `run` needs, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mesh: MeshConfig,
    pub metrics_addr: SocketAddr,
    pub debounce_quiet: Duration,
    pub debounce_max: Duration,
    /// `None` disables leader election (a single replica).
    pub lease: Option<LeaseConfig>,
    pub identity: String,
    pub endpoints_source: EndpointsSource,
    /// The mesh CA, or `None` when disabled (`--enable-ca-server=false`).
    pub ca: Option<CaSettings>,
}

/// The mesh CA's settings.
#[derive(Clone, Debug)]
pub struct CaSettings {
    /// Where the gRPC+TLS certificate service listens (Istio's 15012).
    pub addr: SocketAddr,
    /// Most connections the CA serves at once (`--ca-max-connections`).
    pub max_connections: usize,
    /// The trust domain of the SPIFFE ids it signs.
    pub trust_domain: String,
    /// The DNS names of its serving certificate (the Services sidecars reach it by).
    pub dns_names: Vec<String>,
}

/// Starts the mesh CA: its material from the root namespace (created on first start), its
/// server (bound now, so a bad address fails at start), and the root publisher.
async fn start_ca(
    client: &Client,
    settings: &Settings,
    ca: &CaSettings,
    metrics: &Metrics,
    leader: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    use crate::ca::{authority::Authority, publish, review::Reviewer, root, service};
    let namespace = &settings.mesh.root_namespace;
    let (material, source) = root::load_or_create(client, namespace, &ca.trust_domain)
        .await
        .map_err(|e| Error::Ca(e.to_string()))?;
    let authority = Arc::new(
        Authority::new(&ca.trust_domain, &material).map_err(|e| Error::Ca(e.to_string()))?,
    );
    tracing::info!(?source, trust_domain = %ca.trust_domain, addr = %ca.addr, "mesh CA ready");
    let bundle = authority.root_bundle().to_string();
    let service = Arc::new(
        service::Ca::new(
            authority,
            Reviewer::new(client.clone(), &ca.trust_domain),
            metrics.ca.clone(),
        )
        .with_credentials(Arc::new(crate::ca::credential::KubeSecrets::new(
            client.clone(),
        ))),
    );
    let server = service::CaServer::new(ca.addr, service, &ca.dns_names)
        .await
        .map_err(|e| Error::Ca(e.to_string()))?
        .with_max_connections(ca.max_connections);
    let mut stop = shutdown.clone();
    let serving = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = server.run(stopped).await {
            tracing::error!(error = %e, "mesh CA stopped");
        }
    });
    let publishing = tokio::spawn(publish::run(client.clone(), bundle, leader, shutdown));
    Ok(vec![serving, publishing])
}

/// Which API the endpoints are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointsSource {
    /// EndpointSlices when the API server serves `discovery.k8s.io/v1`, else Endpoints; a probe
    /// that gets no answer is asked again with back-off before falling back to Endpoints
    /// (`watches::decide`).
    Auto,
    EndpointSlices,
    Endpoints,
}

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn termination() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Server-side apply as the operator's field manager (`rustmesh-operator`), forcing ownership of
/// the fields it writes: every write of the controller uses these.
fn apply_params() -> PatchParams {
    PatchParams::apply(OPERATOR_FIELD_MANAGER).force()
}

/// Runs the operator until SIGTERM.
pub async fn run(settings: Settings) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("metrics on {}", settings.metrics_addr),
            source,
        })?;
    let app = crate::metrics::router(Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let mut http_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(crate::metrics::serve(
        listener,
        app,
        metrics.clone(),
        async move {
            let _ = http_shutdown.changed().await;
        },
    ));

    let leader = Arc::new(AtomicBool::new(settings.lease.is_none()));
    let (leader_tx, mut leader_rx) = watch::channel(settings.lease.is_none());
    let election = settings.lease.clone().map(|cfg| {
        let api = Api::namespaced(client.clone(), &cfg.namespace);
        tokio::spawn(leader::run(
            api,
            cfg,
            leader.clone(),
            leader_tx,
            shutdown_rx.clone(),
        ))
    });

    let ca_tasks = match &settings.ca {
        Some(ca) => {
            start_ca(
                &client,
                &settings,
                ca,
                &metrics,
                leader_rx.clone(),
                shutdown_rx.clone(),
            )
            .await?
        }
        None => Vec::new(),
    };

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: OPERATOR_FIELD_MANAGER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let mut writer = Writer {
        client: client.clone(),
        metrics: metrics.clone(),
        recorder,
        rbac_done: BTreeSet::new(),
        renderer: Renderer::default(),
    };
    let mut state = State::new(
        settings.mesh.clone(),
        Debouncer::new(settings.debounce_quiet, settings.debounce_max),
    );
    let slices = match settings.endpoints_source {
        EndpointsSource::Auto => serves_endpoint_slices(&client).await,
        EndpointsSource::EndpointSlices => true,
        EndpointsSource::Endpoints => false,
    };
    tracing::info!(
        source = if slices {
            "EndpointSlices"
        } else {
            "Endpoints"
        },
        "endpoints source"
    );
    let mut events = streams(&client, slices);
    // The key set fetcher (RequestAuthentication `jwksUri`s): given the sources the index needs,
    // it reports each fetch's outcome back into the loop.
    let (key_sources_tx, key_sources_rx) = watch::channel(Default::default());
    let (key_sets_tx, mut key_sets_rx) = tokio::sync::mpsc::channel(64);
    let fetcher = tokio::spawn(crate::jwks::run(
        Arc::new(crate::jwks::http::HttpFetch::system()),
        key_sources_rx,
        key_sets_tx,
        shutdown_rx.clone(),
    ));
    let term = termination();
    tokio::pin!(term);
    tracing::info!(identity = %settings.identity, "operator started; waiting for the initial sync");
    loop {
        let deadline = state.debouncer.deadline();
        let can_write = state.synced() && leader.load(Ordering::SeqCst);
        tokio::select! {
            msg = events.next() => {
                let Some(msg) = msg else { break };
                if let Msg::WatchError(kind, e) = &msg {
                    tracing::warn!(%kind, error = %e, "watch error; retrying with backoff");
                    metrics.error("watch");
                }
                if state.handle(msg, Instant::now()) {
                    ready.store(true, Ordering::SeqCst);
                    metrics.synced.set(1);
                    tracing::info!(
                        services = state.index.services.len(),
                        namespaces = state.index.injected_namespaces().count(),
                        "initial sync complete"
                    );
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending::<()>().await,
                }
            }, if state.synced() => {
                if let Some(batch) = state.debouncer.take_due(Instant::now()) {
                    if can_write {
                        writer.flush(&mut state, batch).await;
                    } else {
                        state.follow(batch, Instant::now());
                    }
                }
            }
            Some((source, report)) = key_sets_rx.recv() => {
                state.handle(Msg::KeySet(source, report), Instant::now());
            }
            changed = leader_rx.changed() => {
                if changed.is_ok() {
                    let is_leader = *leader_rx.borrow();
                    metrics.leader.set(i64::from(is_leader));
                    if is_leader {
                        // A new leader checks everything against the cluster.
                        writer.rbac_done.clear();
                        state.note_everything(Instant::now());
                    }
                }
            }
            _ = &mut term => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
        }
        if let Some(sources) = state.take_key_sources_change() {
            key_sources_tx.send_replace(sources);
        }
    }
    let _ = shutdown_tx.send(true);
    if let Some(e) = election {
        let _ = e.await;
    }
    let _ = server.await;
    let _ = fetcher.await;
    for task in ca_tasks {
        let _ = task.await;
    }
    Ok(())
}
