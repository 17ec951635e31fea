//! The watch streams: one per kind the index holds (the Istio kinds from
//! [`crate::index::kinds::ISTIO_KINDS`]), EndpointSlices merged into Endpoints, and the ConfigMaps the
//! operator writes; each event becomes a [`Msg`].

use super::state::Msg;
use crate::index::kinds::{self, IstioKind, KindFn, for_kind};
use crate::index::{Kind, ObjKey, Object, WatchEvent};
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
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
                .default_backoff(),
            K::KIND,
            K::into_object,
        )
    }
}

/// Whether the API server serves EndpointSlices (`discovery.k8s.io/v1`, Kubernetes 1.21+).
pub(super) async fn serves_endpoint_slices(client: &Client) -> bool {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) => list.resources.iter().any(|r| r.name == "endpointslices"),
        Err(e) => {
            tracing::debug!(error = %e, "discovery.k8s.io/v1 not served");
            false
        }
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
    .default_backoff()
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
        watcher::watcher(Api::<Service>::all(client.clone()), cfg()).default_backoff(),
        Kind::Service,
        |s| Object::Service(Box::new(s)),
    ));
    if slices {
        all.push(endpoint_slice_stream(client));
    } else {
        all.push(index_stream(
            watcher::watcher(Api::<Endpoints>::all(client.clone()), cfg()).default_backoff(),
            Kind::Endpoints,
            |e| Object::Endpoints(Box::new(e)),
        ));
    }
    all.push(index_stream(
        watcher::watcher(Api::<PartialObjectMeta<Pod>>::all(client.clone()), cfg())
            .default_backoff(),
        Kind::Pod,
        |p| Object::Pod {
            key: ObjKey::new(p.namespace().unwrap_or_default(), p.name_any()),
            labels: p.labels().clone(),
        },
    ));
    all.push(index_stream(
        watcher::watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            cfg(),
        )
        .default_backoff(),
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
        .default_backoff()
        .map(|ev| match ev {
            Ok(ev) => Msg::ConfigMap(Box::new(ev)),
            Err(e) => Msg::WatchError("ConfigMap".into(), e.to_string()),
        })
        .boxed(),
    );
    all
}
