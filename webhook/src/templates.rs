//! `inject.istio.io/templates`: which of Istio's injection templates a pod gets. rustmesh has two
//! built in, and the custom ones of its `templates` setting ([`crate::custom_templates`]):
//!
//! * `sidecar` (the default): `istio-init` captures the pod's traffic and `istio-proxy` runs
//!   next to the app;
//! * `gateway` (Istio's `gateway-injection-template.yaml`): the pod is a standalone proxy (an
//!   ingress or egress gateway, Istio's gateway Helm chart): no `istio-init`, nothing
//!   captured, `istio-proxy` is the pod's main container, usually declared by the pod itself
//!   with `image: auto` ([`crate::overlay`]).
//!
//! The value is read as Istio reads it: a comma-separated list, each name trimmed, a name given
//! twice counted once. It holds at most one built-in template (none: `sidecar`, Istio's
//! default) and any custom templates, which are merged onto the built-in one's result in the
//! order written (the built-in one is rendered first wherever it is written). A name that is
//! not a template **refuses the pod**, with Istio's words (`requested template "x" not found;
//! have custom, gateway, sidecar`), and so does a list of the two built-in templates (Istio
//! would apply one over the other; rustmesh does not combine them): a typo never falls back to
//! `sidecar` silently.

use std::collections::BTreeMap;
use std::fmt;

use crate::annotations::Failures;
use crate::custom_templates::Templates;
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

/// What `inject.istio.io/templates` selects: one built-in template and the custom templates
/// merged onto its result, in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// The built-in template (`sidecar` when the value names none).
    pub template: Template,
    /// The custom templates ([`crate::custom_templates`]), in the order written, each once.
    pub custom: Vec<String>,
}

/// The pod's templates (see the module doc); `custom` are the settings' custom templates. An
/// invalid annotation is added to `failures` and the default (`sidecar` alone) is returned.
pub fn read(
    annotations: &BTreeMap<String, String>,
    custom: &Templates,
    failures: &mut Failures,
) -> Selection {
    let Some(value) = annotations.get(ANNOTATION_TEMPLATES) else {
        return Selection::default();
    };
    let known = || {
        let mut names: Vec<&str> = KNOWN.iter().map(|(n, _)| *n).collect();
        names.extend(custom.keys().map(String::as_str));
        names.sort_unstable();
        names.join(", ")
    };
    let built_in = || KNOWN.map(|(n, _)| n).join(", ");
    let mut chosen: Vec<Template> = Vec::new();
    let mut selection = Selection::default();
    for name in value.split(',').map(str::trim) {
        if let Some((_, t)) = KNOWN.iter().find(|(n, _)| *n == name) {
            if !chosen.contains(t) {
                chosen.push(*t);
            }
        } else if custom.contains_key(name) {
            if !selection.custom.iter().any(|c| c == name) {
                selection.custom.push(name.to_owned());
            }
        } else {
            failures.add(
                ANNOTATION_TEMPLATES,
                value,
                format!("requested template {name:?} not found; have {}", known()),
            );
            return Selection::default();
        }
    }
    match chosen.as_slice() {
        [] => {}
        [one] => selection.template = *one,
        _ => {
            failures.add(
                ANNOTATION_TEMPLATES,
                value,
                format!(
                    "templates {} together are not implemented by rustmesh; give at most one of \
                     {} (with any custom templates)",
                    chosen
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(" and "),
                    built_in()
                ),
            );
            return Selection::default();
        }
    }
    selection
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_templates::{Fragment, parse};

    fn select(value: Option<&str>, custom: &Templates) -> Result<Selection, Vec<String>> {
        let annotations = value
            .map(|v| [(ANNOTATION_TEMPLATES.to_owned(), v.to_owned())].into())
            .unwrap_or_default();
        let mut failures = Failures::default();
        let t = read(&annotations, custom, &mut failures);
        failures.into_result(t).map_err(|e| e.0)
    }

    fn template(value: Option<&str>) -> Result<Template, Vec<String>> {
        select(value, &Templates::new()).map(|s| {
            assert!(s.custom.is_empty());
            s.template
        })
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
                 templates sidecar and gateway together are not implemented by rustmesh; give at \
                 most one of gateway, sidecar (with any custom templates)"
                    .to_owned()
            ])
        );
    }

    #[test]
    fn custom_templates_follow_the_built_in_one_in_the_order_written() {
        let custom = parse(r#"{"custom": {}, "extra": {}}"#).unwrap();
        assert_eq!(custom["custom"], Fragment::default());
        let selected = |v| select(Some(v), &custom);
        let s = selected("sidecar,custom").unwrap();
        assert_eq!(
            (s.template, s.custom),
            (Template::Sidecar, vec!["custom".to_owned()])
        );
        let s = selected("extra, custom,extra").unwrap();
        assert_eq!(s.template, Template::Sidecar, "sidecar when none is named");
        assert_eq!(s.custom, ["extra", "custom"]);
        let s = selected("custom,gateway").unwrap();
        assert_eq!(
            (s.template, s.custom),
            (Template::Gateway, vec!["custom".to_owned()])
        );
        assert_eq!(
            selected("sidecar,custom,spire"),
            Err(vec![
                "invalid value 'sidecar,custom,spire' for annotation 'inject.istio.io/templates': \
                 requested template \"spire\" not found; have custom, extra, gateway, sidecar"
                    .to_owned()
            ])
        );
        assert!(selected("gateway,custom,sidecar").unwrap_err()[0].contains("together"));
        // Without the setting, a custom name is unknown.
        assert!(select(Some("custom"), &Templates::new()).is_err());
    }
}
