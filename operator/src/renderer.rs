//! Rendering batch after batch. The [`Renderer`] keeps each namespace's last output, so that a
//! batch made only of endpoint changes recomputes the endpoints of the clusters it touches and
//! re-encodes only their endpoint parts, instead of rendering, validating and compressing every
//! scope again (in an open mesh every namespace sees every service, so one pod going unready
//! used to re-render the whole mesh).
//!
//! The incremental path is taken only when it gives exactly what a full render would:
//! - every change of the batch is an Endpoints object (no Service, Pod label, namespace or
//!   Istio object change, no restore of a hand-edited ConfigMap, no retry);
//! - each such service renders the same listeners, routes, clusters and DNS names as before:
//!   same shape ([`Svc::same_shape`]: ports, protocols, resolved target ports, cluster IP, and
//!   the service accounts of the pods behind each port, whose SPIFFE ids its clusters expect
//!   under mutual TLS), not headless (whose endpoint addresses are listeners), and the same
//!   inbound scopes in its own namespace ([`serves_scope`]);
//! - the namespace was rendered before (its output is known).
//!
//! Otherwise the namespace is rendered in full. `operator/tests/render_props.rs` checks on random
//! meshes that both paths give byte-identical ConfigMaps.

use crate::configmap::{Encoder, RenderedNamespace, render_namespace_with};
use crate::error::Error;
use crate::index::{Index, ObjKey};
use crate::registry::{Registry, Svc};
use crate::render::{MeshView, serves_scope};
use rustmesh_xds::names::service_fqdn;
use rustmesh_xds::scope::endpoint_part_of;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How a namespace was rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderPath {
    /// Every scope rendered, validated and encoded.
    Full,
    /// Only the endpoints of changed services recomputed, in the last output.
    Endpoints,
}

impl RenderPath {
    pub fn as_str(self) -> &'static str {
        match self {
            RenderPath::Full => "full",
            RenderPath::Endpoints => "endpoints",
        }
    }
}

/// What one batch may reuse.
pub struct Plan {
    /// The services whose endpoints changed (FQDN, the service now), when the whole batch
    /// qualifies for the incremental path.
    changed: Option<Vec<(String, Option<Svc>)>>,
    encoder: Encoder,
    /// The renderer's registry was taken from this batch's view.
    registry_synced: bool,
}

impl Plan {
    /// Whether the batch may take the incremental path.
    pub fn incremental(&self) -> bool {
        self.changed.is_some()
    }
}

/// The last output of each namespace, and the services as it saw them.
#[derive(Default)]
pub struct Renderer {
    registry: Option<Registry>,
    last: BTreeMap<String, RenderedNamespace>,
}

impl Renderer {
    /// Plans a batch. `endpoints_only`: the services whose Endpoints changed when that is all
    /// the batch holds (`None`: anything else changed too).
    pub fn plan(&mut self, index: &Index, endpoints_only: Option<&BTreeSet<ObjKey>>) -> Plan {
        self.last.retain(|ns, _| index.is_mesh_namespace(ns));
        let mut plan = Plan {
            changed: None,
            encoder: Encoder::default(),
            registry_synced: false,
        };
        let (Some(keys), Some(registry)) = (endpoints_only, self.registry.as_mut()) else {
            return plan;
        };
        let mut changed = Vec::new();
        for key in keys {
            let fqdn = service_fqdn(&key.name, &key.namespace, &index.mesh.domain_suffix);
            let now = Registry::service(index, key);
            match (registry.get(&fqdn), &now) {
                (None, None) => continue,
                (Some(before), Some(after))
                    if !before.headless()
                        && !after.headless()
                        && before.same_shape(after)
                        && self
                            .last
                            .get(&key.namespace)
                            .is_none_or(|own| same_inbound(own, before, after)) => {}
                _ => return plan,
            }
            changed.push((fqdn, now));
        }
        for (_, svc) in &changed {
            if let Some(svc) = svc {
                registry.update_endpoints(svc.clone());
            }
        }
        plan.changed = Some(changed);
        plan
    }

    /// Renders one namespace for the batch: incrementally when the plan and the namespace's
    /// last output allow it, else in full from `view` (built on first use, and kept for the
    /// caller).
    pub fn render<'a>(
        &mut self,
        plan: &mut Plan,
        index: &'a Index,
        view: &mut Option<MeshView<'a>>,
        namespace: &str,
    ) -> Result<(&RenderedNamespace, RenderPath), Error> {
        if let (Some(changed), Some(last)) = (&plan.changed, self.last.get(namespace))
            && let Some(next) = patch(last, changed, &mut plan.encoder)?
        {
            self.last.insert(namespace.to_string(), next);
            return Ok((&self.last[namespace], RenderPath::Endpoints));
        }
        let view = view.get_or_insert_with(|| MeshView::new(index));
        if !plan.registry_synced {
            self.registry = Some(view.registry.clone());
            plan.registry_synced = true;
        }
        if let Some(last) = self.last.get(namespace) {
            plan.encoder.reuse(last);
        }
        match render_namespace_with(view, namespace, &mut plan.encoder) {
            Ok(r) => {
                self.last.insert(namespace.to_string(), r);
                Ok((&self.last[namespace], RenderPath::Full))
            }
            Err(e) => {
                self.last.remove(namespace);
                Err(e)
            }
        }
    }

    /// The last output of a namespace.
    pub fn last(&self, namespace: &str) -> Option<&RenderedNamespace> {
        self.last.get(namespace)
    }
}

/// Whether a service's pods select the same scopes of its own namespace before and after (its
/// ports are inbound ports of exactly those scopes).
fn same_inbound(own: &RenderedNamespace, before: &Svc, after: &Svc) -> bool {
    let index = &own.index;
    std::iter::once(index.default.as_str())
        .chain(index.selectors.iter().map(|s| s.key.as_str()))
        .all(|key| serves_scope(before, index, key) == serves_scope(after, index, key))
}

/// The last output with the endpoints of the changed services recomputed; `None` when it does
/// not hold what the change needs (then the namespace is rendered in full).
fn patch(
    last: &RenderedNamespace,
    changed: &[(String, Option<Svc>)],
    encoder: &mut Encoder,
) -> Result<Option<RenderedNamespace>, Error> {
    let mut scopes = BTreeMap::new();
    for (key, scope) in &last.scopes {
        let mut next = scope.clone();
        let n = next.endpoints.len();
        let mut touched = BTreeSet::new();
        for (fqdn, svc) in changed {
            for recipe in scope.recipes.get(fqdn).into_iter().flatten() {
                let p = endpoint_part_of(&recipe.cluster, n);
                let Some(list) = next.endpoints.get_mut(p) else {
                    return Ok(None);
                };
                let Ok(i) = list.binary_search_by(|c| c.cluster_name.as_str().cmp(&recipe.cluster))
                else {
                    return Ok(None);
                };
                let assignment = recipe.assignment(svc.as_ref());
                if list[i] != assignment {
                    Arc::make_mut(list)[i] = assignment;
                    touched.insert(p);
                }
            }
        }
        for p in touched {
            let key = next.parts[p].key.clone();
            next.parts[p] = encoder.endpoint_part(key, &next.endpoints[p]);
            next.endpoints[p] = encoder.share(&next.parts[p], next.endpoints[p].clone());
        }
        scopes.insert(key.clone(), next);
    }
    Ok(Some(RenderedNamespace::new(
        last.namespace.clone(),
        last.index.clone(),
        scopes,
    )))
}
