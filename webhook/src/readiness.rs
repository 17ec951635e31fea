//! The sidecar's status port and readiness probe, from the pod's annotations as Istio's
//! injection template reads them:
//!
//! | annotation | default | checked as (Istio's `validate.go`) |
//! |---|---|---|
//! | `status.sidecar.istio.io/port` | the `statusPort` setting (15020) | `validateStatusPort`: trimmed, a decimal 0-65535; `0` means no status port |
//! | `readiness.status.sidecar.istio.io/initialDelaySeconds` | 1 | `validateUInt32`: decimal digits, nothing trimmed |
//! | `readiness.status.sidecar.istio.io/periodSeconds` | 2 | the same |
//! | `readiness.status.sidecar.istio.io/failureThreshold` | 30 | the same |
//! | `readiness.status.sidecar.istio.io/applicationPorts` | none | `validateReadinessApplicationPorts` of Istio's injector until it dropped the check: `*`, or a port list (the value trimmed, each item trimmed, a decimal 0-65535) |
//!
//! `applicationPorts` has **no effect**, in rustmesh as in today's Istio: Istio's template once
//! passed it to its agent (`--applicationPorts`, the ports whose listeners readiness waited for);
//! its agent now reports ready once Envoy has its configuration, and so does rustmesh's sidecar
//! (`/healthz/ready`). A valid value is accepted and reported in a warning naming it
//! ([`application_ports`]), so that it is not silently ignored; an invalid one refuses the pod,
//! as Istio's check did (today's Istio accepts any value).
//!
//! A status port other than 15020 is passed to the sidecar as `proxy run --status-port`, app
//! probes are rewritten to it and it is excluded from inbound capture, as Istio does with its
//! agent's port. `0`, as in Istio's template, removes `istio-proxy`'s readiness probe; rustmesh
//! then also turns the sidecar's status server off (`--status-port 0`) and rewrites no probe
//! (Istio would point them at port 0, which the API server refuses).
//!
//! An invalid value **refuses the pod** ([`crate::annotations`]). Deliberately stricter than
//! Istio, so that no pod is admitted that the API server or the sidecar would refuse: a readiness
//! value above 2147483647 (a probe field is a 32-bit signed number; Istio accepts up to
//! 4294967295), and a status port that is one of the sidecar's own other ports (it could not
//! bind it).

use std::collections::BTreeMap;

use rustmesh_xds::well_known;

use crate::annotations::Failures;
use crate::names::*;
use crate::settings::InjectionSettings;

/// `initialDelaySeconds` of `istio-proxy`'s readiness probe when the pod does not say.
pub const DEFAULT_INITIAL_DELAY_SECONDS: i32 = 1;
/// `periodSeconds` of the readiness probe when the pod does not say.
pub const DEFAULT_PERIOD_SECONDS: i32 = 2;
/// `failureThreshold` of the readiness probe when the pod does not say.
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 30;
/// `timeoutSeconds` of the readiness probe (fixed, as in Istio's template).
pub const TIMEOUT_SECONDS: i32 = 3;

/// The pod's status port and readiness probe timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// The sidecar's status port; 0: none, and no readiness probe.
    pub status_port: u16,
    /// The readiness probe's `initialDelaySeconds`.
    pub initial_delay_seconds: i32,
    /// The readiness probe's `periodSeconds`.
    pub period_seconds: i32,
    /// The readiness probe's `failureThreshold`.
    pub failure_threshold: i32,
}

impl Readiness {
    /// Whether `istio-proxy` gets a readiness probe (no status port, no probe: Istio's rule).
    pub fn probe(&self) -> bool {
        self.status_port != 0
    }
}

/// Reads the annotations over the settings; each invalid one is added to `failures` (and the
/// default is returned in its place).
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    settings: &InjectionSettings,
    failures: &mut Failures,
) -> Readiness {
    let mut out = Readiness {
        status_port: settings.status_port,
        initial_delay_seconds: DEFAULT_INITIAL_DELAY_SECONDS,
        period_seconds: DEFAULT_PERIOD_SECONDS,
        failure_threshold: DEFAULT_FAILURE_THRESHOLD,
    };
    if let Some(v) = annotations.get(ANNOTATION_STATUS_PORT) {
        match status_port(v, settings) {
            Ok(p) => out.status_port = p,
            Err(why) => failures.add(ANNOTATION_STATUS_PORT, v, why),
        }
    }
    for (name, slot) in [
        (
            ANNOTATION_READINESS_INITIAL_DELAY,
            &mut out.initial_delay_seconds,
        ),
        (ANNOTATION_READINESS_PERIOD, &mut out.period_seconds),
        (
            ANNOTATION_READINESS_FAILURE_THRESHOLD,
            &mut out.failure_threshold,
        ),
    ] {
        if let Some(v) = annotations.get(name) {
            match probe_seconds(v) {
                Ok(n) => *slot = n,
                Err(why) => failures.add(name, v, why),
            }
        }
    }
    out
}

/// `readiness.status.sidecar.istio.io/applicationPorts`: an invalid value is added to
/// `failures` (Istio's `readinessApplicationPorts invalid: failed parsing port '<item>': ...`),
/// a valid one to `warnings`, as having no effect (see the module's documentation).
pub fn application_ports(
    annotations: &BTreeMap<String, String>,
    failures: &mut Failures,
    warnings: &mut Vec<String>,
) {
    let Some(value) = annotations.get(ANNOTATION_READINESS_APPLICATION_PORTS) else {
        return;
    };
    match application_port_list(value) {
        Ok(()) => warnings.push(format!(
            "annotation {ANNOTATION_READINESS_APPLICATION_PORTS} has no effect: the sidecar is \
             ready once its configuration has arrived, whatever the app's ports (as Istio's \
             agent, which no longer reads it)"
        )),
        Err(why) => failures.add(ANNOTATION_READINESS_APPLICATION_PORTS, value, why),
    }
}

/// `*`, or Istio's port list as its injector's `parsePorts` read it: the value trimmed (empty:
/// no port), split on `,`, each item trimmed and a decimal 0-65535 (an empty item is an error).
fn application_port_list(value: &str) -> Result<(), String> {
    let list = value.trim();
    if value == "*" || list.is_empty() {
        return Ok(());
    }
    for item in list.split(',') {
        let digits = item.trim();
        let port = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u16>().ok())
            .flatten();
        if port.is_none() {
            return Err(format!(
                "readinessApplicationPorts invalid: failed parsing port '{item}': {digits:?} is \
                 not a port number (0-65535)"
            ));
        }
    }
    Ok(())
}

/// Istio's `validateStatusPort` (its `parsePort`: the value trimmed, then a decimal 0-65535),
/// and not one of the sidecar's other ports. (Istio's message starts `excludeInboundPorts
/// invalid:`, a slip of its code; rustmesh names the status port.)
pub fn status_port(value: &str, settings: &InjectionSettings) -> Result<u16, String> {
    let digits = value.trim();
    let port = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| {
            format!(
                "statusPort invalid: failed parsing port '{value}': {digits:?} is not a port \
                 number (0-65535)"
            )
        })?;
    let taken = [
        (settings.outbound_port, "outbound capture"),
        (settings.inbound_port, "inbound capture"),
        (well_known::ADMIN_PORT, "admin"),
        (settings.health_port, "readiness"),
        (settings.prometheus_port, "Prometheus"),
        (well_known::DNS_PORT, "DNS"),
    ];
    if let Some((_, what)) = taken.iter().find(|(p, _)| *p == port && port != 0) {
        return Err(format!(
            "statusPort invalid: {port} is the sidecar's {what} port (the status server could \
             not bind it)"
        ));
    }
    Ok(port)
}

/// Istio's `validateUInt32` (Go's `strconv.ParseUint(v, 10, 32)`: decimal digits only, no sign
/// or space), and at most `i32::MAX`, which is what a probe field holds.
pub fn probe_seconds(value: &str) -> Result<i32, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{value:?} is not a whole number (0-2147483647)"));
    }
    match value.parse::<u64>() {
        Ok(n) if n <= i32::MAX as u64 => Ok(n as i32),
        Ok(n) if n <= u64::from(u32::MAX) => Err(format!(
            "{n} is more than 2147483647, the most a Kubernetes probe field holds"
        )),
        _ => Err(format!("{value:?} is out of range (0-2147483647)")),
    }
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

    fn resolved(pairs: &[(&str, &str)]) -> Result<Readiness, Vec<String>> {
        let mut failures = Failures::default();
        let r = resolve(
            &annotations(pairs),
            &InjectionSettings::default(),
            &mut failures,
        );
        failures.into_result(r).map_err(|e| e.0)
    }

    #[test]
    fn defaults_without_annotations() {
        let r = resolved(&[]).unwrap();
        assert_eq!(
            r,
            Readiness {
                status_port: 15020,
                initial_delay_seconds: 1,
                period_seconds: 2,
                failure_threshold: 30
            }
        );
        assert!(r.probe());
        let custom = InjectionSettings {
            status_port: 16020,
            ..InjectionSettings::default()
        };
        let r = resolve(&BTreeMap::new(), &custom, &mut Failures::default());
        assert_eq!(r.status_port, 16020);
    }

    #[test]
    fn annotations_set_the_port_and_the_probe() {
        let r = resolved(&[
            (ANNOTATION_STATUS_PORT, " 16020 "),
            (ANNOTATION_READINESS_INITIAL_DELAY, "0"),
            (ANNOTATION_READINESS_PERIOD, "15"),
            (ANNOTATION_READINESS_FAILURE_THRESHOLD, "004"),
        ])
        .unwrap();
        assert_eq!(
            r,
            Readiness {
                status_port: 16020,
                initial_delay_seconds: 0,
                period_seconds: 15,
                failure_threshold: 4
            }
        );
        let off = resolved(&[(ANNOTATION_STATUS_PORT, "0")]).unwrap();
        assert_eq!(off.status_port, 0);
        assert!(!off.probe(), "port 0: no readiness probe, as in Istio");
    }

    #[test]
    fn an_invalid_status_port_refuses_the_pod_naming_it() {
        for (bad, why) in [
            (
                "http",
                "failed parsing port 'http': \"http\" is not a port number (0-65535)",
            ),
            ("65536", "failed parsing port '65536'"),
            ("-1", "failed parsing port '-1'"),
            ("+80", "failed parsing port '+80'"),
            ("", "failed parsing port ''"),
            ("15001", "15001 is the sidecar's outbound capture port"),
            ("15021", "15021 is the sidecar's readiness port"),
            ("15090", "15090 is the sidecar's Prometheus port"),
            ("15000", "15000 is the sidecar's admin port"),
        ] {
            let failures = resolved(&[(ANNOTATION_STATUS_PORT, bad)]).unwrap_err();
            assert_eq!(failures.len(), 1);
            assert!(
                failures[0].starts_with(&format!(
                    "invalid value '{bad}' for annotation 'status.sidecar.istio.io/port': \
                     statusPort invalid: "
                )) && failures[0].contains(why),
                "{bad:?}: {failures:?}"
            );
        }
    }

    fn application_ports_of(value: &str) -> (Vec<String>, Result<(), Vec<String>>) {
        let mut failures = Failures::default();
        let mut warnings = Vec::new();
        application_ports(
            &annotations(&[(ANNOTATION_READINESS_APPLICATION_PORTS, value)]),
            &mut failures,
            &mut warnings,
        );
        (warnings, failures.into_result(()).map_err(|e| e.0))
    }

    /// Istio's `validateReadinessApplicationPorts`: `*` or a port list; valid values are
    /// reported as having no effect, invalid ones refuse the pod in Istio's words.
    #[test]
    fn application_ports_are_checked_as_istio_did_and_reported_as_unused() {
        for ok in ["*", "8080", " 80, 443 ", "0,65535", "", "  "] {
            let (warnings, result) = application_ports_of(ok);
            assert_eq!(result, Ok(()), "{ok:?}");
            assert_eq!(warnings.len(), 1, "{ok:?}: {warnings:?}");
            assert!(
                warnings[0].starts_with(
                    "annotation readiness.status.sidecar.istio.io/applicationPorts has no effect"
                ),
                "{warnings:?}"
            );
        }
        for (bad, item) in [
            ("http", "http"),
            ("80,", ""),
            ("80,,443", ""),
            ("65536", "65536"),
            ("-1", "-1"),
            ("+80", "+80"),
            (" * ", "*"),
            ("*,80", "*"),
        ] {
            let (warnings, result) = application_ports_of(bad);
            assert!(warnings.is_empty(), "{bad:?}: {warnings:?}");
            let failures = result.unwrap_err();
            assert_eq!(
                failures[0],
                format!(
                    "invalid value '{bad}' for annotation \
                     'readiness.status.sidecar.istio.io/applicationPorts': \
                     readinessApplicationPorts invalid: failed parsing port '{item}': {:?} is \
                     not a port number (0-65535)",
                    item.trim()
                ),
                "{bad:?}"
            );
        }
        // Absent: nothing to say.
        let mut warnings = Vec::new();
        let mut failures = Failures::default();
        application_ports(&BTreeMap::new(), &mut failures, &mut warnings);
        assert!(warnings.is_empty() && failures.is_empty());
    }

    #[test]
    fn readiness_values_are_uint32_as_in_istio_and_fit_a_probe() {
        for name in [
            ANNOTATION_READINESS_INITIAL_DELAY,
            ANNOTATION_READINESS_PERIOD,
            ANNOTATION_READINESS_FAILURE_THRESHOLD,
        ] {
            for (bad, why) in [
                ("", "is not a whole number"),
                (" 5", "is not a whole number"),
                ("-1", "is not a whole number"),
                ("+5", "is not a whole number"),
                ("1.5", "is not a whole number"),
                ("5s", "is not a whole number"),
                ("2147483648", "more than 2147483647"),
                ("4294967295", "more than 2147483647"),
                ("4294967296", "out of range"),
            ] {
                let failures = resolved(&[(name, bad)]).unwrap_err();
                assert_eq!(failures.len(), 1);
                assert!(
                    failures[0]
                        .starts_with(&format!("invalid value '{bad}' for annotation '{name}': "))
                        && failures[0].contains(why),
                    "{name}={bad:?}: {failures:?}"
                );
            }
            assert_eq!(probe_seconds("2147483647"), Ok(i32::MAX));
        }
        // Every invalid one is reported, sorted by name.
        let failures = resolved(&[
            (ANNOTATION_READINESS_PERIOD, "x"),
            (ANNOTATION_STATUS_PORT, "y"),
            (ANNOTATION_READINESS_FAILURE_THRESHOLD, "z"),
        ])
        .unwrap_err();
        assert_eq!(failures.len(), 3);
        assert!(failures[0].contains("failureThreshold"), "{failures:?}");
        assert!(failures[1].contains("periodSeconds"), "{failures:?}");
        assert!(
            failures[2].contains("status.sidecar.istio.io/port"),
            "{failures:?}"
        );
    }
}
