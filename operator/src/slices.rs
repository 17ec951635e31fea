//! EndpointSlices (`discovery.k8s.io/v1`) as the index's Endpoints.
//!
//! Where the API server serves EndpointSlices (Kubernetes 1.21+; the Endpoints API is deprecated
//! from 1.33 and truncated at 1000 addresses), the operator watches them instead of Endpoints.
//! A service's endpoints are spread over several slices, each labelled
//! `kubernetes.io/service-name`; [`Slices`] keeps the slices of every service and gives the
//! service's endpoints as one `Endpoints` object (one subset per slice, ready addresses in
//! `addresses`, the others in `notReadyAddresses`, as the Endpoints controller writes them), so
//! that everything after the watch (index, registry, renderer) stays the same. Slices without the
//! service label (made by hand for something else) and FQDN slices are ignored.

use crate::index::WatchEvent;
use crate::index::{Kind, ObjKey, Object};
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::core::ObjectMeta;
use kube::runtime::watcher::Event;
use std::collections::{BTreeMap, HashMap};

/// Label naming the service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The slices of every service, by service then slice name.
#[derive(Clone, Debug, Default)]
pub struct Slices {
    by_service: HashMap<ObjKey, BTreeMap<String, EndpointSlice>>,
    /// Which service each slice was filed under (a slice's label could change).
    owner: HashMap<ObjKey, ObjKey>,
}

/// The service a slice belongs to, when it is one the mesh uses.
fn service_of(slice: &EndpointSlice) -> Option<ObjKey> {
    if slice.address_type == "FQDN" {
        return None;
    }
    let name = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(ObjKey::new(
        slice.namespace().unwrap_or_default(),
        name.clone(),
    ))
}

fn slice_key(slice: &EndpointSlice) -> ObjKey {
    ObjKey::new(slice.namespace().unwrap_or_default(), slice.name_any())
}

impl Slices {
    /// Adds or replaces a slice; returns the services whose endpoints this changes, each with
    /// its endpoints now (`None`: it has no slice left).
    pub fn apply(&mut self, slice: EndpointSlice) -> Vec<(ObjKey, Option<Endpoints>)> {
        let key = slice_key(&slice);
        let mut touched = self.remove(&key);
        if let Some(service) = service_of(&slice) {
            self.by_service
                .entry(service.clone())
                .or_default()
                .insert(key.name.clone(), slice);
            self.owner.insert(key, service.clone());
            if !touched.contains(&service) {
                touched.push(service);
            }
        }
        self.with_endpoints(touched)
    }

    /// Removes a slice; returns the service it belonged to with its endpoints now.
    pub fn delete(&mut self, slice: &EndpointSlice) -> Vec<(ObjKey, Option<Endpoints>)> {
        let touched = self.remove(&slice_key(slice));
        self.with_endpoints(touched)
    }

    fn with_endpoints(&self, services: Vec<ObjKey>) -> Vec<(ObjKey, Option<Endpoints>)> {
        services
            .into_iter()
            .map(|s| {
                let e = self.endpoints(&s);
                (s, e)
            })
            .collect()
    }

    /// Forgets everything (a relist starts).
    pub fn clear(&mut self) {
        self.by_service.clear();
        self.owner.clear();
    }

    /// Every service with slices, and its endpoints.
    pub fn all(&self) -> Vec<Endpoints> {
        let mut keys: Vec<&ObjKey> = self.by_service.keys().collect();
        keys.sort();
        keys.into_iter().filter_map(|k| self.endpoints(k)).collect()
    }

    fn remove(&mut self, slice: &ObjKey) -> Vec<ObjKey> {
        let Some(service) = self.owner.remove(slice) else {
            return Vec::new();
        };
        if let Some(slices) = self.by_service.get_mut(&service) {
            slices.remove(&slice.name);
            if slices.is_empty() {
                self.by_service.remove(&service);
            }
        }
        vec![service]
    }

    /// A service's endpoints as one Endpoints object (`None`: no slice).
    pub fn endpoints(&self, service: &ObjKey) -> Option<Endpoints> {
        let slices = self.by_service.get(service)?;
        Some(Endpoints {
            metadata: ObjectMeta {
                name: Some(service.name.clone()),
                namespace: Some(service.namespace.clone()),
                ..ObjectMeta::default()
            },
            subsets: Some(slices.values().filter_map(subset).collect()),
        })
    }
}

/// One slice as an Endpoints subset (`None` when it has no endpoints).
fn subset(slice: &EndpointSlice) -> Option<EndpointSubset> {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for ep in &slice.endpoints {
        // `ready` unset means unknown, which consumers treat as ready (the API's advice).
        let is_ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        for ip in &ep.addresses {
            let address = EndpointAddress {
                ip: ip.clone(),
                hostname: ep.hostname.clone(),
                node_name: ep.node_name.clone(),
                target_ref: ep.target_ref.clone(),
            };
            if is_ready {
                ready.push(address);
            } else {
                not_ready.push(address);
            }
        }
    }
    if ready.is_empty() && not_ready.is_empty() {
        return None;
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(EndpointPort {
                name: p.name.clone(),
                port: p.port?,
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    Some(EndpointSubset {
        addresses: (!ready.is_empty()).then_some(ready),
        not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
        ports: Some(ports),
    })
}

/// Turns the EndpointSlice watch into the Endpoints events the index expects: a relist of the
/// slices becomes a relist of the services' merged Endpoints (nothing is emitted until the whole
/// list is known), and each slice change becomes an apply or delete of its service's Endpoints.
#[derive(Default)]
pub struct SliceWatch {
    live: Slices,
    relist: Option<Slices>,
}

impl SliceWatch {
    pub fn on(&mut self, event: Event<EndpointSlice>) -> Vec<WatchEvent> {
        let changes = match event {
            Event::Init => {
                self.relist = Some(Slices::default());
                return Vec::new();
            }
            Event::InitApply(slice) => {
                self.relist.get_or_insert_with(Slices::default).apply(slice);
                return Vec::new();
            }
            Event::InitDone => {
                self.live = self.relist.take().unwrap_or_default();
                let mut out = vec![WatchEvent::Init];
                out.extend(
                    self.live
                        .all()
                        .into_iter()
                        .map(|e| WatchEvent::InitApply(Object::Endpoints(Box::new(e)))),
                );
                out.push(WatchEvent::InitDone);
                return out;
            }
            Event::Apply(slice) => self.live.apply(slice),
            Event::Delete(slice) => self.live.delete(&slice),
        };
        changes
            .into_iter()
            .map(|(key, e)| match e {
                Some(e) => WatchEvent::Apply(Object::Endpoints(Box::new(e))),
                None => WatchEvent::Delete(Kind::Endpoints, key),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::bookinfo;
    use crate::registry::Registry;
    use serde_json::json;

    fn slice(name: &str, service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        }))
        .unwrap()
    }

    fn ep(ip: &str, pod: &str, ready: Option<bool>) -> serde_json::Value {
        let mut e = json!({"addresses": [ip],
            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod}});
        if let Some(r) = ready {
            e["conditions"] = json!({"ready": r});
        }
        e
    }

    #[test]
    fn a_services_slices_become_one_endpoints_object() {
        let mut s = Slices::default();
        let reviews = ObjKey::new("default", "reviews");
        let out = s.apply(slice(
            "reviews-abc",
            "reviews",
            json!([
                ep("10.244.0.32", "reviews-v1-1", Some(true)),
                ep("10.244.0.33", "reviews-v2-1", None)
            ]),
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, reviews);
        let out = s.apply(slice(
            "reviews-def",
            "reviews",
            json!([ep("10.244.0.34", "reviews-v3-1", Some(false))]),
        ));
        let e = out[0].1.clone().unwrap();
        assert_eq!(e.metadata.name.as_deref(), Some("reviews"));
        let subsets = e.subsets.unwrap();
        assert_eq!(subsets.len(), 2);
        let ready: Vec<&str> = subsets[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ready, ["10.244.0.32", "10.244.0.33"]);
        assert!(subsets[1].addresses.is_none());
        assert_eq!(
            subsets[1].not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.244.0.34"
        );
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 9080);

        // What the renderer sees: the ready addresses, with their pods' labels.
        let mut index = bookinfo();
        index.apply(Object::Endpoints(Box::new(s.endpoints(&reviews).unwrap())));
        let svc = Registry::service(&index, &reviews).unwrap();
        let ips: Vec<String> = svc.ports[0]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(ips, ["10.244.0.32", "10.244.0.33"]);
        assert_eq!(svc.ports[0].endpoints[1].labels["version"], "v2");

        // Deleting slices: the service keeps the others, then has none.
        let gone = slice("reviews-def", "reviews", json!([]));
        let out = s.delete(&gone);
        assert_eq!(
            out[0].1.as_ref().unwrap().subsets.as_ref().unwrap().len(),
            1
        );
        let out = s.delete(&slice("reviews-abc", "reviews", json!([])));
        assert_eq!(out, vec![(reviews, None)]);
        assert!(s.all().is_empty());
    }

    #[test]
    fn the_slice_watch_becomes_the_endpoints_watch() {
        let mut w = SliceWatch::default();
        assert!(w.on(Event::Init).is_empty());
        assert!(
            w.on(Event::InitApply(slice(
                "r-1",
                "reviews",
                json!([ep("10.0.0.1", "p1", None)])
            )))
            .is_empty()
        );
        w.on(Event::InitApply(slice(
            "r-2",
            "reviews",
            json!([ep("10.0.0.2", "p2", None)]),
        )));
        w.on(Event::InitApply(slice(
            "d-1",
            "details",
            json!([ep("10.0.0.3", "p3", None)]),
        )));
        let listed = w.on(Event::InitDone);
        let names: Vec<String> = listed
            .iter()
            .map(|e| match e {
                WatchEvent::Init => "init".to_string(),
                WatchEvent::InitApply(Object::Endpoints(e)) => {
                    format!("{}:{}", e.name_any(), e.subsets.as_ref().unwrap().len())
                }
                WatchEvent::InitDone => "done".to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(names, ["init", "details:1", "reviews:2", "done"]);
        // A change of one slice re-emits its service; deleting the last slice deletes it.
        let ev = w.on(Event::Apply(slice("r-2", "reviews", json!([]))));
        assert!(
            matches!(&ev[..], [WatchEvent::Apply(Object::Endpoints(e))] if e.subsets.as_ref().unwrap().len() == 1)
        );
        let ev = w.on(Event::Delete(slice("d-1", "details", json!([]))));
        assert!(matches!(&ev[..], [WatchEvent::Delete(Kind::Endpoints, k)] if k.name == "details"));
    }

    #[test]
    fn unrelated_and_fqdn_slices_are_ignored_and_a_relabelled_slice_moves() {
        let mut s = Slices::default();
        let mut custom = slice("custom", "x", json!([ep("10.0.0.1", "p", None)]));
        custom.metadata.labels = None;
        assert!(s.apply(custom).is_empty());
        let mut fqdn = slice("f", "x", json!([{"addresses": ["example.com"]}]));
        fqdn.address_type = "FQDN".into();
        assert!(s.apply(fqdn).is_empty());
        // A slice filed under `a`, then relabelled to `b`: both change.
        s.apply(slice("s1", "a", json!([ep("10.0.0.1", "p", None)])));
        let out = s.apply(slice("s1", "b", json!([ep("10.0.0.1", "p", None)])));
        let keys: Vec<(String, bool)> = out
            .iter()
            .map(|(k, e)| (k.name.clone(), e.is_some()))
            .collect();
        assert_eq!(keys, [("a".to_string(), false), ("b".to_string(), true)]);
        // An empty slice gives a service with no addresses (not a missing one).
        s.apply(slice("s2", "c", json!([])));
        let c = s.endpoints(&ObjKey::new("default", "c")).unwrap();
        assert!(c.subsets.unwrap().is_empty());
    }
}
