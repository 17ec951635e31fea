//! `PeerAuthentication` (`security.istio.io`, served as `v1` and `v1beta1`): which mutual-TLS
//! mode a workload's sidecar accepts inbound. Shapes follow
//! <https://istio.io/latest/docs/reference/config/security/peer_authentication/>.
//!
//! Scope, as in Istio: a policy without a selector (or whose `selector.matchLabels` is empty) is
//! namespace-wide, or mesh-wide in the root namespace; one with labels applies to the pods of its
//! namespace it selects (and is ignored in the root namespace). `portLevelMtls` needs a selector.
//! The mode names are the proxy model's [`MtlsMode`] (one type for both).
//!
//! [`Validate`] reports Istio's errors, naming the field; [`PeerAuthenticationSpec::warnings`]
//! Istio's warning (a selector without labels).

use crate::common::WorkloadSelector;
use crate::error::FieldError;
use crate::status::IstioStatus;
use crate::validate::Validate;
use kube::CustomResource;
pub use rustmesh_xds::peer_authn::MtlsMode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The versions `security.istio.io` serves this kind as, newest (stored) first.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The spec of a PeerAuthentication.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    singular = "peerauthentication",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "IstioStatus",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    printcolumn = r#"{"name":"Mode","type":"string","description":"Defines the mTLS mode used for peer authentication.","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// The pods of the policy's namespace it applies to; without it (or without labels) the
    /// whole namespace, or the mesh in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port of the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per (workload) port modes, overriding `mtls` on that port. Needs a selector.
    // Keyed by the port's text, as JSON and the API server keep it: a structural schema cannot
    // constrain map keys, so a key such as `http` reaches the operator, which must still read
    // the object (a key type of `u32` would fail the whole watch). Validation refuses it by
    // name; `PeerAuthenticationSpec::port_modes` gives the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "port_level_schema")]
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

/// `PeerAuthentication.MutualTLS`: `{mode: STRICT}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// `UNSET` (inherit from the parent scope, the default), `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mode_schema")]
    pub mode: Option<MtlsMode>,
}

impl MutualTls {
    /// The mode, `UNSET` when absent.
    pub fn mode(&self) -> MtlsMode {
        self.mode.unwrap_or_default()
    }
}

/// Istio's schema of the mode (the proxy model's type carries no schema).
fn mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Defines the mTLS mode used for peer authentication.",
        "type": "string",
        "nullable": true,
        "enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"],
    })
}

/// A map from port to mode, as Kubernetes' structural schemas allow (`additionalProperties`;
/// schemars' `patternProperties` for integer keys is refused by the API server).
fn port_level_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let value = generator.subschema_for::<MutualTls>();
    schemars::json_schema!({
        "description": "Per (workload) port modes, overriding `mtls` on that port. Needs a selector.",
        "type": "object",
        "nullable": true,
        "additionalProperties": value,
    })
}

impl PeerAuthenticationSpec {
    /// `selector.matchLabels` when the policy is workload-specific (a selector with labels);
    /// `None` for a namespace-wide (or mesh-wide) policy.
    pub fn workload_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// `portLevelMtls` as port numbers and modes (keys that are not a port 1..65535, which
    /// validation refuses, are left out).
    pub fn port_modes(&self) -> impl Iterator<Item = (u16, MtlsMode)> + '_ {
        self.port_level_mtls
            .iter()
            .flatten()
            .filter_map(|(port, m)| Some((port_number(port)?, m.mode())))
    }

    /// `mtls.mode` (`UNSET` when absent).
    pub fn mode(&self) -> MtlsMode {
        self.mtls.map(|m| m.mode()).unwrap_or_default()
    }

    /// Istio's warnings: findings that do not make the policy invalid.
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if self
            .selector
            .as_ref()
            .is_some_and(|s| s.match_labels.is_empty())
        {
            out.push(FieldError::new(
                "spec.selector.matchLabels",
                "workload selector specified without labels: the policy applies to the whole \
                 namespace (the whole mesh in the root namespace), as if it had no selector",
            ));
        }
        out
    }
}

/// A `portLevelMtls` key as a port: digits only, 1..65535.
fn port_number(key: &str) -> Option<u16> {
    if !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u16>().ok().filter(|p| *p != 0)
}

impl Validate for PeerAuthenticationSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if let Some(selector) = &self.selector {
            for (k, v) in &selector.match_labels {
                if k.is_empty() {
                    out.push(FieldError::new(
                        "spec.selector.matchLabels",
                        format!("empty key is not supported in selector: \"{k}={v}\""),
                    ));
                } else if k.contains('*') || v.contains('*') {
                    out.push(FieldError::new(
                        format!("spec.selector.matchLabels.{k}"),
                        format!("wildcard is not supported in selector: \"{k}={v}\""),
                    ));
                }
            }
        }
        if let Some(ports) = &self.port_level_mtls {
            if ports.is_empty() {
                out.push(FieldError::new(
                    "spec.portLevelMtls",
                    "port level mTLS, if defined, must have at least one element",
                ));
            } else if self.workload_labels().is_none() {
                out.push(FieldError::new(
                    "spec.portLevelMtls",
                    "mesh/namespace peer authentication cannot have port level mTLS: \
                     portLevelMtls needs a selector with matchLabels",
                ));
            }
            for port in ports.keys() {
                if port_number(port).is_none() {
                    out.push(FieldError::new(
                        format!("spec.portLevelMtls.{port}"),
                        format!("port {port:?} must be a number in range 1..65535"),
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{IstioObject, load, load_all};

    fn doc(version: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/{version}\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: foo\nspec:\n{spec}"
        )
    }

    fn one(text: &str) -> PeerAuthentication {
        match load(text).unwrap_or_else(|e| panic!("{e}")).remove(0) {
            IstioObject::PeerAuthentication(p) => *p,
            other => panic!("read as {}", other.kind()),
        }
    }

    /// The fields of the findings of a document that must be refused.
    fn refused(text: &str) -> Vec<(String, String)> {
        let err = load(text).expect_err("document should be refused");
        err.field_errors()
            .into_iter()
            .map(|e| (e.field.clone(), e.message.clone()))
            .collect()
    }

    #[test]
    fn istio_examples_read_as_v1_and_v1beta1() {
        for version in VERSIONS {
            // Istio's documented example: STRICT for the finance workload, 8080 DISABLE.
            let p = one(&doc(
                version,
                "  selector:\n    matchLabels:\n      app: finance\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n",
            ));
            assert_eq!(p.spec.mode(), MtlsMode::Strict);
            assert_eq!(
                p.spec.workload_labels(),
                Some(&BTreeMap::from([(
                    "app".to_string(),
                    "finance".to_string()
                )]))
            );
            assert_eq!(
                p.spec.port_modes().collect::<Vec<_>>(),
                [(8080, MtlsMode::Disable)]
            );
            assert!(p.spec.warnings().is_empty());
        }
        // Namespace-wide, and every mode by its name; `mtls` absent is UNSET.
        for (name, mode) in [
            ("UNSET", MtlsMode::Unset),
            ("DISABLE", MtlsMode::Disable),
            ("PERMISSIVE", MtlsMode::Permissive),
            ("STRICT", MtlsMode::Strict),
        ] {
            let p = one(&doc("v1", &format!("  mtls:\n    mode: {name}\n")));
            assert_eq!((p.spec.mode(), p.spec.workload_labels()), (mode, None));
        }
        let empty = one(&doc("v1beta1", "  {}\n"));
        assert_eq!(empty.spec.mode(), MtlsMode::Unset);
        let no_mode = one(&doc("v1", "  mtls: {}\n"));
        assert_eq!(no_mode.spec.mode(), MtlsMode::Unset);
    }

    #[test]
    fn unknown_fields_and_modes_are_refused_by_name() {
        let typo = refused(&doc("v1", "  mtls:\n    mdoe: STRICT\n"));
        assert_eq!(typo[0].0, "spec.mtls.mdoe", "{typo:?}");
        assert!(typo[0].1.contains("unknown field `mdoe`"), "{typo:?}");
        let top = refused(&doc("v1", "  jwtRules: []\n"));
        assert_eq!(top[0].0, "spec.jwtRules", "{top:?}");
        let mode = refused(&doc("v1", "  mtls:\n    mode: LOOSE\n"));
        assert_eq!(mode[0].0, "spec.mtls.mode", "{mode:?}");
        assert!(mode[0].1.contains("LOOSE"), "{mode:?}");
        let port = refused(&doc(
            "v1",
            "  selector:\n    matchLabels: {app: a}\n  portLevelMtls:\n    8080: {mode: STRICT, extra: 1}\n",
        ));
        assert!(port[0].0.starts_with("spec.portLevelMtls"), "{port:?}");
        // The group decides the versions: security.istio.io has no v1alpha3, and the kind is
        // not in networking.istio.io.
        let v = refused(&doc("v1alpha3", "  {}\n"));
        assert_eq!(v[0].0, "apiVersion");
        assert!(v[0].1.contains("security.istio.io/v1 or /v1beta1"), "{v:?}");
        let wrong_group = refused(
            "apiVersion: networking.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {}\n",
        );
        assert_eq!(wrong_group[0].0, "apiVersion");
    }

    #[test]
    fn validation_errors_name_the_field() {
        // portLevelMtls without a selector (or with an empty one).
        for spec in [
            "  portLevelMtls:\n    8080: {mode: DISABLE}\n",
            "  selector: {matchLabels: {}}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        ] {
            let e = refused(&doc("v1", spec));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].0, "spec.portLevelMtls");
            assert!(e[0].1.contains("needs a selector"), "{e:?}");
        }
        // Ports out of range.
        let e = refused(&doc(
            "v1beta1",
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    0: {mode: STRICT}\n    65536: {mode: STRICT}\n    80: {mode: STRICT}\n",
        ));
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.portLevelMtls.0", "spec.portLevelMtls.65536"]);
        assert!(e[0].1.contains("1..65535"));
        // A key that is no port at all still reads (the API server lets it through: a watch
        // must not choke on it) and is refused by name.
        let e = refused(&doc(
            "v1",
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    http: {mode: STRICT}\n    \"+80\": {mode: STRICT}\n",
        ));
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.portLevelMtls.+80", "spec.portLevelMtls.http"]
        );
        // An empty portLevelMtls.
        let e = refused(&doc(
            "v1",
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {}\n",
        ));
        assert_eq!(e[0].0, "spec.portLevelMtls");
        assert!(e[0].1.contains("at least one element"), "{e:?}");
        // Selector keys and values.
        let e = refused(&doc("v1", "  selector: {matchLabels: {\"\": x}}\n"));
        assert_eq!(e[0].0, "spec.selector.matchLabels");
        assert!(e[0].1.contains("empty key"), "{e:?}");
        let e = refused(&doc("v1", "  selector: {matchLabels: {app: \"fin*\"}}\n"));
        assert_eq!(e[0].0, "spec.selector.matchLabels.app");
        assert!(e[0].1.contains("wildcard"), "{e:?}");
        // Every finding of one object is reported, not only the first.
        let all = load_all(&doc(
            "v1",
            "  selector: {matchLabels: {\"*\": x}}\n  portLevelMtls:\n    0: {mode: STRICT}\n",
        ));
        let Err(err) = &all[0] else {
            panic!("accepted")
        };
        assert_eq!(err.field_errors().len(), 2, "{err}");
    }

    #[test]
    fn a_selector_without_labels_is_namespace_wide_with_a_warning() {
        let p = one(&doc("v1", "  selector: {}\n  mtls: {mode: STRICT}\n"));
        assert_eq!(p.spec.workload_labels(), None);
        let w = p.spec.warnings();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].field, "spec.selector.matchLabels");
        assert!(w[0].message.contains("without labels"));
    }
}
