//! Builders of Kubernetes and Istio objects for tests (here and in other crates' tests): a whole
//! mesh can be put into an [`Index`] without an API server.

use crate::index::{Index, Kind, ObjKey, Object, PodInfo};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use rustmesh_api::IstioObject;
use serde_json::json;

/// A port of a Service: `(name, port, targetPort)`; the name may be empty.
pub type PortSpec<'a> = (&'a str, u16, u16);

/// A ClusterIP Service (`cluster_ip` `None` for a headless one) with TCP ports.
pub fn service(ns: &str, name: &str, cluster_ip: Option<&str>, ports: &[PortSpec<'_>]) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|(pname, port, target)| {
            let mut p = json!({"port": port, "targetPort": target, "protocol": "TCP"});
            if !pname.is_empty() {
                p["name"] = json!(pname);
            }
            p
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": cluster_ip.unwrap_or("None"),
            "ports": ports,
            "selector": {"app": name},
        }
    }))
    .expect("valid Service")
}

/// An ExternalName Service aliasing `external_name` (no ClusterIP, no selector), with TCP ports.
pub fn external_name_service(
    ns: &str,
    name: &str,
    external_name: &str,
    ports: &[PortSpec<'_>],
) -> Service {
    let mut s = service(ns, name, None, ports);
    let spec = s.spec.as_mut().expect("a spec");
    spec.type_ = Some("ExternalName".to_string());
    spec.external_name = Some(external_name.to_string());
    spec.cluster_ip = None;
    spec.selector = None;
    s
}

/// One address of an Endpoints object: `(ip, pod name)`.
pub type Address<'a> = (&'a str, &'a str);

/// Endpoints with one subset: every address serves every port `(name, port)`.
pub fn endpoints(
    ns: &str,
    name: &str,
    addresses: &[Address<'_>],
    ports: &[(&str, u16)],
) -> Endpoints {
    let addresses: Vec<_> = addresses
        .iter()
        .map(|(ip, pod)| {
            json!({"ip": ip, "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}})
        })
        .collect();
    let ports: Vec<_> = ports
        .iter()
        .map(|(pname, port)| {
            let mut p = json!({"port": port, "protocol": "TCP"});
            if !pname.is_empty() {
                p["name"] = json!(pname);
            }
            p
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns},
        "subsets": [{"addresses": addresses, "ports": ports}],
    }))
    .expect("valid Endpoints")
}

/// Adds a namespace (injected or not).
pub fn namespace(index: &mut Index, name: &str, injected: bool) {
    let labels = if injected {
        [("istio-injection".to_string(), "enabled".to_string())].into()
    } else {
        Default::default()
    };
    index.apply(Object::Namespace {
        name: name.to_string(),
        labels,
    });
}

/// Adds a pod's labels (service account `default`).
pub fn pod(index: &mut Index, ns: &str, name: &str, labels: &[(&str, &str)]) {
    pod_as(index, ns, name, None, labels);
}

/// Adds a pod's labels and service account (`None`: `default`).
pub fn pod_as(
    index: &mut Index,
    ns: &str,
    name: &str,
    service_account: Option<&str>,
    labels: &[(&str, &str)],
) {
    index.apply(Object::Pod {
        key: ObjKey::new(ns, name),
        pod: PodInfo::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account,
        ),
    });
}

/// Adds a gateway's pod (its proxy `proxy run --type router`) with these labels.
pub fn router_pod(index: &mut Index, ns: &str, name: &str, labels: &[(&str, &str)]) {
    pod(index, ns, name, labels);
    as_router(index, ns, name);
}

/// Makes the known pod `ns/name` a gateway's pod (as the injector's `gateway` template does).
pub fn as_router(index: &mut Index, ns: &str, name: &str) {
    let key = ObjKey::new(ns, name);
    let pod = index.pods.get(&key).expect("a known pod").clone();
    index.apply(Object::Pod {
        key,
        pod: pod.with_role(rustmesh_xds::scope::ProxyRole::Router),
    });
}

/// The operator's verdict on the object `ns/name` of `kind` (its findings, accepted or not),
/// as validation computes it for the whole index.
pub fn verdict(index: &Index, kind: Kind, ns: &str, name: &str) -> crate::validation::Verdict {
    let registry = crate::registry::Registry::build(index);
    crate::validation::Validation::compute(index, &registry).verdicts
        [&(kind, ObjKey::new(ns, name))]
        .clone()
}

/// A pod behind a service: `(pod name, ip, labels)`.
pub type PodSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Adds a service with its endpoints and the pods behind them: `pods` are
/// `(pod name, ip, labels)`; every pod serves every port.
pub fn workload(
    index: &mut Index,
    ns: &str,
    name: &str,
    cluster_ip: Option<&str>,
    ports: &[PortSpec<'_>],
    pods: &[PodSpec<'_>],
) {
    index.apply(Object::Service(Box::new(service(
        ns, name, cluster_ip, ports,
    ))));
    let addrs: Vec<Address<'_>> = pods.iter().map(|(p, ip, _)| (*ip, *p)).collect();
    let eports: Vec<(&str, u16)> = ports.iter().map(|(n, _, t)| (*n, *t)).collect();
    index.apply(Object::Endpoints(Box::new(endpoints(
        ns, name, &addrs, &eports,
    ))));
    for (p, _, labels) in pods {
        pod(index, ns, p, labels);
    }
}

/// Parses Istio YAML (one or more documents) into the index, bypassing validation so that tests
/// can feed invalid objects as the API server would. Panics on unparseable YAML.
pub fn istio(index: &mut Index, yaml: &str) {
    for doc in rustmesh_api::parse::load_all(yaml) {
        let obj = match doc {
            Ok(o) => o,
            Err(rustmesh_api::Error::Invalid { .. }) => {
                // Re-read without validation: the operator must see invalid objects too.
                reparse_unvalidated(yaml)
                    .into_iter()
                    .for_each(|o| apply_istio(index, o));
                return;
            }
            Err(e) => panic!("fixture YAML: {e}"),
        };
        apply_istio(index, obj);
    }
}

/// Adds one typed Istio object.
pub fn apply_istio(index: &mut Index, obj: IstioObject) {
    index.apply(match obj {
        IstioObject::VirtualService(v) => Object::VirtualService(v),
        IstioObject::DestinationRule(d) => Object::DestinationRule(d),
        IstioObject::Sidecar(s) => Object::Sidecar(s),
        IstioObject::PeerAuthentication(p) => Object::PeerAuthentication(p),
        IstioObject::AuthorizationPolicy(p) => Object::AuthorizationPolicy(p),
        IstioObject::RequestAuthentication(r) => Object::RequestAuthentication(r),
        IstioObject::Telemetry(t) => Object::Telemetry(t),
        IstioObject::ServiceEntry(se) => Object::ServiceEntry(se),
        IstioObject::Gateway(g) => Object::Gateway(g),
    });
}

pub fn reparse_unvalidated(yaml: &str) -> Vec<IstioObject> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_norway::Value::deserialize(doc).expect("fixture YAML");
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value).expect("JSON-representable");
        let kind = json["kind"].as_str().unwrap_or_default().to_string();
        out.push(match kind.as_str() {
            "VirtualService" => IstioObject::VirtualService(Box::new(
                serde_json::from_value(json).expect("VirtualService shape"),
            )),
            "DestinationRule" => IstioObject::DestinationRule(Box::new(
                serde_json::from_value(json).expect("DestinationRule shape"),
            )),
            "Sidecar" => IstioObject::Sidecar(Box::new(
                serde_json::from_value(json).expect("Sidecar shape"),
            )),
            "PeerAuthentication" => IstioObject::PeerAuthentication(Box::new(
                serde_json::from_value(json).expect("PeerAuthentication shape"),
            )),
            "AuthorizationPolicy" => IstioObject::AuthorizationPolicy(Box::new(
                serde_json::from_value(json).expect("AuthorizationPolicy shape"),
            )),
            "RequestAuthentication" => IstioObject::RequestAuthentication(Box::new(
                serde_json::from_value(json).expect("RequestAuthentication shape"),
            )),
            "Telemetry" => IstioObject::Telemetry(Box::new(
                serde_json::from_value(json).expect("Telemetry shape"),
            )),
            "ServiceEntry" => IstioObject::ServiceEntry(Box::new(
                serde_json::from_value(json).expect("ServiceEntry shape"),
            )),
            "Gateway" => IstioObject::Gateway(Box::new(
                serde_json::from_value(json).expect("Gateway shape"),
            )),
            other => panic!("unsupported kind {other}"),
        });
    }
    out
}

/// Bookinfo in `default` plus kube-dns in `kube-system`, as in `xds/tests/fixtures/productpage.json`:
/// details, productpage, ratings, reviews (v1/v2/v3) on 9080 (`http`), mongodb on 27017 (`mongo`),
/// kube-dns 53 (`dns-tcp`) and 9153 (`metrics`), and the reviews DestinationRule with subsets.
pub fn bookinfo() -> Index {
    bookinfo_in("default")
}

/// [`bookinfo`] with the application in namespace `ns`.
pub fn bookinfo_in(ns: &str) -> Index {
    let mut index = Index::default();
    namespace(&mut index, ns, true);
    namespace(&mut index, "kube-system", false);
    namespace(&mut index, "istio-system", false);
    let http = [("http", 9080, 9080)];
    workload(
        &mut index,
        ns,
        "details",
        Some("10.96.10.1"),
        &http,
        &[(
            "details-v1-1",
            "10.244.0.30",
            &[("app", "details"), ("version", "v1")],
        )],
    );
    workload(
        &mut index,
        ns,
        "productpage",
        Some("10.96.10.2"),
        &http,
        &[(
            "productpage-v1-1",
            "10.244.0.22",
            &[("app", "productpage"), ("version", "v1")],
        )],
    );
    workload(
        &mut index,
        ns,
        "ratings",
        Some("10.96.10.3"),
        &http,
        &[(
            "ratings-v1-1",
            "10.244.0.31",
            &[("app", "ratings"), ("version", "v1")],
        )],
    );
    workload(
        &mut index,
        ns,
        "reviews",
        Some("10.96.10.4"),
        &http,
        &[
            (
                "reviews-v1-1",
                "10.244.0.32",
                &[("app", "reviews"), ("version", "v1")],
            ),
            (
                "reviews-v2-1",
                "10.244.0.33",
                &[("app", "reviews"), ("version", "v2")],
            ),
            (
                "reviews-v3-1",
                "10.244.0.34",
                &[("app", "reviews"), ("version", "v3")],
            ),
        ],
    );
    workload(
        &mut index,
        ns,
        "mongodb",
        Some("10.96.20.1"),
        &[("mongo", 27017, 27017)],
        &[("mongodb-v1-1", "10.244.0.40", &[("app", "mongodb")])],
    );
    // kube-dns: UDP 53 (no listener), TCP 53 and 9153.
    let mut dns = service(
        "kube-system",
        "kube-dns",
        Some("10.96.0.10"),
        &[("dns-tcp", 53, 53), ("metrics", 9153, 9153)],
    );
    if let Some(spec) = dns.spec.as_mut() {
        let mut udp = spec.ports.as_ref().expect("ports")[0].clone();
        udp.name = Some("dns".into());
        udp.protocol = Some("UDP".into());
        spec.ports.as_mut().expect("ports").insert(0, udp);
    }
    index.apply(Object::Service(Box::new(dns)));
    index.apply(Object::Endpoints(Box::new(endpoints(
        "kube-system",
        "kube-dns",
        &[("10.244.0.2", "coredns-1"), ("10.244.0.3", "coredns-2")],
        &[("dns", 53), ("dns-tcp", 53), ("metrics", 9153)],
    ))));
    pod(
        &mut index,
        "kube-system",
        "coredns-1",
        &[("k8s-app", "kube-dns")],
    );
    pod(
        &mut index,
        "kube-system",
        "coredns-2",
        &[("k8s-app", "kube-dns")],
    );
    istio(
        &mut index,
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: {ns}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
  - name: v3
    labels: {{version: v3}}
"#
        ),
    );
    index
}
