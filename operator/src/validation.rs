//! Validation of the Istio objects, with the checks that need the rest of the mesh, and the
//! status conditions written back to each object.
//!
//! Decisions (as Istio does):
//! - an object with an error is left out of rendering entirely; the rest of the mesh is
//!   unaffected. An invalid **update** of an object accepted before renders its last accepted
//!   version instead (`Verdict::serving_previous` says which generation), and its status
//!   carries that version (`status.lastAccepted`), from which a restarted operator takes it up
//!   again ([`persisted_version`]);
//! - a destination subset that no DestinationRule defines is an **error** ("unknown subset");
//! - a destination host that is not in the registry is a **warning** (routes to it answer 503,
//!   through `BlackHoleCluster`); so is a VirtualService host no service matches;
//! - of several namespace-wide Sidecars in one namespace (or several DestinationRules for the
//!   same host in one namespace, or several PeerAuthentications without selector in one
//!   namespace) the oldest applies; the others get `Accepted=False`, reason `Conflict`;
//! - a PeerAuthentication with a selector in the root namespace is ignored, as Istio ignores it
//!   (only workload policies of the workload's own namespace apply): a **warning** naming
//!   `spec.selector`, so the status says so instead of the policy silently doing nothing;
//! - a field rustmesh does not implement is never silently ignored: `rustmesh_api::support`
//!   lists each field as rendered, warned (accepted, a **warning** naming it) or refused (an
//!   **error** naming it, from the spec's own `validate`);
//! - an AuthorizationPolicy with the CUSTOM action cannot be delegated (rustmesh has no external
//!   authorizer): it is rendered as CUSTOM, which the sidecar denies (fail closed, as Istio does
//!   for a CUSTOM policy it cannot serve), and reported with `Accepted=False`, reason
//!   [`UNSUPPORTED`], naming `spec.provider` (its `Reconciled` condition stays `True`: it is
//!   rendered). Its verdict is accepted (rendered, and remembered as the last accepted version);
//! - a RequestAuthentication rule whose key set cannot be had (the fetch of its `jwksUri`, or of
//!   the issuer's OpenID discovery document, failed and no set was fetched before; over the
//!   operator's limit of URLs; an issuer that cannot be discovered) is rendered with
//!   `jwksError`, so the sidecar refuses every token of that issuer (fail closed), and reported
//!   with `Accepted=False`, reason [`JWKS_UNAVAILABLE`], naming `spec.jwtRules[i].jwksUri` (or
//!   `.issuer` for discovery) and why; `Reconciled` stays `True`. A failed refresh while a set
//!   fetched before keeps serving is a warning. A fetch still in flight is not reported.

use crate::index::{Index, Kind, ObjKey};
use crate::registry::{Registry, exported};
use kube::core::ObjectMeta;
use rustmesh_api::common::Destination;
use rustmesh_api::request_authentication::{KeySource, no_discovery};
use rustmesh_api::sidecar::host_matches;
use rustmesh_api::status::{Condition, IstioStatus, LastAccepted, ValidationMessage};
use rustmesh_api::validate::Validate;
use rustmesh_api::{
    AuthorizationPolicy, DestinationRule, PeerAuthentication, RequestAuthentication, Telemetry,
    VirtualService,
};
use std::collections::{BTreeMap, HashMap};

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

/// One finding about one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub field: String,
    pub message: String,
}

/// The reason of a verdict that is rendered, but not as written (an AuthorizationPolicy's
/// CUSTOM action, rendered as a deny of what it matches): its `Accepted` condition is `False`.
pub const UNSUPPORTED: &str = "Unsupported";

/// The reason of a RequestAuthentication rendered with a rule whose key set cannot be had: the
/// sidecar refuses every token of that issuer. Its `Accepted` condition is `False`.
pub const JWKS_UNAVAILABLE: &str = "JwksUnavailable";

/// Whether a verdict is rendered, but not as written ([`UNSUPPORTED`], [`JWKS_UNAVAILABLE`]):
/// `Accepted=False`, `Reconciled=True`.
pub fn rendered_not_as_written(verdict: &Verdict) -> bool {
    verdict.accepted && [UNSUPPORTED, JWKS_UNAVAILABLE].contains(&verdict.reason)
}

/// The outcome for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the object is rendered.
    pub accepted: bool,
    /// `Accepted`, `Invalid` or `Conflict`; or [`UNSUPPORTED`] or [`JWKS_UNAVAILABLE`]
    /// (rendered, but not as written: `accepted` is true and the `Accepted` condition `False`).
    pub reason: &'static str,
    pub findings: Vec<Finding>,
    /// For an invalid update of an object that was accepted before: the generation of that last
    /// accepted version, which keeps being rendered in its place.
    pub serving_previous: Option<i64>,
    /// That version's `spec`, persisted in the object's `status.lastAccepted` so that an
    /// operator restart renders it again ([`persisted_version`]).
    pub previous_spec: Option<serde_json::Value>,
}

/// Verdicts of every Istio object in the index.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    pub verdicts: BTreeMap<(Kind, ObjKey), Verdict>,
}

/// Sort key: oldest first, then namespace and name (Istio's precedence rule).
pub fn age_key(meta: &ObjectMeta) -> (bool, Option<String>, String, String) {
    let created = meta.creation_timestamp.as_ref().map(|t| {
        // RFC 3339 in UTC sorts in time order as text.
        t.0.to_string()
    });
    (
        created.is_none(),
        created,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Istio's short-name expansion: a name without dots is `<name>.<namespace>.svc.<suffix>`;
/// anything with a dot, `*` or an IP is taken as written.
pub fn resolve_host(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

impl Validation {
    pub fn compute(index: &Index, registry: &Registry) -> Self {
        let suffix = &index.mesh.domain_suffix;
        let mut verdicts = BTreeMap::new();

        // DestinationRules: their own rules, then conflicts, then (warning) unknown hosts.
        let mut drs: Vec<(&ObjKey, &DestinationRule)> =
            index.destination_rules.objects.iter().collect();
        drs.sort_by_key(|(_, d)| age_key(&d.metadata));
        let mut claimed: BTreeMap<(String, String), ObjKey> = BTreeMap::new();
        for (key, dr) in &drs {
            let mut findings = own_findings(dr.spec.validate());
            let host = resolve_host(&dr.spec.host, &key.namespace, suffix);
            let mut reason = None;
            if findings.is_empty() && dr.spec.workload_selector.is_none() {
                match claimed.get(&(key.namespace.clone(), host.clone())) {
                    Some(first) => {
                        findings.push(Finding {
                            level: Level::Error,
                            field: "spec.host".into(),
                            message: format!(
                                "DestinationRule {first} (older) already applies to host {host} in this namespace; this one is ignored"
                            ),
                        });
                        reason = Some("Conflict");
                    }
                    None => {
                        claimed.insert((key.namespace.clone(), host.clone()), (*key).clone());
                    }
                }
            }
            if !registry_has(registry, &host) {
                findings.push(Finding {
                    level: Level::Warning,
                    field: "spec.host".into(),
                    message: format!("host {host} matches no service in the registry"),
                });
            }
            findings.extend(tls_findings(&dr.spec, index.mesh.ca_host.is_some()));
            findings.extend(unimplemented("DestinationRule", &dr.spec));
            verdicts.insert(
                (Kind::DestinationRule, (*key).clone()),
                verdict(findings, reason),
            );
        }
        // Every subset destination of every VirtualService is checked against them: resolved
        // once and found by host (scanning them all per destination was quadratic).
        let accepted_drs = HostedRules::new(
            drs.iter()
                .filter(|(k, _)| verdicts[&(Kind::DestinationRule, (*k).clone())].accepted)
                .map(|(k, d)| (*k, *d, resolve_host(&d.spec.host, &k.namespace, suffix)))
                .collect(),
        );

        for (key, vs) in &index.virtual_services.objects {
            let mut findings = own_findings(vs.spec.validate());
            if findings.is_empty() {
                vs_cross_checks(vs, key, registry, &accepted_drs, suffix, &mut findings);
                findings.extend(vs_gateway_findings(index, key, vs));
            }
            findings.extend(unimplemented("VirtualService", &vs.spec));
            verdicts.insert((Kind::VirtualService, key.clone()), verdict(findings, None));
        }

        delegate_findings(index, &mut verdicts);

        // Several VirtualServices for one host: sidecars use the oldest (as Istio does without
        // delegation); the others are told so.
        let mut by_host: BTreeMap<String, Vec<(&ObjKey, &VirtualService)>> = BTreeMap::new();
        for (key, vs) in &index.virtual_services.objects {
            let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
            if !mesh || !verdicts[&(Kind::VirtualService, key.clone())].accepted {
                continue;
            }
            for h in &vs.spec.hosts {
                by_host
                    .entry(resolve_host(h, &key.namespace, suffix))
                    .or_default()
                    .push((key, vs));
            }
        }
        for (host, mut list) in by_host {
            list.sort_by_key(|(_, v)| age_key(&v.metadata));
            let Some((first, _)) = list.first().map(|(k, v)| ((*k).clone(), *v)) else {
                continue;
            };
            for (key, vs) in list.iter().skip(1) {
                let field = vs
                    .spec
                    .hosts
                    .iter()
                    .position(|h| resolve_host(h, &key.namespace, suffix) == host)
                    .map(|i| format!("spec.hosts[{i}]"))
                    .unwrap_or_else(|| "spec.hosts".into());
                if let Some(v) = verdicts.get_mut(&(Kind::VirtualService, (*key).clone())) {
                    v.findings.push(Finding {
                        level: Level::Warning,
                        field,
                        message: format!(
                            "host {host} is also routed by VirtualService {first} (older); where both are visible, sidecars use only the oldest"
                        ),
                    });
                }
            }
        }

        let mut sidecars: Vec<_> = index.sidecars.objects.iter().collect();
        sidecars.sort_by_key(|(_, s)| age_key(&s.metadata));
        let mut defaults: BTreeMap<String, ObjKey> = BTreeMap::new();
        for (key, sc) in sidecars {
            let mut findings = own_findings(sc.spec.validate());
            let mut reason = None;
            if findings.is_empty() && sc.spec.workload_selector.is_none() {
                if let Some(first) = defaults.get(&key.namespace) {
                    findings.push(Finding {
                        level: Level::Error,
                        field: "spec.workloadSelector".into(),
                        message: format!(
                            "Sidecar {first} (older) is already the namespace-wide Sidecar of {}; only one without workloadSelector applies",
                            key.namespace
                        ),
                    });
                    reason = Some("Conflict");
                } else {
                    defaults.insert(key.namespace.clone(), key.clone());
                }
            }
            findings.extend(unimplemented("Sidecar", &sc.spec));
            verdicts.insert((Kind::Sidecar, key.clone()), verdict(findings, reason));
        }
        peer_authentications(index, &mut verdicts);
        authorization_policies(index, &mut verdicts);
        request_authentications(index, &mut verdicts);
        telemetries(index, &mut verdicts);
        service_entries(index, registry, &mut verdicts);
        gateways(index, &mut verdicts);
        Validation { verdicts }
    }

    /// The objects accepted, with their kind (what [`crate::index::Index::remember_accepted`]
    /// takes).
    pub fn accepted_keys(&self) -> impl Iterator<Item = (Kind, &ObjKey)> {
        self.verdicts
            .iter()
            .filter(|(_, v)| v.accepted)
            .map(|((kind, key), _)| (*kind, key))
    }

    /// Whether the object is rendered. Objects not validated (unknown) are not.
    pub fn accepted(&self, kind: Kind, key: &ObjKey) -> bool {
        self.verdicts
            .get(&(kind, key.clone()))
            .is_some_and(|v| v.accepted)
    }
}

/// Delegation (`crate::delegate`): a root route whose delegate VirtualService will not be
/// merged in (not found, not a delegate, not exported to the root's namespace, invalid with no
/// accepted version) renders nothing, as in Istio, which only logs it: here a warning on the
/// root naming `spec.http[i].delegate`; so is a delegate route whose matches conflict with the
/// root route's (it never applies). The delegate's own verdict is its own validation's.
fn delegate_findings(index: &Index, verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>) {
    let store = &index.virtual_services;
    let mut found: Vec<(ObjKey, Finding)> = Vec::new();
    for (key, vs) in &store.objects {
        if vs.spec.hosts.is_empty() || !verdicts[&(Kind::VirtualService, key.clone())].accepted {
            continue;
        }
        for (i, rule) in vs.spec.http.iter().enumerate() {
            let Some(d) = &rule.delegate else { continue };
            let field = format!("spec.http[{i}].delegate");
            let dkey = crate::index::delegate_key(&key.namespace, d);
            let mut warn = |message: String| {
                found.push((
                    key.clone(),
                    Finding {
                        level: Level::Warning,
                        field: field.clone(),
                        message,
                    },
                ))
            };
            let Some(current) = store.objects.get(&dkey) else {
                warn(format!(
                    "delegate VirtualService {dkey} not found; this route renders nothing"
                ));
                continue;
            };
            let verdict = &verdicts[&(Kind::VirtualService, dkey.clone())];
            let rendered = if verdict.accepted {
                current
            } else if let Some(previous) = store
                .last_good
                .get(&dkey)
                .filter(|_| verdict.reason == "Invalid")
            {
                previous
            } else {
                let why = verdict
                    .findings
                    .iter()
                    .find(|f| f.level == Level::Error)
                    .map(|f| format!(": {}: {}", f.field, f.message))
                    .unwrap_or_default();
                warn(format!(
                    "delegate VirtualService {dkey} is not accepted{why}; this route renders nothing"
                ));
                continue;
            };
            if !rendered.spec.hosts.is_empty() {
                warn(format!(
                    "VirtualService {dkey} has hosts, so it is not a delegate (a delegate has none); this route renders nothing"
                ));
                continue;
            }
            if !exported(&rendered.spec.export_to, &dkey.namespace, &key.namespace) {
                warn(format!(
                    "delegate VirtualService {dkey} is not exported to namespace {}; this route renders nothing",
                    key.namespace
                ));
                continue;
            }
            for (j, sub) in rendered.spec.http.iter().enumerate() {
                let resolve = |h: &str| resolve_host(h, &key.namespace, &index.mesh.domain_suffix);
                let merged = crate::delegate::merge_http_route(rule, sub, &resolve);
                if merged.is_none() {
                    warn(format!(
                        "route spec.http[{j}] of delegate VirtualService {dkey} has matches that conflict with this route's (not within them); it never applies"
                    ));
                }
            }
        }
    }
    for (key, finding) in found {
        if let Some(v) = verdicts.get_mut(&(Kind::VirtualService, key)) {
            v.findings.push(finding);
        }
    }
}

/// PeerAuthentications: Istio's own rules and warning, one selector-less policy per namespace
/// (the oldest; in the root namespace it is the mesh-wide one), and the warning that a policy
/// with a selector in the root namespace is ignored. An invalid update of a policy accepted
/// before notes that the last accepted version keeps serving (`render::peer_authn` renders it).
fn peer_authentications(index: &Index, verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>) {
    let store = &index.peer_authentications;
    let root = &index.mesh.root_namespace;
    let mut policies: Vec<(&ObjKey, &PeerAuthentication)> = store.objects.iter().collect();
    policies.sort_by_key(|(_, p)| age_key(&p.metadata));
    let mut wide: BTreeMap<&str, &ObjKey> = BTreeMap::new();
    for (key, pa) in policies {
        let mut findings = own_findings(pa.spec.validate());
        let valid = findings.is_empty();
        findings.extend(pa.spec.warnings().into_iter().map(|w| Finding {
            level: Level::Warning,
            field: w.field,
            message: w.message,
        }));
        let previous = store.last_good.get(key).filter(|_| !valid);
        // The version that would be rendered decides whether it claims its namespace.
        let rendered = if valid { Some(pa) } else { previous };
        let conflict = rendered
            .filter(|p| p.spec.workload_labels().is_none())
            .and_then(|_| claim_namespace("PeerAuthentication", root, key, valid, &mut wide));
        let reason = conflict.as_ref().map(|_| "Conflict");
        findings.extend(conflict);
        if &key.namespace == root && pa.spec.workload_labels().is_some() {
            findings.push(Finding {
                level: Level::Warning,
                field: "spec.selector".into(),
                message: format!(
                    "a PeerAuthentication with a selector in the root namespace {root} is \
                     ignored, as in Istio: only the root namespace's policy without a selector \
                     applies (mesh-wide); put workload policies in the workload's namespace"
                ),
            });
        }
        let mut v = verdict(findings, reason);
        if !v.accepted
            && v.reason == "Invalid"
            && let Some(p) = previous
        {
            v.serving_previous = Some(p.metadata.generation.unwrap_or(0));
            v.previous_spec = serde_json::to_value(&p.spec).ok();
        }
        verdicts.insert((Kind::PeerAuthentication, key.clone()), v);
    }
}

/// One object without a selector per namespace (the oldest; in the root namespace, the
/// mesh-wide one), for the kinds whose namespace-wide object is unique (PeerAuthentication,
/// Telemetry): `key`'s object, seen oldest first, claims its namespace, or, when valid and an
/// older one has, gets the conflict finding. An invalid update serving its previous version
/// still holds its claim without a second finding.
fn claim_namespace<'k>(
    kind: &str,
    root: &str,
    key: &'k ObjKey,
    valid: bool,
    wide: &mut BTreeMap<&'k str, &'k ObjKey>,
) -> Option<Finding> {
    match wide.get(key.namespace.as_str()) {
        Some(first) if valid => {
            let scope = if key.namespace == root {
                format!("mesh-wide {kind} (root namespace)")
            } else {
                format!("namespace-wide {kind} of {}", key.namespace)
            };
            Some(Finding {
                level: Level::Error,
                field: "spec.selector".into(),
                message: format!(
                    "{kind} {first} (older) is already the {scope}; only the oldest without a \
                     selector applies, this one is ignored"
                ),
            })
        }
        Some(_) => None,
        None => {
            wide.insert(key.namespace.as_str(), key);
            None
        }
    }
}

/// Telemetries: Istio's own rules and warnings (`rustmesh_api::telemetry`), every provider
/// named being one of the mesh's of the right kind (an unknown or mistyped provider is an
/// error naming the field: Istio skips it silently), and one selector-less Telemetry per
/// namespace (the oldest; in the root namespace it is the mesh-wide one, as Istio's
/// `namespaceWideTelemetryConfig` takes the oldest). An invalid update of a Telemetry accepted
/// before notes that the last accepted version keeps serving (`render::telemetry` renders it).
fn telemetries(index: &Index, verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>) {
    let store = &index.telemetries;
    let root = &index.mesh.root_namespace;
    let mut all: Vec<(&ObjKey, &Telemetry)> = store.objects.iter().collect();
    all.sort_by_key(|(_, t)| age_key(&t.metadata));
    let mut wide: BTreeMap<&str, &ObjKey> = BTreeMap::new();
    for (key, t) in all {
        let mut findings = own_findings(t.spec.validate());
        findings.extend(telemetry_provider_findings(&index.mesh.telemetry, &t.spec));
        let valid = findings.is_empty();
        findings.extend(t.spec.warnings().into_iter().map(|w| Finding {
            level: Level::Warning,
            field: w.field,
            message: w.message,
        }));
        let previous = store.last_good.get(key).filter(|_| !valid);
        let rendered = if valid { Some(t) } else { previous };
        let conflict = rendered
            .filter(|t| t.spec.workload_labels().is_none())
            .and_then(|_| claim_namespace("Telemetry", root, key, valid, &mut wide));
        let reason = conflict.as_ref().map(|_| "Conflict");
        findings.extend(conflict);
        let mut v = verdict(findings, reason);
        if !v.accepted
            && v.reason == "Invalid"
            && let Some(p) = previous
        {
            v.serving_previous = Some(p.metadata.generation.unwrap_or(0));
            v.previous_spec = serde_json::to_value(&p.spec).ok();
        }
        verdicts.insert((Kind::Telemetry, key.clone()), v);
    }
}

/// ServiceEntries: their own checks (Istio's `ValidateServiceEntry` and rustmesh's refusals of
/// what it does not render, each naming the field: `rustmesh_api::service_entry`) and Istio's
/// warnings; a host that a Kubernetes Service or an older entry already holds is a warning
/// naming `spec.hosts[i]` (sidecars use that one: `crate::registry`). An invalid update of an
/// entry accepted before notes that the last accepted version keeps serving (the registry
/// holds it: `registry::rendered_entries`).
fn service_entries(
    index: &Index,
    registry: &Registry,
    verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>,
) {
    let store = &index.service_entries;
    for (key, se) in &store.objects {
        let mut findings = own_findings(se.spec.validate());
        let valid = findings.is_empty();
        findings.extend(se.spec.warnings().into_iter().map(|w| Finding {
            level: Level::Warning,
            field: w.field,
            message: w.message,
        }));
        if valid {
            findings.extend(entry_host_findings(key, &se.spec, registry));
        }
        findings.extend(unimplemented("ServiceEntry", &se.spec));
        let mut v = verdict(findings, None);
        if !v.accepted
            && let Some(p) = store.last_good.get(key)
        {
            v.serving_previous = Some(p.metadata.generation.unwrap_or(0));
            v.previous_spec = serde_json::to_value(&p.spec).ok();
        }
        verdicts.insert((Kind::ServiceEntry, key.clone()), v);
    }
}

/// Gateways: their own checks (Istio's `ValidateGateway` and rustmesh's refusals of what it
/// does not render, each naming the field: `rustmesh_api::gateway`) and Istio's warnings. An
/// invalid update of a Gateway accepted before notes that the last accepted version keeps
/// serving (`render::gateway` renders it).
fn gateways(index: &Index, verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>) {
    let store = &index.gateways;
    for (key, gw) in &store.objects {
        let mut findings = own_findings(gw.spec.validate());
        findings.extend(gw.spec.warnings().into_iter().map(|w| Finding {
            level: Level::Warning,
            field: w.field,
            message: w.message,
        }));
        if gw.spec.selector.is_empty() {
            findings.push(Finding {
                level: Level::Warning,
                field: "spec.selector".into(),
                message: "no selector: the Gateway selects no pod and renders nothing".into(),
            });
        }
        findings.extend(unimplemented("Gateway", &gw.spec));
        // Without the mesh CA: credentials refused, ISTIO_MUTUAL servers warned about, as at
        // admission.
        if index.mesh.ca_host.is_none() {
            findings.extend(checked(rustmesh_api::checks::gateway_without_ca(&gw.spec)));
        }
        let mut v = verdict(findings, None);
        if !v.accepted
            && let Some(p) = store.last_good.get(key)
        {
            v.serving_previous = Some(p.metadata.generation.unwrap_or(0));
            v.previous_spec = serde_json::to_value(&p.spec).ok();
        }
        verdicts.insert((Kind::Gateway, key.clone()), v);
    }
    gateway_port_conflicts(index, verdicts);
}

/// Servers the merge of a gateway pod's Gateways leaves out, as Istio's: on one port, one
/// protocol (the oldest server's: HTTP ones share the listener, a TCP one takes it whole, HTTPS
/// ones are told apart by SNI), at most one TCP server and one HTTPS server per set of SNI
/// hosts. Each server left out is a warning naming `spec.servers[i].port`,
/// for Gateways whose selectors may select the same pod (no label with two values). Ports
/// are compared as written (a Service's targetPort mapping two numbers to one listener is not
/// seen here).
fn gateway_port_conflicts(index: &Index, verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>) {
    let mut accepted: Vec<(&ObjKey, &rustmesh_api::Gateway)> = index
        .gateways
        .objects
        .iter()
        .filter(|(k, _)| verdicts[&(Kind::Gateway, (*k).clone())].accepted)
        .collect();
    accepted.sort_by_key(|(_, g)| age_key(&g.metadata));
    let compatible = |a: &crate::index::Labels, b: &crate::index::Labels| {
        a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
    };
    // (selector, port, the server, who serves it)
    type Claim<'a> = (
        &'a crate::index::Labels,
        u32,
        &'a rustmesh_api::gateway::Server,
        String,
    );
    let mut claimed: Vec<Claim> = Vec::new();
    for (key, gw) in accepted {
        let mut found = Vec::new();
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let Some(port) = server.port.as_ref().map(|p| p.number) else {
                continue;
            };
            let clash = claimed.iter().find(|(sel, p, first, _)| {
                *p == port
                    && compatible(sel, &gw.spec.selector)
                    && crate::render::gateway::clashes(first, server)
            });
            match clash {
                Some((_, _, first, owner)) => found.push(Finding {
                    level: Level::Warning,
                    field: format!("spec.servers[{i}].port"),
                    message: format!(
                        "port {port} is already served ({}) by {owner} for the pods both \
                         select; this server is not rendered on them (one protocol, at most \
                         one TCP server and one HTTPS/TLS server per SNI hosts per port, as \
                         Istio merges gateways)",
                        crate::render::gateway::PortClass::of(first)
                            .map_or("unknown protocol", |c| c.name())
                    ),
                }),
                None => claimed.push((
                    &gw.spec.selector,
                    port,
                    server,
                    format!("Gateway {key} spec.servers[{i}]"),
                )),
            }
        }
        if let Some(v) = verdicts.get_mut(&(Kind::Gateway, key.clone())) {
            v.findings.extend(found);
        }
    }
}

/// A warning for each gateway a VirtualService names (`spec.gateways[i]`) that no Gateway
/// object is (Istio's analyzer reports it too, IST0101): those routes render on no gateway.
fn vs_gateway_findings(index: &Index, key: &ObjKey, vs: &VirtualService) -> Vec<Finding> {
    use rustmesh_api::gateway::{MESH, resolve_gateway_name};
    let mut out = Vec::new();
    for (i, g) in vs.spec.gateways.iter().enumerate() {
        if g == MESH {
            continue;
        }
        let name = resolve_gateway_name(g, &key.namespace);
        let found = name
            .split_once('/')
            .is_some_and(|(ns, n)| index.gateways.objects.contains_key(&ObjKey::new(ns, n)));
        if !found {
            out.push(Finding {
                level: Level::Warning,
                field: format!("spec.gateways[{i}]"),
                message: format!(
                    "Gateway {name} not found; no gateway renders these routes for it"
                ),
            });
        }
    }
    out
}

/// A warning for each host of an entry that another service of the registry holds.
fn entry_host_findings(
    key: &ObjKey,
    spec: &rustmesh_api::ServiceEntrySpec,
    registry: &Registry,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let Some(svc) = registry.get(host) else {
            continue;
        };
        let holder = match &svc.entry {
            Some(e) if &e.key == key => continue,
            Some(e) => format!("ServiceEntry {} (older)", e.key),
            None => format!("the Kubernetes Service {}/{}", svc.namespace, svc.name),
        };
        out.push(Finding {
            level: Level::Warning,
            field: format!("spec.hosts[{i}]"),
            message: format!(
                "host {host} is already in the registry as {holder}; sidecars use that one and \
                 this entry adds nothing for it"
            ),
        });
    }
    out
}

/// Each provider a Telemetry names must be one of the mesh's (`extensionProviders` and Istio's
/// built-in `envoy` and `prometheus`) of the kind its entry needs.
pub fn telemetry_provider_findings(
    mesh: &rustmesh_xds::telemetry::Telemetry,
    spec: &rustmesh_api::telemetry::TelemetrySpec,
) -> Vec<Finding> {
    use rustmesh_xds::telemetry::ProviderKind;
    let mut out = Vec::new();
    let mut check = |field: String, name: &str, wanted: &str| {
        let is = match mesh.providers.get(name) {
            None => {
                let known: Vec<&str> = mesh.providers.keys().map(String::as_str).collect();
                out.push(Finding {
                    level: Level::Error,
                    field,
                    message: format!(
                        "provider {name:?} is not one of the mesh's extension providers ({})",
                        known.join(", ")
                    ),
                });
                return;
            }
            Some(ProviderKind::Tracing(_)) => "a tracing provider",
            Some(ProviderKind::AccessLog(_)) => "an access log provider",
            Some(ProviderKind::Prometheus) => "a metrics provider",
        };
        if is != wanted {
            out.push(Finding {
                level: Level::Error,
                field,
                message: format!("provider {name:?} is {is}, not {wanted}"),
            });
        }
    };
    for (i, r) in spec.tracing.iter().enumerate() {
        for (j, p) in r.providers.iter().enumerate() {
            check(
                format!("spec.tracing[{i}].providers[{j}].name"),
                &p.name,
                "a tracing provider",
            );
        }
    }
    for (i, r) in spec.access_logging.iter().enumerate() {
        for (j, p) in r.providers.iter().enumerate() {
            check(
                format!("spec.accessLogging[{i}].providers[{j}].name"),
                &p.name,
                "an access log provider",
            );
        }
    }
    for (i, r) in spec.metrics.iter().enumerate() {
        for (j, p) in r.providers.iter().enumerate() {
            check(
                format!("spec.metrics[{i}].providers[{j}].name"),
                &p.name,
                "a metrics provider",
            );
        }
    }
    out
}

/// AuthorizationPolicies: Istio's own rules and warnings (`rustmesh_api::authorization_policy`,
/// the `istio.io/dry-run` annotation's included), each policy on its own (several policies of
/// any action may apply together). A valid CUSTOM
/// policy is rendered and reported [`UNSUPPORTED`] (its finding an error naming
/// `spec.provider`); an invalid update of a policy accepted before notes that the last accepted
/// version keeps serving (`render::authz` renders it).
fn authorization_policies(index: &Index, verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>) {
    let store = &index.authorization_policies;
    for (key, ap) in &store.objects {
        let ap: &AuthorizationPolicy = ap;
        let mut findings = own_findings(ap.dry_run_errors());
        findings.extend(own_findings(ap.spec.validate()));
        let valid = findings.is_empty();
        let custom = ap.spec.custom_unsupported();
        for w in ap.warnings() {
            // The CUSTOM finding makes a valid policy's Accepted condition False: an error.
            let level = if valid && custom.as_ref() == Some(&w) {
                Level::Error
            } else {
                Level::Warning
            };
            findings.push(Finding {
                level,
                field: w.field,
                message: w.message,
            });
        }
        let mut v = verdict(findings, None);
        if valid && custom.is_some() {
            v.accepted = true;
            v.reason = UNSUPPORTED;
        } else if !v.accepted
            && let Some(p) = store.last_good.get(key)
        {
            v.serving_previous = Some(p.metadata.generation.unwrap_or(0));
            v.previous_spec = serde_json::to_value(&p.spec).ok();
        }
        verdicts.insert((Kind::AuthorizationPolicy, key.clone()), v);
    }
}

/// RequestAuthentications: Istio's own rules and warnings
/// (`rustmesh_api::request_authentication`), each policy on its own; then, for a valid one,
/// whether each rule's key set can be had (see the module doc): an error naming the field when
/// not ([`JWKS_UNAVAILABLE`]: still rendered, fail closed), a warning while a refresh fails and
/// the set fetched before keeps serving. An invalid update of a policy accepted before notes
/// that the last accepted version keeps serving (`render::request_authn` renders it).
fn request_authentications(index: &Index, verdicts: &mut BTreeMap<(Kind, ObjKey), Verdict>) {
    let store = &index.request_authentications;
    let wanted = index.key_sources();
    for (key, ra) in &store.objects {
        let ra: &RequestAuthentication = ra;
        let mut findings = own_findings(ra.spec.validate());
        let valid = findings.is_empty();
        let mut unavailable = false;
        if valid {
            for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
                let at = format!("spec.jwtRules[{i}]");
                let issuer = rule.issuer();
                let field = match rule.key_source() {
                    KeySource::Inline(_) => continue,
                    KeySource::Discovery { url: None, .. } => {
                        // Reported by the warnings below; rendered with jwksError.
                        unavailable = true;
                        findings.push(Finding {
                            level: Level::Error,
                            field: format!("{at}.issuer"),
                            message: format!(
                                "key set unavailable: {}; every token of issuer {issuer:?} is \
                                 refused (fail closed)",
                                no_discovery(issuer)
                            ),
                        });
                        continue;
                    }
                    KeySource::Discovery { .. } => format!("{at}.issuer"),
                    KeySource::Uri(_)
                        if rule.jwks_uri.as_deref().is_some_and(|u| !u.is_empty()) =>
                    {
                        format!("{at}.jwksUri")
                    }
                    KeySource::Uri(_) => format!("{at}.jwks_uri"),
                };
                let Some(source) = crate::jwks::Source::of(rule) else {
                    continue;
                };
                match index.key_sets.resolve(&wanted, &source) {
                    crate::jwks::Resolved::Unavailable { error, .. } => {
                        unavailable = true;
                        findings.push(Finding {
                            level: Level::Error,
                            field,
                            message: format!(
                                "key set unavailable: {error}; every token of issuer {issuer:?} \
                                 is refused (fail closed) until a fetch succeeds (retried with \
                                 back-off)"
                            ),
                        });
                    }
                    crate::jwks::Resolved::Keys {
                        refresh_error: Some(error),
                        ..
                    } => findings.push(Finding {
                        level: Level::Warning,
                        field,
                        message: format!(
                            "the last refresh of the key set failed: {error}; the set fetched \
                                 before keeps serving (retried with back-off)"
                        ),
                    }),
                    _ => {}
                }
            }
        }
        let no_discovery_warning = |w: &rustmesh_api::FieldError| {
            unavailable
                && findings
                    .iter()
                    .any(|f| f.field == w.field && f.level == Level::Error)
        };
        let warnings: Vec<Finding> = ra
            .spec
            .warnings()
            .into_iter()
            .filter(|w| !no_discovery_warning(w))
            .map(|w| Finding {
                level: Level::Warning,
                field: w.field,
                message: w.message,
            })
            .collect();
        findings.extend(warnings);
        let mut v = verdict(findings, None);
        if valid && unavailable {
            v.accepted = true;
            v.reason = JWKS_UNAVAILABLE;
        } else if !v.accepted
            && let Some(p) = store.last_good.get(key)
        {
            v.serving_previous = Some(p.metadata.generation.unwrap_or(0));
            v.previous_spec = serde_json::to_value(&p.spec).ok();
        }
        verdicts.insert((Kind::RequestAuthentication, key.clone()), v);
    }
}

/// DestinationRules with their resolved hosts, by exact host plus the wildcard ones.
struct HostedRules<'a> {
    all: Vec<(&'a ObjKey, &'a DestinationRule, String)>,
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
}

impl<'a> HostedRules<'a> {
    fn new(all: Vec<(&'a ObjKey, &'a DestinationRule, String)>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, (_, _, host)) in all.iter().enumerate() {
            if host.starts_with('*') {
                wildcard.push(i);
            } else {
                exact.entry(host.clone()).or_default().push(i);
            }
        }
        HostedRules {
            all,
            exact,
            wildcard,
        }
    }

    /// The rules whose host matches `host`.
    fn matching(
        &self,
        host: &str,
    ) -> impl Iterator<Item = &(&'a ObjKey, &'a DestinationRule, String)> {
        self.exact
            .get(host)
            .into_iter()
            .flatten()
            .chain(&self.wildcard)
            .map(|&i| &self.all[i])
            .filter(move |(_, _, h)| host_matches(h, host))
    }
}

fn registry_has(registry: &Registry, host: &str) -> bool {
    if host.starts_with('*') {
        registry
            .services
            .iter()
            .any(|s| host_matches(host, &s.fqdn))
    } else {
        registry.get(host).is_some()
    }
}

/// The fields of a spec rustmesh accepts but does not implement: warnings naming each
/// (`rustmesh_api::support`; the fields it refuses are errors of the spec's own `validate`).
fn unimplemented<T: serde::Serialize>(kind: &str, spec: &T) -> Vec<Finding> {
    rustmesh_api::support::warned_fields(kind, spec)
        .into_iter()
        .map(|w| Finding {
            level: Level::Warning,
            field: w.field,
            message: w.message,
        })
        .collect()
}

fn own_findings(errors: Vec<rustmesh_api::FieldError>) -> Vec<Finding> {
    errors
        .into_iter()
        .map(|e| Finding {
            level: Level::Error,
            field: e.field,
            message: e.message,
        })
        .collect()
}

fn verdict(findings: Vec<Finding>, conflict: Option<&'static str>) -> Verdict {
    let accepted = !findings.iter().any(|f| f.level == Level::Error);
    Verdict {
        serving_previous: None,
        previous_spec: None,
        accepted,
        reason: if accepted {
            "Accepted"
        } else {
            conflict.unwrap_or("Invalid")
        },
        findings,
    }
}

/// Findings on each `tls` setting of a DestinationRule (top level, per port, per subset): the
/// shared object-local check, `rustmesh_api::checks::destination_rule_tls` (the validating
/// webhook answers with the same findings).
fn tls_findings(
    spec: &rustmesh_api::destination_rule::DestinationRuleSpec,
    has_ca: bool,
) -> Vec<Finding> {
    checked(rustmesh_api::checks::destination_rule_tls(spec, has_ca))
}

/// The shared object-local checks' findings (`rustmesh_api::checks`) as the status reports
/// them.
fn checked(findings: Vec<rustmesh_api::checks::Finding>) -> Vec<Finding> {
    findings
        .into_iter()
        .map(|f| Finding {
            level: match f.level {
                rustmesh_api::checks::Severity::Error => Level::Error,
                rustmesh_api::checks::Severity::Warning => Level::Warning,
            },
            field: f.field,
            message: f.message,
        })
        .collect()
}

fn vs_cross_checks(
    vs: &VirtualService,
    key: &ObjKey,
    registry: &Registry,
    drs: &HostedRules<'_>,
    suffix: &str,
    findings: &mut Vec<Finding>,
) {
    // A VirtualService bound only to gateways routes hosts of the gateways' servers, which
    // need not be services of the registry (`bookinfo.example.com`).
    let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
    for (i, h) in vs.spec.hosts.iter().enumerate() {
        let host = resolve_host(h, &key.namespace, suffix);
        if mesh && !registry_has(registry, &host) {
            findings.push(Finding {
                level: Level::Warning,
                field: format!("spec.hosts[{i}]"),
                message: format!(
                    "host {host} matches no service in the registry; no routes are rendered for it"
                ),
            });
        }
    }
    let mut check = |field: String, d: &Destination| {
        let host = resolve_host(&d.host, &key.namespace, suffix);
        let svc = registry.get(&host);
        if svc.is_none() {
            findings.push(Finding {
                level: Level::Warning,
                field: format!("{field}.host"),
                message: format!(
                    "destination host {host} is not in the service registry; requests to it fail with 503"
                ),
            });
        }
        if let (Some(svc), Some(port)) = (svc, d.port)
            && u16::try_from(port.number)
                .ok()
                .and_then(|p| svc.port(p))
                .is_none()
        {
            findings.push(Finding {
                level: Level::Warning,
                field: format!("{field}.port.number"),
                message: format!("service {host} has no port {}", port.number),
            });
        }
        if let Some(subset) = &d.subset {
            let defined = drs.matching(&host).any(|(dk, dr, _)| {
                (dk.namespace == key.namespace
                    || exported(&dr.spec.export_to, &dk.namespace, &key.namespace))
                    && dr.spec.subsets.iter().any(|s| &s.name == subset)
            });
            if !defined {
                findings.push(Finding {
                    level: Level::Error,
                    field: format!("{field}.subset"),
                    message: format!(
                        "unknown subset {subset:?}: no DestinationRule visible to namespace {} defines it for host {host}",
                        key.namespace
                    ),
                });
            }
        }
    };
    for (i, r) in vs.spec.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            check(
                format!("spec.http[{i}].route[{j}].destination"),
                &d.destination,
            );
        }
        if let Some(m) = &r.mirror {
            check(format!("spec.http[{i}].mirror"), m);
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            check(
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &m.destination,
            );
        }
    }
    for (i, r) in vs.spec.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            check(
                format!("spec.tcp[{i}].route[{j}].destination"),
                &d.destination,
            );
        }
    }
    for (i, r) in vs.spec.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            check(
                format!("spec.tls[{i}].route[{j}].destination"),
                &d.destination,
            );
        }
    }
    // The redirect codes the proxy cannot send (a shared object-local check), after the rest.
    findings.extend(
        rustmesh_api::checks::virtual_service_redirects(&vs.spec)
            .into_iter()
            .map(|e| Finding {
                level: Level::Error,
                field: e.field,
                message: e.message,
            }),
    );
}

/// The status to write for a verdict. `previous` is the object's current status: a condition
/// whose status did not change keeps its `lastTransitionTime`, so an unchanged verdict produces
/// an identical status (and no write).
pub fn status_for(
    verdict: &Verdict,
    generation: Option<i64>,
    previous: Option<&IstioStatus>,
    now: &str,
) -> IstioStatus {
    let first_error = verdict
        .findings
        .iter()
        .find(|f| f.level == Level::Error)
        .map(|f| format!("{}: {}", f.field, f.message));
    let mut warnings = verdict
        .findings
        .iter()
        .filter(|f| f.level == Level::Warning);
    let first_warning = warnings.next();
    let unsupported = rendered_not_as_written(verdict);
    let (status, reason, message) = if verdict.accepted && !unsupported {
        let message = match first_warning {
            None => "valid; rendered into the proxies' configuration".to_string(),
            // The first warning is named here, where `kubectl describe` and `wait` look.
            Some(w) => format!(
                "valid with {} warning(s), the first: {}: {}; see validationMessages",
                warnings.count() + 1,
                w.field,
                w.message
            ),
        };
        ("True", verdict.reason, message)
    } else {
        let errors = verdict
            .findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count();
        let mut message = first_error.unwrap_or_default();
        if errors > 1 {
            message.push_str(&format!(" (and {} more error(s))", errors - 1));
        }
        ("False", verdict.reason, message)
    };
    let reconciled_message = match (verdict.accepted, verdict.serving_previous) {
        (true, _) if unsupported => "included in the rendered configuration, not as written: \
                                     see the Accepted condition"
            .to_string(),
        (true, _) => "included in the rendered configuration".to_string(),
        (false, Some(g)) => format!(
            "this version is left out; the last accepted version (generation {g}) keeps serving"
        ),
        (false, None) => {
            "left out of the rendered configuration; the rest of the mesh is unaffected".to_string()
        }
    };
    let conditions = [
        ("Accepted", status, reason, message),
        (
            "Reconciled",
            if verdict.accepted { "True" } else { status },
            if verdict.accepted {
                "Reconciled"
            } else {
                verdict.reason
            },
            reconciled_message,
        ),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| {
        let prev = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(prev.unwrap_or_else(|| now.to_string())),
            observed_generation: generation,
        }
    })
    .collect();
    IstioStatus {
        conditions,
        validation_messages: verdict
            .findings
            .iter()
            .map(|f| ValidationMessage {
                level: match f.level {
                    Level::Error => "Error".into(),
                    Level::Warning => "Warning".into(),
                },
                field: f.field.clone(),
                message: f.message.clone(),
            })
            .collect(),
        observed_generation: generation,
        last_accepted: match (
            verdict.accepted,
            verdict.serving_previous,
            &verdict.previous_spec,
        ) {
            (false, Some(generation), Some(spec)) => Some(LastAccepted {
                generation,
                spec: spec.clone(),
            }),
            _ => None,
        },
    }
}

/// The last accepted version of `obj` persisted in its `status.lastAccepted` by an earlier
/// operator (this one restarted while the current version was refused), rebuilt as an object of
/// its kind: `None` unless it is of an older generation and passes the object's own checks
/// again (a status is writable by whoever may write the object's status: it is never trusted
/// unchecked). Cross-object checks (conflicts, subsets) run on it as on any rendered version.
pub fn persisted_version<K: crate::index::kinds::IstioKind>(obj: &K, has_ca: bool) -> Option<K> {
    let last = obj.status()?.last_accepted.as_ref()?;
    let current = obj.meta().generation.unwrap_or(0);
    if last.generation >= current {
        return None;
    }
    let mut v = serde_json::to_value(obj).ok()?;
    v["spec"] = last.spec.clone();
    v["metadata"]["generation"] = last.generation.into();
    v["status"] = serde_json::Value::Null;
    let candidate: K = serde_json::from_value(v)
        .inspect_err(|e| {
            tracing::warn!(kind = %K::kind(&()), object = %crate::index::ObjKey::of(obj),
                "status.lastAccepted is not a valid spec, not restored: {e}")
        })
        .ok()?;
    let valid = match candidate.clone().into_object() {
        crate::index::Object::VirtualService(o) => o.spec.validate().is_empty(),
        crate::index::Object::DestinationRule(o) => {
            o.spec.validate().is_empty()
                && !tls_findings(&o.spec, has_ca)
                    .iter()
                    .any(|f| f.level == Level::Error)
        }
        crate::index::Object::Sidecar(o) => o.spec.validate().is_empty(),
        crate::index::Object::PeerAuthentication(o) => o.spec.validate().is_empty(),
        crate::index::Object::AuthorizationPolicy(o) => {
            o.spec.validate().is_empty() && o.dry_run_errors().is_empty()
        }
        crate::index::Object::RequestAuthentication(o) => o.spec.validate().is_empty(),
        crate::index::Object::Telemetry(o) => o.spec.validate().is_empty(),
        crate::index::Object::ServiceEntry(o) => o.spec.validate().is_empty(),
        crate::index::Object::Gateway(o) => {
            o.spec.validate().is_empty()
                && (has_ca
                    || rustmesh_api::checks::gateway_credentials_without_ca(&o.spec).is_empty())
        }
        _ => false,
    };
    if !valid {
        tracing::warn!(kind = %K::kind(&()), object = %crate::index::ObjKey::of(obj),
            generation = last.generation, "status.lastAccepted does not validate, not restored");
        return None;
    }
    Some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, bookinfo, istio};

    #[test]
    fn subsets_are_found_through_wildcard_destination_rules() {
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: default}
spec:
  host: "*.default.svc.cluster.local"
  subsets:
  - name: canary
    labels: {track: canary}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings, subset: canary}
"#,
        );
        // Only the wildcard rule defines `canary` for ratings.
        assert!(fixtures::verdict(&index, Kind::VirtualService, "default", "ratings").accepted);
    }

    #[test]
    fn unknown_subset_is_an_error_naming_the_field() {
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
"#,
        );
        let v = fixtures::verdict(&index, Kind::VirtualService, "default", "reviews");
        assert!(!v.accepted);
        assert_eq!(v.reason, "Invalid");
        assert_eq!(
            v.findings[0].field,
            "spec.http[0].route[0].destination.subset"
        );
        assert!(v.findings[0].message.contains("unknown subset \"v9\""));
        let s = status_for(&v, Some(3), None, "2024-01-01T00:00:00Z");
        let accepted = &s.conditions[0];
        assert_eq!(
            (accepted.type_.as_str(), accepted.status.as_str()),
            ("Accepted", "False")
        );
        assert_eq!(accepted.reason.as_deref(), Some("Invalid"));
        assert!(
            accepted
                .message
                .as_deref()
                .unwrap()
                .starts_with("spec.http[0].route[0].destination.subset: unknown subset")
        );
        assert_eq!(s.conditions[1].type_, "Reconciled");
        assert_eq!(s.conditions[1].status, "False");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.validation_messages[0].level, "Error");
    }

    #[test]
    fn unknown_host_is_a_warning_and_the_object_is_accepted() {
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  http:
  - route:
    - destination: {host: api.example.com}
"#,
        );
        let v = fixtures::verdict(&index, Kind::VirtualService, "default", "ext");
        assert!(v.accepted);
        assert_eq!(v.findings.len(), 2);
        assert!(v.findings.iter().all(|f| f.level == Level::Warning));
        let s = status_for(&v, None, None, "t0");
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[1].reason.as_deref(), Some("Reconciled"));
        assert_eq!(s.validation_messages.len(), 2);
    }

    #[test]
    fn destination_rule_tls_modes_are_implemented_or_reported_by_field() {
        let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mtls, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      tls: {mode: DISABLE}
    - port: {number: 9081}
      tls: {mode: SIMPLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: MUTUAL, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem}
"#;
        // With the mesh CA: every mode is rendered, nothing to report.
        let mut index = bookinfo();
        index.mesh.ca_host = Some("istiod.istio-system.svc.cluster.local".into());
        istio(&mut index, dr);
        let v = fixtures::verdict(&index, Kind::DestinationRule, "default", "mtls");
        assert!(v.accepted);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        // Without it, ISTIO_MUTUAL cannot be rendered: a warning naming the CA.
        let mut index = bookinfo();
        istio(&mut index, dr);
        let v = fixtures::verdict(&index, Kind::DestinationRule, "default", "mtls");
        assert!(v.accepted);
        let istio_mutual = &v.findings[0];
        assert_eq!(istio_mutual.field, "spec.trafficPolicy.tls.mode");
        assert!(
            istio_mutual.message.contains("ca.enabled"),
            "{istio_mutual:?}"
        );
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        // ISTIO_MUTUAL with certificates of its own is refused, as Istio's validation does.
        let mut index = bookinfo();
        index.mesh.ca_host = Some("istiod.istio-system.svc.cluster.local".into());
        istio(
            &mut index,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: own, namespace: default}\nspec:\n  host: ratings\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL, credentialName: my-cert}\n",
        );
        let v = fixtures::verdict(&index, Kind::DestinationRule, "default", "own");
        assert!(!v.accepted);
        assert_eq!(v.findings[0].field, "spec.trafficPolicy.tls.credentialName");
        assert_eq!(v.findings[0].level, Level::Error);
    }

    #[test]
    fn tls_origination_outside_the_mesh_refuses_what_it_cannot_do_and_warns_on_unused_fields() {
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    tls: {mode: SIMPLE, clientCertificate: /etc/c.pem, insecureSkipVerify: true, caCertificates: /etc/ca.pem}
    portLevelSettings:
    - port: {number: 9080}
      tls: {mode: MUTUAL, privateKey: etc/k.pem, sni: "bad name!"}
    - port: {number: 9081}
      tls: {mode: SIMPLE, credentialName: db-ca, caCrl: etc/crl.pem}
    - port: {number: 9082}
      tls: {mode: MUTUAL, clientCertificate: "", privateKey: /etc/k.pem}
"#,
        );
        let v = fixtures::verdict(&index, Kind::DestinationRule, "default", "ext");
        assert!(!v.accepted, "errors refuse the rule");
        let got: Vec<(Level, &str)> = v
            .findings
            .iter()
            .map(|f| (f.level, f.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Level::Error, "spec.trafficPolicy.portLevelSettings[0].tls"),
                (Level::Warning, "spec.trafficPolicy.tls.clientCertificate"),
                (Level::Warning, "spec.trafficPolicy.tls.caCertificates"),
                (
                    Level::Error,
                    "spec.trafficPolicy.portLevelSettings[0].tls.sni"
                ),
                (
                    Level::Error,
                    "spec.trafficPolicy.portLevelSettings[0].tls.privateKey"
                ),
                (
                    Level::Error,
                    "spec.trafficPolicy.portLevelSettings[1].tls.caCrl"
                ),
                (
                    Level::Warning,
                    "spec.trafficPolicy.portLevelSettings[1].tls.credentialName"
                ),
                (
                    Level::Error,
                    "spec.trafficPolicy.portLevelSettings[2].tls.clientCertificate"
                ),
            ]
        );
        let credential = &v.findings[6];
        assert!(
            v.findings[0].message.contains("MUTUAL needs"),
            "{:?}",
            v.findings[0]
        );
        assert!(
            credential.message.contains("workloadSelector"),
            "{credential:?}"
        );
    }

    #[test]
    fn a_credential_name_needs_a_workload_selector_the_ca_and_no_files() {
        let rule = |selector: &str, tls: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cred, namespace: default}}\nspec:\n  host: ratings\n{selector}  trafficPolicy:\n    tls: {tls}\n"
            )
        };
        let selected = "  workloadSelector: {matchLabels: {app: productpage}}\n";
        let findings = |ca: bool, yaml: String| {
            let mut index = bookinfo();
            if ca {
                index.mesh.ca_host = Some("istiod.istio-system.svc.cluster.local".into());
            }
            istio(&mut index, &yaml);
            let v = fixtures::verdict(&index, Kind::DestinationRule, "default", "cred");
            v.findings
                .iter()
                .map(|f| (f.level, f.field.clone(), f.message.clone()))
                .collect::<Vec<_>>()
        };
        // Selected workloads, a CA: accepted as is, both modes.
        for mode in ["SIMPLE", "MUTUAL"] {
            let tls = format!("{{mode: {mode}, credentialName: db-client}}");
            assert_eq!(findings(true, rule(selected, &tls)), vec![], "{mode}");
        }
        let at = "spec.trafficPolicy.tls.credentialName".to_string();
        // No CA to serve the Secret.
        let f = findings(
            false,
            rule(selected, "{mode: MUTUAL, credentialName: db-client}"),
        );
        assert_eq!((f[0].0, &f[0].1), (Level::Error, &at));
        assert!(f[0].2.contains("ca.enabled"), "{f:?}");
        // No workloadSelector: MUTUAL would present nothing (error), SIMPLE uses the system
        // roots (warning), as Istio's sidecars do.
        let f = findings(true, rule("", "{mode: MUTUAL, credentialName: db-client}"));
        assert_eq!((f[0].0, &f[0].1), (Level::Error, &at), "{f:?}");
        let f = findings(true, rule("", "{mode: SIMPLE, credentialName: db-client}"));
        assert_eq!((f[0].0, &f[0].1), (Level::Warning, &at), "{f:?}");
        assert!(f[0].2.contains("system roots"), "{f:?}");
        // Files beside it, or a name no Secret can have.
        let f = findings(
            true,
            rule(
                selected,
                "{mode: SIMPLE, credentialName: db, caCertificates: /etc/ca.pem}",
            ),
        );
        assert_eq!(f[0].1, "spec.trafficPolicy.tls.caCertificates", "{f:?}");
        let f = findings(true, rule(selected, "{mode: SIMPLE, credentialName: Db_1}"));
        assert_eq!((f[0].0, &f[0].1), (Level::Error, &at), "{f:?}");
    }

    #[test]
    fn own_rules_weights_and_regexes_make_an_object_invalid() {
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: "(("}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 60
    - destination: {host: reviews, subset: v2}
      weight: 60
"#,
        );
        let v = fixtures::verdict(&index, Kind::VirtualService, "default", "bad");
        assert!(!v.accepted);
        let fields: Vec<_> = v.findings.iter().map(|f| f.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.http[0].match[0].uri.regex"),
            "{fields:?}"
        );
        assert!(fields.contains(&"spec.http[0].route"), "{fields:?}");
    }

    #[test]
    fn a_regex_bomb_is_refused_with_accepted_false_naming_the_field() {
        // `\w{60}` compiles to megabytes (300 such routes took a sidecar to 1 GB): refused here,
        // so it is never rendered, and the status says which field and why.
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bomb, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: '\w{60}'}
    - headers: {x-id: {regex: '\w{60}'}}
    route:
    - destination: {host: reviews}
"#,
        );
        let v = fixtures::verdict(&index, Kind::VirtualService, "default", "bomb");
        assert!(!v.accepted);
        assert_eq!(v.reason, "Invalid");
        let fields: Vec<_> = v.findings.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.http[0].match[0].uri.regex",
                "spec.http[0].match[1].headers.x-id.regex"
            ]
        );
        let status = status_for(&v, Some(1), None, "2026-01-01T00:00:00Z");
        let accepted = &status.conditions[0];
        assert_eq!(
            (accepted.type_.as_str(), accepted.status.as_str()),
            ("Accepted", "False")
        );
        let message = accepted.message.as_deref().unwrap();
        assert!(
            message.starts_with("spec.http[0].match[0].uri.regex: regex \"\\\\w{60}\" compiles to more than 524288 bytes"),
            "{message}"
        );

        // Istio's documented regexes are accepted as before.
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: documented, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match:
    - uri: {regex: '^/api/v[0-9]+/.*'}
    - uri: {regex: '.*\.jpg'}
    - headers: {cookie: {regex: '^(.*?;)?(user=jason)(;.*)?$'}}
    route:
    - destination: {host: ratings}
"#,
        );
        let v = fixtures::verdict(&index, Kind::VirtualService, "default", "documented");
        assert!(v.accepted, "{:?}", v.findings);
    }

    #[test]
    fn second_namespace_wide_sidecar_and_duplicate_rule_conflict() {
        let mut index = bookinfo();
        istio(
            &mut index,
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: a, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: b, namespace: default, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  egress: [{hosts: ["*/*"]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-again, namespace: default, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  host: reviews.default.svc.cluster.local
"#,
        );
        assert!(fixtures::verdict(&index, Kind::Sidecar, "default", "a").accepted);
        let b = fixtures::verdict(&index, Kind::Sidecar, "default", "b");
        assert_eq!((b.accepted, b.reason), (false, "Conflict"));
        // Objects without a creationTimestamp sort last: bookinfo's `reviews` yields.
        let dr = fixtures::verdict(&index, Kind::DestinationRule, "default", "reviews");
        assert_eq!((dr.accepted, dr.reason), (false, "Conflict"));
        assert!(dr.findings[0].message.contains("default/reviews-again"));
        assert!(
            fixtures::verdict(&index, Kind::DestinationRule, "default", "reviews-again").accepted
        );
    }

    #[test]
    fn unchanged_verdict_keeps_transition_time_so_status_is_stable() {
        let v = Verdict {
            serving_previous: None,
            previous_spec: None,
            accepted: true,
            reason: "Accepted",
            findings: vec![],
        };
        let first = status_for(&v, Some(1), None, "t0");
        let again = status_for(&v, Some(1), Some(&first), "t1");
        assert_eq!(first, again);
        let bad = Verdict {
            serving_previous: None,
            previous_spec: None,
            accepted: false,
            reason: "Invalid",
            findings: vec![Finding {
                level: Level::Error,
                field: "spec.hosts".into(),
                message: "x".into(),
            }],
        };
        let changed = status_for(&bad, Some(2), Some(&first), "t2");
        assert_eq!(
            changed.conditions[0].last_transition_time.as_deref(),
            Some("t2")
        );
    }

    #[test]
    fn redirect_codes_the_proxy_cannot_send_are_errors() {
        let mut index = bookinfo();
        istio(
            &mut index,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [reviews]\n  http: [{redirect: {uri: /x, redirectCode: 300}}]\n",
        );
        let v = fixtures::verdict(&index, Kind::VirtualService, "default", "r");
        assert!(!v.accepted);
        assert_eq!(v.findings[0].field, "spec.http[0].redirect.redirectCode");
    }

    #[test]
    fn a_second_virtual_service_for_a_host_is_warned() {
        let mut index = bookinfo();
        istio(
            &mut index,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, namespace: default, creationTimestamp: \"2024-01-01T00:00:00Z\"}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b, namespace: default, creationTimestamp: \"2024-02-01T00:00:00Z\"}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http: [{route: [{destination: {host: reviews}}]}]\n",
        );
        assert!(
            fixtures::verdict(&index, Kind::VirtualService, "default", "a")
                .findings
                .is_empty()
        );
        let b = fixtures::verdict(&index, Kind::VirtualService, "default", "b");
        assert!(b.accepted);
        assert_eq!(b.findings[0].field, "spec.hosts[0]");
        assert!(b.findings[0].message.contains("default/a"));
    }

    #[test]
    fn short_names_expand_only_without_dots() {
        assert_eq!(
            resolve_host("reviews", "default", "cluster.local"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.default", "x", "cluster.local"),
            "reviews.default"
        );
        assert_eq!(resolve_host("*", "x", "cluster.local"), "*");
        assert_eq!(resolve_host("10.0.0.1", "x", "cluster.local"), "10.0.0.1");
    }
}
