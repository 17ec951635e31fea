//! The pod's traffic annotations: how its traffic is captured (`sidecar.istio.io/interceptionMode`)
//! and what `istio-init` captures (`traffic.sidecar.istio.io/*`,
//! `istio.io/reroute-virtual-interfaces`), validated as Istio's injector validates them
//! (`pkg/kube/inject/validate.go`) and resolved into what `istio-init` is given.
//!
//! An invalid value **refuses the pod**, as Istio does: a typo must never fall back to a default
//! (for `includeOutboundIPRanges` the default, `*`, captures everything). Every invalid annotation
//! is reported at once, each as Istio words it:
//! `invalid value '<value>' for annotation '<name>': <why>`, and the whole in the list format of
//! Istio's error list (`1 error occurred:\n\t* ...\n\n`), see [`crate::annotations`].
//!
//! | annotation | `istio-init` | checked as |
//! |---|---|---|
//! | `sidecar.istio.io/interceptionMode` | `-m`; `NONE`: no `istio-init` at all | `REDIRECT`, `TPROXY` or `NONE`, exactly |
//! | `traffic.sidecar.istio.io/includeOutboundIPRanges` | `-i` (default `*`) | `*` or CIDRs (`includeIPRanges invalid: ...`) |
//! | `traffic.sidecar.istio.io/excludeOutboundIPRanges` | `-x` (default empty) | CIDRs, `*` refused (`excludeIPRanges invalid: ...`) |
//! | `traffic.sidecar.istio.io/includeInboundPorts` | `-b` (default `*`) | `*` or ports |
//! | `traffic.sidecar.istio.io/excludeInboundPorts` | appended to `-d` | ports |
//! | `traffic.sidecar.istio.io/excludeOutboundPorts` | `-o`, only when set | ports |
//! | `traffic.sidecar.istio.io/includeOutboundPorts` | `-q`, only when set | ports (Istio does not check it) |
//! | `traffic.sidecar.istio.io/excludeInterfaces` | `-c`, only when set | interface names (Istio does not check them) |
//! | `istio.io/reroute-virtual-interfaces`, else `traffic.sidecar.istio.io/kubevirtInterfaces` | `-k`, only when set | interface names (Istio does not check them) |
//!
//! Lists are read as Istio reads them ([`values::istio_ports`], [`values::istio_cidrs`]): split
//! on `,`; port items are trimmed, CIDR items are not; an empty item (a trailing comma) is an
//! error; a CIDR needs its prefix length. Port lists are passed on normalised (`80,443`).

use std::collections::BTreeMap;

use crate::annotations::Failures;
pub use crate::annotations::InvalidAnnotations;
use crate::names::*;
use crate::values;

/// Istio's interception modes (`ProxyConfig.InterceptionMode`, `sidecar.istio.io/interceptionMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InterceptionMode {
    /// nat `REDIRECT` (the default).
    #[default]
    Redirect,
    /// mangle `TPROXY`: inbound connections keep the client's address; the sidecar needs
    /// `NET_ADMIN` to bind its inbound listener transparently.
    Tproxy,
    /// Nothing is captured: no `istio-init`.
    None,
}

impl InterceptionMode {
    /// The name Istio uses (`-m`, `ISTIO_META_INTERCEPTION_MODE`).
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
            InterceptionMode::None => "NONE",
        }
    }

    /// Istio's `validateInterceptionMode`: exactly `REDIRECT`, `TPROXY` or `NONE` (case matters).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "REDIRECT" => Ok(InterceptionMode::Redirect),
            "TPROXY" => Ok(InterceptionMode::Tproxy),
            "NONE" => Ok(InterceptionMode::None),
            other => Err(format!(
                "interceptionMode invalid, use REDIRECT,TPROXY,NONE: {other}"
            )),
        }
    }
}

/// What the traffic annotations make of the pod's capture, every value checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traffic {
    /// How traffic is captured, when the pod's `sidecar.istio.io/interceptionMode` says: it
    /// wins over `interceptionMode` of the mesh's and the pod's `ProxyConfig`
    /// ([`crate::proxy_config`]); [`InterceptionMode::None`] injects no `istio-init`.
    pub mode: Option<InterceptionMode>,
    /// `-i`: `*` or CIDRs (as written).
    pub include_outbound_ip_ranges: String,
    /// `-x`: CIDRs (as written).
    pub exclude_outbound_ip_ranges: String,
    /// `-b`: `*` or ports.
    pub include_inbound_ports: String,
    /// The pod's own additions to `-d` (after the proxy's ports).
    pub exclude_inbound_ports: Vec<u16>,
    /// `-q`, passed only when annotated.
    pub include_outbound_ports: Option<String>,
    /// `-o`, passed only when annotated.
    pub exclude_outbound_ports: Option<String>,
    /// `-k`, passed only when annotated.
    pub reroute_virtual_interfaces: Option<String>,
    /// `-c`, passed only when annotated.
    pub exclude_interfaces: Option<String>,
    /// Annotations read but overridden by another (`kubevirtInterfaces` under
    /// `reroute-virtual-interfaces`).
    pub warnings: Vec<String>,
}

impl Default for Traffic {
    /// Istio's defaults: capture all outbound and inbound traffic (in the `ProxyConfig`'s mode).
    fn default() -> Self {
        Traffic {
            mode: None,
            include_outbound_ip_ranges: "*".to_owned(),
            exclude_outbound_ip_ranges: String::new(),
            include_inbound_ports: "*".to_owned(),
            exclude_inbound_ports: Vec::new(),
            include_outbound_ports: None,
            exclude_outbound_ports: None,
            reroute_virtual_interfaces: None,
            exclude_interfaces: None,
            warnings: Vec::new(),
        }
    }
}

/// Reads the pod's traffic annotations; any invalid one refuses the pod (all are reported).
pub fn resolve(annotations: &BTreeMap<String, String>) -> Result<Traffic, InvalidAnnotations> {
    let mut failures = Failures::default();
    let traffic = read(annotations, &mut failures);
    failures.into_result(traffic)
}

/// [`resolve`], adding each invalid annotation to `failures` (with Istio's defaults in their
/// place in what is returned), so that the caller reports them with the pod's other invalid
/// annotations.
pub fn read(annotations: &BTreeMap<String, String>, failures: &mut Failures) -> Traffic {
    let mut read = |name: &'static str, parse: &dyn Fn(&str) -> Result<String, String>| {
        let value = annotations.get(name)?;
        match parse(value) {
            Ok(v) => Some(v),
            Err(why) => {
                failures.add(name, value, why);
                None
            }
        }
    };

    let mode = read(ANNOTATION_INTERCEPTION_MODE, &|v| {
        InterceptionMode::parse(v).map(|m| m.as_str().to_owned())
    });
    let include_ranges = read(ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, &|v| {
        ip_ranges("includeIPRanges", true, v)
    });
    let exclude_ranges = read(ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, &|v| {
        ip_ranges("excludeIPRanges", false, v)
    });
    let include_inbound = read(ANNOTATION_INCLUDE_INBOUND_PORTS, &|v| {
        ports("includeInboundPorts", true, v)
    });
    let exclude_inbound = read(ANNOTATION_EXCLUDE_INBOUND_PORTS, &|v| {
        ports("excludeInboundPorts", false, v)
    });
    let exclude_outbound = read(ANNOTATION_EXCLUDE_OUTBOUND_PORTS, &|v| {
        ports("excludeOutboundPorts", false, v)
    });
    let include_outbound = read(ANNOTATION_INCLUDE_OUTBOUND_PORTS, &|v| {
        ports("includeOutboundPorts", false, v)
    });
    let exclude_interfaces = read(ANNOTATION_EXCLUDE_INTERFACES, &|v| {
        interfaces("excludeInterfaces", v)
    });
    // Both are checked; the newer name wins, as in Istio's template.
    let reroute = read(ANNOTATION_REROUTE_VIRTUAL_INTERFACES, &|v| {
        interfaces("rerouteVirtualInterfaces", v)
    });
    let kubevirt = read(ANNOTATION_KUBEVIRT_INTERFACES, &|v| {
        interfaces("kubevirtInterfaces", v)
    });

    let mut warnings = Vec::new();
    if reroute.is_some() && kubevirt.is_some() {
        warnings.push(format!(
            "annotation {ANNOTATION_KUBEVIRT_INTERFACES} ignored: \
             {ANNOTATION_REROUTE_VIRTUAL_INTERFACES} is set too and wins, as in Istio"
        ));
    }
    let default = Traffic::default();
    Traffic {
        mode: mode.and_then(|m| InterceptionMode::parse(&m).ok()),
        include_outbound_ip_ranges: include_ranges.unwrap_or(default.include_outbound_ip_ranges),
        exclude_outbound_ip_ranges: exclude_ranges.unwrap_or(default.exclude_outbound_ip_ranges),
        include_inbound_ports: include_inbound.unwrap_or(default.include_inbound_ports),
        exclude_inbound_ports: exclude_inbound
            .map(|v| values::istio_ports(&v).unwrap_or_default())
            .unwrap_or_default(),
        include_outbound_ports: include_outbound,
        exclude_outbound_ports: exclude_outbound,
        reroute_virtual_interfaces: reroute.or(kubevirt),
        exclude_interfaces,
        warnings,
    }
}

/// A CIDR list (as written), or `*` where allowed; Istio's `<param> invalid: failed parsing
/// cidr ...`.
fn ip_ranges(param: &str, wildcard: bool, v: &str) -> Result<String, String> {
    if wildcard && v == "*" {
        return Ok(v.to_owned());
    }
    values::istio_cidrs(v)
        .map(|()| v.to_owned())
        .map_err(|e| format!("{param} invalid: {e}"))
}

/// A port list, normalised (`80,443`), or `*` where allowed (exactly, as Istio compares it);
/// Istio's `<param> invalid: failed parsing port ...`.
fn ports(param: &str, wildcard: bool, v: &str) -> Result<String, String> {
    if wildcard && v == "*" {
        return Ok(v.to_owned());
    }
    values::istio_ports(v)
        .map(|p| values::join(&p))
        .map_err(|e| format!("{param} invalid: {e}"))
}

/// An interface list (as written): `<param> invalid: failed parsing interface ...`.
fn interfaces(param: &str, v: &str) -> Result<String, String> {
    values::interface_names(v)
        .map(|()| v.to_owned())
        .map_err(|e| format!("{param} invalid: {e}"))
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

    fn refused(pairs: &[(&str, &str)]) -> Vec<String> {
        resolve(&annotations(pairs)).expect_err("must be refused").0
    }

    #[test]
    fn no_annotation_is_istios_defaults() {
        let t = resolve(&BTreeMap::new()).unwrap();
        assert_eq!(t, Traffic::default());
        assert_eq!(t.mode, None, "the ProxyConfig's mode");
        assert_eq!(t.include_outbound_ip_ranges, "*");
        assert_eq!(t.include_inbound_ports, "*");
        assert_eq!(t.include_outbound_ports, None);
        assert_eq!(t.reroute_virtual_interfaces, None);
        assert_eq!(t.exclude_interfaces, None);
    }

    #[test]
    fn interception_modes_are_exactly_istios_three() {
        for (v, mode) in [
            ("REDIRECT", InterceptionMode::Redirect),
            ("TPROXY", InterceptionMode::Tproxy),
            ("NONE", InterceptionMode::None),
        ] {
            let t = resolve(&annotations(&[(ANNOTATION_INTERCEPTION_MODE, v)])).unwrap();
            assert_eq!(t.mode, Some(mode));
            assert_eq!(mode.as_str(), v);
        }
        for bad in ["tproxy", "Redirect", "", " NONE", "IPTABLES"] {
            assert_eq!(
                refused(&[(ANNOTATION_INTERCEPTION_MODE, bad)]),
                [format!(
                    "invalid value '{bad}' for annotation 'sidecar.istio.io/interceptionMode': \
                     interceptionMode invalid, use REDIRECT,TPROXY,NONE: {bad}"
                )]
            );
        }
    }

    /// The reason the refusal exists: a typo in the ranges to capture must never become `*`.
    #[test]
    fn a_typo_in_include_outbound_ip_ranges_refuses_the_pod() {
        for typo in [
            "10.0.0.0/8,10.0.0/16",
            "10.96.0.0/12 ",
            "10.96.0.1",
            "all",
            " *",
        ] {
            let failures = refused(&[(ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, typo)]);
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(
                failures[0].starts_with(&format!(
                    "invalid value '{typo}' for annotation \
                     'traffic.sidecar.istio.io/includeOutboundIPRanges': \
                     includeIPRanges invalid: failed parsing cidr '"
                )),
                "{failures:?}"
            );
        }
        let failures = refused(&[(ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, "foo")]);
        assert!(
            failures[0].ends_with("includeIPRanges invalid: failed parsing cidr 'foo': no '/' (a range needs its prefix length, like 10.1.2.3/32)"),
            "{failures:?}"
        );
        // Valid: `*`, empty (capture no outbound range), CIDRs as written.
        for (v, want) in [
            ("*", "*"),
            ("", ""),
            ("10.96.0.0/12,10.244.0.0/16", "10.96.0.0/12,10.244.0.0/16"),
        ] {
            let t = resolve(&annotations(&[(ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, v)])).unwrap();
            assert_eq!(t.include_outbound_ip_ranges, want);
        }
    }

    #[test]
    fn exclude_outbound_ip_ranges_takes_no_wildcard() {
        assert_eq!(
            refused(&[(ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, "*")]),
            [
                "invalid value '*' for annotation 'traffic.sidecar.istio.io/excludeOutboundIPRanges': \
              excludeIPRanges invalid: failed parsing cidr '*': no '/' (a range needs its prefix \
              length, like 10.1.2.3/32)"
            ]
        );
        let t = resolve(&annotations(&[(
            ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
            "10.96.0.1/32,fd00::/8",
        )]))
        .unwrap();
        assert_eq!(t.exclude_outbound_ip_ranges, "10.96.0.1/32,fd00::/8");
    }

    #[test]
    fn port_annotations_are_istios_port_lists() {
        for (name, param) in [
            (ANNOTATION_INCLUDE_INBOUND_PORTS, "includeInboundPorts"),
            (ANNOTATION_EXCLUDE_INBOUND_PORTS, "excludeInboundPorts"),
            (ANNOTATION_EXCLUDE_OUTBOUND_PORTS, "excludeOutboundPorts"),
            (ANNOTATION_INCLUDE_OUTBOUND_PORTS, "includeOutboundPorts"),
        ] {
            for (bad, item) in [
                ("x", "x"),
                ("80,", ""),
                ("80, http", " http"),
                ("70000", "70000"),
            ] {
                let failures = refused(&[(name, bad)]);
                assert_eq!(failures.len(), 1);
                assert!(
                    failures[0].starts_with(&format!(
                        "invalid value '{bad}' for annotation '{name}': {param} invalid: \
                         failed parsing port '{item}': "
                    )),
                    "{failures:?}"
                );
            }
        }
        // `*` only where Istio takes it.
        let t = resolve(&annotations(&[(ANNOTATION_INCLUDE_INBOUND_PORTS, "*")])).unwrap();
        assert_eq!(t.include_inbound_ports, "*");
        for name in [
            ANNOTATION_EXCLUDE_INBOUND_PORTS,
            ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
            ANNOTATION_INCLUDE_OUTBOUND_PORTS,
        ] {
            assert_eq!(refused(&[(name, "*")]).len(), 1, "{name}");
        }
        // Trimmed and normalised.
        let t = resolve(&annotations(&[
            (ANNOTATION_INCLUDE_INBOUND_PORTS, "9080, 9443"),
            (ANNOTATION_EXCLUDE_INBOUND_PORTS, " 9443 "),
            (ANNOTATION_EXCLUDE_OUTBOUND_PORTS, "3306,6379"),
            (ANNOTATION_INCLUDE_OUTBOUND_PORTS, ""),
        ]))
        .unwrap();
        assert_eq!(t.include_inbound_ports, "9080,9443");
        assert_eq!(t.exclude_inbound_ports, [9443]);
        assert_eq!(t.exclude_outbound_ports.as_deref(), Some("3306,6379"));
        assert_eq!(t.include_outbound_ports.as_deref(), Some(""), "set, empty");
    }

    #[test]
    fn interface_annotations_are_checked_and_reroute_wins() {
        for (name, param) in [
            (ANNOTATION_EXCLUDE_INTERFACES, "excludeInterfaces"),
            (ANNOTATION_KUBEVIRT_INTERFACES, "kubevirtInterfaces"),
            (
                ANNOTATION_REROUTE_VIRTUAL_INTERFACES,
                "rerouteVirtualInterfaces",
            ),
        ] {
            for (bad, item) in [
                ("eth0,", ""),
                ("eth0, net1", " net1"),
                ("averyveryverylongname", "averyveryverylongname"),
                ("a/b", "a/b"),
            ] {
                let failures = refused(&[(name, bad)]);
                assert!(
                    failures[0].starts_with(&format!(
                        "invalid value '{bad}' for annotation '{name}': {param} invalid: \
                         failed parsing interface '{item}': "
                    )),
                    "{failures:?}"
                );
            }
        }
        let t = resolve(&annotations(&[
            (ANNOTATION_EXCLUDE_INTERFACES, "eth1,eth2"),
            (ANNOTATION_KUBEVIRT_INTERFACES, "net1"),
        ]))
        .unwrap();
        assert_eq!(t.exclude_interfaces.as_deref(), Some("eth1,eth2"));
        assert_eq!(t.reroute_virtual_interfaces.as_deref(), Some("net1"));
        assert!(t.warnings.is_empty());
        let t = resolve(&annotations(&[
            (ANNOTATION_KUBEVIRT_INTERFACES, "net1"),
            (ANNOTATION_REROUTE_VIRTUAL_INTERFACES, "k6t-eth0"),
        ]))
        .unwrap();
        assert_eq!(t.reroute_virtual_interfaces.as_deref(), Some("k6t-eth0"));
        assert_eq!(t.warnings.len(), 1);
        assert!(
            t.warnings[0].contains("kubevirtInterfaces ignored"),
            "{:?}",
            t.warnings
        );
        // The overridden one is still checked.
        assert_eq!(
            refused(&[
                (ANNOTATION_KUBEVIRT_INTERFACES, "a b"),
                (ANNOTATION_REROUTE_VIRTUAL_INTERFACES, "k6t-eth0"),
            ])
            .len(),
            1
        );
    }

    #[test]
    fn every_invalid_annotation_is_reported_in_istios_list_format() {
        let err = resolve(&annotations(&[
            (ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, "10.0.0/8"),
            (ANNOTATION_EXCLUDE_INBOUND_PORTS, "http"),
            (ANNOTATION_INTERCEPTION_MODE, "tproxy"),
            (ANNOTATION_PROXY_CPU, "lots"), // not a traffic annotation: not checked here
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err:?}");
        let message = err.message();
        assert!(message.starts_with("3 errors occurred:\n\t* invalid value 'tproxy' for annotation 'sidecar.istio.io/interceptionMode'"), "{message}");
        assert!(
            message.contains("\n\t* invalid value 'http' for annotation 'traffic.sidecar.istio.io/excludeInboundPorts': excludeInboundPorts invalid: failed parsing port 'http': "),
            "{message}"
        );
        assert!(
            message.contains("\n\t* invalid value '10.0.0/8' for annotation 'traffic.sidecar.istio.io/includeOutboundIPRanges': includeIPRanges invalid: failed parsing cidr '10.0.0/8': "),
            "{message}"
        );
        assert!(message.ends_with("\n\n"), "{message:?}");

        let one = InvalidAnnotations(vec!["x".to_owned()]);
        assert_eq!(one.message(), "1 error occurred:\n\t* x\n\n");
        assert_eq!(one.to_string(), one.message());
    }
}
