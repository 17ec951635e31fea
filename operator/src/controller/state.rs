//! The loop's state: the index as the watches fill it, which kinds have listed, the live
//! ConfigMaps' content hashes, and the debouncer; [`State::handle`] decides what a message
//! changes, without I/O.

use crate::configmap;
use crate::debounce::Debouncer;
use crate::index::{Affects, Index, Kind, MeshConfig, Object, WatchEvent};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

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
