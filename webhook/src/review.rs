//! Admission as a pure function: an `AdmissionRequest<Pod>` and the settings in, an
//! `AdmissionResponse` out. [`review_body`] wraps it for raw HTTP bodies (v1 and v1beta1).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{DynamicObject, TypeMeta};
use serde_json::Value;

use crate::decide::{Decision, decide};
use crate::error::{Error, Result};
use crate::inject::inject_onto;
use crate::settings::InjectionSettings;
use crate::traffic::InvalidAnnotations;

/// `admission.k8s.io/v1`.
pub const API_VERSION_V1: &str = "admission.k8s.io/v1";
/// `admission.k8s.io/v1beta1` (same shape; still sent by old API servers).
pub const API_VERSION_V1BETA1: &str = "admission.k8s.io/v1beta1";

/// What happened to one review; the `result` label of the reviews metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A patch was returned.
    Injected,
    /// Allowed without a patch, as decided (opt-out, host network, not a CREATE, other
    /// revision), or a pod injected before that injecting again leaves as it is.
    Skipped,
    /// Allowed without a patch because the request or pod could not be understood (a warning
    /// says why).
    Invalid,
    /// Denied (`allowed: false`): a pod to inject whose annotations are invalid, as Istio's
    /// injector refuses it ([`crate::annotations`]). The pod is not created whatever the
    /// webhook's `failurePolicy` (which only applies when there is no answer).
    Refused,
}

impl Outcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "invalid",
            Outcome::Refused => "refused",
        }
    }
}

/// Reviews one pod admission request. Pure: no I/O, no clock. The namespace's labels are not in
/// the request, so this assumes the webhook configuration's selectors chose the pod; see
/// [`review_in_namespace`] to pass them.
pub fn review(req: AdmissionRequest<Pod>, settings: &InjectionSettings) -> AdmissionResponse {
    review_in_namespace(req, settings, None).0
}

/// [`review`] with the namespace's labels when the caller knows them (a namespace cache),
/// also returning the [`Outcome`].
pub fn review_in_namespace(
    req: AdmissionRequest<Pod>,
    settings: &InjectionSettings,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> (AdmissionResponse, Outcome) {
    review_object(req, None, settings, namespace_labels)
}

/// [`review_in_namespace`], with the pod object as the API server sent it (`raw`, which
/// `req.object` was read from), so that the patch is made against exactly that object.
fn review_object(
    req: AdmissionRequest<Pod>,
    raw: Option<&Value>,
    settings: &InjectionSettings,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> (AdmissionResponse, Outcome) {
    let resp = AdmissionResponse::from(&req);
    let who = format!(
        "{}/{}",
        req.namespace.as_deref().unwrap_or(""),
        if req.name.is_empty() {
            "<generated>"
        } else {
            &req.name
        }
    );

    if !req.kind.group.is_empty() || req.kind.kind != "Pod" {
        let warning = format!(
            "only Pods are handled, got {}/{} {}; allowed unchanged",
            req.kind.group, req.kind.version, req.kind.kind
        );
        return (with_warnings(resp, vec![warning]), Outcome::Invalid);
    }
    if req.operation != Operation::Create {
        return (skipped(resp, "not a CREATE"), Outcome::Skipped);
    }
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return (skipped(resp, "subresource"), Outcome::Skipped);
    }
    let Some(pod) = req.object.as_ref() else {
        let warning = "admission request has no object; pod allowed without sidecar".to_owned();
        return (with_warnings(resp, vec![warning]), Outcome::Invalid);
    };
    match &pod.spec {
        None => {
            let warning = "pod has no spec; allowed without sidecar".to_owned();
            return (with_warnings(resp, vec![warning]), Outcome::Invalid);
        }
        // The API server will refuse it anyway; a sidecar must not make it look valid.
        Some(spec) if spec.containers.is_empty() => {
            let warning = "pod has no containers; allowed without sidecar".to_owned();
            return (with_warnings(resp, vec![warning]), Outcome::Invalid);
        }
        Some(_) => {}
    }

    let settings_revision = settings.revision.as_str();
    match decide(pod, namespace_labels, settings_revision) {
        Decision::Skip(why) => {
            tracing::debug!(pod = %who, reason = %why, "injection skipped");
            (skipped(resp, &format!("skipped: {why}")), Outcome::Skipped)
        }
        Decision::Inject(why) => {
            if let Some(name) = crate::inject::conflicting_volume(pod, settings) {
                let warning = format!(
                    "pod already has a volume named {name:?}, which the sidecar needs; \
                     allowed without sidecar"
                );
                return (with_warnings(resp, vec![warning]), Outcome::Invalid);
            }
            let injection = match inject_onto(pod, raw, settings) {
                Ok(injection) => injection,
                Err(invalid) => {
                    tracing::info!(pod = %who, reason = %invalid, "refused: invalid annotations");
                    return (refused(resp, &invalid), Outcome::Refused);
                }
            };
            if injection.patch.0.is_empty() {
                // Injected before, and injecting it again changes nothing.
                tracing::debug!(pod = %who, reason = %why, "already as injected");
                let resp = skipped(resp, &format!("injected again, nothing changed: {why}"));
                return (with_warnings(resp, injection.warnings), Outcome::Skipped);
            }
            tracing::debug!(pod = %who, reason = %why, ops = injection.patch.0.len(), "injecting");
            let patch_bytes = match serde_json::to_vec(&injection.patch) {
                Ok(b) => b,
                Err(e) => {
                    let warning = format!("could not serialise the injection patch: {e}");
                    return (with_warnings(resp, vec![warning]), Outcome::Invalid);
                }
            };
            // kube-core's `with_patch` takes its own json-patch version's type; an empty patch sets
            // `patchType: JSONPatch`, then the bytes of ours (json-patch 5) replace it.
            let mut resp = match resp.with_patch(Default::default()) {
                Ok(r) => r,
                Err(e) => {
                    let warning = format!("could not set the injection patch: {e}");
                    return (
                        with_warnings(AdmissionResponse::from(&req), vec![warning]),
                        Outcome::Invalid,
                    );
                }
            };
            resp.patch = Some(patch_bytes);
            resp.audit_annotations
                .insert("injection".to_owned(), format!("injected: {why}"));
            (with_warnings(resp, injection.warnings), Outcome::Injected)
        }
    }
}

/// Istio's answer to a pod whose annotations it cannot inject: `allowed: false` with the
/// message. Code 400, which the API server also makes of Istio's answer (which sets none).
fn refused(resp: AdmissionResponse, invalid: &InvalidAnnotations) -> AdmissionResponse {
    let mut resp = resp.deny(invalid.message());
    resp.result.code = 400;
    resp.result.reason = "BadRequest".to_owned();
    resp.audit_annotations.insert(
        "injection".to_owned(),
        format!("refused: {} invalid annotation(s)", invalid.0.len()),
    );
    resp
}

fn skipped(mut resp: AdmissionResponse, why: &str) -> AdmissionResponse {
    resp.audit_annotations
        .insert("injection".to_owned(), why.to_owned());
    resp
}

fn with_warnings(mut resp: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        resp.warnings.get_or_insert_with(Vec::new).extend(
            warnings
                .into_iter()
                .map(|w| format!("rustmesh-webhook: {w}")),
        );
    }
    resp
}

/// The result of [`review_body`]: the response document and what happened.
#[derive(Debug)]
pub struct BodyReview {
    /// The `AdmissionReview` to send back (same `apiVersion` as the request).
    pub review: Value,
    /// The metric outcome.
    pub outcome: Outcome,
}

/// The outside of an `AdmissionReview` body: its `apiVersion` (as `types`), the request's uid
/// and the request object, checked as [`review_body`] documents.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) types: TypeMeta,
    pub(crate) uid: String,
    pub(crate) request: serde_json::Map<String, Value>,
}

impl Envelope {
    /// Not JSON, not an `AdmissionReview` (wrong `kind`/`apiVersion`), no `request`, no string
    /// `request.uid` → `Err` (there is no review to answer).
    pub(crate) fn parse(body: &[u8]) -> Result<Envelope> {
        let doc: Value = serde_json::from_slice(body).map_err(Error::NotJson)?;
        let Value::Object(mut doc) = doc else {
            return Err(Error::NotAdmissionReview(
                "expected a JSON object".to_owned(),
            ));
        };
        let api_version = match doc.get("apiVersion").and_then(Value::as_str) {
            Some(v @ (API_VERSION_V1 | API_VERSION_V1BETA1)) => v.to_owned(),
            Some(other) => {
                return Err(Error::NotAdmissionReview(format!(
                    "apiVersion {other:?} is not {API_VERSION_V1} or {API_VERSION_V1BETA1}"
                )));
            }
            None => {
                return Err(Error::NotAdmissionReview(
                    "`apiVersion` is missing".to_owned(),
                ));
            }
        };
        match doc.get("kind").and_then(Value::as_str) {
            Some("AdmissionReview") => {}
            other => {
                return Err(Error::NotAdmissionReview(format!(
                    "kind is {other:?}, not \"AdmissionReview\""
                )));
            }
        }
        let request = match doc.remove("request") {
            Some(Value::Object(r)) => r,
            None | Some(Value::Null) => return Err(Error::MissingRequest),
            Some(_) => {
                return Err(Error::NotAdmissionReview(
                    "`request` is not an object".to_owned(),
                ));
            }
        };
        let uid = match request.get("uid") {
            Some(Value::String(u)) => u.clone(),
            _ => return Err(Error::MissingUid),
        };
        Ok(Envelope {
            types: TypeMeta {
                api_version,
                kind: "AdmissionReview".to_owned(),
            },
            uid,
            request,
        })
    }
}

/// Reviews a raw HTTP body.
///
/// * Not JSON, not an `AdmissionReview` (wrong `kind`/`apiVersion`), no `request`, no string
///   `request.uid` → `Err` (the HTTP layer answers 400: there is no review to answer).
/// * A review whose request or pod cannot be read → `allowed: true` with a warning naming the
///   field, so that a webhook problem never blocks pod creation.
/// * A pod to inject with an invalid traffic annotation → `allowed: false` naming each one
///   ([`Outcome::Refused`]), as Istio's injector answers.
///
/// `namespace_labels` looks a namespace's labels up (return `None` when unknown).
pub fn review_body(
    body: &[u8],
    settings: &InjectionSettings,
    namespace_labels: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Result<BodyReview> {
    let Envelope {
        types,
        uid,
        mut request,
    } = Envelope::parse(body)?;

    // From here on there is a uid to answer: every problem is an allow with a warning.
    let invalid = |warning: String| BodyReview {
        review: response_document(&types, invalid_response(&uid, warning)),
        outcome: Outcome::Invalid,
    };

    // The object is read separately so that a pod that does not parse is reported by field path.
    let object = request.remove("object");
    request.insert("object".to_owned(), Value::Null);
    let mut req: AdmissionRequest<Pod> =
        match serde_path_to_error::deserialize(Value::Object(request)) {
            Ok(r) => r,
            Err(e) => {
                return Ok(invalid(format!(
                    "admission request not understood at `request.{}`: {}; allowed unchanged",
                    e.path(),
                    e.inner()
                )));
            }
        };
    req.types = types.clone();

    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    let mut raw = None;
    if is_pod && req.operation == Operation::Create {
        raw = object.clone();
        match object {
            None | Some(Value::Null) => {}
            // The patch adds under `/metadata/...`; without a metadata object it could not apply.
            Some(obj) if obj.get("metadata").is_none_or(|m| !m.is_object()) => {
                return Ok(invalid(
                    "pod has no `metadata` object; allowed without sidecar".to_owned(),
                ));
            }
            Some(obj) => match serde_path_to_error::deserialize::<_, Pod>(obj) {
                Ok(pod) => req.object = Some(pod),
                Err(e) => {
                    return Ok(invalid(format!(
                        "pod not understood at `{}`: {}; allowed without sidecar",
                        e.path(),
                        e.inner()
                    )));
                }
            },
        }
    }

    let labels = req.namespace.as_deref().and_then(namespace_labels);
    let (resp, outcome) = review_object(req, raw.as_ref(), settings, labels.as_ref());
    Ok(BodyReview {
        review: response_document(&types, resp),
        outcome,
    })
}

pub(crate) fn invalid_response(uid: &str, warning: String) -> AdmissionResponse {
    // `AdmissionResponse` is non-exhaustive: build it from a minimal request.
    let req: AdmissionRequest<DynamicObject> = AdmissionRequest {
        types: TypeMeta::default(),
        uid: uid.to_owned(),
        kind: kube::core::GroupVersionKind::gvk("", "v1", "Pod"),
        resource: kube::core::GroupVersionResource::gvr("", "v1", "pods"),
        sub_resource: None,
        request_kind: None,
        request_resource: None,
        request_sub_resource: None,
        name: String::new(),
        namespace: None,
        operation: Operation::Create,
        user_info: Default::default(),
        object: None,
        old_object: None,
        dry_run: false,
        options: None,
    };
    with_warnings(AdmissionResponse::from(&req), vec![warning])
}

/// Serialises the response as an `AdmissionReview` of the request's `apiVersion`, with the
/// patch base64-encoded as the API server's Go client expects `[]byte`.
pub fn response_document(types: &TypeMeta, resp: AdmissionResponse) -> Value {
    let mut response = serde_json::to_value(&resp).unwrap_or(Value::Null);
    if let Some(obj) = response.as_object_mut() {
        if let Some(patch) = resp.patch.as_ref() {
            obj.insert(
                "patch".to_owned(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(patch)),
            );
        }
        // The status is only read on denial; keep the document small and unambiguous.
        if obj
            .get("status")
            .is_some_and(|s| s.as_object().is_some_and(|o| o.is_empty()))
        {
            obj.remove("status");
        }
    }
    serde_json::json!({
        "apiVersion": types.api_version,
        "kind": "AdmissionReview",
        "response": response,
    })
}
