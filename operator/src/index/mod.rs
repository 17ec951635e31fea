//! The in-memory index of everything the renderer reads, fed by watch events (or by tests).
//!
//! Every update returns what it [`Affects`]: the injected namespaces whose ConfigMap must be
//! re-rendered, and whether the CR statuses must be recomputed. An update that changes nothing
//! the renderer reads (a status write, a pod's readiness, a resourceVersion bump) affects nothing,
//! which is also what stops the operator's own status writes from looping.

pub mod kinds;

use crate::jwks::{KeySets, Report, Source, Wanted};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kinds::{IstioKind, KindFn, KindStore, for_kind};
use kube::ResourceExt;
use rustmesh_api::sidecar::{EgressHost, OutboundTrafficPolicyMode};
use rustmesh_api::virtual_service::Delegate;
use rustmesh_api::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, RequestAuthentication,
    ServiceEntry, Sidecar, Telemetry, VirtualService,
};
use rustmesh_xds::scope::ProxyRole;
use rustmesh_xds::well_known::{DEFAULT_DOMAIN_SUFFIX, DEFAULT_ROOT_NAMESPACE};
use std::collections::{BTreeMap, BTreeSet};

/// Labels of a Kubernetes object.
pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        ObjKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Mesh-wide settings (Istio's MeshConfig parts the renderer uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// The root namespace: its Sidecar without selector is the default of every namespace.
    pub root_namespace: String,
    pub domain_suffix: String,
    /// Mesh-wide `outboundTrafficPolicy.mode`, unless a Sidecar says otherwise.
    pub outbound_policy: OutboundTrafficPolicyMode,
    /// The mesh CA's Service FQDN (`istiod.<root>.svc.<suffix>`): every scope's name table
    /// answers it whatever its Sidecar's egress, so sidecars find the CA where the cluster has
    /// no DNS (Istio's agent reaches istiod without going through the Sidecar's egress either).
    pub ca_host: Option<String>,
    /// The trust domain of workload identities (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`):
    /// the identities outbound clusters expect of a service's pods.
    pub trust_domain: String,
    /// Istio's `meshConfig.enableAutoMtls`: with a CA, outbound clusters to mesh services get
    /// auto-mTLS `transportSocketMatches` (mutual TLS to endpoints with a sidecar, plain TCP to
    /// the others); off, only a DestinationRule's `ISTIO_MUTUAL` originates mutual TLS.
    pub auto_mtls: bool,
    /// This control plane's revision (`istio.io/rev`): it serves the namespaces and pods that
    /// select it ([`is_injected`], [`pod_opts_in`]); `default` also serves
    /// `istio-injection=enabled`.
    pub revision: String,
    /// This cluster's id (Istio's `CLUSTER_ID`, the injector's `clusterId`): written into each
    /// endpoint's metadata for the `destination_cluster` label.
    pub cluster_id: String,
    /// The mesh's access log (meshConfig `accessLogFile`, `accessLogEncoding`,
    /// `accessLogFormat`), on every listener; `None`: off (Istio's default install).
    pub access_log: Option<rustmesh_xds::access_log::AccessLog>,
    /// The mesh's tracing (meshConfig `enableTracing`, `defaultProviders.tracing`, the
    /// provider from `extensionProviders`, `PILOT_TRACE_SAMPLING`), on every HTTP connection
    /// manager; `None`: off.
    pub tracing: Option<rustmesh_xds::trace::Tracing>,
    /// The mesh's side of the Telemetry API (`extensionProviders` with Istio's built-ins,
    /// `defaultProviders`, the sampling percentage), no policy: what `render::telemetry`
    /// adds a scope's Telemetry policies to.
    pub telemetry: rustmesh_xds::telemetry::Telemetry,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            domain_suffix: DEFAULT_DOMAIN_SUFFIX.to_string(),
            outbound_policy: OutboundTrafficPolicyMode::AllowAny,
            ca_host: None,
            trust_domain: rustmesh_xds::identity::DEFAULT_TRUST_DOMAIN.to_string(),
            auto_mtls: true,
            revision: DEFAULT_REVISION.to_string(),
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            access_log: None,
            tracing: None,
            telemetry: crate::providers::Providers::parse("")
                .and_then(|p| p.telemetry("", "", crate::providers::BUILTIN_METRICS, 1.0))
                .expect("Istio's built-in providers are valid defaults"),
        }
    }
}

/// Istio's default cluster id.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The kinds the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Endpoints,
    Pod,
    Namespace,
    VirtualService,
    DestinationRule,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Telemetry,
    ServiceEntry,
    Gateway,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Service,
        Kind::Endpoints,
        Kind::Pod,
        Kind::Namespace,
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
}

/// What the index keeps of a pod: its labels and its service account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Labels,
    /// `spec.serviceAccountName` (`default` when unset, as Kubernetes does): the pod's identity
    /// is `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub service_account: String,
    /// The workload the pod belongs to, as Istio names it (`rustmesh_api::workload`); empty
    /// when unknown. Written into its endpoints' metadata for the client sidecars' metrics.
    pub workload: String,
    /// Whether the pod's proxy is a gateway's (`proxy run --type router`): only those read
    /// gateway scopes (`rustmesh_api::workload::proxy_role`).
    pub role: ProxyRole,
    /// The pod's IP address while its `Ready` condition is true (`status.podIP`), else `None`:
    /// the endpoint a ServiceEntry's `workloadSelector` makes of it.
    pub ready_ip: Option<std::net::IpAddr>,
}

/// The service account of a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

impl PodInfo {
    /// A pod with these labels and service account (`None` or empty: `default`).
    pub fn new(labels: Labels, service_account: Option<&str>) -> Self {
        PodInfo {
            labels,
            service_account: service_account
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
                .to_string(),
            workload: String::new(),
            role: ProxyRole::Sidecar,
            ready_ip: None,
        }
    }

    /// The same pod, its proxy of `role`.
    pub fn with_role(mut self, role: ProxyRole) -> Self {
        self.role = role;
        self
    }

    /// Whether the pod's proxy is a gateway's.
    pub fn is_router(&self) -> bool {
        self.role == ProxyRole::Router
    }

    /// The same pod, belonging to `workload`.
    pub fn with_workload(mut self, workload: Option<String>) -> Self {
        self.workload = workload.unwrap_or_default();
        self
    }

    /// The same pod, serving at `ip` (`None`: not ready, or no address yet).
    pub fn with_ready_ip(mut self, ip: Option<std::net::IpAddr>) -> Self {
        self.ready_ip = ip;
        self
    }
}

/// One object as the index stores it (pods by their labels and service account, namespaces by
/// their labels).
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    Endpoints(Box<Endpoints>),
    Pod { key: ObjKey, pod: PodInfo },
    Namespace { name: String, labels: Labels },
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    Sidecar(Box<Sidecar>),
    PeerAuthentication(Box<PeerAuthentication>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    RequestAuthentication(Box<RequestAuthentication>),
    Telemetry(Box<Telemetry>),
    ServiceEntry(Box<ServiceEntry>),
    Gateway(Box<Gateway>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Pod { .. } => Kind::Pod,
            Object::Namespace { .. } => Kind::Namespace,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::Sidecar(_) => Kind::Sidecar,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::Telemetry(_) => Kind::Telemetry,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::Gateway(_) => Kind::Gateway,
        }
    }

    /// The object's key (`""` namespace for a Namespace).
    pub fn key(&self) -> ObjKey {
        match self {
            Object::Service(o) => ObjKey::of(o.as_ref()),
            Object::Endpoints(o) => ObjKey::of(o.as_ref()),
            Object::Pod { key, .. } => key.clone(),
            Object::Namespace { name, .. } => ObjKey::new("", name.clone()),
            Object::VirtualService(o) => ObjKey::of(o.as_ref()),
            Object::DestinationRule(o) => ObjKey::of(o.as_ref()),
            Object::Sidecar(o) => ObjKey::of(o.as_ref()),
            Object::PeerAuthentication(o) => ObjKey::of(o.as_ref()),
            Object::AuthorizationPolicy(o) => ObjKey::of(o.as_ref()),
            Object::RequestAuthentication(o) => ObjKey::of(o.as_ref()),
            Object::Telemetry(o) => ObjKey::of(o.as_ref()),
            Object::ServiceEntry(o) => ObjKey::of(o.as_ref()),
            Object::Gateway(o) => ObjKey::of(o.as_ref()),
        }
    }
}

/// One watch event, kind-independent: what the watches (and the EndpointSlice merger) feed the
/// index.
#[derive(Debug)]
pub enum WatchEvent {
    Apply(Object),
    Delete(Kind, ObjKey),
    Init,
    InitApply(Object),
    InitDone,
}

/// What an update requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affects {
    /// Injected namespaces whose ConfigMap must be re-rendered.
    pub namespaces: BTreeSet<String>,
    /// Whether CR statuses (validation) must be recomputed.
    pub statuses: bool,
    /// `Some`: the change was only to the Endpoints of these services (the namespaces may be
    /// re-rendered incrementally); `None`: anything else.
    pub endpoints_only: Option<BTreeSet<ObjKey>>,
}

impl Default for Affects {
    /// Nothing: neutral when merged.
    fn default() -> Self {
        Affects {
            namespaces: BTreeSet::new(),
            statuses: false,
            endpoints_only: Some(BTreeSet::new()),
        }
    }
}

impl Affects {
    /// A change needing a full render of these namespaces.
    pub fn full(namespaces: BTreeSet<String>, statuses: bool) -> Self {
        Affects {
            namespaces,
            statuses,
            endpoints_only: None,
        }
    }

    pub fn merge(&mut self, other: Affects) {
        self.namespaces.extend(other.namespaces);
        self.statuses |= other.statuses;
        self.endpoints_only = match (self.endpoints_only.take(), other.endpoints_only) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
            _ => None,
        };
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && !self.statuses
    }
}

/// Label that turns injection on for a namespace.
pub const INJECTION_LABEL: &str = "istio-injection";
/// Pod label opting one pod in (or out) of injection (Istio's).
pub const POD_INJECT_LABEL: &str = rustmesh_xds::well_known::LABEL_INJECT;
/// Revision label: its presence turns injection on too.
pub const REVISION_LABEL: &str = "istio.io/rev";
/// Service annotation narrowing which namespaces see the service (Istio's).
pub const SERVICE_EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// The revision that serves `istio-injection=enabled` and pods opting in without a revision.
pub const DEFAULT_REVISION: &str = "default";

/// Whether a namespace with these labels is injected by control-plane `revision` (and so gets
/// its ConfigMap from this operator), as Istio's webhooks select namespaces:
/// `istio-injection=enabled` is the default revision's, `istio-injection` with another value
/// turns injection off whatever the revision label says, and `istio.io/rev=<r>` is revision
/// `r`'s.
pub fn is_injected(labels: &Labels, revision: &str) -> bool {
    match labels.get(INJECTION_LABEL).map(String::as_str) {
        Some("enabled") => revision == DEFAULT_REVISION,
        Some(_) => false,
        None => labels.get(REVISION_LABEL).is_some_and(|r| r == revision),
    }
}

/// Whether a pod with these labels, in a namespace that selects no injection itself (neither
/// label), is injected by `revision`: `istio.io/rev=<revision>` (unless it opts out), or, for the
/// default revision, `sidecar.istio.io/inject: "true"` without a revision label.
pub fn pod_opts_in(labels: &Labels, revision: &str) -> bool {
    let inject = labels.get(POD_INJECT_LABEL).map(String::as_str);
    match labels.get(REVISION_LABEL) {
        Some(r) => r == revision && inject != Some("false"),
        None => revision == DEFAULT_REVISION && inject == Some("true"),
    }
}

/// Everything the renderer reads.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub mesh: MeshConfig,
    pub services: BTreeMap<ObjKey, Service>,
    pub endpoints: BTreeMap<ObjKey, Endpoints>,
    pub pods: BTreeMap<ObjKey, PodInfo>,
    pub namespaces: BTreeMap<String, Labels>,
    /// The Istio kinds, each in its [`KindStore`] (see [`crate::index::kinds`]).
    pub virtual_services: KindStore<VirtualService>,
    pub destination_rules: KindStore<DestinationRule>,
    pub sidecars: KindStore<Sidecar>,
    pub peer_authentications: KindStore<PeerAuthentication>,
    pub authorization_policies: KindStore<AuthorizationPolicy>,
    pub request_authentications: KindStore<RequestAuthentication>,
    pub telemetries: KindStore<Telemetry>,
    pub service_entries: KindStore<ServiceEntry>,
    pub gateways: KindStore<Gateway>,
    /// The key sets fetched for the RequestAuthentications' rules ([`crate::jwks`]).
    pub key_sets: KeySets,
}

impl Index {
    pub fn new(mesh: MeshConfig) -> Self {
        Index {
            mesh,
            ..Index::default()
        }
    }

    /// Namespaces that get a ConfigMap, sorted: those labelled for injection, and (as Istio's
    /// injector injects them) those not labelled `istio-injection=disabled` that hold a pod
    /// opting in with the label `sidecar.istio.io/inject: "true"`.
    /// A Service's pod selector (empty when it has none, or is not known).
    pub fn service_selector(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        self.services
            .get(&ObjKey::new(namespace, name))
            .and_then(|s| s.spec.as_ref()?.selector.clone())
            .unwrap_or_default()
    }

    /// Namespaces that get a ConfigMap, sorted: injected namespaces (see above) and those
    /// holding a gateway pod ([`Index::has_gateway_pod`]).
    pub fn injected_namespaces(&self) -> impl Iterator<Item = &str> {
        let selectors = self.gateway_selectors();
        self.namespaces
            .iter()
            .filter(move |(n, l)| {
                is_injected(l, &self.mesh.revision)
                    || self.has_opted_in_pod(n, l)
                    || self.has_gateway_pod(n, &selectors)
            })
            .map(|(n, _)| n.as_str())
    }

    /// Whether namespace `ns` gets a ConfigMap (see [`Index::injected_namespaces`]).
    pub fn is_mesh_namespace(&self, ns: &str) -> bool {
        self.namespaces.get(ns).is_some_and(|l| {
            is_injected(l, &self.mesh.revision)
                || self.has_opted_in_pod(ns, l)
                || self.has_gateway_pod(ns, &self.gateway_selectors())
        })
    }

    /// The distinct non-empty `selector`s of the Gateways (current and last accepted
    /// versions: a superset of what renders is harmless here).
    pub fn gateway_selectors(&self) -> BTreeSet<&Labels> {
        self.gateways
            .objects
            .values()
            .chain(self.gateways.last_good.values())
            .map(|g| &g.spec.selector)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A gateway's pod (its proxy a router) of `ns` carries every label of one of `selectors`
    /// (Istio's Gateways select pods in any namespace; a sidecar they select is left alone).
    pub fn has_gateway_pod(&self, ns: &str, selectors: &BTreeSet<&Labels>) -> bool {
        !selectors.is_empty()
            && self.pods_in(ns).filter(|p| p.is_router()).any(|p| {
                selectors
                    .iter()
                    .any(|s| rustmesh_xds::scope::selects(s, &p.labels))
            })
    }

    /// The pods of namespace `ns`.
    pub fn pods_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.keyed_pods_in(ns).map(|(_, p)| p)
    }

    /// The pods of namespace `ns` with their keys, in key order.
    pub fn keyed_pods_in<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a PodInfo)> + 'a {
        self.pods
            .range(ObjKey::new(ns, "")..)
            .take_while(move |(k, _)| k.namespace == ns)
    }

    /// Whether a namespace without an injection or revision label holds a pod that opts in by
    /// its own labels.
    fn has_opted_in_pod(&self, ns: &str, labels: &Labels) -> bool {
        if labels.contains_key(INJECTION_LABEL) || labels.contains_key(REVISION_LABEL) {
            return false;
        }
        self.pods_in(ns)
            .any(|p| pod_opts_in(&p.labels, &self.mesh.revision))
    }

    /// Adds or replaces an object.
    pub fn apply(&mut self, obj: Object) -> Affects {
        let old = self.get(obj.kind(), &obj.key());
        if old.as_ref().is_some_and(|o| same_content(o, &obj)) {
            self.store(obj);
            return Affects::default();
        }
        let mut affects = old.map(|o| self.affects(&o)).unwrap_or_default();
        self.store(obj.clone());
        affects.merge(self.affects(&obj));
        affects
    }

    /// Removes an object (a no-op when it is not there).
    pub fn delete(&mut self, kind: Kind, key: &ObjKey) -> Affects {
        let Some(old) = self.get(kind, key) else {
            return Affects::default();
        };
        let mut affects = self.affects(&old);
        self.remove(kind, key);
        // Visibility may have depended on the removed object (a Sidecar, a namespace): what it
        // affected before removal is what is re-rendered.
        affects.merge(self.affects(&old));
        affects
    }

    /// Replaces every object of a kind at once (a watch (re)list finished): objects missing from
    /// `objects` are deleted, the others applied. Nothing is ever removed before the full list is
    /// known, so a resync never renders an empty mesh.
    pub fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) -> Affects {
        let keep: BTreeSet<ObjKey> = objects.iter().map(Object::key).collect();
        let mut affects = Affects::default();
        for key in self.keys(kind) {
            if !keep.contains(&key) {
                affects.merge(self.delete(kind, &key));
            }
        }
        for o in objects {
            affects.merge(self.apply(o));
        }
        affects
    }

    fn keys(&self, kind: Kind) -> Vec<ObjKey> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::Endpoints => self.endpoints.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Namespace => self
                .namespaces
                .keys()
                .map(|n| ObjKey::new("", n.clone()))
                .collect(),
            istio => {
                struct Keys<'a>(&'a Index);
                impl KindFn for Keys<'_> {
                    type Out = Vec<ObjKey>;
                    fn call<K: IstioKind>(self) -> Vec<ObjKey> {
                        K::store(self.0).objects.keys().cloned().collect()
                    }
                }
                for_kind(istio, Keys(self)).unwrap_or_default()
            }
        }
    }

    fn get(&self, kind: Kind, key: &ObjKey) -> Option<Object> {
        Some(match kind {
            Kind::Service => Object::Service(Box::new(self.services.get(key)?.clone())),
            Kind::Endpoints => Object::Endpoints(Box::new(self.endpoints.get(key)?.clone())),
            Kind::Pod => Object::Pod {
                key: key.clone(),
                pod: self.pods.get(key)?.clone(),
            },
            Kind::Namespace => Object::Namespace {
                name: key.name.clone(),
                labels: self.namespaces.get(&key.name)?.clone(),
            },
            istio => {
                struct Get<'a>(&'a Index, &'a ObjKey);
                impl KindFn for Get<'_> {
                    type Out = Option<Object>;
                    fn call<K: IstioKind>(self) -> Option<Object> {
                        Some(K::store(self.0).objects.get(self.1)?.clone().into_object())
                    }
                }
                for_kind(istio, Get(self, key))??
            }
        })
    }

    fn store(&mut self, obj: Object) {
        let key = obj.key();
        match obj {
            Object::Service(o) => {
                self.services.insert(key, *o);
            }
            Object::Endpoints(o) => {
                self.endpoints.insert(key, *o);
            }
            Object::Pod { pod, .. } => {
                self.pods.insert(key, pod);
            }
            Object::Namespace { name, labels } => {
                self.namespaces.insert(name, labels);
            }
            Object::VirtualService(o) => self.put(key, *o),
            Object::DestinationRule(o) => self.put(key, *o),
            Object::Sidecar(o) => self.put(key, *o),
            Object::PeerAuthentication(o) => self.put(key, *o),
            Object::AuthorizationPolicy(o) => self.put(key, *o),
            Object::RequestAuthentication(o) => self.put(key, *o),
            Object::Telemetry(o) => self.put(key, *o),
            Object::ServiceEntry(o) => self.put(key, *o),
            Object::Gateway(o) => self.put(key, *o),
        }
    }

    fn put<K: IstioKind>(&mut self, key: ObjKey, obj: K) {
        let has_ca = self.mesh.ca_host.is_some();
        let store = K::store_mut(self);
        // First sight of an object whose current version was refused before a restart: the
        // version its status says the proxies served is served again, not dropped.
        if !store.last_good.contains_key(&key)
            && let Some(previous) = crate::validation::persisted_version(&obj, has_ca)
        {
            tracing::info!(kind = %K::kind(&()), object = %key,
                generation = previous.meta().generation.unwrap_or(0),
                "restored the last accepted version from status.lastAccepted");
            store.last_good.insert(key.clone(), previous);
        }
        store.objects.insert(key, obj);
    }

    fn remove(&mut self, kind: Kind, key: &ObjKey) {
        match kind {
            Kind::Service => drop(self.services.remove(key)),
            Kind::Endpoints => drop(self.endpoints.remove(key)),
            Kind::Pod => drop(self.pods.remove(key)),
            Kind::Namespace => drop(self.namespaces.remove(&key.name)),
            istio => {
                struct Remove<'a>(&'a mut Index, &'a ObjKey);
                impl KindFn for Remove<'_> {
                    type Out = ();
                    fn call<K: IstioKind>(self) {
                        K::store_mut(self.0).remove(self.1);
                    }
                }
                for_kind(istio, Remove(self, key));
            }
        }
    }

    /// Remembers the current version of every object `validation` accepted
    /// (`Validation::accepted_keys`), as the one to render should a later
    /// update of it be invalid.
    pub fn remember_accepted<'k>(
        &mut self,
        accepted: impl IntoIterator<Item = (Kind, &'k ObjKey)>,
    ) {
        struct Remember<'a>(&'a mut Index, &'a ObjKey);
        impl KindFn for Remember<'_> {
            type Out = ();
            fn call<K: IstioKind>(self) {
                K::store_mut(self.0).remember(self.1);
            }
        }
        for (kind, key) in accepted {
            for_kind(kind, Remember(self, key));
        }
    }

    /// What an object (as it is or was) touches, given the rest of the index.
    fn affects(&self, obj: &Object) -> Affects {
        match obj {
            Object::Service(s) => Affects::full(
                self.namespaces_seeing(&ObjKey::of(s.as_ref()).namespace),
                true,
            ),
            Object::Endpoints(e) => {
                let key = ObjKey::of(e.as_ref());
                Affects {
                    namespaces: self.namespaces_seeing(&key.namespace),
                    statuses: false,
                    endpoints_only: Some([key].into()),
                }
            }
            Object::Pod { key, .. } => Affects::full(self.namespaces_seeing(&key.namespace), false),
            Object::Namespace { name, labels } => Affects::full(
                if is_injected(labels, &self.mesh.revision)
                    || self.has_opted_in_pod(name, labels)
                    || self.has_gateway_pod(name, &self.gateway_selectors())
                {
                    [name.clone()].into()
                } else {
                    BTreeSet::new()
                },
                false,
            ),
            Object::VirtualService(o) => Affects::full(o.reach(self), true),
            Object::DestinationRule(o) => Affects::full(o.reach(self), true),
            Object::Sidecar(o) => Affects::full(o.reach(self), true),
            Object::PeerAuthentication(o) => Affects::full(o.reach(self), true),
            Object::AuthorizationPolicy(o) => Affects::full(o.reach(self), true),
            Object::RequestAuthentication(o) => Affects::full(o.reach(self), true),
            Object::Telemetry(o) => Affects::full(o.reach(self), true),
            Object::ServiceEntry(o) => Affects::full(o.reach(self), true),
            Object::Gateway(o) => Affects::full(o.reach(self), true),
        }
    }

    /// The key set sources the RequestAuthentications need ([`crate::jwks::Wanted`]): those of
    /// every rule of each current version that passes its own checks, and of each last accepted
    /// version (which serves in place of an invalid update).
    pub fn key_sources(&self) -> Wanted {
        use rustmesh_api::validate::Validate;
        let store = &self.request_authentications;
        let current = store
            .objects
            .values()
            .filter(|r| r.spec.validate().is_empty());
        Wanted::of(
            current
                .chain(store.last_good.values())
                .flat_map(|r| &r.spec.jwt_rules),
        )
    }

    /// Records what a key set fetch gave: the namespaces rendering a rule of that source (and
    /// the statuses) are affected when what renders changed.
    pub fn record_key_set(&mut self, source: Source, report: Report) -> Affects {
        if !self.key_sets.record(source.clone(), report) {
            return Affects::default();
        }
        Affects::full(self.key_set_reach(&source), true)
    }

    /// The injected namespaces rendering a rule whose key set comes from `source`.
    pub fn key_set_reach(&self, source: &Source) -> BTreeSet<String> {
        let store = &self.request_authentications;
        store
            .objects
            .values()
            .chain(store.last_good.values())
            .filter(|r| {
                r.spec
                    .jwt_rules
                    .iter()
                    .any(|rule| Source::of(rule).as_ref() == Some(source))
            })
            .flat_map(|r| r.reach(self))
            .collect()
    }

    pub(crate) fn injected_only(
        &self,
        names: impl IntoIterator<Item = String>,
    ) -> BTreeSet<String> {
        names
            .into_iter()
            .filter(|n| self.is_mesh_namespace(n))
            .collect()
    }

    /// Injected namespaces an `exportTo` list reaches (empty or `*`: all).
    pub(crate) fn exported_to(&self, own: &str, export_to: &[String]) -> BTreeSet<String> {
        if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
            return self.injected_namespaces().map(str::to_string).collect();
        }
        self.injected_only(export_to.iter().map(
            |e| {
                if e == "." { own.to_string() } else { e.clone() }
            },
        ))
    }

    /// Injected namespaces one of whose scopes may see services of `namespace`: the namespace
    /// itself (inbound), namespaces whose Sidecars' egress hosts may name it, and namespaces
    /// seeing a VirtualService whose destinations are in it. A superset is harmless (the content
    /// hash stops the write); a subset would be a bug.
    pub fn namespaces_seeing(&self, namespace: &str) -> BTreeSet<String> {
        let suffix = format!(".{namespace}.svc.{}", self.mesh.domain_suffix);
        let root_default = self.sidecars.objects.iter().find(|(k, s)| {
            k.namespace == self.mesh.root_namespace && s.spec.workload_selector.is_none()
        });
        let mut out = BTreeSet::new();
        for n in self.injected_namespaces() {
            let own: Vec<&Sidecar> = self
                .sidecars
                .objects
                .iter()
                .filter(|(k, _)| k.namespace == n)
                .map(|(_, s)| s)
                .collect();
            let has_default = own.iter().any(|s| s.spec.workload_selector.is_none());
            let mut effective = own.clone();
            if !has_default {
                match root_default {
                    Some((_, s)) => effective.push(s),
                    None => {
                        out.insert(n.to_string());
                        continue;
                    }
                }
            }
            let sees = n == namespace
                || effective.iter().any(|s| {
                    s.spec.egress.is_empty()
                        || s.spec.egress.iter().flat_map(|e| &e.hosts).any(|h| {
                            EgressHost::parse(h).is_some_and(|eh| match eh.namespace {
                                "*" => true,
                                "." => n == namespace,
                                "~" => false,
                                other => other == namespace,
                            })
                        })
                });
            if sees {
                out.insert(n.to_string());
            }
        }
        // VirtualService destinations pull services into scopes that otherwise do not see them
        // (a delegate's into the scopes of the roots naming it).
        for (key, vs) in &self.virtual_services.objects {
            let into_ns = vs_destination_hosts(vs)
                .any(|h| h.ends_with(&suffix) || (!h.contains('.') && key.namespace == namespace));
            if into_ns {
                out.extend(vs.reach(self));
            }
        }
        out
    }

    /// Injected namespaces that render the delegate VirtualService `delegate`: the audiences
    /// (`exportTo`) of the root VirtualServices whose `http[].delegate` names it, in their
    /// current or last accepted version. A superset is harmless (the content hash stops the
    /// write); a subset would leave a root's routes stale when its delegate changes.
    pub fn delegate_audience(&self, delegate: &ObjKey) -> BTreeSet<String> {
        let store = &self.virtual_services;
        let mut out = BTreeSet::new();
        for (key, vs) in store.objects.iter().chain(&store.last_good) {
            let names_it = !vs.spec.hosts.is_empty()
                && vs
                    .spec
                    .http
                    .iter()
                    .filter_map(|r| r.delegate.as_ref())
                    .any(|d| &delegate_key(&key.namespace, d) == delegate);
            if names_it {
                out.extend(self.exported_to(&key.namespace, &vs.spec.export_to));
            }
        }
        out
    }
}

/// The delegate VirtualService that a root VirtualService in `root_namespace` names in an
/// `http[].delegate` (its namespace defaults to the root's).
pub fn delegate_key(root_namespace: &str, d: &Delegate) -> ObjKey {
    ObjKey::new(
        d.namespace.as_deref().unwrap_or(root_namespace),
        d.name.as_str(),
    )
}

/// Every destination host a VirtualService names (routes and mirrors).
pub fn vs_destination_hosts(vs: &VirtualService) -> impl Iterator<Item = &str> {
    let http = vs.spec.http.iter().flat_map(|r| {
        r.route
            .iter()
            .map(|d| d.destination.host.as_str())
            .chain(r.mirror.iter().map(|m| m.host.as_str()))
            .chain(r.mirrors.iter().map(|m| m.destination.host.as_str()))
    });
    let tcp = vs
        .spec
        .tcp
        .iter()
        .flat_map(|r| r.route.iter().map(|d| d.destination.host.as_str()));
    let tls = vs
        .spec
        .tls
        .iter()
        .flat_map(|r| r.route.iter().map(|d| d.destination.host.as_str()));
    http.chain(tcp).chain(tls)
}

/// Whether two versions of an object differ in anything the renderer or validation reads.
fn same_content(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Service(x), Object::Service(y)) => {
            x.spec == y.spec
                && x.annotations().get(SERVICE_EXPORT_TO_ANNOTATION)
                    == y.annotations().get(SERVICE_EXPORT_TO_ANNOTATION)
        }
        (Object::Endpoints(x), Object::Endpoints(y)) => x.subsets == y.subsets,
        (Object::Pod { pod: x, .. }, Object::Pod { pod: y, .. }) => x == y,
        (Object::Namespace { labels: x, .. }, Object::Namespace { labels: y, .. }) => {
            x.get(INJECTION_LABEL) == y.get(INJECTION_LABEL)
                && x.get(REVISION_LABEL) == y.get(REVISION_LABEL)
        }
        (Object::VirtualService(x), Object::VirtualService(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        (Object::DestinationRule(x), Object::DestinationRule(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        (Object::Sidecar(x), Object::Sidecar(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        (Object::PeerAuthentication(x), Object::PeerAuthentication(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        (Object::AuthorizationPolicy(x), Object::AuthorizationPolicy(y)) => {
            let dry_run = |p: &AuthorizationPolicy| {
                p.annotations()
                    .get(rustmesh_api::authorization_policy::DRY_RUN_ANNOTATION)
                    .cloned()
            };
            x.spec == y.spec
                && x.metadata.creation_timestamp == y.metadata.creation_timestamp
                && dry_run(x) == dry_run(y)
        }
        (Object::RequestAuthentication(x), Object::RequestAuthentication(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        (Object::Telemetry(x), Object::Telemetry(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        (Object::ServiceEntry(x), Object::ServiceEntry(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        (Object::Gateway(x), Object::Gateway(y)) => {
            x.spec == y.spec && x.metadata.creation_timestamp == y.metadata.creation_timestamp
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, bookinfo, istio};

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_map_to_the_namespaces_that_see_them() {
        let mut index = bookinfo();
        fixtures::namespace(&mut index, "shop", true);
        // No Sidecars: every injected namespace sees everything.
        let svc = fixtures::service(
            "kube-system",
            "metrics",
            Some("10.96.5.5"),
            &[("http", 80, 80)],
        );
        let a = index.apply(Object::Service(Box::new(svc.clone())));
        assert_eq!(a.namespaces, set(&["default", "shop"]));
        assert!(a.statuses);
        // Same content again: nothing to do.
        assert!(index.apply(Object::Service(Box::new(svc))).is_empty());
        // `shop` narrows its view to itself: kube-system changes no longer concern it.
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: ["./*"]}]
"#,
        );
        let svc = fixtures::service(
            "kube-system",
            "metrics",
            Some("10.96.5.5"),
            &[("http", 81, 81)],
        );
        assert_eq!(
            index.apply(Object::Service(Box::new(svc))).namespaces,
            set(&["default"])
        );
        // A change in `shop` concerns `shop` (and namespaces seeing it).
        let a = index.apply(Object::Pod {
            key: ObjKey::new("shop", "cart-1"),
            pod: PodInfo::new([("app".to_string(), "cart".to_string())].into(), None),
        });
        assert_eq!(a.namespaces, set(&["default", "shop"]));
        // Same labels: nothing.
        let again = index.apply(Object::Pod {
            key: ObjKey::new("shop", "cart-1"),
            pod: PodInfo::new([("app".to_string(), "cart".to_string())].into(), None),
        });
        assert!(again.is_empty());
        // Another service account is another identity: the pod's services' clients change.
        let other = index.apply(Object::Pod {
            key: ObjKey::new("shop", "cart-1"),
            pod: PodInfo::new(
                [("app".to_string(), "cart".to_string())].into(),
                Some("cart"),
            ),
        });
        assert_eq!(other.namespaces, set(&["default", "shop"]));
    }

    #[test]
    fn virtual_service_export_to_bounds_its_effect() {
        let mut index = bookinfo();
        fixtures::namespace(&mut index, "shop", true);
        let before = index.clone();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: default}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http: [{route: [{destination: {host: reviews}}]}]
"#,
        );
        let mut index2 = before;
        let vs = index
            .virtual_services
            .objects
            .values()
            .next()
            .unwrap()
            .clone();
        let a = index2.apply(Object::VirtualService(Box::new(vs.clone())));
        assert_eq!(a.namespaces, set(&["default"]));
        // Changing exportTo to `*` affects the old and the new audience.
        let mut wider = vs;
        wider.spec.export_to = vec!["*".into()];
        let a = index2.apply(Object::VirtualService(Box::new(wider)));
        assert_eq!(a.namespaces, set(&["default", "shop"]));
        // A root-namespace Sidecar concerns every injected namespace.
        let a = {
            let mut i = index2.clone();
            istio(
                &mut i,
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  egress: [{hosts: [\"./*\"]}]\n",
            );
            let sc = i.sidecars.objects.values().next().unwrap().clone();
            index2.apply(Object::Sidecar(Box::new(sc)))
        };
        assert_eq!(a.namespaces, set(&["default", "shop"]));
    }

    #[test]
    fn a_delegate_change_re_renders_the_namespaces_of_its_roots() {
        let mut index = bookinfo();
        fixtures::namespace(&mut index, "shop", true);
        fixtures::namespace(&mut index, "team", true);
        let delegate = |subset: &str| {
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: routes, namespace: team}}\nspec:\n  http: [{{route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}}}]}}]\n"
            );
            let mut i = Index::default();
            istio(&mut i, &yaml);
            Object::VirtualService(Box::new(
                i.virtual_services.objects.values().next().unwrap().clone(),
            ))
        };
        // No root names it yet: it renders nowhere (its status is still written).
        let a = index.apply(delegate("v1"));
        assert!(a.namespaces.is_empty() && a.statuses);
        // A root in `default`, seen only there, delegates to it.
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http: [{delegate: {name: routes, namespace: team}}]
"#,
        );
        let key = ObjKey::new("team", "routes");
        assert_eq!(index.delegate_audience(&key), set(&["default"]));
        // The delegate's change re-renders the root's namespace, not its own nor the others.
        assert_eq!(index.apply(delegate("v2")).namespaces, set(&["default"]));
        // ... and so does deleting it (the root's route then renders nothing).
        assert_eq!(
            index.delete(Kind::VirtualService, &key).namespaces,
            set(&["default"])
        );
        // A service the delegate routes to reaches the root's audience too.
        index.apply(delegate("v2"));
        assert!(index.namespaces_seeing("default").contains("default"));
        // A second root, exported everywhere, widens the delegate's reach.
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http: [{delegate: {name: routes, namespace: team}}]
"#,
        );
        assert_eq!(
            index.apply(delegate("v3")).namespaces,
            set(&["default", "shop", "team"])
        );
    }

    #[test]
    fn relist_replaces_a_kind_without_emptying_it_first() {
        let mut index = bookinfo();
        let keep = index
            .services
            .get(&ObjKey::new("default", "reviews"))
            .unwrap()
            .clone();
        let a = index.replace_kind(Kind::Service, vec![Object::Service(Box::new(keep))]);
        assert_eq!(index.services.len(), 1);
        assert!(a.namespaces.contains("default"));
        // Unchanged relist: nothing affected.
        let same: Vec<Object> = index
            .services
            .values()
            .map(|s| Object::Service(Box::new(s.clone())))
            .collect();
        assert!(index.replace_kind(Kind::Service, same).is_empty());
    }

    /// Istio injects a pod labelled `sidecar.istio.io/inject: "true"` in a namespace without
    /// the injection label, so that namespace must get a ConfigMap: while such a pod exists,
    /// and never when the namespace says `istio-injection=disabled`.
    #[test]
    fn a_pod_opting_in_makes_its_unlabelled_namespace_a_mesh_namespace() {
        let mut index = bookinfo();
        fixtures::namespace(&mut index, "plain", false);
        assert!(!index.is_mesh_namespace("plain"));
        let pod = |labels: &[(&str, &str)]| Object::Pod {
            key: ObjKey::new("plain", "job-1"),
            pod: PodInfo::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                None,
            ),
        };
        let a = index.apply(pod(&[("app", "job"), ("sidecar.istio.io/inject", "true")]));
        assert!(index.is_mesh_namespace("plain"));
        assert!(a.namespaces.contains("plain"), "{:?}", a.namespaces);
        assert!(index.injected_namespaces().any(|n| n == "plain"));
        // Opting out, or any other value, is not opting in.
        index.apply(pod(&[("app", "job"), ("sidecar.istio.io/inject", "false")]));
        assert!(!index.is_mesh_namespace("plain"));
        index.apply(pod(&[("app", "job"), ("sidecar.istio.io/inject", "true")]));
        index.delete(Kind::Pod, &ObjKey::new("plain", "job-1"));
        assert!(
            !index.is_mesh_namespace("plain"),
            "the last such pod went away"
        );
        // A namespace turning injection off wins over its pods.
        index.apply(pod(&[("sidecar.istio.io/inject", "true")]));
        let a = index.apply(Object::Namespace {
            name: "plain".into(),
            labels: [("istio-injection".to_string(), "disabled".to_string())].into(),
        });
        assert!(!index.is_mesh_namespace("plain"));
        assert!(
            a.namespaces.contains("plain"),
            "it was a mesh namespace: {a:?}"
        );
        // A pod of another namespace does not count.
        fixtures::namespace(&mut index, "other", false);
        assert!(!index.is_mesh_namespace("other"));
    }

    /// Two control planes side by side (a canary upgrade): each operator serves the namespaces
    /// and pods of its own revision only, so they never write the same ConfigMap.
    #[test]
    fn each_revision_serves_only_what_selects_it() {
        let mut default = Index::new(MeshConfig::default());
        let mut canary = Index::new(MeshConfig {
            revision: "canary".into(),
            ..MeshConfig::default()
        });
        let ns = |name: &str, labels: &[(&str, &str)]| Object::Namespace {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let pod = |ns: &str, labels: &[(&str, &str)]| Object::Pod {
            key: ObjKey::new(ns, "p"),
            pod: PodInfo::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                None,
            ),
        };
        for index in [&mut default, &mut canary] {
            index.apply(ns("stable", &[("istio-injection", "enabled")]));
            index.apply(ns("moved", &[("istio.io/rev", "canary")]));
            index.apply(ns("plain", &[]));
            index.apply(pod("plain", &[("istio.io/rev", "canary")]));
            index.apply(ns("optin", &[]));
            index.apply(pod("optin", &[("sidecar.istio.io/inject", "true")]));
        }
        let served = |i: &Index| {
            i.injected_namespaces()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(served(&default), ["optin", "stable"]);
        assert_eq!(served(&canary), ["moved", "plain"]);
    }

    #[test]
    fn injection_labels() {
        let l = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let d = DEFAULT_REVISION;
        assert!(is_injected(&l(&[("istio-injection", "enabled")]), d));
        assert!(!is_injected(
            &l(&[("istio-injection", "enabled")]),
            "canary"
        ));
        assert!(is_injected(&l(&[("istio.io/rev", "canary")]), "canary"));
        assert!(!is_injected(&l(&[("istio.io/rev", "canary")]), d));
        assert!(is_injected(&l(&[("istio.io/rev", "default")]), d));
        assert!(!is_injected(
            &l(&[("istio-injection", "disabled"), ("istio.io/rev", "x")]),
            "x"
        ));
        assert!(!is_injected(&l(&[]), d));
        // Pods of a namespace that selects nothing.
        assert!(pod_opts_in(&l(&[("sidecar.istio.io/inject", "true")]), d));
        assert!(!pod_opts_in(
            &l(&[("sidecar.istio.io/inject", "true")]),
            "canary"
        ));
        assert!(pod_opts_in(&l(&[("istio.io/rev", "canary")]), "canary"));
        assert!(!pod_opts_in(
            &l(&[
                ("istio.io/rev", "canary"),
                ("sidecar.istio.io/inject", "false")
            ]),
            "canary"
        ));
        assert!(!pod_opts_in(&l(&[("istio.io/rev", "canary")]), d));
        assert!(!pod_opts_in(&l(&[("app", "x")]), d));
    }
}
