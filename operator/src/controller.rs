//! The live part: watchers feed the [`Index`], changes are debounced, the affected namespaces are
//! re-rendered and their ConfigMaps server-side applied when (and only when) their content hash
//! differs from what is in the cluster; CR statuses are applied the same way.
//!
//! Guarantees:
//! - nothing is written before every watch has finished its initial list (a resync never writes
//!   an empty configuration: a relist replaces a kind atomically when it completes);
//! - only the Lease holder writes; the other replica keeps its index warm;
//! - a ConfigMap edited or deleted by hand is re-applied (the ConfigMaps are watched too and their
//!   live content hash compared with the rendered one).

use crate::configmap;
use crate::debounce::{Batch, Debouncer};
use crate::error::Error;
use crate::index::{Affects, Index, Kind, MeshConfig, ObjKey, Object};
use crate::kinds::{self, IstioKind, KindFn, for_kind};
use crate::leader::{self, LeaseConfig};
use crate::metrics::{Health, Metrics};
use crate::render::MeshView;
use crate::renderer::Renderer;
use crate::validation::status_for;
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use rustmesh_api::status::IstioStatus;
use rustmesh_xds::well_known::{OPERATOR_FIELD_MANAGER, PROXY_CONFIGMAP};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a failed write waits before it is retried.
const RETRY_DELAY: Duration = Duration::from_secs(2);

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
}

/// Which API the endpoints are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointsSource {
    /// EndpointSlices when the API server serves `discovery.k8s.io/v1`, else Endpoints.
    Auto,
    EndpointSlices,
    Endpoints,
}

/// One watch event, kind-independent.
#[derive(Debug)]
pub enum WatchEvent {
    Apply(Object),
    Delete(Kind, ObjKey),
    Init,
    InitApply(Object),
    InitDone,
}

/// What the streams deliver to the loop.
#[derive(Debug)]
pub enum Msg {
    Index(Kind, WatchEvent),
    ConfigMap(Box<Event<ConfigMap>>),
    WatchError(String, String),
}

/// The loop's state, separate from I/O so that its decisions can be tested.
pub struct State {
    pub index: Index,
    relists: BTreeMap<Kind, Vec<Object>>,
    synced: BTreeSet<Kind>,
    configmaps_synced: bool,
    /// Content hash of each namespace's live ConfigMap (absent: none in the cluster).
    pub live: BTreeMap<String, String>,
    cm_relist: Option<BTreeMap<String, String>>,
    /// Namespaces whose ConfigMap went away: their reader Role/RoleBinding may be gone too (a
    /// namespace deleted and created again under the same name), so the next flush applies
    /// them again.
    pub rbac_stale: BTreeSet<String>,
    pub debouncer: Debouncer,
}

impl State {
    pub fn new(mesh: MeshConfig, debouncer: Debouncer) -> Self {
        State {
            index: Index::new(mesh),
            relists: BTreeMap::new(),
            synced: BTreeSet::new(),
            configmaps_synced: false,
            live: BTreeMap::new(),
            cm_relist: None,
            rbac_stale: BTreeSet::new(),
            debouncer,
        }
    }

    /// Whether every watch has listed once.
    pub fn synced(&self) -> bool {
        self.configmaps_synced && Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// Applies one message; returns true when this message completed the initial sync.
    pub fn handle(&mut self, msg: Msg, now: Instant) -> bool {
        let was = self.synced();
        // A namespace that goes away or appears (again) has no reader Role of ours yet.
        match &msg {
            Msg::Index(Kind::Namespace, WatchEvent::Delete(_, key)) => {
                self.rbac_stale.insert(key.name.clone());
            }
            Msg::Index(Kind::Namespace, WatchEvent::Apply(Object::Namespace { name, .. }))
                if !self.index.namespaces.contains_key(name) =>
            {
                self.rbac_stale.insert(name.clone());
            }
            _ => {}
        }
        let affects = match msg {
            Msg::Index(kind, ev) => match ev {
                WatchEvent::Apply(o) => self.index.apply(o),
                WatchEvent::Delete(k, key) => self.index.delete(k, &key),
                WatchEvent::Init => {
                    self.relists.insert(kind, Vec::new());
                    Affects::default()
                }
                WatchEvent::InitApply(o) => {
                    self.relists.entry(kind).or_default().push(o);
                    Affects::default()
                }
                WatchEvent::InitDone => {
                    let objects = self.relists.remove(&kind).unwrap_or_default();
                    self.synced.insert(kind);
                    self.index.replace_kind(kind, objects)
                }
            },
            Msg::ConfigMap(ev) => {
                let mut dirty = BTreeSet::new();
                match *ev {
                    Event::Apply(cm) => {
                        let ns = cm.namespace().unwrap_or_default();
                        self.live.insert(ns.clone(), configmap::configmap_hash(&cm));
                        dirty.insert(ns);
                    }
                    Event::Delete(cm) => {
                        let ns = cm.namespace().unwrap_or_default();
                        self.live.remove(&ns);
                        self.rbac_stale.insert(ns.clone());
                        dirty.insert(ns);
                    }
                    Event::Init => self.cm_relist = Some(BTreeMap::new()),
                    Event::InitApply(cm) => {
                        let ns = cm.namespace().unwrap_or_default();
                        self.cm_relist
                            .get_or_insert_with(BTreeMap::new)
                            .insert(ns, configmap::configmap_hash(&cm));
                    }
                    Event::InitDone => {
                        // A relist is the whole truth: ConfigMaps deleted while the watch was
                        // down disappear from `live` (and are restored).
                        let listed = self.cm_relist.take().unwrap_or_default();
                        for ns in self.live.keys().chain(listed.keys()) {
                            if self.live.get(ns) != listed.get(ns) {
                                dirty.insert(ns.clone());
                            }
                            if !listed.contains_key(ns) {
                                self.rbac_stale.insert(ns.clone());
                            }
                        }
                        self.live = listed;
                        self.configmaps_synced = true;
                    }
                }
                // Only injected namespaces are ours to restore; the hash check in the flush
                // decides whether anything is written.
                dirty.retain(|ns| {
                    self.index
                        .namespaces
                        .get(ns)
                        .is_some_and(crate::index::is_injected)
                });
                Affects::full(dirty, false)
            }
            Msg::WatchError(..) => Affects::default(),
        };
        self.debouncer.note_change(
            affects.namespaces,
            affects.statuses,
            affects.endpoints_only,
            now,
        );
        let now_synced = !was && self.synced();
        if now_synced {
            self.note_everything(now);
        }
        now_synced
    }

    /// Marks every injected namespace and every status for re-rendering.
    pub fn note_everything(&mut self, now: Instant) {
        let all: Vec<String> = self
            .index
            .injected_namespaces()
            .map(str::to_string)
            .collect();
        self.debouncer.note(all, true, now);
    }
}

/// The server-side-apply body of a CR status (only `status` is owned by the operator).
pub fn status_patch(kind: Kind, status: &IstioStatus) -> serde_json::Value {
    let kind = kinds::kind_name(kind).unwrap_or_default();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "status": status,
    })
}

/// The status changes to write: `(kind, key, new status)` for each object whose computed status
/// differs from the one it carries.
pub fn status_changes(view: &MeshView<'_>, now: &str) -> Vec<(Kind, ObjKey, IstioStatus, bool)> {
    let mut out = Vec::new();
    for ((kind, key), verdict) in &view.validation.verdicts {
        struct Carried<'a>(&'a Index, &'a ObjKey);
        impl<'a> KindFn for Carried<'a> {
            type Out = (Option<i64>, Option<&'a IstioStatus>);
            fn call<K: IstioKind>(self) -> Self::Out {
                let o = &K::store(self.0).objects[self.1];
                (o.meta().generation, o.status())
            }
        }
        let Some((generation, current)) = for_kind(*kind, Carried(view.index, key)) else {
            continue;
        };
        let desired = status_for(verdict, generation, current, now);
        if current != Some(&desired) {
            let newly_invalid = !verdict.accepted
                && current
                    .and_then(|c| c.conditions.iter().find(|c| c.type_ == "Accepted"))
                    .is_none_or(|c| c.status != "False");
            out.push((*kind, key.clone(), desired, newly_invalid));
        }
    }
    out
}

fn index_stream<K, F>(
    stream: impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    kind: Kind,
    to_object: F,
) -> BoxStream<'static, Msg>
where
    K: Resource + Send + 'static,
    F: Fn(K) -> Object + Send + Sync + 'static,
{
    stream
        .map(move |ev| match ev {
            Ok(Event::Apply(o)) => Msg::Index(kind, WatchEvent::Apply(to_object(o))),
            Ok(Event::InitApply(o)) => Msg::Index(kind, WatchEvent::InitApply(to_object(o))),
            Ok(Event::Delete(o)) => Msg::Index(kind, WatchEvent::Delete(kind, to_object(o).key())),
            Ok(Event::Init) => Msg::Index(kind, WatchEvent::Init),
            Ok(Event::InitDone) => Msg::Index(kind, WatchEvent::InitDone),
            Err(e) => Msg::WatchError(format!("{kind:?}"), e.to_string()),
        })
        .boxed()
}

/// The watch of one Istio kind, for every kind registered in [`kinds::for_kind`].
struct IstioWatch<'a>(&'a Client);

impl KindFn for IstioWatch<'_> {
    type Out = BoxStream<'static, Msg>;
    fn call<K: IstioKind>(self) -> Self::Out {
        index_stream(
            watcher::watcher(Api::<K>::all(self.0.clone()), watcher::Config::default())
                .default_backoff(),
            K::KIND,
            K::into_object,
        )
    }
}

/// Whether the API server serves EndpointSlices (`discovery.k8s.io/v1`, Kubernetes 1.21+).
async fn serves_endpoint_slices(client: &Client) -> bool {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) => list.resources.iter().any(|r| r.name == "endpointslices"),
        Err(e) => {
            tracing::debug!(error = %e, "discovery.k8s.io/v1 not served");
            false
        }
    }
}

/// EndpointSlices, merged per service into the Endpoints the index holds
/// ([`crate::slices::SliceWatch`]).
fn endpoint_slice_stream(client: &Client) -> BoxStream<'static, Msg> {
    let mut adapter = crate::slices::SliceWatch::default();
    watcher::watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .flat_map(move |ev| {
        let msgs: Vec<Msg> = match ev {
            Ok(ev) => adapter
                .on(ev)
                .into_iter()
                .map(|w| Msg::Index(Kind::Endpoints, w))
                .collect(),
            Err(e) => vec![Msg::WatchError("EndpointSlice".into(), e.to_string())],
        };
        futures::stream::iter(msgs)
    })
    .boxed()
}

fn streams(client: &Client, slices: bool) -> SelectAll<BoxStream<'static, Msg>> {
    let cfg = || watcher::Config::default();
    let mut all = SelectAll::new();
    all.push(index_stream(
        watcher::watcher(Api::<Service>::all(client.clone()), cfg()).default_backoff(),
        Kind::Service,
        |s| Object::Service(Box::new(s)),
    ));
    if slices {
        all.push(endpoint_slice_stream(client));
    } else {
        all.push(index_stream(
            watcher::watcher(Api::<Endpoints>::all(client.clone()), cfg()).default_backoff(),
            Kind::Endpoints,
            |e| Object::Endpoints(Box::new(e)),
        ));
    }
    all.push(index_stream(
        watcher::watcher(Api::<PartialObjectMeta<Pod>>::all(client.clone()), cfg())
            .default_backoff(),
        Kind::Pod,
        |p| Object::Pod {
            key: ObjKey::new(p.namespace().unwrap_or_default(), p.name_any()),
            labels: p.labels().clone(),
        },
    ));
    all.push(index_stream(
        watcher::watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            cfg(),
        )
        .default_backoff(),
        Kind::Namespace,
        |n| Object::Namespace {
            name: n.name_any(),
            labels: n.labels().clone(),
        },
    ));
    all.extend(
        kinds::ISTIO_KINDS
            .iter()
            .filter_map(|k| for_kind(*k, IstioWatch(client))),
    );
    all.push(
        watcher::watcher(
            Api::<ConfigMap>::all(client.clone()),
            cfg().fields(&format!("metadata.name={PROXY_CONFIGMAP}")),
        )
        .default_backoff()
        .map(|ev| match ev {
            Ok(ev) => Msg::ConfigMap(Box::new(ev)),
            Err(e) => Msg::WatchError("ConfigMap".into(), e.to_string()),
        })
        .boxed(),
    );
    all
}

/// Whether a write was refused because its namespace is being deleted (retrying is pointless:
/// the namespace's delete event follows).
fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("because it is being terminated"))
}

/// Performs the writes of a batch.
struct Writer {
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    rbac_done: BTreeSet<String>,
    renderer: Renderer,
}

impl Writer {
    fn pp() -> PatchParams {
        PatchParams::apply(OPERATOR_FIELD_MANAGER).force()
    }

    async fn flush(&mut self, state: &mut State, batch: Batch) {
        let started = Instant::now();
        for ns in std::mem::take(&mut state.rbac_stale) {
            self.rbac_done.remove(&ns);
        }
        // Built on first use: a batch of endpoint changes rendered incrementally needs none.
        let mut view: Option<MeshView<'_>> = None;
        let mut plan = self
            .renderer
            .plan(&state.index, batch.endpoints_only.as_ref());
        let injected: BTreeSet<String> = state
            .index
            .injected_namespaces()
            .map(str::to_string)
            .collect();
        let mut wrote = false;
        for ns in batch.namespaces.iter().filter(|n| injected.contains(*n)) {
            let t = Instant::now();
            let rendered = self
                .renderer
                .render(&mut plan, &state.index, &mut view, ns)
                .map(|(r, path)| (r.clone(), path));
            self.metrics
                .render_seconds
                .observe(t.elapsed().as_secs_f64());
            let rendered = match rendered {
                Ok((r, path)) => {
                    self.metrics.render_path(path.as_str());
                    r
                }
                Err(e) => {
                    tracing::error!(namespace = %ns, error = %e, "render failed; ConfigMap left as it is");
                    self.metrics.error("render");
                    self.metrics.reconcile("error");
                    self.publish_render_error(ns, &e.to_string()).await;
                    continue;
                }
            };
            for (key, scope) in &rendered.scopes {
                self.metrics.scope_bytes(ns, key, scope.gz_bytes());
            }
            if !self.rbac_done.contains(ns) {
                match self.apply_rbac(ns).await {
                    Ok(()) => {
                        self.rbac_done.insert(ns.clone());
                    }
                    Err(e) if namespace_terminating(&e) => {
                        // Its delete event follows; a namespace created again under the same
                        // name is a new one, rendered (and given a Role) from its create event.
                        tracing::debug!(namespace = %ns, "namespace terminating: reader Role not applied, not retried");
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "applying the reader Role failed; retrying");
                        self.metrics.error("rbac");
                        // Retried even when the ConfigMap itself is unchanged: without the
                        // Role the namespace's proxies cannot follow it through the API.
                        state
                            .debouncer
                            .note([ns.clone()], false, Instant::now() + RETRY_DELAY);
                    }
                }
            }
            let bytes = rendered.payload_bytes();
            if bytes > configmap::MAX_PAYLOAD_BYTES {
                let msg = format!(
                    "the rendered configuration takes {bytes} bytes, over the ConfigMap limit of {}; narrow the namespace's view with a Sidecar (egress hosts)",
                    configmap::MAX_PAYLOAD_BYTES
                );
                tracing::error!(namespace = %ns, "{msg}");
                self.metrics.error("too_large");
                self.metrics.reconcile("error");
                self.publish_render_error(ns, &msg).await;
                continue;
            }
            let hash = rendered.hash();
            if state.live.get(ns) == Some(&hash) {
                self.metrics.reconcile("unchanged");
                continue;
            }
            match self
                .apply_configmap(configmap::config_map_with_hash(&rendered, hash.clone()))
                .await
            {
                Ok(()) => {
                    tracing::info!(namespace = %ns, hash = %hash, bytes, "ConfigMap applied");
                    state.live.insert(ns.clone(), hash);
                    self.metrics.reconcile("written");
                    wrote = true;
                }
                Err(e) if namespace_terminating(&e) => {
                    tracing::debug!(namespace = %ns, "namespace terminating: ConfigMap not written, not retried");
                    self.metrics.reconcile("skipped");
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "applying the ConfigMap failed; retrying in 2 s");
                    self.metrics.error("apply");
                    self.metrics.reconcile("error");
                    // Not at once: a namespace being deleted refuses every write until it is
                    // gone, and an immediate retry spun at ~10 writes a second.
                    state
                        .debouncer
                        .note([ns.clone()], false, Instant::now() + RETRY_DELAY);
                }
            }
        }
        if wrote && let Some(since) = batch.changed_at {
            self.metrics
                .change_to_write_seconds
                .observe(since.elapsed().as_secs_f64());
        }
        if batch.statuses {
            let view = view.get_or_insert_with(|| MeshView::new(&state.index));
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            for (kind, key, status, newly_invalid) in status_changes(view, &now) {
                if let Err(e) = self.apply_status(kind, &key, &status).await {
                    tracing::warn!(object = %key, ?kind, error = %e, "status write failed; retrying");
                    self.metrics.error("status");
                    state
                        .debouncer
                        .note(Vec::new(), true, Instant::now() + RETRY_DELAY);
                    continue;
                }
                self.metrics.status_writes.inc();
                if newly_invalid {
                    self.publish_invalid(&state.index, kind, &key, &status)
                        .await;
                }
            }
        }
        // What was accepted now is what an invalid update of it will fall back to (without a
        // view the batch changed no Istio object).
        if let Some(view) = view {
            let validation = view.validation.clone();
            drop(view);
            state.index.remember_accepted(validation.accepted_keys());
        }
        tracing::debug!(elapsed = ?started.elapsed(), "flush done");
    }

    async fn apply_configmap(&self, cm: ConfigMap) -> Result<(), kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(
            self.client.clone(),
            cm.metadata.namespace.as_deref().unwrap_or_default(),
        );
        api.patch(PROXY_CONFIGMAP, &Self::pp(), &Patch::Apply(cm))
            .await
            .map(|_| ())
    }

    async fn apply_rbac(&self, ns: &str) -> Result<(), kube::Error> {
        let roles: Api<Role> = Api::namespaced(self.client.clone(), ns);
        roles
            .patch(
                configmap::READER_ROLE,
                &Self::pp(),
                &Patch::Apply(configmap::reader_role(ns)),
            )
            .await?;
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), ns);
        bindings
            .patch(
                configmap::READER_ROLE,
                &Self::pp(),
                &Patch::Apply(configmap::reader_role_binding(ns)),
            )
            .await?;
        Ok(())
    }

    async fn apply_status(
        &self,
        kind: Kind,
        key: &ObjKey,
        status: &IstioStatus,
    ) -> Result<(), kube::Error> {
        struct PatchStatus<'a>(&'a Client, &'a ObjKey, Patch<serde_json::Value>);
        impl<'a> KindFn for PatchStatus<'a> {
            type Out = futures::future::BoxFuture<'a, Result<(), kube::Error>>;
            fn call<K: IstioKind>(self) -> Self::Out {
                let PatchStatus(client, key, body) = self;
                Box::pin(async move {
                    Api::<K>::namespaced(client.clone(), &key.namespace)
                        .patch_status(&key.name, &Writer::pp(), &body)
                        .await
                        .map(|_| ())
                })
            }
        }
        let body = Patch::Apply(status_patch(kind, status));
        match for_kind(kind, PatchStatus(&self.client, key, body)) {
            Some(write) => write.await,
            None => Ok(()),
        }
    }

    /// A Warning Event on the Namespace whose configuration could not be rendered.
    async fn publish_render_error(&self, ns: &str, message: &str) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(ns.to_string()),
            ..Default::default()
        };
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: "RenderFailed".into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Render".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "event not recorded");
            self.metrics.error("event");
        }
    }

    async fn publish_invalid(&self, index: &Index, kind: Kind, key: &ObjKey, status: &IstioStatus) {
        struct Reference<'a>(&'a Index, &'a ObjKey);
        impl KindFn for Reference<'_> {
            type Out = Option<k8s_openapi::api::core::v1::ObjectReference>;
            fn call<K: IstioKind>(self) -> Self::Out {
                Some(K::store(self.0).objects.get(self.1)?.object_ref(&()))
            }
        }
        let Some(reference) = for_kind(kind, Reference(index, key)).flatten() else {
            return;
        };
        let note = status.conditions.first().and_then(|c| c.message.clone());
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: "Invalid".into(),
            note,
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "event not recorded");
            self.metrics.error("event");
        }
    }
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
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.changed().await;
            })
            .await;
    });

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
            }, if can_write => {
                if let Some(batch) = state.debouncer.take_due(Instant::now()) {
                    writer.flush(&mut state, batch).await;
                }
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
    }
    let _ = shutdown_tx.send(true);
    if let Some(e) = election {
        let _ = e.await;
    }
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{bookinfo, istio};

    fn fast() -> Debouncer {
        Debouncer::new(Duration::from_millis(10), Duration::from_millis(50))
    }

    #[test]
    fn nothing_is_due_before_every_watch_listed_and_relists_are_atomic() {
        let mut state = State::new(MeshConfig::default(), fast());
        let t0 = Instant::now();
        let source = bookinfo();
        // Namespaces list first.
        state.handle(Msg::Index(Kind::Namespace, WatchEvent::Init), t0);
        for (name, labels) in &source.namespaces {
            state.handle(
                Msg::Index(
                    Kind::Namespace,
                    WatchEvent::InitApply(Object::Namespace {
                        name: name.clone(),
                        labels: labels.clone(),
                    }),
                ),
                t0,
            );
        }
        assert!(state.index.namespaces.is_empty(), "buffered until InitDone");
        state.handle(Msg::Index(Kind::Namespace, WatchEvent::InitDone), t0);
        assert_eq!(state.index.namespaces.len(), 3);
        for kind in Kind::ALL.iter().filter(|k| **k != Kind::Namespace) {
            assert!(!state.synced());
            state.handle(Msg::Index(*kind, WatchEvent::Init), t0);
            state.handle(Msg::Index(*kind, WatchEvent::InitDone), t0);
        }
        assert!(!state.synced(), "ConfigMaps not listed yet");
        let done = state.handle(Msg::ConfigMap(Box::new(Event::InitDone)), t0);
        assert!(done && state.synced());
        let batch = state
            .debouncer
            .take_due(t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(batch.namespaces.iter().collect::<Vec<_>>(), ["default"]);
        assert!(batch.statuses);
    }

    #[test]
    fn a_hand_edited_or_deleted_configmap_is_marked_for_restoring() {
        let mut state = State::new(MeshConfig::default(), fast());
        state.index = bookinfo();
        let t0 = Instant::now();
        let view = MeshView::new(&state.index);
        let r = configmap::render_namespace(&view, "default").unwrap();
        let cm = configmap::config_map(&r);
        state.live.insert("default".into(), r.hash());
        let mut edited = cm.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("scopes.json".into(), "{}".into());
        state.handle(Msg::ConfigMap(Box::new(Event::Apply(edited))), t0);
        assert_ne!(state.live["default"], r.hash());
        let b = state
            .debouncer
            .take_due(t0 + Duration::from_secs(1))
            .unwrap();
        assert!(b.namespaces.contains("default"));
        state.handle(Msg::ConfigMap(Box::new(Event::Delete(cm))), t0);
        assert!(!state.live.contains_key("default"));
        // A relist that no longer has it (deleted while the watch was down) marks it too.
        state.live.insert("default".into(), r.hash());
        state.debouncer.take_due(t0 + Duration::from_secs(10));
        state.handle(
            Msg::ConfigMap(Box::new(Event::Init)),
            t0 + Duration::from_secs(11),
        );
        state.handle(
            Msg::ConfigMap(Box::new(Event::InitDone)),
            t0 + Duration::from_secs(11),
        );
        assert!(state.live.is_empty());
        let b = state
            .debouncer
            .take_due(t0 + Duration::from_secs(12))
            .unwrap();
        assert!(b.namespaces.contains("default"));
        // Not-injected namespaces are not ours.
        let mut foreign = configmap::config_map(&r);
        foreign.metadata.namespace = Some("kube-system".into());
        state.handle(
            Msg::ConfigMap(Box::new(Event::Apply(foreign))),
            t0 + Duration::from_secs(20),
        );
        assert!(!state.debouncer.pending());
    }

    #[test]
    fn status_patches_are_computed_only_when_they_change() {
        let mut index = bookinfo();
        istio(
            &mut index,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default, generation: 2}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v9}}]}]\n",
        );
        let view = MeshView::new(&index);
        let changes = status_changes(&view, "t0");
        let (kind, key, status, newly_invalid) = changes
            .iter()
            .find(|(k, key, ..)| *k == Kind::VirtualService && key.name == "r")
            .unwrap()
            .clone();
        assert!(newly_invalid);
        let body = status_patch(kind, &status);
        assert_eq!(body["apiVersion"], "networking.istio.io/v1");
        assert_eq!(body["kind"], "VirtualService");
        assert_eq!(body["status"]["conditions"][0]["type"], "Accepted");
        assert_eq!(body["status"]["conditions"][0]["status"], "False");
        assert_eq!(body["status"]["conditions"][0]["reason"], "Invalid");
        assert_eq!(body["status"]["observedGeneration"], 2);
        assert!(body.get("spec").is_none(), "status apply must not own spec");
        // Once the object carries that status, nothing more is written.
        index.virtual_services.objects.get_mut(&key).unwrap().status = Some(status);
        let view = MeshView::new(&index);
        assert!(
            status_changes(&view, "t1")
                .iter()
                .all(|(_, k, ..)| k != &key)
        );
    }

    /// Requests seen by the fake API server: (method, uri, content type, JSON body).
    type RequestLog = Arc<std::sync::Mutex<Vec<(String, String, String, serde_json::Value)>>>;

    /// A fake API server: records every request and answers with a plausible object.
    fn fake_api() -> (Client, RequestLog) {
        fake_api_refusing(Arc::new(std::sync::atomic::AtomicBool::new(false)))
    }

    /// While `refuse_roles` is set, writes of Roles and RoleBindings are forbidden (403).
    fn fake_api_refusing(refuse_roles: Arc<std::sync::atomic::AtomicBool>) -> (Client, RequestLog) {
        fake_api_refusing_under("/apis/rbac.authorization.k8s.io/", refuse_roles)
    }

    /// A fake API server answering 403 to requests under `refused_path` while `refuse` is set.
    fn fake_api_refusing_under(
        refused_path: &'static str,
        refuse_roles: Arc<std::sync::atomic::AtomicBool>,
    ) -> (Client, RequestLog) {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let seen = seen.clone();
            let refuse_roles = refuse_roles.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                seen.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.to_string(),
                    content_type,
                    body.clone(),
                ));
                let mut answer = body;
                if answer.get("metadata").is_none() {
                    let name = parts
                        .uri
                        .path()
                        .split('/')
                        .rev()
                        .nth(1)
                        .unwrap_or("x")
                        .to_string();
                    answer["metadata"] = json!({"name": name});
                }
                if refuse_roles.load(std::sync::atomic::Ordering::SeqCst)
                    && parts.uri.path().contains(refused_path)
                {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Forbidden", "code": 403, "message": "roles is forbidden"});
                    return Ok(http::Response::builder()
                        .status(403)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&status).unwrap(),
                        ))
                        .unwrap());
                }
                if answer["kind"] == "DestinationRule" {
                    answer["spec"] = json!({"host": "h"});
                } else if answer.get("spec").is_none() && answer["kind"] != "ConfigMap" {
                    answer["spec"] = json!({});
                }
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&answer).unwrap(),
                        ))
                        .unwrap(),
                )
            }
        });
        (Client::new(svc, "default"), log)
    }

    /// A writer on `client`, counting into `metrics`.
    fn test_writer(client: Client, metrics: Arc<Metrics>) -> Writer {
        Writer {
            client: client.clone(),
            metrics,
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: OPERATOR_FIELD_MANAGER.into(),
                    instance: Some("test".into()),
                },
            ),
            rbac_done: BTreeSet::new(),
            renderer: Renderer::default(),
        }
    }

    #[tokio::test]
    async fn a_refused_reader_role_is_retried_though_the_configmap_is_unchanged() {
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (client, log) = fake_api_refusing(refuse.clone());
        let metrics = Arc::new(Metrics::new());
        let mut writer = test_writer(client, metrics.clone());
        let mut state = State::new(MeshConfig::default(), fast());
        state.index = bookinfo();
        let t0 = Instant::now();
        state.note_everything(t0);
        let batch = state
            .debouncer
            .take_due(t0 + Duration::from_secs(1))
            .unwrap();
        writer.flush(&mut state, batch).await;
        assert!(metrics.render().contains("errors_total{kind=\"rbac\"} 1"));
        assert!(!writer.rbac_done.contains("default"));
        // A retry is due for the namespace, after the retry delay.
        let retry = state
            .debouncer
            .take_due(Instant::now() + RETRY_DELAY + Duration::from_secs(1))
            .expect("a retry is scheduled");
        assert!(retry.namespaces.contains("default"));
        refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        log.lock().unwrap().clear();
        writer.flush(&mut state, retry).await;
        let requests = log.lock().unwrap().clone();
        assert!(
            requests.iter().any(|(m, uri, ..)| m == "PATCH"
                && uri.contains("/namespaces/default/roles/rustmesh-proxy-config-reader")),
            "{requests:#?}"
        );
        assert!(
            !requests
                .iter()
                .any(|(_, uri, ..)| uri.contains("configmaps")),
            "the ConfigMap is unchanged: {requests:#?}"
        );
        assert!(writer.rbac_done.contains("default"));
    }

    #[tokio::test]
    async fn a_refused_configmap_write_is_retried_after_the_delay_not_at_once() {
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (client, _log) = fake_api_refusing_under("/configmaps/", refuse);
        let metrics = Arc::new(Metrics::new());
        let mut writer = test_writer(client, metrics.clone());
        let mut state = State::new(MeshConfig::default(), fast());
        state.index = bookinfo();
        let t0 = Instant::now();
        state.note_everything(t0);
        let batch = state
            .debouncer
            .take_due(t0 + Duration::from_secs(1))
            .unwrap();
        let flushed = Instant::now();
        writer.flush(&mut state, batch).await;
        assert!(metrics.render().contains("errors_total{kind=\"apply\"} 1"));
        assert!(
            state
                .debouncer
                .take_due(flushed + RETRY_DELAY / 2)
                .is_none(),
            "no retry before the delay"
        );
        let retry = state
            .debouncer
            .take_due(Instant::now() + RETRY_DELAY + Duration::from_secs(1))
            .expect("a retry after the delay");
        assert!(retry.namespaces.contains("default"));
    }

    #[tokio::test]
    async fn a_namespace_recreated_under_the_same_name_gets_the_reader_role_again() {
        let (client, log) = fake_api();
        let mut writer = test_writer(client, Arc::new(Metrics::new()));
        let mut state = State::new(MeshConfig::default(), fast());
        state.index = bookinfo();
        let t0 = Instant::now();
        state.note_everything(t0);
        let due = |state: &mut State| {
            state
                .debouncer
                .take_due(Instant::now() + Duration::from_secs(5))
                .expect("a batch is due")
        };
        let batch = due(&mut state);
        writer.flush(&mut state, batch).await;
        let role_patches = |log: &RequestLog| {
            log.lock()
                .unwrap()
                .iter()
                .filter(|(m, uri, ..)| {
                    m == "PATCH"
                        && uri.contains("/namespaces/default/roles/rustmesh-proxy-config-reader")
                })
                .count()
        };
        assert_eq!(role_patches(&log), 1);
        // The namespace is deleted with everything in it: the ConfigMap's delete event comes.
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(PROXY_CONFIGMAP.into());
        cm.metadata.namespace = Some("default".into());
        state.handle(Msg::ConfigMap(Box::new(Event::Delete(cm))), Instant::now());
        let batch = due(&mut state);
        writer.flush(&mut state, batch).await;
        assert_eq!(role_patches(&log), 2, "the Role is applied again");
        // That apply can reach the old namespace while it terminates (a patch of the Role that
        // still exists succeeds), and the namespace controller deletes the Role after it. So
        // the namespace's own delete and create events mark its RBAC for applying again too.
        let labels = state.index.namespaces["default"].clone();
        state.handle(
            Msg::Index(
                Kind::Namespace,
                WatchEvent::Delete(Kind::Namespace, ObjKey::new("", "default")),
            ),
            Instant::now(),
        );
        state.handle(
            Msg::Index(
                Kind::Namespace,
                WatchEvent::Apply(Object::Namespace {
                    name: "default".into(),
                    labels,
                }),
            ),
            Instant::now(),
        );
        let batch = due(&mut state);
        writer.flush(&mut state, batch).await;
        assert_eq!(
            role_patches(&log),
            3,
            "the recreated namespace gets the Role"
        );
    }

    #[test]
    fn writes_into_a_terminating_namespace_are_recognised() {
        let api = |code, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "Forbidden")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(namespace_terminating(&api(
            403,
            "configmaps \"rustmesh-proxy-config\" is forbidden: unable to create new content in namespace shop because it is being terminated"
        )));
        assert!(!namespace_terminating(&api(
            403,
            "configmaps is forbidden: User cannot create resource"
        )));
        assert!(!namespace_terminating(&api(
            500,
            "because it is being terminated"
        )));
    }

    #[tokio::test]
    async fn a_flush_applies_configmap_rbac_and_status_once() {
        let (client, log) = fake_api();
        let metrics = Arc::new(Metrics::new());
        let mut writer = test_writer(client, metrics.clone());
        let mut state = State::new(MeshConfig::default(), fast());
        state.index = bookinfo();
        istio(
            &mut state.index,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v9}}]}]\n",
        );
        let t0 = Instant::now();
        state.note_everything(t0);
        let batch = state
            .debouncer
            .take_due(t0 + Duration::from_secs(1))
            .unwrap();
        writer.flush(&mut state, batch).await;
        let requests = log.lock().unwrap().clone();
        let find = |path: &str| {
            requests
                .iter()
                .find(|(m, uri, ..)| m == "PATCH" && uri.contains(path))
                .unwrap_or_else(|| panic!("no PATCH of {path} in {requests:#?}"))
                .clone()
        };
        let (_, uri, ct, body) =
            find("/api/v1/namespaces/default/configmaps/rustmesh-proxy-config");
        assert!(uri.contains("fieldManager=rustmesh-operator") && uri.contains("force=true"));
        assert_eq!(ct, "application/apply-patch+yaml");
        assert!(body["binaryData"]["default.json.gz"].is_string());
        find(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/rustmesh-proxy-config-reader",
        );
        find(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/rustmesh-proxy-config-reader",
        );
        let (_, _, _, status) =
            find("/apis/networking.istio.io/v1/namespaces/default/virtualservices/r/status");
        assert_eq!(status["status"]["conditions"][0]["reason"], "Invalid");
        assert!(
            requests
                .iter()
                .any(|(m, uri, ..)| m == "POST" && uri.contains("events"))
        );
        assert!(
            metrics
                .render()
                .contains("reconciles_total{result=\"written\"} 1")
        );

        // The same content again: no ConfigMap write (the live hash matches).
        log.lock().unwrap().clear();
        state.note_everything(t0 + Duration::from_secs(2));
        let batch = state
            .debouncer
            .take_due(t0 + Duration::from_secs(5))
            .unwrap();
        writer.flush(&mut state, batch).await;
        let again = log.lock().unwrap().clone();
        assert!(
            !again.iter().any(|(_, uri, ..)| uri.contains("configmaps")),
            "{again:#?}"
        );
        assert!(
            metrics
                .render()
                .contains("reconciles_total{result=\"unchanged\"} 1")
        );
    }

    #[test]
    fn configmap_apply_body_is_complete_and_managed() {
        let index = bookinfo();
        let view = MeshView::new(&index);
        let r = configmap::render_namespace(&view, "default").unwrap();
        let body = serde_json::to_value(configmap::config_map(&r)).unwrap();
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "ConfigMap");
        assert_eq!(body["metadata"]["name"], PROXY_CONFIGMAP);
        assert_eq!(body["metadata"]["namespace"], "default");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            OPERATOR_FIELD_MANAGER
        );
        assert!(body["metadata"]["annotations"]["rustmesh.io/config-hash"].is_string());
        assert!(body["binaryData"]["default.json.gz"].is_string());
        assert!(body["data"]["scopes.json"].is_string());
    }
}
