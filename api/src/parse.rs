//! Reading Istio YAML (or JSON) documents into typed objects.
//!
//! Unknown fields are refused by design (a typo such as `wieght` is an error naming the field and
//! line, never silently dropped); the CRD schemas are structural, so the API server prunes or rejects
//! them the same way.

use crate::error::{Error, FieldError, ObjectRef};
use crate::locate::LineIndex;
use crate::validate::Validate;
use crate::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, RequestAuthentication,
    ServiceEntry, Sidecar, Telemetry, VirtualService,
};
use rustmesh_xds::yaml;
use serde::de::DeserializeOwned;

/// The API group of the networking kinds (VirtualService, DestinationRule, Sidecar).
pub const GROUP: &str = "networking.istio.io";
/// Versions the networking kinds are served as, newest first; `v1` is stored. All share one
/// schema, as in Istio.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
/// The API group of PeerAuthentication, AuthorizationPolicy and RequestAuthentication.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// The API group of Telemetry.
pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";

/// The kinds read here, with their group and served versions (newest, stored, first).
pub const KINDS: [(&str, &str, &[&str]); 9] = [
    ("VirtualService", GROUP, &VERSIONS),
    ("DestinationRule", GROUP, &VERSIONS),
    ("Sidecar", GROUP, &VERSIONS),
    (
        "PeerAuthentication",
        SECURITY_GROUP,
        &crate::peer_authentication::VERSIONS,
    ),
    (
        "AuthorizationPolicy",
        SECURITY_GROUP,
        &crate::authorization_policy::VERSIONS,
    ),
    (
        "RequestAuthentication",
        SECURITY_GROUP,
        &crate::request_authentication::VERSIONS,
    ),
    ("Telemetry", TELEMETRY_GROUP, &crate::telemetry::VERSIONS),
    ("ServiceEntry", GROUP, &crate::service_entry::VERSIONS),
    ("Gateway", GROUP, &crate::gateway::VERSIONS),
];

/// An Istio object of any supported kind.
#[derive(Clone, Debug, PartialEq)]
pub enum IstioObject {
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

impl IstioObject {
    pub fn kind(&self) -> &'static str {
        match self {
            IstioObject::VirtualService(_) => "VirtualService",
            IstioObject::DestinationRule(_) => "DestinationRule",
            IstioObject::Sidecar(_) => "Sidecar",
            IstioObject::PeerAuthentication(_) => "PeerAuthentication",
            IstioObject::AuthorizationPolicy(_) => "AuthorizationPolicy",
            IstioObject::RequestAuthentication(_) => "RequestAuthentication",
            IstioObject::Telemetry(_) => "Telemetry",
            IstioObject::ServiceEntry(_) => "ServiceEntry",
            IstioObject::Gateway(_) => "Gateway",
        }
    }

    pub fn metadata(&self) -> &kube::core::ObjectMeta {
        match self {
            IstioObject::VirtualService(o) => &o.metadata,
            IstioObject::DestinationRule(o) => &o.metadata,
            IstioObject::Sidecar(o) => &o.metadata,
            IstioObject::PeerAuthentication(o) => &o.metadata,
            IstioObject::AuthorizationPolicy(o) => &o.metadata,
            IstioObject::RequestAuthentication(o) => &o.metadata,
            IstioObject::Telemetry(o) => &o.metadata,
            IstioObject::ServiceEntry(o) => &o.metadata,
            IstioObject::Gateway(o) => &o.metadata,
        }
    }

    /// Findings that do not make the object invalid: fields rustmesh accepts without
    /// implementing them ([`crate::support`]) and, for a PeerAuthentication, an
    /// AuthorizationPolicy, a RequestAuthentication, a Telemetry, a ServiceEntry or a Gateway, Istio's
    /// warnings (and an
    /// AuthorizationPolicy's CUSTOM action, which rustmesh renders as a deny of what it matches;
    /// a RequestAuthentication rule whose key set cannot be discovered).
    pub fn warnings(&self) -> Vec<FieldError> {
        let kind = self.kind();
        match self {
            IstioObject::VirtualService(o) => crate::support::warned_fields(kind, &o.spec),
            IstioObject::DestinationRule(o) => crate::support::warned_fields(kind, &o.spec),
            IstioObject::Sidecar(o) => crate::support::warned_fields(kind, &o.spec),
            IstioObject::PeerAuthentication(o) => o.spec.warnings(),
            IstioObject::AuthorizationPolicy(o) => o.warnings(),
            IstioObject::RequestAuthentication(o) => o.spec.warnings(),
            IstioObject::Telemetry(o) => o.spec.warnings(),
            IstioObject::ServiceEntry(o) => o.spec.warnings(),
            IstioObject::Gateway(o) => o.spec.warnings(),
        }
    }

    /// Checks the rules the schema cannot express. Field paths start at `spec` (or `metadata`,
    /// for an AuthorizationPolicy's `istio.io/dry-run` annotation).
    pub fn validate(&self) -> Vec<FieldError> {
        match self {
            IstioObject::VirtualService(o) => o.spec.validate(),
            IstioObject::DestinationRule(o) => o.spec.validate(),
            IstioObject::Sidecar(o) => o.spec.validate(),
            IstioObject::PeerAuthentication(o) => o.spec.validate(),
            IstioObject::AuthorizationPolicy(o) => {
                let mut out = o.dry_run_errors();
                out.extend(o.spec.validate());
                out
            }
            IstioObject::RequestAuthentication(o) => o.spec.validate(),
            IstioObject::Telemetry(o) => o.spec.validate(),
            IstioObject::ServiceEntry(o) => o.spec.validate(),
            IstioObject::Gateway(o) => o.spec.validate(),
        }
    }
}

const TOP_LEVEL_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];
const METADATA_FIELDS: [&str; 15] = [
    "name",
    "namespace",
    "generateName",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

/// Parses and validates every document of a YAML stream. Each entry is one document's outcome,
/// so one bad object does not hide the good ones. Empty documents are skipped.
///
/// The stream is read within [`yaml::Limits::MANIFESTS`] (see [`load_all_with`]).
pub fn load_all(text: &str) -> Vec<Result<IstioObject, Error>> {
    load_all_with(text, &yaml::Limits::MANIFESTS)
}

/// [`load_all`] within other limits: the stream's length, and what its aliases may expand to
/// (nodes, text, depth) across all documents. A stream over a limit ends with an error naming
/// the limit and the document where it was reached.
pub fn load_all_with(text: &str, limits: &yaml::Limits) -> Vec<Result<IstioObject, Error>> {
    let mut out = Vec::new();
    // Before the line index, which reads the whole text too.
    if let Err(e) = limits.check_len(text) {
        out.push(Err(yaml_error(&e, 1)));
        return out;
    }
    let index = LineIndex::new(text);
    for (i, doc) in yaml::documents(text, limits).enumerate() {
        let mut object = ObjectRef {
            document: i + 1,
            ..ObjectRef::default()
        };
        let value = match doc {
            Ok(serde_norway::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                out.push(Err(yaml_error(&e, i + 1)));
                // After a syntax error or a limit the stream cannot be trusted further.
                break;
            }
        };
        out.push(
            load_value(value, &mut object)
                .map_err(|e| with_lines(e, &index, i))
                .and_then(|obj| {
                    let errors = obj.validate();
                    if errors.is_empty() {
                        Ok(obj)
                    } else {
                        Err(with_lines(
                            Error::Invalid {
                                object: Box::new(object.clone()),
                                errors,
                            },
                            &index,
                            i,
                        ))
                    }
                }),
        );
    }
    out
}

/// Like [`load_all`], but stops at the first bad document.
pub fn load(text: &str) -> Result<Vec<IstioObject>, Error> {
    load_all(text).into_iter().collect()
}

/// A document that is not YAML or is over a limit of [`yaml::Limits`]: the message names the
/// limit, the object names the document.
fn yaml_error(e: &yaml::YamlError, document: usize) -> Error {
    let mut error = FieldError::new("", e.to_string());
    error.line = e.line();
    Error::Parse {
        object: Box::new(ObjectRef {
            document,
            ..ObjectRef::default()
        }),
        error,
    }
}

fn with_lines(mut err: Error, index: &LineIndex, doc: usize) -> Error {
    let fill = |e: &mut FieldError| {
        if e.line.is_none() {
            e.line = index.line_of(doc, &e.field);
        }
    };
    match &mut err {
        Error::Parse { error, .. } => fill(error),
        Error::Invalid { errors, .. } => errors.iter_mut().for_each(fill),
        Error::Render(_) => {}
    }
    err
}

fn parse_error(object: &ObjectRef, field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Parse {
        object: Box::new(object.clone()),
        error: FieldError::new(field, message),
    }
}

fn load_value(value: serde_norway::Value, object: &mut ObjectRef) -> Result<IstioObject, Error> {
    let serde_norway::Value::Mapping(map) = &value else {
        return Err(parse_error(
            object,
            "",
            "expected a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    for key in map.keys() {
        let name = key.as_str().unwrap_or("<non-string key>");
        if !TOP_LEVEL_FIELDS.contains(&name) {
            return Err(parse_error(
                object,
                name,
                format!(
                    "unknown field `{name}`, expected one of {}",
                    TOP_LEVEL_FIELDS.join(", ")
                ),
            ));
        }
    }
    let str_field = |name: &str| map.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let kind = str_field("kind")
        .ok_or_else(|| parse_error(object, "kind", "required string field is missing"))?;
    object.kind = Some(kind.clone());
    if let Some(meta) = map.get("metadata").and_then(|m| m.as_mapping()) {
        object.name = meta
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        object.namespace = meta
            .get("namespace")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        for key in meta.keys() {
            let name = key.as_str().unwrap_or("<non-string key>");
            if !METADATA_FIELDS.contains(&name) {
                return Err(parse_error(
                    object,
                    format!("metadata.{name}"),
                    format!("unknown field `{name}`"),
                ));
            }
        }
    }
    let api_version = str_field("apiVersion")
        .ok_or_else(|| parse_error(object, "apiVersion", "required string field is missing"))?;
    // An unknown kind is reported below, after the apiVersion (checked as a networking one).
    let (group, versions) = KINDS
        .iter()
        .find(|(k, ..)| *k == kind)
        .map(|(_, g, v)| (*g, *v))
        .unwrap_or((GROUP, &VERSIONS));
    let version_ok = api_version
        .split_once('/')
        .is_some_and(|(g, v)| g == group && versions.contains(&v));
    if !version_ok {
        return Err(parse_error(
            object,
            "apiVersion",
            format!(
                "unsupported apiVersion `{api_version}`, expected {}",
                expected_versions(group, versions)
            ),
        ));
    }
    if object.name.is_none() {
        return Err(parse_error(
            object,
            "metadata.name",
            "required string field is missing",
        ));
    }
    match kind.as_str() {
        "VirtualService" => typed(value, object).map(|o| IstioObject::VirtualService(Box::new(o))),
        "DestinationRule" => {
            typed(value, object).map(|o| IstioObject::DestinationRule(Box::new(o)))
        }
        "Sidecar" => typed(value, object).map(|o| IstioObject::Sidecar(Box::new(o))),
        "PeerAuthentication" => {
            typed(value, object).map(|o| IstioObject::PeerAuthentication(Box::new(o)))
        }
        "AuthorizationPolicy" => {
            typed(value, object).map(|o| IstioObject::AuthorizationPolicy(Box::new(o)))
        }
        "RequestAuthentication" => {
            typed(value, object).map(|o| IstioObject::RequestAuthentication(Box::new(o)))
        }
        "Telemetry" => typed(value, object).map(|o| IstioObject::Telemetry(Box::new(o))),
        "ServiceEntry" => typed(value, object).map(|o| IstioObject::ServiceEntry(Box::new(o))),
        "Gateway" => typed(value, object).map(|o| IstioObject::Gateway(Box::new(o))),
        other => Err(parse_error(
            object,
            "kind",
            format!(
                "unsupported kind `{other}`, expected VirtualService, DestinationRule, Sidecar, PeerAuthentication, AuthorizationPolicy, RequestAuthentication, Telemetry, ServiceEntry or Gateway"
            ),
        )),
    }
}

/// `networking.istio.io/v1, /v1beta1 or /v1alpha3`.
fn expected_versions(group: &str, versions: &[&str]) -> String {
    let mut out = String::new();
    for (i, v) in versions.iter().enumerate() {
        let sep = match i {
            0 => group,
            i if i + 1 == versions.len() => " or ",
            _ => ", ",
        };
        out.push_str(sep);
        out.push('/');
        out.push_str(v);
    }
    out
}

fn typed<T: DeserializeOwned>(value: serde_norway::Value, object: &ObjectRef) -> Result<T, Error> {
    // Through JSON's data model: YAML's own would demand `!tags` for enums such as StringMatch.
    let value = serde_json::to_value(value)
        .map_err(|e| parse_error(object, "", format!("not representable as JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut field = e.path().to_string();
        if field == "." {
            field.clear();
        }
        let message = e.inner().to_string();
        // serde reports an unknown field at its parent; name the field itself.
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            && !field.ends_with(name)
        {
            field = if field.is_empty() {
                name.to_string()
            } else {
                format!("{field}.{name}")
            };
        }
        parse_error(object, field, message)
    })
}

/// Parses one object of a known type from YAML or JSON, without the kind dispatch. Errors name the
/// field path and line. Used for single objects such as a `spec` embedded in a test or a ConfigMap.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let object = ObjectRef {
        document: 1,
        ..ObjectRef::default()
    };
    let value = yaml::from_str(text, &yaml::Limits::MANIFESTS).map_err(|e| yaml_error(&e, 1))?;
    typed(value, &object).map_err(|e| with_lines(e, &LineIndex::new(text), 0))
}
