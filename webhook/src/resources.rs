//! The sidecar's requests and limits, as Istio's injection template sets them: without any of
//! the pod annotations below, the settings' `proxyCPU`, `proxyMemory`, `proxyCPULimit`,
//! `proxyMemoryLimit`; with one or more of them, **only** the fields they name, and none of the
//! settings' (Istio's template replaces `global.proxy.resources` as a whole then):
//!
//! | annotation | field |
//! |---|---|
//! | `sidecar.istio.io/proxyCPU` | `requests.cpu` |
//! | `sidecar.istio.io/proxyMemory` | `requests.memory` |
//! | `sidecar.istio.io/proxyCPULimit` | `limits.cpu` |
//! | `sidecar.istio.io/proxyMemoryLimit` | `limits.memory` |
//!
//! So `proxyCPU: 500m` alone gives `requests: {cpu: 500m}` and no limits.
//!
//! **Refused** ([`crate::annotations`]), never passed on for the API server to reject: a value
//! that is not a Kubernetes quantity (Istio's injection fails on it too), and a request above
//! its limit (compared by value: `1000m` equals `1`, `1Gi` equals `1024Mi`), naming both
//! annotations and values.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::annotations::Failures;
use crate::names::*;
use crate::settings::Resources;
use crate::values;

/// The four annotations, each with its resource and whether it is the limit.
const ANNOTATIONS: [(&str, &str, bool); 4] = [
    (ANNOTATION_PROXY_CPU, "cpu", false),
    (ANNOTATION_PROXY_MEMORY, "memory", false),
    (ANNOTATION_PROXY_CPU_LIMIT, "cpu", true),
    (ANNOTATION_PROXY_MEMORY_LIMIT, "memory", true),
];

/// `istio-proxy`'s resources for this pod (see the module doc); each invalid annotation is added
/// to `failures`.
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    defaults: &Resources,
    failures: &mut Failures,
) -> ResourceRequirements {
    if !ANNOTATIONS
        .iter()
        .any(|(name, _, _)| annotations.contains_key(*name))
    {
        return of_settings(defaults);
    }
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    // The parsed values, to compare each request with its limit.
    let mut parsed: BTreeMap<(&str, bool), (&str, &str, values::Quantity)> = BTreeMap::new();
    for (name, resource, limit) in ANNOTATIONS {
        let Some(value) = annotations.get(name) else {
            continue;
        };
        match values::parse_quantity(value) {
            Ok(q) => {
                parsed.insert((resource, limit), (name, value.as_str(), q));
                let map = if limit { &mut limits } else { &mut requests };
                map.insert(resource.to_owned(), Quantity(value.clone()));
            }
            Err(why) => failures.add(name, value, why),
        }
    }
    for resource in ["cpu", "memory"] {
        if let (Some((req_name, req, req_q)), Some((lim_name, lim, lim_q))) = (
            parsed.get(&(resource, false)),
            parsed.get(&(resource, true)),
        ) && req_q.cmp_value(lim_q) == Ordering::Greater
        {
            failures.add(
                req_name,
                req,
                format!(
                    "the {resource} request {req} is more than the {resource} limit {lim} of \
                     annotation '{lim_name}' (Kubernetes refuses a request above its limit)"
                ),
            );
        }
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

/// The resources whose request is above their limit in `r` (each `(resource, request, limit)`),
/// for a container the pod's own overlay was merged onto: its request with the injected limit
/// (or the other way round) is a pod the API server refuses. Unreadable quantities are left
/// to the API server.
pub fn requests_above_limits(r: &ResourceRequirements) -> Vec<(String, String, String)> {
    let (Some(requests), Some(limits)) = (&r.requests, &r.limits) else {
        return Vec::new();
    };
    requests
        .iter()
        .filter_map(|(resource, req)| {
            let lim = limits.get(resource)?;
            let (rq, lq) = (
                values::parse_quantity(&req.0).ok()?,
                values::parse_quantity(&lim.0).ok()?,
            );
            (rq.cmp_value(&lq) == Ordering::Greater)
                .then(|| (resource.clone(), req.0.clone(), lim.0.clone()))
        })
        .collect()
}

/// The settings' requests and limits (`proxyCPU`... or `initCPU`...).
pub fn of_settings(r: &Resources) -> ResourceRequirements {
    let pair = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(mem.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(pair(&r.cpu, &r.memory)),
        limits: Some(pair(&r.cpu_limit, &r.memory_limit)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_above_limits_are_found_by_value() {
        let r = |req: &[(&str, &str)], lim: &[(&str, &str)]| ResourceRequirements {
            requests: Some(
                req.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            ),
            limits: Some(
                lim.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            ),
            ..Default::default()
        };
        assert!(requests_above_limits(&r(&[("cpu", "1000m")], &[("cpu", "1")])).is_empty());
        assert!(requests_above_limits(&r(&[("memory", "1Gi")], &[("cpu", "1")])).is_empty());
        assert!(requests_above_limits(&r(&[("cpu", "lots")], &[("cpu", "1")])).is_empty());
        assert_eq!(
            requests_above_limits(&r(
                &[("cpu", "3"), ("memory", "1Gi")],
                &[("cpu", "2"), ("memory", "1024Mi")]
            )),
            [("cpu".to_owned(), "3".to_owned(), "2".to_owned())]
        );
    }

    fn defaults() -> Resources {
        crate::settings::InjectionSettings::default().proxy_resources
    }

    fn resolved(pairs: &[(&str, &str)]) -> Result<ResourceRequirements, Vec<String>> {
        let annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut failures = Failures::default();
        let r = resolve(&annotations, &defaults(), &mut failures);
        failures.into_result(r).map_err(|e| e.0)
    }

    fn fields(r: &ResourceRequirements) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (k, v) in map.iter().flatten() {
                out.push(format!("{kind}.{k}={}", v.0));
            }
        }
        out
    }

    #[test]
    fn without_annotations_the_settings() {
        assert_eq!(
            fields(&resolved(&[]).unwrap()),
            [
                "requests.cpu=100m",
                "requests.memory=128Mi",
                "limits.cpu=2",
                "limits.memory=1Gi"
            ]
        );
    }

    /// Istio's template: any of the four replaces the defaults; only the named fields are set.
    #[test]
    fn annotations_set_only_the_fields_they_name() {
        for (pairs, want) in [
            (
                &[(ANNOTATION_PROXY_CPU, "500m")][..],
                &["requests.cpu=500m"][..],
            ),
            (
                &[(ANNOTATION_PROXY_MEMORY_LIMIT, "2Gi")][..],
                &["limits.memory=2Gi"][..],
            ),
            (
                &[
                    (ANNOTATION_PROXY_CPU, "3"),
                    (ANNOTATION_PROXY_MEMORY, "256Mi"),
                ][..],
                &["requests.cpu=3", "requests.memory=256Mi"][..],
            ),
            (
                &[
                    (ANNOTATION_PROXY_CPU, "250m"),
                    (ANNOTATION_PROXY_MEMORY, "256Mi"),
                    (ANNOTATION_PROXY_CPU_LIMIT, "1"),
                    (ANNOTATION_PROXY_MEMORY_LIMIT, "512Mi"),
                ][..],
                &[
                    "requests.cpu=250m",
                    "requests.memory=256Mi",
                    "limits.cpu=1",
                    "limits.memory=512Mi",
                ][..],
            ),
        ] {
            let r = resolved(pairs).unwrap();
            assert_eq!(fields(&r), want, "{pairs:?}");
            if !want.iter().any(|f| f.starts_with("limits")) {
                assert!(r.limits.is_none(), "no empty limits map");
            }
        }
    }

    #[test]
    fn a_request_equal_to_its_limit_in_other_units_is_fine() {
        for (req, lim) in [
            ("1000m", "1"),
            ("1Gi", "1024Mi"),
            ("0.5", "500m"),
            ("2", "2"),
        ] {
            assert!(
                resolved(&[
                    (ANNOTATION_PROXY_CPU, req),
                    (ANNOTATION_PROXY_CPU_LIMIT, lim)
                ])
                .is_ok(),
                "{req} <= {lim}"
            );
        }
    }

    #[test]
    fn a_request_above_its_limit_refuses_the_pod_naming_both() {
        let failures = resolved(&[
            (ANNOTATION_PROXY_CPU, "1500m"),
            (ANNOTATION_PROXY_CPU_LIMIT, "1"),
            (ANNOTATION_PROXY_MEMORY, "1.5Gi"),
            (ANNOTATION_PROXY_MEMORY_LIMIT, "1536M"),
        ])
        .unwrap_err();
        assert_eq!(
            failures,
            [
                "invalid value '1500m' for annotation 'sidecar.istio.io/proxyCPU': the cpu \
                 request 1500m is more than the cpu limit 1 of annotation \
                 'sidecar.istio.io/proxyCPULimit' (Kubernetes refuses a request above its limit)",
                "invalid value '1.5Gi' for annotation 'sidecar.istio.io/proxyMemory': the memory \
                 request 1.5Gi is more than the memory limit 1536M of annotation \
                 'sidecar.istio.io/proxyMemoryLimit' (Kubernetes refuses a request above its \
                 limit)",
            ]
        );
        // A request alone is never compared with the settings' limit: Istio drops those.
        assert!(resolved(&[(ANNOTATION_PROXY_CPU, "3")]).is_ok());
    }

    #[test]
    fn a_value_that_is_not_a_quantity_refuses_the_pod() {
        let failures = resolved(&[
            (ANNOTATION_PROXY_CPU, "lots"),
            (ANNOTATION_PROXY_MEMORY_LIMIT, "1GB"),
            (ANNOTATION_PROXY_MEMORY, "-1Mi"),
        ])
        .unwrap_err();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].starts_with(
            "invalid value 'lots' for annotation 'sidecar.istio.io/proxyCPU': \"lots\" is not a \
             Kubernetes quantity"
        ));
        assert!(failures[1].contains("'sidecar.istio.io/proxyMemory': \"-1Mi\" is negative"));
        assert!(failures[2].contains("'sidecar.istio.io/proxyMemoryLimit': \"1GB\" is not"));
    }
}
