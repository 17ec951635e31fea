//! `inject.istio.io/templates`: which of Istio's injection templates a pod gets. rustmesh has two,
//! built in (its settings have no templates of their own):
//!
//! * `sidecar` (the default): `istio-init` captures the pod's traffic and `istio-proxy` runs
//!   next to the app;
//! * `gateway` (Istio's `gateway-injection-template.yaml`): the pod is a standalone proxy (an
//!   ingress or egress gateway, Istio's gateway Helm chart): no `istio-init`, nothing
//!   captured, `istio-proxy` is the pod's main container, usually declared by the pod itself
//!   with `image: auto` ([`crate::overlay`]).
//!
//! The value is read as Istio reads it: a comma-separated list, each name trimmed. A name that is
//! not a template **refuses the pod**, with Istio's words (`requested template "x" not found;
//! have gateway, sidecar`), and so does a list of two different templates (Istio would apply
//! them one over the other; rustmesh does not combine templates): a typo never falls back to
//! `sidecar` silently.

use std::collections::BTreeMap;
use std::fmt;

use crate::annotations::Failures;
use crate::names::ANNOTATION_TEMPLATES;

/// An injection template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Template {
    /// Istio's `sidecar` template.
    #[default]
    Sidecar,
    /// Istio's `gateway` template.
    Gateway,
}

/// The templates, by name, in the order messages list them.
pub const KNOWN: [(&str, Template); 2] = [
    ("gateway", Template::Gateway),
    ("sidecar", Template::Sidecar),
];

impl Template {
    /// The template's name, as the annotation spells it.
    pub fn name(self) -> &'static str {
        match self {
            Template::Sidecar => "sidecar",
            Template::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The pod's template (see the module doc); an invalid annotation is added to `failures` and
/// the default is returned.
pub fn read(annotations: &BTreeMap<String, String>, failures: &mut Failures) -> Template {
    let Some(value) = annotations.get(ANNOTATION_TEMPLATES) else {
        return Template::Sidecar;
    };
    let known = || KNOWN.map(|(n, _)| n).join(", ");
    let mut chosen: Vec<Template> = Vec::new();
    for name in value.split(',').map(str::trim) {
        match KNOWN.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => {
                if !chosen.contains(t) {
                    chosen.push(*t);
                }
            }
            None => {
                failures.add(
                    ANNOTATION_TEMPLATES,
                    value,
                    format!("requested template {name:?} not found; have {}", known()),
                );
                return Template::Sidecar;
            }
        }
    }
    match chosen.as_slice() {
        [one] => *one,
        _ => {
            failures.add(
                ANNOTATION_TEMPLATES,
                value,
                format!(
                    "templates {} together are not implemented by rustmesh; give one of {}",
                    chosen
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(" and "),
                    known()
                ),
            );
            Template::Sidecar
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(value: Option<&str>) -> Result<Template, Vec<String>> {
        let annotations = value
            .map(|v| [(ANNOTATION_TEMPLATES.to_owned(), v.to_owned())].into())
            .unwrap_or_default();
        let mut failures = Failures::default();
        let t = read(&annotations, &mut failures);
        failures.into_result(t).map_err(|e| e.0)
    }

    #[test]
    fn sidecar_by_default_and_each_known_name() {
        assert_eq!(template(None), Ok(Template::Sidecar));
        assert_eq!(template(Some("sidecar")), Ok(Template::Sidecar));
        assert_eq!(template(Some("gateway")), Ok(Template::Gateway));
        // Istio's list reading: items trimmed; a name twice is that template.
        assert_eq!(template(Some(" gateway ")), Ok(Template::Gateway));
        assert_eq!(template(Some("gateway, gateway")), Ok(Template::Gateway));
    }

    #[test]
    fn an_unknown_name_refuses_the_pod_listing_the_known_ones() {
        for (value, name) in [
            ("grpc-agent", "grpc-agent"),
            ("", ""),
            ("sidecar,spire", "spire"),
            ("Gateway", "Gateway"),
        ] {
            assert_eq!(
                template(Some(value)),
                Err(vec![format!(
                    "invalid value '{value}' for annotation 'inject.istio.io/templates': requested \
                     template {name:?} not found; have gateway, sidecar"
                )]),
            );
        }
        assert_eq!(
            template(Some("sidecar,gateway")),
            Err(vec![
                "invalid value 'sidecar,gateway' for annotation 'inject.istio.io/templates': \
                 templates sidecar and gateway together are not implemented by rustmesh; give one \
                 of gateway, sidecar"
                    .to_owned()
            ])
        );
    }
}
