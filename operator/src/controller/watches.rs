//! The watch streams: one per kind the index holds (the Istio kinds from
//! [`crate::index::kinds::ISTIO_KINDS`]), EndpointSlices merged into Endpoints, and the ConfigMaps the
//! operator writes; each event becomes a [`Msg`]. A failing watch is retried on the API schedule
//! ([`rustmesh_xds::backoff`]: 0.8 s doubling to 30 s, jittered).
//!
//! Whether to read EndpointSlices is asked once at start ([`serves_endpoint_slices`]); a probe
//! that gets no answer is asked again on the same schedule ([`SLICE_PROBES`] times) before the
//! operator falls back to Endpoints, so a slow API server at start does not lock it onto the
//! legacy API.

use super::state::Msg;
use crate::index::kinds::{self, IstioKind, KindFn, for_kind};
use crate::index::{Kind, ObjKey, Object, PodInfo, WatchEvent};
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use rustmesh_xds::backoff::Backoff;
use rustmesh_xds::well_known::PROXY_CONFIGMAP;

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
                .backoff(Backoff::api()),
            K::KIND,
            K::into_object,
        )
    }
}

/// How many times the EndpointSlice probe is asked when it gets no answer, before the operator
/// falls back to Endpoints (pauses on the API schedule: about 1 to 2.5 minutes in all).
pub(super) const SLICE_PROBES: u32 = 10;

/// What one EndpointSlice probe (the API server's `discovery.k8s.io/v1` resources) learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SlicesProbe {
    /// `discovery.k8s.io/v1` lists `endpointslices` (Kubernetes 1.21+).
    Served,
    /// The API server answered that it does not serve them (the group is not found, or has no
    /// `endpointslices`).
    NotServed,
    /// No answer to go by (unreachable, timed out, a server error, refused): why.
    Unknown(String),
}

/// Classifies the answer to the probe: only an answer of the API server is definitive.
pub(super) fn classify(answer: Result<APIResourceList, kube::Error>) -> SlicesProbe {
    match answer {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
            SlicesProbe::Served
        }
        Ok(_) => SlicesProbe::NotServed,
        Err(kube::Error::Api(s)) if s.code == 404 => SlicesProbe::NotServed,
        Err(e) => SlicesProbe::Unknown(e.to_string()),
    }
}

/// What to do after probe number `attempt` (from 1): `Some(true)` read EndpointSlices,
/// `Some(false)` read Endpoints, `None` ask again.
pub(super) fn decide(probe: &SlicesProbe, attempt: u32) -> Option<bool> {
    match probe {
        SlicesProbe::Served => Some(true),
        SlicesProbe::NotServed => Some(false),
        SlicesProbe::Unknown(_) if attempt >= SLICE_PROBES => Some(false),
        SlicesProbe::Unknown(_) => None,
    }
}

/// Whether the API server serves EndpointSlices (`discovery.k8s.io/v1`, Kubernetes 1.21+),
/// asking again with back-off while it does not answer (see [`decide`]).
pub(super) async fn serves_endpoint_slices(client: &Client) -> bool {
    let mut backoff = Backoff::api();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let probe = classify(client.list_api_group_resources("discovery.k8s.io/v1").await);
        let why = match &probe {
            SlicesProbe::Unknown(why) => why.as_str(),
            _ => "",
        };
        if let Some(slices) = decide(&probe, attempt) {
            if probe == SlicesProbe::NotServed {
                tracing::info!("discovery.k8s.io/v1 endpointslices not served");
            } else if !slices {
                tracing::warn!(
                    attempts = attempt,
                    error = %why,
                    "cannot tell whether the API server serves EndpointSlices \
                     (discovery.k8s.io/v1); falling back to Endpoints until the operator restarts \
                     (--endpoints-source endpointslices forces them)"
                );
            }
            return slices;
        }
        let pause = backoff.pause(tokio::time::Instant::now().into_std());
        tracing::warn!(
            attempt,
            error = %why,
            retry_in = ?pause,
            "cannot tell whether the API server serves EndpointSlices (discovery.k8s.io/v1); \
             asking again"
        );
        tokio::time::sleep(pause).await;
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
    .backoff(Backoff::api())
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

pub(super) fn streams(client: &Client, slices: bool) -> SelectAll<BoxStream<'static, Msg>> {
    let cfg = || watcher::Config::default();
    let mut all = SelectAll::new();
    all.push(index_stream(
        watcher::watcher(Api::<Service>::all(client.clone()), cfg()).backoff(Backoff::api()),
        Kind::Service,
        |s| Object::Service(Box::new(s)),
    ));
    if slices {
        all.push(endpoint_slice_stream(client));
    } else {
        all.push(index_stream(
            watcher::watcher(Api::<Endpoints>::all(client.clone()), cfg()).backoff(Backoff::api()),
            Kind::Endpoints,
            |e| Object::Endpoints(Box::new(e)),
        ));
    }
    // Whole pods (not only their metadata): the service account and the proxy's arguments are
    // in the spec. Only the labels, the service account, the workload's name, the proxy's
    // role (a gateway's reads gateway scopes) and the address while ready (a ServiceEntry's
    // `workloadSelector` endpoint) are kept.
    all.push(index_stream(
        watcher::watcher(Api::<Pod>::all(client.clone()), cfg()).backoff(Backoff::api()),
        Kind::Pod,
        |p| Object::Pod {
            key: ObjKey::new(p.namespace().unwrap_or_default(), p.name_any()),
            pod: PodInfo::new(
                p.labels().clone(),
                p.spec.as_ref().and_then(|s| {
                    s.service_account_name
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .or(s.service_account.as_deref())
                }),
            )
            .with_workload(rustmesh_api::workload::workload_name(&p))
            .with_role(rustmesh_api::workload::proxy_role(&p))
            .with_ready_ip(ready_ip(&p)),
        },
    ));
    all.push(index_stream(
        watcher::watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            cfg(),
        )
        .backoff(Backoff::api()),
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
        .backoff(Backoff::api())
        .map(|ev| match ev {
            Ok(ev) => Msg::ConfigMap(Box::new(ev)),
            Err(e) => Msg::WatchError("ConfigMap".into(), e.to_string()),
        })
        .boxed(),
    );
    all
}

/// A pod's IP address while its `Ready` condition is `True` (Kubernetes' own rule for an
/// endpoint's readiness); `None` before it has one, while not ready, or when unparsable.
fn ready_ip(pod: &Pod) -> Option<std::net::IpAddr> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready
        .then(|| status.pod_ip.as_deref()?.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_has_an_address_only_while_ready() {
        let ready = |s: &str| serde_json::json!([{"type": "Ready", "status": s}]);
        assert_eq!(
            ready_ip(&pod(
                serde_json::json!({"podIP": "10.1.0.7", "conditions": ready("True")})
            )),
            Some("10.1.0.7".parse().unwrap())
        );
        assert_eq!(
            ready_ip(&pod(
                serde_json::json!({"podIP": "10.1.0.7", "conditions": ready("False")})
            )),
            None
        );
        assert_eq!(
            ready_ip(&pod(serde_json::json!({"conditions": ready("True")}))),
            None
        );
        assert_eq!(
            ready_ip(&pod(serde_json::json!({"podIP": "10.1.0.7"}))),
            None
        );
    }
}
