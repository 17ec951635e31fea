//! Checks of one Istio object that need nothing but the object (and whether the mesh CA is
//! on), beyond [`crate::validate::Validate`]: shared by the operator (its status conditions)
//! and the validating admission webhook (its answers), so both say the same thing about the
//! same object. Checks against the rest of the mesh (conflicts, unknown subsets, the service
//! registry) stay in the operator: at admission time the other objects may not exist yet.

use crate::destination_rule::{ClientTlsSettings, DestinationRuleSpec, TlsMode, TrafficPolicy};
use crate::error::FieldError;
use crate::parse::IstioObject;
use crate::virtual_service::VirtualServiceSpec;

/// How serious a finding is: an error refuses the object, a warning is only reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about one field (paths start at `spec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Severity,
    pub field: String,
    pub message: String,
}

impl Finding {
    fn error(e: FieldError) -> Self {
        Finding {
            level: Severity::Error,
            field: e.field,
            message: e.message,
        }
    }
}

/// Every object-local finding about `obj`, errors and warnings, in the order the operator
/// reports them: the object's own rules ([`crate::validate::Validate`]), then, for a DestinationRule, its `tls`
/// settings ([`destination_rule_tls`]); for a Gateway without the CA, its credentials
/// ([`gateway_credentials_without_ca`], errors) and its `ISTIO_MUTUAL` servers
/// ([`crate::gateway::GatewaySpec::istio_mutual_without_ca`], warnings); for a VirtualService without such errors, its redirect
/// codes ([`virtual_service_redirects`]); then the warnings ([`IstioObject::warnings`]: fields
/// rustmesh accepts without implementing them, a PeerAuthentication's, an
/// AuthorizationPolicy's, a RequestAuthentication's, a Telemetry's or a ServiceEntry's Istio
/// warnings, and an AuthorizationPolicy's CUSTOM action).
/// `has_ca`: whether the mesh CA is on (chart value `ca.enabled`).
pub fn object_findings(obj: &IstioObject, has_ca: bool) -> Vec<Finding> {
    let mut out: Vec<Finding> = obj.validate().into_iter().map(Finding::error).collect();
    match obj {
        IstioObject::VirtualService(o) if out.is_empty() => {
            out.extend(
                virtual_service_redirects(&o.spec)
                    .into_iter()
                    .map(Finding::error),
            );
        }
        IstioObject::DestinationRule(o) => out.extend(destination_rule_tls(&o.spec, has_ca)),
        IstioObject::Gateway(o) if !has_ca => out.extend(gateway_without_ca(&o.spec)),
        _ => {}
    }
    out.extend(obj.warnings().into_iter().map(|w| Finding {
        level: Severity::Warning,
        field: w.field,
        message: w.message,
    }));
    out
}

/// What a Gateway needs of the mesh CA when it is off: each `credentialName` (an error,
/// [`gateway_credentials_without_ca`]) and each `ISTIO_MUTUAL` server (a warning,
/// [`crate::gateway::GatewaySpec::istio_mutual_without_ca`]). The webhook and the operator's
/// status report the same.
pub fn gateway_without_ca(spec: &crate::gateway::GatewaySpec) -> Vec<Finding> {
    let mut out = gateway_credentials_without_ca(spec);
    out.extend(spec.istio_mutual_without_ca().into_iter().map(|w| Finding {
        level: Severity::Warning,
        field: w.field,
        message: w.message,
    }));
    out
}

/// Without the mesh CA, a Gateway server's `credentialName` cannot reach the gateway's proxy
/// (the CA serves it): an error naming each.
pub fn gateway_credentials_without_ca(spec: &crate::gateway::GatewaySpec) -> Vec<Finding> {
    spec.servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.tls.as_ref().is_some_and(|t| t.credential_name.is_some()))
        .map(|(i, _)| {
            Finding::error(FieldError::new(
                format!("spec.servers[{i}].tls.credentialName"),
                "needs the mesh CA (chart value ca.enabled), which serves the Secret to the \
                 gateway's proxy",
            ))
        })
        .collect()
}

/// The redirect codes of a VirtualService's HTTP routes the proxy cannot send: Envoy (and the
/// proxy) redirect only with 301, 302, 303, 307 and 308; Istio's API allows any 3xx.
pub fn virtual_service_redirects(spec: &VirtualServiceSpec) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (i, r) in spec.http.iter().enumerate() {
        if let Some(code) = r.redirect.as_ref().and_then(|rd| rd.redirect_code)
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            out.push(FieldError::new(
                format!("spec.http[{i}].redirect.redirectCode"),
                format!(
                    "{code} is not one of the redirect codes the proxy supports (301, 302, 303, 307, 308)"
                ),
            ));
        }
    }
    out
}

/// Findings on each `tls` setting of a DestinationRule (top level, per port, per subset):
/// `ISTIO_MUTUAL` and `DISABLE` are rendered (`render::clusters::upstream_tls`); `ISTIO_MUTUAL`
/// with certificates of its own is an error, as in Istio (the mesh's are used), and without a
/// mesh CA a warning (the traffic stays plaintext). Origination to a server outside the mesh
/// (`SIMPLE`, `MUTUAL`) is rendered from files in the sidecar or, in a rule with a
/// `workloadSelector` (Istio's rule for sidecars), from the `credentialName` Secret the CA
/// serves (with the revocation lists of `caCrl`, a file, or of the Secret): `caCrl` beside a
/// `credentialName` the sidecar uses, a relative path, an invalid `sni` or Secret name, files
/// beside a `credentialName` (Istio refuses them too), a `credentialName` without the CA, and
/// a `MUTUAL` without certificate and key are errors; a `SIMPLE` `credentialName` a sidecar
/// does not use (no `workloadSelector`) and fields the mode does not use are warnings. Never
/// silently dropped.
pub fn destination_rule_tls(spec: &DestinationRuleSpec, has_ca: bool) -> Vec<Finding> {
    fn setting(
        tls: &ClientTlsSettings,
        at: String,
        has_ca: bool,
        selector: bool,
        out: &mut Vec<Finding>,
    ) {
        match tls.mode {
            Some(TlsMode::IstioMutual) => {
                let own = [
                    ("caCertificates", tls.ca_certificates.is_some()),
                    ("clientCertificate", tls.client_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("credentialName", tls.credential_name.is_some()),
                    ("caCrl", tls.ca_crl.is_some()),
                ];
                for (field, _) in own.iter().filter(|(_, set)| *set) {
                    out.push(Finding {
                        level: Severity::Error,
                        field: format!("{at}.{field}"),
                        message: "ISTIO_MUTUAL uses the mesh's workload certificate and root: \
                                  it cannot have certificates of its own (use MUTUAL)"
                            .into(),
                    });
                }
                if tls.insecure_skip_verify.is_some() {
                    out.push(Finding {
                        level: Severity::Warning,
                        field: format!("{at}.insecureSkipVerify"),
                        message: "ignored with ISTIO_MUTUAL: the server's identity is always \
                                  verified"
                            .into(),
                    });
                }
                if !has_ca {
                    out.push(Finding {
                        level: Severity::Warning,
                        field: format!("{at}.mode"),
                        message: "ISTIO_MUTUAL needs the mesh CA (chart value ca.enabled), \
                                  which is off: rustmesh sends this traffic in plaintext"
                            .into(),
                    });
                }
            }
            Some(mode @ (TlsMode::Simple | TlsMode::Mutual)) => {
                let mut err = |field: &str, message: String| {
                    out.push(Finding {
                        level: Severity::Error,
                        field: format!("{at}.{field}"),
                        message,
                    })
                };
                if let Some(name) = tls.credential_name.as_deref().filter(|n| !n.is_empty()) {
                    for (field, set) in [
                        ("caCertificates", tls.ca_certificates.is_some()),
                        ("clientCertificate", tls.client_certificate.is_some()),
                        ("privateKey", tls.private_key.is_some()),
                    ] {
                        if set {
                            err(
                                field,
                                "cannot be given with credentialName (as in Istio): the \
                                 certificates come from the Secret"
                                    .into(),
                            );
                        }
                    }
                    if let Some(why) = rustmesh_xds::ca::secret_name_problem(name) {
                        err("credentialName", why);
                    } else if !selector && mode == TlsMode::Mutual {
                        err(
                            "credentialName",
                            "is used by sidecars only when the DestinationRule has a \
                             workloadSelector (as in Istio; without one it is for gateways): \
                             add one, or give clientCertificate and privateKey"
                                .into(),
                        );
                    } else if selector && !has_ca {
                        err(
                            "credentialName",
                            "needs the mesh CA (chart value ca.enabled), which serves the \
                             Secret to the sidecar"
                                .into(),
                        );
                    }
                }
                if tls.ca_crl.as_deref().is_some_and(|c| !c.is_empty())
                    && tls
                        .credential_name
                        .as_deref()
                        .is_some_and(|c| !c.is_empty())
                    && selector
                {
                    err(
                        "caCrl",
                        "cannot be given with credentialName: the Secret's revocation list (its \
                         ca.crl or crl key) is used"
                            .into(),
                    );
                }
                if let Some(sni) = tls.sni.as_deref().filter(|s| !s.is_empty())
                    && !valid_server_name(sni)
                {
                    err("sni", format!("{sni:?} is not a server name"));
                }
                for (field, value) in [
                    ("caCertificates", &tls.ca_certificates),
                    ("clientCertificate", &tls.client_certificate),
                    ("privateKey", &tls.private_key),
                    ("caCrl", &tls.ca_crl),
                ] {
                    if let Some(v) = value
                        && (v.contains('~') || (!v.is_empty() && !v.starts_with('/')))
                    {
                        err(
                            field,
                            format!("{v:?} is not an absolute path to a file in the sidecar"),
                        );
                    }
                }
                // (MUTUAL without a certificate and key is the API's own check; an empty one
                // is refused here, as the sidecar could not read it.)
                if mode == TlsMode::Mutual && tls.credential_name.is_none() {
                    for (field, value) in [
                        ("clientCertificate", &tls.client_certificate),
                        ("privateKey", &tls.private_key),
                    ] {
                        if value.as_deref() == Some("") {
                            err(
                                field,
                                "MUTUAL needs a path here, not an empty string".into(),
                            );
                        }
                    }
                }
                let has = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
                let mut warn = |field: &str, message: &str| {
                    out.push(Finding {
                        level: Severity::Warning,
                        field: format!("{at}.{field}"),
                        message: message.into(),
                    })
                };
                if mode == TlsMode::Simple && has(&tls.credential_name) && !selector {
                    warn(
                        "credentialName",
                        "not used by sidecars: only a DestinationRule with a workloadSelector \
                         gives a credentialName to sidecars (as in Istio; without one it is for \
                         gateways), so these verify the server with the system roots",
                    );
                }
                if mode == TlsMode::Simple {
                    for (field, value) in [
                        ("clientCertificate", &tls.client_certificate),
                        ("privateKey", &tls.private_key),
                    ] {
                        if has(value) {
                            warn(
                                field,
                                "ignored with SIMPLE: only MUTUAL presents a client certificate",
                            );
                        }
                    }
                }
                if tls.insecure_skip_verify == Some(true) {
                    for field in [
                        ("caCertificates", &tls.ca_certificates),
                        ("caCrl", &tls.ca_crl),
                    ]
                    .into_iter()
                    .filter(|(_, v)| has(v))
                    .map(|(f, _)| f)
                    {
                        warn(
                            field,
                            "ignored: insecureSkipVerify is true, the server is not verified",
                        );
                    }
                    if !tls.subject_alt_names.is_empty() {
                        warn(
                            "subjectAltNames",
                            "ignored: insecureSkipVerify is true, the server is not verified",
                        );
                    }
                }
            }
            // DISABLE, and a `tls` without mode (proto's default, DISABLE): plain text.
            Some(TlsMode::Disable) | None => {}
        }
    }
    fn policy(
        tp: &Option<TrafficPolicy>,
        at: &str,
        has_ca: bool,
        selector: bool,
        out: &mut Vec<Finding>,
    ) {
        let Some(tp) = tp else { return };
        if let Some(tls) = &tp.tls {
            setting(tls, format!("{at}.tls"), has_ca, selector, out);
        }
        for (i, pl) in tp.port_level_settings.iter().enumerate() {
            if let Some(tls) = &pl.tls {
                let at = format!("{at}.portLevelSettings[{i}].tls");
                setting(tls, at, has_ca, selector, out);
            }
        }
    }
    let selector = spec
        .workload_selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    let mut out = Vec::new();
    let top = "spec.trafficPolicy";
    policy(&spec.traffic_policy, top, has_ca, selector, &mut out);
    for (i, subset) in spec.subsets.iter().enumerate() {
        policy(
            &subset.traffic_policy,
            &format!("spec.subsets[{i}].trafficPolicy"),
            has_ca,
            selector,
            &mut out,
        );
    }
    out
}

/// Whether `s` can be sent as a TLS server name (a DNS name or an IP address).
pub fn valid_server_name(s: &str) -> bool {
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    s.parse::<std::net::IpAddr>().is_ok() || dns(s)
}
