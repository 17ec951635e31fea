//! Whether a pod's `istio-proxy` is a Kubernetes native sidecar (an init container with
//! `restartPolicy: Always`, placed right after `istio-init`, with a startup probe that holds the
//! pod's other containers until the proxy is ready) or the pod's first regular container.
//!
//! As Istio decides it:
//!
//! 1. the pod's annotation `sidecar.istio.io/nativeSidecar`, `"true"` or `"false"`, wins;
//! 2. else the `nativeSidecars` setting: `true`, `false`, or `auto` (the default, as Istio's
//!    `ENABLE_NATIVE_SIDECARS` defaults to its automatic detection): native when the Kubernetes
//!    API server is 1.33 or later, the release where sidecar containers became stable
//!    ([`crate::kube_sync::supports_native_sidecars`]);
//! 3. the `gateway` template never makes one: there the proxy is the pod's main container.
//!
//! rustmesh's differences: any other value of the annotation **refuses the pod** (Istio's
//! template reads every value but `"false"` as `true`, and its injector every value but
//! `"true"`/`"false"` as unset); `auto` reads the API server's version once at the webhook's
//! start, where Istio reads every node's kubelet version (Kubernetes' version skew policy keeps
//! kubelets at most three minor versions behind the API server, so with an API server at 1.33
//! every kubelet is at least 1.30, where sidecar containers are on by default).

use std::collections::BTreeMap;

use crate::annotations::Failures;
use crate::names::ANNOTATION_NATIVE_SIDECAR;
use crate::settings::InjectionSettings;
use crate::templates::Template;

/// The pod's `sidecar.istio.io/nativeSidecar`, when it sets one; a value other than `"true"`
/// or `"false"` is added to `failures`.
pub fn annotation(annotations: &BTreeMap<String, String>, failures: &mut Failures) -> Option<bool> {
    let value = annotations.get(ANNOTATION_NATIVE_SIDECAR)?;
    match value.as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            failures.add(
                ANNOTATION_NATIVE_SIDECAR,
                value,
                "nativeSidecar invalid, use \"true\" or \"false\"",
            );
            None
        }
    }
}

/// Whether the pod gets a native sidecar: the pod's choice (from [`annotation`]), else the
/// setting; never with the `gateway` template. A pod asking for one with the `gateway`
/// template adds a warning.
pub fn decide(
    pod_choice: Option<bool>,
    template: Template,
    settings: &InjectionSettings,
    warnings: &mut Vec<String>,
) -> bool {
    if template == Template::Gateway {
        if pod_choice == Some(true) {
            warnings.push(format!(
                "annotation {ANNOTATION_NATIVE_SIDECAR} ignored: the gateway template runs the \
                 proxy as the pod's main container"
            ));
        }
        return false;
    }
    pod_choice.unwrap_or_else(|| settings.use_native_sidecars())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::NativeSidecars;

    fn choice(value: &str) -> Result<Option<bool>, Vec<String>> {
        let annotations = [(ANNOTATION_NATIVE_SIDECAR.to_owned(), value.to_owned())].into();
        let mut failures = Failures::default();
        let c = annotation(&annotations, &mut failures);
        failures.into_result(c).map_err(|e| e.0)
    }

    #[test]
    fn only_true_and_false_are_read_anything_else_refuses() {
        assert_eq!(choice("true"), Ok(Some(true)));
        assert_eq!(choice("false"), Ok(Some(false)));
        assert_eq!(annotation(&BTreeMap::new(), &mut Failures::default()), None);
        for bad in ["True", "yes", "1", "", " true"] {
            assert_eq!(
                choice(bad),
                Err(vec![format!(
                    "invalid value '{bad}' for annotation 'sidecar.istio.io/nativeSidecar': \
                     nativeSidecar invalid, use \"true\" or \"false\""
                )])
            );
        }
    }

    #[test]
    fn the_pod_wins_over_the_setting_and_a_gateway_never_has_one() {
        let on = InjectionSettings {
            native_sidecars: NativeSidecars::On,
            ..InjectionSettings::default()
        };
        let off = InjectionSettings::default();
        let mut w = Vec::new();
        assert!(decide(None, Template::Sidecar, &on, &mut w));
        assert!(!decide(None, Template::Sidecar, &off, &mut w));
        assert!(!decide(Some(false), Template::Sidecar, &on, &mut w));
        assert!(decide(Some(true), Template::Sidecar, &off, &mut w));
        // `auto` not resolved (no API server asked): off.
        let auto = InjectionSettings {
            native_sidecars: NativeSidecars::Auto,
            ..InjectionSettings::default()
        };
        assert!(!decide(None, Template::Sidecar, &auto, &mut w));
        assert!(w.is_empty());
        assert!(!decide(None, Template::Gateway, &on, &mut w));
        assert!(w.is_empty(), "the setting is not the pod's wish");
        assert!(!decide(Some(true), Template::Gateway, &on, &mut w));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("gateway template"), "{w:?}");
    }
}
