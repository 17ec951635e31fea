//! The loop's state: the index as the watches fill it, which kinds have listed, the live
//! ConfigMaps' content hashes, the key set sources handed to the fetcher ([`crate::jwks`]) and
//! the debouncer; [`State::handle`] decides what a message changes, without I/O.
//!
//! Key sets: after a change of the RequestAuthentications (and after each flush, which may
//! change their last accepted versions) the sources they need are computed again; a change is
//! handed to the fetcher ([`State::take_key_sources_change`]) and sets no longer needed are
//! dropped from the index. A fetch's outcome ([`Msg::KeySet`]) re-renders the namespaces whose
//! policies use the source when what they render changed. While the first fetch of a new source
//! runs, a namespace that already has a ConfigMap is held back ([`State::held_back`]), at most
//! [`crate::jwks::first_fetch_wait`], so that an operator restart does not replace working key
//! sets with fail-closed ones for the fraction of a second the fetch takes; a namespace without
//! a ConfigMap is rendered at once (fail closed until the set arrives).

use crate::configmap;
use crate::debounce::Debouncer;
use crate::index::{Affects, Index, Kind, MeshConfig, Object, WatchEvent};
use crate::jwks::{Report, Source};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What the streams deliver to the loop.
#[derive(Debug)]
pub enum Msg {
    Index(Kind, WatchEvent),
    ConfigMap(Box<Event<ConfigMap>>),
    WatchError(String, String),
    /// What a key set fetch gave ([`crate::jwks::run`]).
    KeySet(Source, Report),
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
    /// The key set sources (and timeouts) the fetcher was last given.
    key_sources: BTreeMap<Source, Duration>,
    key_sources_changed: bool,
    /// Sources whose first fetch has not ended, and until when namespaces wait for them.
    key_sets_waiting: BTreeMap<Source, Instant>,
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
            key_sources: BTreeMap::new(),
            key_sources_changed: false,
            key_sets_waiting: BTreeMap::new(),
        }
    }

    /// Computes the key set sources again (see the module doc): sources no longer needed are
    /// dropped from the index, new ones wait for their first fetch.
    pub fn sync_key_sources(&mut self, now: Instant) {
        let wanted = self.index.key_sources();
        self.index.key_sets.retain(&wanted);
        if wanted.fetch == self.key_sources {
            return;
        }
        self.key_sets_waiting
            .retain(|s, _| wanted.fetch.contains_key(s));
        for (source, timeout) in &wanted.fetch {
            if !self.key_sources.contains_key(source) && self.index.key_sets.get(source).is_none() {
                self.key_sets_waiting.insert(
                    source.clone(),
                    now + crate::jwks::first_fetch_wait(*timeout),
                );
            }
        }
        self.key_sources = wanted.fetch;
        self.key_sources_changed = true;
    }

    /// The sources (and timeouts) to hand to the fetcher, when they changed since last taken.
    pub fn take_key_sources_change(&mut self) -> Option<BTreeMap<Source, Duration>> {
        std::mem::take(&mut self.key_sources_changed).then(|| self.key_sources.clone())
    }

    /// The namespaces to hold back at `now`, each until when: those with a ConfigMap already
    /// that render a rule whose key set's first fetch has not ended.
    pub fn held_back(&self, now: Instant) -> BTreeMap<String, Instant> {
        let mut out: BTreeMap<String, Instant> = BTreeMap::new();
        for (source, until) in &self.key_sets_waiting {
            if *until <= now {
                continue;
            }
            for ns in self.index.key_set_reach(source) {
                if self.live.contains_key(&ns) {
                    let at = out.entry(ns).or_insert(*until);
                    *at = (*at).max(*until);
                }
            }
        }
        out
    }

    /// What a replica that is not the leader does with a due batch: it writes nothing, but
    /// remembers what it would have accepted, as the leader does after a flush, so that should
    /// it become the leader (a rollout starts the new pod while the old one still leads), an
    /// invalid update of an object accepted before serves that version instead of dropping the
    /// object. The new leader then re-renders everything from that state.
    pub fn follow(&mut self, batch: crate::debounce::Batch, now: Instant) {
        if !batch.statuses {
            return;
        }
        let validation = crate::render::MeshView::new(&self.index).validation;
        self.index.remember_accepted(validation.accepted_keys());
        self.sync_key_sources(now);
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
        let key_sources_may_change = matches!(&msg, Msg::Index(Kind::RequestAuthentication, _));
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
                dirty.retain(|ns| self.index.is_mesh_namespace(ns));
                Affects::full(dirty, false)
            }
            Msg::WatchError(..) => Affects::default(),
            Msg::KeySet(source, report) => {
                self.key_sets_waiting.remove(&source);
                self.index.record_key_set(source, report)
            }
        };
        if key_sources_may_change {
            self.sync_key_sources(now);
        }
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
