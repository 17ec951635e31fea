//! Istio's metrics merging (`applyPrometheusMerge` of its injector): an injected pod is scraped
//! at the sidecar's status port, which serves the sidecar's metrics followed by the app's
//! (`proxy/src/merge_metrics.rs`), so one scrape gets both, also under mTLS STRICT.
//!
//! When it is on for the pod, the injector:
//! * sets `prometheus.io/scrape: "true"`, `prometheus.io/port: "<status port>"` (15020) and
//!   `prometheus.io/path: "/stats/prometheus"`, removing every other spelling Prometheus reads
//!   as the same annotation (`prometheus.io.port`, `prometheus_io/port`...: the key with every
//!   character but letters, digits and `_` made `_`);
//! * moves the app's own values, if it had any, into the sidecar's `ISTIO_PROMETHEUS_ANNOTATIONS`
//!   as a JSON object of strings, Istio's `{"scrape":"...","path":"...","port":"..."}` (an absent
//!   one is `""`; the sidecar then scrapes `/metrics` on port 80, as Istio's agent).
//!
//! It is on unless the pod's `prometheus.istio.io/merge-metrics` says `false` (checked as Istio's
//! `validateBool`, Go's `strconv.ParseBool`: an invalid value refuses the pod), or else the
//! `enablePrometheusMerge` setting (Istio's `meshConfig.enablePrometheusMerge`) is `false`. As in
//! Istio, a pod whose `prometheus.io/scrape` reads as false is left alone (it asked not to be
//! scraped), and so is one whose `prometheus.io/port` already is the status port (a pod
//! injected before, or that points Prometheus at the sidecar itself).
//!
//! rustmesh's differences, each with a warning naming the annotation, where Istio would merge
//! into something that cannot work: no merging when the pod has no status port
//! (`status.sidecar.istio.io/port: "0"`: nothing would serve the merged metrics), and none when
//! the app's `prometheus.io/port` is not a port number 1-65535 or its `prometheus.io/path` not
//! a URL path (the sidecar refuses such a variable at start; the app keeps its annotations and
//! is scraped directly, as without merging).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::annotations::Failures;
use crate::names::*;
use crate::values;

/// What merging changes on the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merge {
    /// `ISTIO_PROMETHEUS_ANNOTATIONS` of the sidecar: the app's values, when it had any.
    pub env: Option<String>,
    /// Annotations to set (replacing the app's).
    pub set: Vec<(&'static str, String)>,
    /// Other spellings of the three annotations, to remove.
    pub remove: Vec<String>,
}

/// The app's scrape configuration, as Istio's `PrometheusScrapeConfiguration` writes it (these
/// keys, in this order, every value a string).
#[derive(Serialize)]
struct ScrapeConfiguration<'a> {
    scrape: &'a str,
    path: &'a str,
    port: &'a str,
}

/// `prometheus.istio.io/merge-metrics`, when the pod sets it; an invalid value is added to
/// `failures` (Istio's `validateBool`).
pub fn switch(annotations: &BTreeMap<String, String>, failures: &mut Failures) -> Option<bool> {
    let value = annotations.get(ANNOTATION_MERGE_METRICS)?;
    let parsed = values::go_bool(value);
    if parsed.is_none() {
        failures.add(
            ANNOTATION_MERGE_METRICS,
            value,
            format!(
                "{value:?} is not a boolean (true, false, 1, 0, t, f, T, F, TRUE, FALSE, True, \
                 False)"
            ),
        );
    }
    parsed
}

/// Prometheus's reading of an annotation key as a label name: every character but ASCII
/// letters, digits and `_` becomes `_` (so `prometheus.io/port`, `prometheus.io.port` and
/// `prometheus-io/port` are one).
fn sanitized(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The values of one of the three annotations under any spelling: the exact key first, then the
/// others in key order.
fn spellings<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
) -> Vec<(&'a String, &'a String)> {
    let want = sanitized(name);
    let mut out: Vec<(&String, &String)> = annotations
        .iter()
        .filter(|(k, _)| sanitized(k) == want)
        .collect();
    out.sort_by_key(|(k, _)| k.as_str() != name);
    out
}

/// What merging does to the pod (see the module doc), or `None` when it leaves it alone.
/// `enabled` is the pod's [`switch`], else the setting; `status_port` is the pod's.
pub fn merge(
    annotations: &BTreeMap<String, String>,
    enabled: bool,
    status_port: u16,
    warnings: &mut Vec<String>,
) -> Option<Merge> {
    if !enabled {
        return None;
    }
    // Istio's getPrometheusScrape: the first spelling that reads as a boolean decides.
    let scrapes = spellings(annotations, ANNOTATION_PROMETHEUS_SCRAPE);
    if let Some((_, v)) = scrapes.iter().find(|(_, v)| values::go_bool(v).is_some())
        && values::go_bool(v) == Some(false)
    {
        return None;
    }
    if status_port == 0 {
        warnings.push(format!(
            "metrics are not merged: {ANNOTATION_STATUS_PORT} is 0, so no status port serves \
             them (set {ANNOTATION_MERGE_METRICS}: \"false\" to say so)"
        ));
        return None;
    }
    let first = |name: &str| {
        spellings(annotations, name)
            .first()
            .map(|(k, v)| ((*k).clone(), (*v).clone()))
    };
    let scrape = first(ANNOTATION_PROMETHEUS_SCRAPE);
    let port = first(ANNOTATION_PROMETHEUS_PORT);
    let path = first(ANNOTATION_PROMETHEUS_PATH);

    if let Some((key, p)) = &port {
        match p.parse::<u16>().ok().filter(|p| *p > 0) {
            // Already pointing at the sidecar (Istio compares the text; the number is what the
            // sidecar would refuse to scrape).
            Some(n) if n == status_port => return None,
            Some(_) => {}
            None if p.is_empty() => {}
            None => {
                warnings.push(format!(
                    "metrics are not merged: annotation {key} {p:?} is not a port number \
                     (1-65535), so the sidecar could not scrape the app; the app keeps its \
                     prometheus.io annotations"
                ));
                return None;
            }
        }
    }
    if let Some((key, p)) = &path
        && !p.is_empty()
    {
        let with_slash = if p.starts_with('/') {
            p.clone()
        } else {
            format!("/{p}")
        };
        if with_slash.parse::<http::uri::PathAndQuery>().is_err() {
            warnings.push(format!(
                "metrics are not merged: annotation {key} {p:?} is not a URL path, so the \
                 sidecar could not scrape the app; the app keeps its prometheus.io annotations"
            ));
            return None;
        }
    }
    if let Some((key, s)) = &scrape
        && values::go_bool(s).is_none()
    {
        warnings.push(format!(
            "annotation {key} {s:?} is not a boolean; the app's metrics are merged as if it \
             were \"true\", as Istio does"
        ));
    }

    let text = |v: &Option<(String, String)>| v.as_ref().map_or("", |(_, v)| v.as_str()).to_owned();
    let (scrape, path, port) = (text(&scrape), text(&path), text(&port));
    let env = (!(scrape.is_empty() && path.is_empty() && port.is_empty())).then(|| {
        serde_json::to_string(&ScrapeConfiguration {
            scrape: &scrape,
            path: &path,
            port: &port,
        })
        .unwrap_or_default()
    });
    let ours = [
        ANNOTATION_PROMETHEUS_SCRAPE,
        ANNOTATION_PROMETHEUS_PORT,
        ANNOTATION_PROMETHEUS_PATH,
    ];
    let mut remove: Vec<String> = ours
        .iter()
        .flat_map(|name| spellings(annotations, name))
        .map(|(k, _)| k.clone())
        .filter(|k| !ours.contains(&k.as_str()))
        .collect();
    remove.sort();
    Some(Merge {
        env,
        set: vec![
            (ANNOTATION_PROMETHEUS_SCRAPE, "true".to_owned()),
            (ANNOTATION_PROMETHEUS_PORT, status_port.to_string()),
            (ANNOTATION_PROMETHEUS_PATH, MERGED_METRICS_PATH.to_owned()),
        ],
        remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn merged(pairs: &[(&str, &str)]) -> (Option<Merge>, Vec<String>) {
        let mut warnings = Vec::new();
        let m = merge(&annotations(pairs), true, 15020, &mut warnings);
        (m, warnings)
    }

    fn ours() -> Vec<(&'static str, String)> {
        vec![
            ("prometheus.io/scrape", "true".to_owned()),
            ("prometheus.io/port", "15020".to_owned()),
            ("prometheus.io/path", "/stats/prometheus".to_owned()),
        ]
    }

    #[test]
    fn a_pod_without_prometheus_annotations_points_prometheus_at_the_sidecar() {
        let (m, warnings) = merged(&[("other", "x")]);
        assert_eq!(
            m,
            Some(Merge {
                env: None,
                set: ours(),
                remove: vec![]
            })
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn the_apps_annotations_move_into_the_variable_as_istio_writes_it() {
        let (m, warnings) = merged(&[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/path", "/metrics"),
            ("prometheus.io/port", "8080"),
        ]);
        let m = m.unwrap();
        assert_eq!(
            m.env.as_deref(),
            Some(r#"{"scrape":"true","path":"/metrics","port":"8080"}"#)
        );
        assert_eq!(m.set, ours());
        assert!(m.remove.is_empty());
        assert!(warnings.is_empty());
        // Absent ones are empty strings, as Istio's struct (no omitempty).
        let (m, _) = merged(&[("prometheus.io/port", "9100")]);
        assert_eq!(
            m.unwrap().env.as_deref(),
            Some(r#"{"scrape":"","path":"","port":"9100"}"#)
        );
    }

    #[test]
    fn other_spellings_are_read_and_removed() {
        let (m, _) = merged(&[
            ("prometheus.io.port", "9100"),
            ("prometheus-io/path", "/m"),
            ("prometheus.io/scrape", "true"),
        ]);
        let m = m.unwrap();
        assert_eq!(
            m.env.as_deref(),
            Some(r#"{"scrape":"true","path":"/m","port":"9100"}"#)
        );
        assert_eq!(m.remove, ["prometheus-io/path", "prometheus.io.port"]);
        // The exact key wins over another spelling.
        let (m, _) = merged(&[("prometheus.io/port", "1"), ("prometheus_io/port", "2")]);
        assert!(m.unwrap().env.unwrap().contains(r#""port":"1""#));
    }

    #[test]
    fn scrape_false_or_a_port_already_the_status_port_leaves_the_pod_alone() {
        for pairs in [
            &[("prometheus.io/scrape", "false")][..],
            &[("prometheus.io/scrape", "0")][..],
            &[
                ("prometheus.io/scrape", "False"),
                ("prometheus.io/port", "8080"),
            ][..],
            &[("prometheus_io_scrape", "f")][..],
            &[("prometheus.io/port", "15020")][..],
        ] {
            let (m, warnings) = merged(pairs);
            assert_eq!(m, None, "{pairs:?}");
            assert!(warnings.is_empty(), "{pairs:?}: {warnings:?}");
        }
        // A scrape value that is no boolean does not stop merging (Istio's rule), with a word.
        let (m, warnings) = merged(&[("prometheus.io/scrape", "maybe")]);
        assert!(m.unwrap().env.unwrap().contains(r#""scrape":"maybe""#));
        assert!(warnings[0].contains("prometheus.io/scrape \"maybe\" is not a boolean"));
    }

    #[test]
    fn off_by_the_switch_or_without_a_status_port() {
        let mut warnings = Vec::new();
        assert_eq!(merge(&annotations(&[]), false, 15020, &mut warnings), None);
        assert!(warnings.is_empty());
        assert_eq!(merge(&annotations(&[]), true, 0, &mut warnings), None);
        assert!(
            warnings[0].contains("status.sidecar.istio.io/port is 0"),
            "{warnings:?}"
        );
        // Another status port is where Prometheus is sent.
        let m = merge(&annotations(&[]), true, 16020, &mut Vec::new()).unwrap();
        assert_eq!(m.set[1], ("prometheus.io/port", "16020".to_owned()));
    }

    #[test]
    fn an_app_port_or_path_the_sidecar_cannot_scrape_is_not_merged_with_a_warning() {
        for (pairs, names) in [
            (
                &[("prometheus.io/port", "metrics")][..],
                "prometheus.io/port \"metrics\"",
            ),
            (
                &[("prometheus.io/port", "0")][..],
                "prometheus.io/port \"0\"",
            ),
            (
                &[("prometheus.io/port", "70000")][..],
                "prometheus.io/port \"70000\"",
            ),
            (
                &[("prometheus.io/path", "/a b")][..],
                "prometheus.io/path \"/a b\"",
            ),
        ] {
            let (m, warnings) = merged(pairs);
            assert_eq!(m, None, "{pairs:?}");
            assert!(
                warnings.len() == 1 && warnings[0].contains(names),
                "{pairs:?}: {warnings:?}"
            );
        }
        // A path without its slash is fine (the sidecar adds it).
        assert!(merged(&[("prometheus.io/path", "metrics")]).0.is_some());
    }

    #[test]
    fn the_switch_is_validated_as_istios_validate_bool() {
        for (v, want) in [
            ("false", Some(false)),
            ("true", Some(true)),
            ("0", Some(false)),
        ] {
            let mut failures = Failures::default();
            let got = switch(
                &annotations(&[(ANNOTATION_MERGE_METRICS, v)]),
                &mut failures,
            );
            assert_eq!(got, want);
            assert!(failures.is_empty());
        }
        assert_eq!(switch(&annotations(&[]), &mut Failures::default()), None);
        for bad in ["no", "yes", "", " false", "off"] {
            let mut failures = Failures::default();
            switch(
                &annotations(&[(ANNOTATION_MERGE_METRICS, bad)]),
                &mut failures,
            );
            let e = failures.into_result(()).unwrap_err().0;
            assert!(
                e[0].starts_with(&format!(
                    "invalid value '{bad}' for annotation 'prometheus.istio.io/merge-metrics': \
                     \"{}\" is not a boolean",
                    bad.escape_debug()
                )),
                "{e:?}"
            );
        }
    }
}
