//! Whether a pod gets the sidecar: a pure function of the pod, the namespace's labels (when
//! known) and the webhook's revision, with Istio's precedence.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::names::{LABEL_INJECT, LABEL_ISTIO_INJECTION, LABEL_REV};
use crate::values::parse_flag;

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Inject, for this reason.
    Inject(Why),
    /// Leave the pod alone, for this reason.
    Skip(Why),
}

/// Why [`decide`] decided what it did; shown in logs and the audit annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// `spec.hostNetwork: true`: capture would hijack the node's traffic.
    HostNetwork,
    /// The pod label `sidecar.istio.io/inject`.
    PodLabel(bool),
    /// The pod annotation `sidecar.istio.io/inject` (the label wins over it).
    PodAnnotation(bool),
    /// The pod label `istio.io/rev` names a revision.
    PodRevision(String),
    /// The namespace label `istio-injection` (`enabled` or something else).
    NamespaceInjection(String),
    /// The namespace label `istio.io/rev`.
    NamespaceRevision(String),
    /// The namespace has neither label.
    NamespaceNotLabelled,
    /// The namespace's labels are not known to the webhook: the MutatingWebhookConfiguration's
    /// selectors sent the pod here, which means its namespace (or the pod) opted in.
    SelectedByWebhookConfiguration,
    /// Injection is wanted, but by another revision's webhook (`wanted` is that revision).
    OtherRevision {
        /// The revision the pod or namespace asks for.
        wanted: String,
    },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::HostNetwork => write!(f, "pod uses hostNetwork"),
            Why::PodLabel(v) => write!(f, "pod label {LABEL_INJECT}={v}"),
            Why::PodAnnotation(v) => write!(f, "pod annotation {LABEL_INJECT}={v}"),
            Why::PodRevision(r) => write!(f, "pod label {LABEL_REV}={r}"),
            Why::NamespaceInjection(v) => write!(f, "namespace label {LABEL_ISTIO_INJECTION}={v}"),
            Why::NamespaceRevision(r) => write!(f, "namespace label {LABEL_REV}={r}"),
            Why::NamespaceNotLabelled => write!(
                f,
                "namespace has neither {LABEL_ISTIO_INJECTION} nor {LABEL_REV}"
            ),
            Why::SelectedByWebhookConfiguration => {
                write!(f, "selected by the webhook configuration's selectors")
            }
            Why::OtherRevision { wanted } => write!(f, "revision {wanted:?} is asked for"),
        }
    }
}

impl Decision {
    /// Whether the decision is to inject.
    pub fn inject(&self) -> bool {
        matches!(self, Decision::Inject(_))
    }
}

/// Decides whether to inject, in this order (the first that applies wins):
///
/// 1. `hostNetwork: true` → skip.
/// 2. Pod label `sidecar.istio.io/inject` (`true`/`false`, also `yes`/`no`/`on`/`off`).
/// 3. Pod annotation `sidecar.istio.io/inject`, same values.
/// 4. Pod label `istio.io/rev` → wanted.
/// 5. Namespace labels, when `namespace_labels` is `Some`: `istio-injection=enabled` or
///    `istio.io/rev=<r>` → wanted (`istio-injection` wins over `istio.io/rev`); anything else → skip.
///    When `None` (the webhook does not look namespaces up): wanted, because the
///    MutatingWebhookConfiguration's `namespaceSelector`/`objectSelector` already filtered.
///
/// A pod injected before (`sidecar.istio.io/status`), or with its own `istio-proxy` or
/// `istio-init`, is decided like any other, as Istio does: injecting it again strips the
/// previous injection ([`crate::reinject`]) and its own containers are overlays
/// ([`crate::overlay`]).
///
/// Then, when wanted, the revision: the pod's `istio.io/rev` label, else `default` for
/// `istio-injection=enabled`, else the namespace's `istio.io/rev`, else (namespace unknown) this
/// webhook's own revision, else `default`. Only the webhook of that revision injects.
pub fn decide(
    pod: &Pod,
    namespace_labels: Option<&BTreeMap<String, String>>,
    revision: &str,
) -> Decision {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);

    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Decision::Skip(Why::HostNetwork);
    }
    let pod_rev = labels.get(LABEL_REV).filter(|r| !r.is_empty());
    let ns_injection = namespace_labels.and_then(|l| l.get(LABEL_ISTIO_INJECTION));
    let ns_rev = namespace_labels
        .and_then(|l| l.get(LABEL_REV))
        .filter(|r| !r.is_empty());

    let why = if let Some(v) = labels.get(LABEL_INJECT).and_then(|v| parse_flag(v)) {
        if !v {
            return Decision::Skip(Why::PodLabel(false));
        }
        Why::PodLabel(true)
    } else if let Some(v) = annotations.get(LABEL_INJECT).and_then(|v| parse_flag(v)) {
        if !v {
            return Decision::Skip(Why::PodAnnotation(false));
        }
        Why::PodAnnotation(true)
    } else if let Some(r) = pod_rev {
        Why::PodRevision(r.clone())
    } else if namespace_labels.is_none() {
        Why::SelectedByWebhookConfiguration
    } else if let Some(v) = ns_injection {
        if v != "enabled" {
            return Decision::Skip(Why::NamespaceInjection(v.clone()));
        }
        Why::NamespaceInjection(v.clone())
    } else if let Some(r) = ns_rev {
        Why::NamespaceRevision(r.clone())
    } else {
        return Decision::Skip(Why::NamespaceNotLabelled);
    };

    let wanted = match (pod_rev, ns_injection.map(String::as_str), ns_rev) {
        (Some(r), _, _) => r.as_str(),
        (None, Some("enabled"), _) => "default",
        (None, _, Some(r)) => r.as_str(),
        // Namespace unknown: the webhook configuration of this revision selected the pod.
        _ if namespace_labels.is_none() => revision,
        _ => "default",
    };
    if wanted != revision {
        return Decision::Skip(Why::OtherRevision {
            wanted: wanted.to_owned(),
        });
    }
    Decision::Inject(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        }))
        .unwrap()
    }

    fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_namespace_trusts_the_selector() {
        let d = decide(&pod(json!({}), json!({})), None, "default");
        assert_eq!(d, Decision::Inject(Why::SelectedByWebhookConfiguration));
    }

    #[test]
    fn namespace_labels() {
        let p = pod(json!({}), json!({}));
        let enabled = ns(&[("istio-injection", "enabled")]);
        assert!(decide(&p, Some(&enabled), "default").inject());
        // istio-injection=enabled is the default revision's.
        assert_eq!(
            decide(&p, Some(&enabled), "canary"),
            Decision::Skip(Why::OtherRevision {
                wanted: "default".into()
            })
        );
        let disabled = ns(&[("istio-injection", "disabled"), ("istio.io/rev", "default")]);
        assert!(!decide(&p, Some(&disabled), "default").inject());
        let rev = ns(&[("istio.io/rev", "canary")]);
        assert!(decide(&p, Some(&rev), "canary").inject());
        assert!(!decide(&p, Some(&rev), "default").inject());
        assert_eq!(
            decide(&p, Some(&ns(&[])), "default"),
            Decision::Skip(Why::NamespaceNotLabelled)
        );
    }

    #[test]
    fn label_beats_annotation_beats_namespace() {
        let enabled = ns(&[("istio-injection", "enabled")]);
        let p = pod(
            json!({"sidecar.istio.io/inject": "false"}),
            json!({"sidecar.istio.io/inject": "true"}),
        );
        assert_eq!(
            decide(&p, Some(&enabled), "default"),
            Decision::Skip(Why::PodLabel(false))
        );
        let p = pod(
            json!({"sidecar.istio.io/inject": "true"}),
            json!({"sidecar.istio.io/inject": "false"}),
        );
        assert_eq!(
            decide(&p, Some(&ns(&[])), "default"),
            Decision::Inject(Why::PodLabel(true))
        );
        let p = pod(json!({}), json!({"sidecar.istio.io/inject": "false"}));
        assert_eq!(
            decide(&p, Some(&enabled), "default"),
            Decision::Skip(Why::PodAnnotation(false))
        );
        // An unreadable label value is ignored; the annotation then decides.
        let p = pod(
            json!({"sidecar.istio.io/inject": "perhaps"}),
            json!({"sidecar.istio.io/inject": "no"}),
        );
        assert!(!decide(&p, None, "default").inject());
    }

    #[test]
    fn pod_revision_label() {
        let p = pod(json!({"istio.io/rev": "canary"}), json!({}));
        assert!(decide(&p, None, "canary").inject());
        assert!(!decide(&p, None, "default").inject());
        // The pod's revision wins over the namespace's.
        let rev = ns(&[("istio.io/rev", "default")]);
        assert!(decide(&p, Some(&rev), "canary").inject());
    }

    #[test]
    fn host_network_skips_and_a_pod_injected_before_is_decided_as_any() {
        let mut p = pod(json!({"sidecar.istio.io/inject": "true"}), json!({}));
        p.spec.as_mut().unwrap().host_network = Some(true);
        assert_eq!(
            decide(&p, None, "default"),
            Decision::Skip(Why::HostNetwork)
        );
        // Injected before, or with its own istio-proxy: injected again (Istio re-injects).
        let p = pod(json!({}), json!({"sidecar.istio.io/status": "{}"}));
        assert!(decide(&p, None, "default").inject());
        let mut p = pod(json!({}), json!({}));
        p.spec.as_mut().unwrap().containers[0].name = "istio-proxy".into();
        assert!(decide(&p, None, "default").inject());
        // The opt-out still wins.
        let p = pod(
            json!({"sidecar.istio.io/inject": "false"}),
            json!({"sidecar.istio.io/status": "{}"}),
        );
        assert!(!decide(&p, None, "default").inject());
    }
}
