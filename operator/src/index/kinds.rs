//! The Istio kinds the operator handles, behind one trait, and the one generic store they live in.
//!
//! Each networking.istio.io kind implements [`IstioKind`] (its tag in the index, where the index
//! keeps it, which injected namespaces it reaches, its `status`) and is listed once in
//! [`for_kind`] and [`ISTIO_KINDS`]; the index, the watches, the status writes and the events are
//! generic over the trait, so they need no per-kind code. See "Adding an Istio kind" in the
//! crate's README.

use crate::index::{Index, Kind, ObjKey, Object};
use kube::core::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use rustmesh_api::status::IstioStatus;
use rustmesh_api::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, RequestAuthentication,
    ServiceEntry, Sidecar, Telemetry, VirtualService,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

/// One Istio kind: a namespaced custom resource with an `IstioStatus`, stored in the [`Index`].
pub trait IstioKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The index's tag for this kind (verdicts, watch events and deletions are keyed by it).
    const KIND: Kind;

    /// The index's [`Object`] carrying this object.
    fn into_object(self) -> Object;

    /// Where the index keeps this kind.
    fn store(index: &Index) -> &KindStore<Self>;
    fn store_mut(index: &mut Index) -> &mut KindStore<Self>;

    /// Injected namespaces whose configuration this object (as it is or was) may change.
    fn reach(&self, index: &Index) -> BTreeSet<String>;

    /// The status the object carries (the operator's last write, as watched).
    fn status(&self) -> Option<&IstioStatus>;
}

/// The objects of one Istio kind: the current version of each, and the last accepted version
/// rendered in place of an invalid update (also persisted in the object's `status.lastAccepted`,
/// from which a restarted operator restores it: `Index::put`).
#[derive(Clone, Debug)]
pub struct KindStore<T> {
    pub objects: BTreeMap<ObjKey, T>,
    pub last_good: BTreeMap<ObjKey, T>,
}

impl<T> Default for KindStore<T> {
    fn default() -> Self {
        KindStore {
            objects: BTreeMap::new(),
            last_good: BTreeMap::new(),
        }
    }
}

impl<T: Clone> KindStore<T> {
    /// Removes an object and its last accepted version.
    pub fn remove(&mut self, key: &ObjKey) {
        self.objects.remove(key);
        self.last_good.remove(key);
    }

    /// Remembers the current version of `key` as the one to render should a later update of it
    /// be invalid.
    pub fn remember(&mut self, key: &ObjKey) {
        if let Some(o) = self.objects.get(key) {
            self.last_good.insert(key.clone(), o.clone());
        }
    }
}

/// A computation generic over the Istio kind, run for a runtime [`Kind`] by [`for_kind`].
pub trait KindFn {
    type Out;
    fn call<K: IstioKind>(self) -> Self::Out;
}

/// Every Istio kind the operator handles (the watches and the readiness gate use this list).
pub const ISTIO_KINDS: [Kind; 9] = [
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::Sidecar,
    Kind::PeerAuthentication,
    Kind::AuthorizationPolicy,
    Kind::RequestAuthentication,
    Kind::Telemetry,
    Kind::ServiceEntry,
    Kind::Gateway,
];

/// The registration: runs `f` with the type of an Istio `kind`; `None` for the core kinds.
pub fn for_kind<F: KindFn>(kind: Kind, f: F) -> Option<F::Out> {
    Some(match kind {
        Kind::VirtualService => f.call::<VirtualService>(),
        Kind::DestinationRule => f.call::<DestinationRule>(),
        Kind::Sidecar => f.call::<Sidecar>(),
        Kind::PeerAuthentication => f.call::<PeerAuthentication>(),
        Kind::AuthorizationPolicy => f.call::<AuthorizationPolicy>(),
        Kind::RequestAuthentication => f.call::<RequestAuthentication>(),
        Kind::Telemetry => f.call::<Telemetry>(),
        Kind::ServiceEntry => f.call::<ServiceEntry>(),
        Kind::Gateway => f.call::<Gateway>(),
        Kind::Service | Kind::Endpoints | Kind::Pod | Kind::Namespace => return None,
    })
}

/// The kind's name as the API server spells it (`VirtualService`).
pub fn kind_name(kind: Kind) -> Option<String> {
    struct Name;
    impl KindFn for Name {
        type Out = String;
        fn call<K: IstioKind>(self) -> String {
            K::kind(&()).into_owned()
        }
    }
    for_kind(kind, Name)
}

impl IstioKind for VirtualService {
    const KIND: Kind = Kind::VirtualService;
    fn into_object(self) -> Object {
        Object::VirtualService(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.virtual_services
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.virtual_services
    }
    /// A root (with hosts) reaches its `exportTo` audience; a delegate (without hosts) renders
    /// only through the roots naming it, so it reaches theirs.
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        let key = ObjKey::of(self);
        if self.spec.hosts.is_empty() {
            index.delegate_audience(&key)
        } else {
            index.exported_to(&key.namespace, &self.spec.export_to)
        }
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for DestinationRule {
    const KIND: Kind = Kind::DestinationRule;
    fn into_object(self) -> Object {
        Object::DestinationRule(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.destination_rules
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.destination_rules
    }
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        index.exported_to(&ObjKey::of(self).namespace, &self.spec.export_to)
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for Sidecar {
    const KIND: Kind = Kind::Sidecar;
    fn into_object(self) -> Object {
        Object::Sidecar(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.sidecars
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.sidecars
    }
    /// A root-namespace Sidecar may be every namespace's default; any other only its own.
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        let ns = self.namespace().unwrap_or_default();
        if ns == index.mesh.root_namespace {
            index.injected_namespaces().map(str::to_string).collect()
        } else {
            index.injected_only([ns])
        }
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for PeerAuthentication {
    const KIND: Kind = Kind::PeerAuthentication;
    fn into_object(self) -> Object {
        Object::PeerAuthentication(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.peer_authentications
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.peer_authentications
    }
    /// Every scope of its namespace lists the namespace's policies, and every namespace that
    /// sees the namespace's services decides auto mTLS towards them by its namespace-wide
    /// policy (DISABLE: plain text); a root-namespace policy is the mesh-wide one of every
    /// namespace (and, with a selector, is reported as ignored, which any of them may change).
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        let ns = self.namespace().unwrap_or_default();
        if ns == index.mesh.root_namespace {
            index.injected_namespaces().map(str::to_string).collect()
        } else {
            let mut out = index.injected_only([ns.clone()]);
            out.extend(index.namespaces_seeing(&ns));
            out
        }
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for AuthorizationPolicy {
    const KIND: Kind = Kind::AuthorizationPolicy;
    fn into_object(self) -> Object {
        Object::AuthorizationPolicy(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.authorization_policies
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.authorization_policies
    }
    /// A policy is listed in the scopes of its own namespace only, except in the root
    /// namespace, whose policies (with or without a selector) every namespace lists.
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        let ns = self.namespace().unwrap_or_default();
        if ns == index.mesh.root_namespace {
            index.injected_namespaces().map(str::to_string).collect()
        } else {
            index.injected_only([ns])
        }
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for RequestAuthentication {
    const KIND: Kind = Kind::RequestAuthentication;
    fn into_object(self) -> Object {
        Object::RequestAuthentication(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.request_authentications
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.request_authentications
    }
    /// As an AuthorizationPolicy: listed in the scopes of its own namespace only, except in the
    /// root namespace, whose policies (with or without a selector) every namespace lists.
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        let ns = self.namespace().unwrap_or_default();
        if ns == index.mesh.root_namespace {
            index.injected_namespaces().map(str::to_string).collect()
        } else {
            index.injected_only([ns])
        }
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for Telemetry {
    const KIND: Kind = Kind::Telemetry;
    fn into_object(self) -> Object {
        Object::Telemetry(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.telemetries
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.telemetries
    }
    /// As a PeerAuthentication's scope: listed in the scopes of its own namespace, except in
    /// the root namespace, whose selector-less Telemetry is every namespace's mesh-wide one.
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        let ns = self.namespace().unwrap_or_default();
        if ns == index.mesh.root_namespace {
            index.injected_namespaces().map(str::to_string).collect()
        } else {
            index.injected_only([ns])
        }
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for ServiceEntry {
    const KIND: Kind = Kind::ServiceEntry;
    fn into_object(self) -> Object {
        Object::ServiceEntry(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.service_entries
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.service_entries
    }
    /// Every injected namespace: besides its `exportTo` audience, an entry decides which entry
    /// holds a host that several name (the oldest) and which class E addresses the others are
    /// given (`crate::registry`), which any namespace may see.
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        index.injected_namespaces().map(str::to_string).collect()
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}

impl IstioKind for Gateway {
    const KIND: Kind = Kind::Gateway;
    fn into_object(self) -> Object {
        Object::Gateway(Box::new(self))
    }
    fn store(index: &Index) -> &KindStore<Self> {
        &index.gateways
    }
    fn store_mut(index: &mut Index) -> &mut KindStore<Self> {
        &mut index.gateways
    }
    /// Every mesh namespace: a Gateway selects pods in any namespace (Istio's default), and
    /// its selector decides which namespaces hold gateway pods at all (a namespace whose
    /// gateway pods it stops selecting keeps its last ConfigMap, as any namespace leaving the
    /// mesh; the index computes the reach before and after the change).
    fn reach(&self, index: &Index) -> BTreeSet<String> {
        index.injected_namespaces().map(str::to_string).collect()
    }
    fn status(&self) -> Option<&IstioStatus> {
        self.status.as_ref()
    }
}
