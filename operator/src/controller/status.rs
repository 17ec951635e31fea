//! CR statuses: which objects' `status` differs from what their verdict says
//! ([`status_changes`]), the server-side-apply body ([`status_patch`]), and the writes of a
//! batch's statuses and `Invalid` events.

use super::apply_params;
use crate::index::kinds::{self, IstioKind, KindFn, for_kind};
use crate::index::{Index, Kind, ObjKey};
use crate::metrics::Metrics;
use crate::render::MeshView;
use crate::validation::status_for;
use kube::Client;
use kube::api::{Api, Patch};
use kube::runtime::events::Recorder;
use kube::runtime::events::{Event as KubeEvent, EventType};
use rustmesh_api::status::IstioStatus;
use serde_json::json;

/// The server-side-apply body of a CR status (only `status` is owned by the operator), in the
/// kind's own group and stored version (`networking.istio.io/v1`, `security.istio.io/v1`).
pub fn status_patch(kind: Kind, status: &IstioStatus) -> serde_json::Value {
    struct ApiVersion;
    impl KindFn for ApiVersion {
        type Out = String;
        fn call<K: IstioKind>(self) -> String {
            K::api_version(&()).into_owned()
        }
    }
    json!({
        "apiVersion": for_kind(kind, ApiVersion).unwrap_or_default(),
        "kind": kinds::kind_name(kind).unwrap_or_default(),
        "status": status,
    })
}

/// The status changes to write: `(kind, key, new status)` for each object whose computed status
/// differs from the one it carries.
pub fn status_changes(view: &MeshView<'_>, now: &str) -> Vec<(Kind, ObjKey, IstioStatus, bool)> {
    let mut out = Vec::new();
    for ((kind, key), verdict) in &view.validation.verdicts {
        struct Carried<'a>(&'a Index, &'a ObjKey);
        impl<'a> KindFn for Carried<'a> {
            type Out = (Option<i64>, Option<&'a IstioStatus>);
            fn call<K: IstioKind>(self) -> Self::Out {
                let o = &K::store(self.0).objects[self.1];
                (o.meta().generation, o.status())
            }
        }
        let Some((generation, current)) = for_kind(*kind, Carried(view.index, key)) else {
            continue;
        };
        let desired = status_for(verdict, generation, current, now);
        if current != Some(&desired) {
            let newly_invalid = !verdict.accepted
                && current
                    .and_then(|c| c.conditions.iter().find(|c| c.type_ == "Accepted"))
                    .is_none_or(|c| c.status != "False");
            out.push((*kind, key.clone(), desired, newly_invalid));
        }
    }
    out
}

/// Applies one object's status (server-side apply, the operator's field manager).
pub(super) async fn apply_status(
    client: &Client,
    kind: Kind,
    key: &ObjKey,
    status: &IstioStatus,
) -> Result<(), kube::Error> {
    struct PatchStatus<'a>(&'a Client, &'a ObjKey, Patch<serde_json::Value>);
    impl<'a> KindFn for PatchStatus<'a> {
        type Out = futures::future::BoxFuture<'a, Result<(), kube::Error>>;
        fn call<K: IstioKind>(self) -> Self::Out {
            let PatchStatus(client, key, body) = self;
            Box::pin(async move {
                Api::<K>::namespaced(client.clone(), &key.namespace)
                    .patch_status(&key.name, &apply_params(), &body)
                    .await
                    .map(|_| ())
            })
        }
    }
    let body = Patch::Apply(status_patch(kind, status));
    match for_kind(kind, PatchStatus(client, key, body)) {
        Some(write) => write.await,
        None => Ok(()),
    }
}

/// A Warning Event (`reason: Invalid`) on an object that has just become invalid.
pub(super) async fn publish_invalid(
    recorder: &Recorder,
    metrics: &Metrics,
    index: &Index,
    kind: Kind,
    key: &ObjKey,
    status: &IstioStatus,
) {
    struct Reference<'a>(&'a Index, &'a ObjKey);
    impl KindFn for Reference<'_> {
        type Out = Option<k8s_openapi::api::core::v1::ObjectReference>;
        fn call<K: IstioKind>(self) -> Self::Out {
            Some(K::store(self.0).objects.get(self.1)?.object_ref(&()))
        }
    }
    let Some(reference) = for_kind(kind, Reference(index, key)).flatten() else {
        return;
    };
    let note = status.conditions.first().and_then(|c| c.message.clone());
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: "Invalid".into(),
        note,
        action: "Validate".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        tracing::debug!(error = %e, "event not recorded");
        metrics.error("event");
    }
}
