//! The writes of a batch: render the affected namespaces, apply their ConfigMaps (only when the
//! content hash differs from the live one) and reader RBAC by server-side apply, then the
//! statuses ([`super::status`]); failed writes are retried after [`RETRY_DELAY`].

use super::apply_params;
use super::state::State;
use super::status::{apply_status, publish_invalid, status_changes};
use crate::configmap;
use crate::debounce::Batch;
use crate::metrics::Metrics;
use crate::render::MeshView;
use crate::renderer::Renderer;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, Patch};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use rustmesh_xds::well_known::PROXY_CONFIGMAP;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a failed write waits before it is retried.
pub(super) const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Whether a write was refused because its namespace is being deleted (retrying is pointless:
/// the namespace's delete event follows).
pub(super) fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("because it is being terminated"))
}

/// Performs the writes of a batch.
pub(super) struct Writer {
    pub(super) client: Client,
    pub(super) metrics: Arc<Metrics>,
    pub(super) recorder: Recorder,
    pub(super) rbac_done: BTreeSet<String>,
    pub(super) renderer: Renderer,
}

impl Writer {
    pub(super) async fn flush(&mut self, state: &mut State, batch: Batch) {
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
        // Namespaces waiting for the first fetch of a key set they render (`State::held_back`):
        // noted again for when the wait ends; the fetch's outcome notes them sooner.
        let held = state.held_back(Instant::now());
        for ns in batch.namespaces.iter().filter(|n| injected.contains(*n)) {
            if let Some(until) = held.get(ns) {
                tracing::debug!(namespace = %ns, "held back until its key sets are fetched");
                state.debouncer.note([ns.clone()], false, *until);
                continue;
            }
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
                if let Err(e) = apply_status(&self.client, kind, &key, &status).await {
                    tracing::warn!(object = %key, ?kind, error = %e, "status write failed; retrying");
                    self.metrics.error("status");
                    state
                        .debouncer
                        .note(Vec::new(), true, Instant::now() + RETRY_DELAY);
                    continue;
                }
                self.metrics.status_writes.inc();
                if newly_invalid {
                    publish_invalid(
                        &self.recorder,
                        &self.metrics,
                        &state.index,
                        kind,
                        &key,
                        &status,
                    )
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
            // The last accepted RequestAuthentications may need other key sets.
            state.sync_key_sources(Instant::now());
        }
        tracing::debug!(elapsed = ?started.elapsed(), "flush done");
    }

    pub(super) async fn apply_configmap(&self, cm: ConfigMap) -> Result<(), kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(
            self.client.clone(),
            cm.metadata.namespace.as_deref().unwrap_or_default(),
        );
        api.patch(PROXY_CONFIGMAP, &apply_params(), &Patch::Apply(cm))
            .await
            .map(|_| ())
    }

    pub(super) async fn apply_rbac(&self, ns: &str) -> Result<(), kube::Error> {
        let roles: Api<Role> = Api::namespaced(self.client.clone(), ns);
        roles
            .patch(
                configmap::READER_ROLE,
                &apply_params(),
                &Patch::Apply(configmap::reader_role(ns)),
            )
            .await?;
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), ns);
        bindings
            .patch(
                configmap::READER_ROLE,
                &apply_params(),
                &Patch::Apply(configmap::reader_role_binding(ns)),
            )
            .await?;
        Ok(())
    }

    /// A Warning Event on the Namespace whose configuration could not be rendered.
    pub(super) async fn publish_render_error(&self, ns: &str, message: &str) {
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
}
