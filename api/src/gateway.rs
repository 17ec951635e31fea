//! `Gateway` (`networking.istio.io`, served as `v1`, `v1beta1` and `v1alpha3`): a load
//! balancer at the edge of the mesh (an ingress or egress gateway pod) and the ports it
//! exposes. Shapes and docs follow
//! <https://istio.io/latest/docs/reference/config/networking/gateway/>.
//!
//! Issue #20: plain-text, HTTPS and TLS servers. The operator renders, for the gateway pods
//! whose labels match `selector` (in any namespace, Istio's default), one listener
//! `0.0.0.0_<port>` per server port with the routes of the VirtualServices bound to the
//! Gateway (`spec.gateways`), for the hosts of both (`servers[].hosts` with their
//! `namespace/` part): HTTP routes for HTTP, HTTP2, GRPC and GRPC-WEB servers, a `tcp` route
//! for TCP, MONGO, REDIS and MYSQL ones. An HTTPS or TLS server with `tls.mode` `SIMPLE`,
//! `MUTUAL` or `OPTIONAL_MUTUAL` and a `credentialName` (or certificate files) terminates TLS
//! with that certificate (chosen by SNI among the port's servers), then routes as HTTP (HTTPS)
//! or by a `tcp` route (TLS); `MUTUAL` requires a client certificate from the CA of the
//! credential (or `caCertificates`), `OPTIONAL_MUTUAL` verifies one against it when presented
//! and accepts a client without. With `ISTIO_MUTUAL` the gateway presents its own workload
//! certificate (issued by the mesh CA) and requires a client certificate from the mesh root,
//! as a sidecar's inbound mutual TLS; it takes no certificate field (Istio's rule, below).
//! Without the mesh CA the gateway has no workload certificate: rustmesh then reports a
//! warning on `tls.mode` (as for a DestinationRule's `ISTIO_MUTUAL`,
//! [`GatewaySpec::istio_mutual_without_ca`]) and the gateway refuses that server's
//! connections, never serving them in plain text. With
//! `PASSTHROUGH` (the default mode) the bound VirtualServices' `tls` routes pick a destination
//! by SNI and the TLS bytes pass unopened. `tls.httpsRedirect` on an HTTP server is rendered
//! (every request answered with a 301 to `https`). What it does not render is refused naming
//! the field, never accepted and silently ignored: the field-support table
//! ([`crate::support`]) refuses `bind`, `defaultEndpoint`, `port.targetPort` and the `tls`
//! fields not rendered; certificate files (`serverCertificate`, `privateKey`,
//! `caCertificates`, mounted in the gateway pod) are rendered as Istio's file secrets;
//! [`GatewaySpec::unsupported`] refuses `AUTO_PASSTHROUGH` (multi-network east-west gateways,
//! not rendered), any mode on a server that is neither HTTPS nor TLS, a credential or files on
//! a `PASSTHROUGH` server, files next to a `credentialName` and `caCertificates` on a `SIMPLE`
//! server (they would be ignored).
//!
//! [`GatewaySpec::istio_errors`] reports Istio's errors (`ValidateGateway`), each naming its
//! field:
//! - at least one server; each with at least one host, each host `dnsName` or
//!   `namespace/dnsName` (namespace `*`, `.` or a namespace name; `dnsName` `*`, a wildcard
//!   first label `*.example.com`, or a DNS name);
//! - a port with a number 1..65535, a protocol Istio knows, a name, names unique across the
//!   servers; no `targetPort` (it has no effect on gateways);
//! - HTTPS and TLS servers have `tls`; other non-HTTP servers have none; an HTTP server's `tls`
//!   holds only `httpsRedirect` (with an optional mode and no certificates);
//! - an HTTPS or TLS server's `tls.mode` is one of Istio's; `SIMPLE`, `MUTUAL` and
//!   `OPTIONAL_MUTUAL` need a `credentialName` or a certificate and key (and, with files,
//!   `MUTUAL` and `OPTIONAL_MUTUAL` a CA bundle); `ISTIO_MUTUAL` takes neither (no
//!   `credentialName`, `serverCertificate`, `privateKey` nor `caCertificates`); a
//!   `credentialName` is a Secret's name;
//! - server `name`s unique.
//!
//! [`GatewaySpec::warnings`] reports Istio's warning: `httpsRedirect` on a server that is not
//! HTTP.

use crate::error::FieldError;
use crate::service_entry::wildcard_domain_problem;
use crate::sidecar::SidecarPort;
use crate::status::IstioStatus;
use crate::validate::{Validate, is_dns_label};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The versions `networking.istio.io` serves this kind as, newest (stored) first.
pub const VERSIONS: [&str; 3] = crate::parse::VERSIONS;

/// The spec of a Gateway.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    singular = "gateway",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "IstioStatus",
    shortname = "gw",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// A list of server specifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// One or more labels that indicate a specific set of pods/VMs on which this gateway
    /// configuration should be applied. By default workloads are searched across all
    /// namespaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// `Server`: one port the gateway exposes, the hosts it serves there and how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port on which the proxy should listen for incoming connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// The ip or the Unix domain socket to which the listener should be bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// One or more hosts exposed by this gateway: `dnsName` or `namespace/dnsName` (the
    /// VirtualServices of that namespace only; `.` the Gateway's own, `*` any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Set of TLS related options that govern the server's behavior.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// The loopback IP endpoint or Unix domain socket to which traffic should be forwarded to
    /// by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// An optional name of the server, when set must be unique across all servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `ServerTLSSettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// If set to true, the load balancer will send a 301 redirect for all http connections,
    /// asking the clients to use HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    /// Indicates whether connections to this port should be secured using TLS: `PASSTHROUGH`,
    /// `SIMPLE`, `MUTUAL`, `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL`, `OPTIONAL_MUTUAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The path to the file holding the server-side TLS certificate to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    /// The path to the file holding the server's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The path to a file containing certificate authority certificates to use in verifying
    /// a presented client side certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// The path to a file containing the certificate revocation list (CRL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    /// For gateways running on Kubernetes, the name of the secret that holds the TLS
    /// certs including the CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Several secrets (an RSA and an ECDSA certificate, for example).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Several certificates given by file paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// A list of alternate names to verify the subject identity in the certificate presented
    /// by the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// An optional list of base64-encoded SHA-256 hashes of the SPKIs of authorized client
    /// certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// An optional list of hex-encoded SHA-256 hashes of the authorized client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<String>,
    /// Maximum TLS protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<String>,
    /// If specified, only support the specified cipher list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

impl ServerTlsSettings {
    /// Envoy's `tlsParams` for `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites`
    /// (`None` when none is set), or what is wrong with them, each naming its field below
    /// `at` (`spec.servers[0].tls`): a version that is not Istio's, one below TLSV1_2
    /// (rustmesh's TLS speaks 1.2 and 1.3), a minimum above the maximum, a suite rustmesh does
    /// not implement ([`rustmesh_xds::tls::TLS12_CIPHER_SUITES`]).
    pub fn tls_parameters(
        &self,
        at: &str,
    ) -> Result<Option<rustmesh_xds::tls::TlsParameters>, Vec<FieldError>> {
        use rustmesh_xds::tls::{TlsParameters, TlsVersion};
        let mut errors = Vec::new();
        let mut version = |field: &str, v: &Option<String>| {
            let v = v.as_deref().filter(|v| !v.is_empty())?;
            let parsed = TlsVersion::from_istio(v);
            if parsed.is_none() {
                errors.push(FieldError::new(
                    format!("{at}.{field}"),
                    format!(
                        "{v:?} is not a TLS version: TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or \
                         TLSV1_3"
                    ),
                ));
            }
            parsed
        };
        let params = TlsParameters {
            tls_minimum_protocol_version: version("minProtocolVersion", &self.min_protocol_version),
            tls_maximum_protocol_version: version("maxProtocolVersion", &self.max_protocol_version),
            cipher_suites: self.cipher_suites.clone(),
        };
        for (field, message) in params.problems() {
            let field = field
                .replace("tlsMinimumProtocolVersion", "minProtocolVersion")
                .replace("tlsMaximumProtocolVersion", "maxProtocolVersion");
            errors.push(FieldError::new(format!("{at}.{field}"), message));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok((params != TlsParameters::default()).then_some(params))
    }

    /// What a verified client certificate must also be (Envoy's validation context of the
    /// server's chain): one of `subjectAltNames` (exact), and of `verifyCertificateHash` or
    /// its key of `verifyCertificateSpki`.
    pub fn client_pins(&self) -> rustmesh_xds::tls::CertificateValidationContext {
        rustmesh_xds::tls::CertificateValidationContext {
            match_subject_alt_names: rustmesh_xds::tls::exact_sans(&self.subject_alt_names),
            verify_certificate_spki: self.verify_certificate_spki.clone(),
            verify_certificate_hash: self.verify_certificate_hash.clone(),
            crl: None,
        }
    }
}

/// `ServerTLSSettings.TLSCertificate`: one certificate given by file paths.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// A server port's protocol as Istio parses it (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerProtocol {
    /// HTTP, HTTP2, GRPC, GRPC-WEB: served by the HTTP connection manager (rendered).
    Http,
    /// HTTPS: TLS terminated (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`, `ISTIO_MUTUAL`) or passed
    /// through, then HTTP.
    Https,
    /// TLS: TLS terminated or passed through, then TCP.
    Tls,
    /// TCP, MONGO, REDIS, MYSQL.
    Tcp,
    /// Anything else (Istio's `Unsupported`).
    Unknown,
}

impl ServerProtocol {
    pub fn parse(p: Option<&str>) -> Self {
        match p.unwrap_or_default().to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => ServerProtocol::Http,
            "HTTPS" => ServerProtocol::Https,
            "TLS" => ServerProtocol::Tls,
            "TCP" | "MONGO" | "REDIS" | "MYSQL" => ServerProtocol::Tcp,
            _ => ServerProtocol::Unknown,
        }
    }
}

/// A server host split as Istio reads it: `namespace/dnsName`, or `dnsName` for any
/// namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHost<'a> {
    /// `None` (no `/`) or `*`: VirtualServices of any namespace; `.`: the Gateway's own.
    pub namespace: Option<&'a str>,
    pub host: &'a str,
}

impl<'a> ServerHost<'a> {
    pub fn parse(s: &'a str) -> Self {
        match s.split_once('/') {
            Some((namespace, host)) => ServerHost {
                namespace: Some(namespace),
                host,
            },
            None => ServerHost {
                namespace: None,
                host: s,
            },
        }
    }

    /// Whether VirtualServices of `vs_namespace` may use this host, for a Gateway in
    /// `gateway_namespace` (Istio's `NamesForNamespace`, `.` being the Gateway's namespace).
    pub fn admits(&self, vs_namespace: &str, gateway_namespace: &str) -> bool {
        match self.namespace {
            None | Some("*") => true,
            Some(".") => vs_namespace == gateway_namespace,
            Some(ns) => ns == vs_namespace,
        }
    }
}

impl Server {
    /// The port's protocol.
    pub fn protocol(&self) -> ServerProtocol {
        ServerProtocol::parse(self.port.as_ref().and_then(|p| p.protocol.as_deref()))
    }

    /// The server's `tls.mode`, with Istio's default for HTTPS and TLS servers (`PASSTHROUGH`
    /// when `tls` names none); `None` for a server without a mode otherwise.
    pub fn tls_mode(&self) -> Option<&str> {
        let explicit = self.tls.as_ref().and_then(|t| t.mode.as_deref());
        match self.protocol() {
            ServerProtocol::Https | ServerProtocol::Tls => explicit.or(Some("PASSTHROUGH")),
            _ => explicit,
        }
    }

    /// Whether the server answers every request with a redirect to HTTPS.
    pub fn https_redirect(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.https_redirect == Some(true))
    }
}

impl GatewaySpec {
    /// Istio's errors about the spec (see the module doc), without rustmesh's refusals.
    pub fn istio_errors(&self) -> Vec<FieldError> {
        self.check().0
    }

    /// Istio's warnings about the spec (see the module doc).
    pub fn warnings(&self) -> Vec<FieldError> {
        self.check().1
    }

    fn check(&self) -> (Vec<FieldError>, Vec<FieldError>) {
        let mut err = Vec::new();
        let mut warn = Vec::new();
        if self.servers.is_empty() {
            err.push(FieldError::new(
                "spec.servers",
                "gateway must have at least one server",
            ));
        }
        let mut port_names = BTreeSet::new();
        let mut server_names = BTreeSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            if server.hosts.is_empty() {
                err.push(FieldError::new(
                    format!("{at}.hosts"),
                    "server config must contain at least one host",
                ));
            }
            for (j, host) in server.hosts.iter().enumerate() {
                if let Some(problem) = host_problem(host) {
                    err.push(FieldError::new(format!("{at}.hosts[{j}]"), problem));
                }
            }
            if let Some(name) = server.name.as_deref()
                && !server_names.insert(name)
            {
                err.push(FieldError::new(
                    format!("{at}.name"),
                    format!("server names must be unique: duplicate name {name}"),
                ));
            }
            let Some(port) = &server.port else {
                err.push(FieldError::new(format!("{at}.port"), "port is required"));
                continue;
            };
            let protocol = server.protocol();
            let mut port_ok = true;
            if protocol == ServerProtocol::Unknown {
                port_ok = false;
                err.push(FieldError::new(
                    format!("{at}.port.protocol"),
                    format!(
                        "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, \
                         GRPC-WEB, HTTPS, TLS, MONGO, REDIS, MYSQL, TCP",
                        port.protocol.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if !(1..=65535).contains(&port.number) {
                port_ok = false;
                err.push(FieldError::new(
                    format!("{at}.port.number"),
                    format!("port number {} must be in the range 1..65535", port.number),
                ));
            }
            if port.target_port.is_some_and(|t| t > 0) {
                port_ok = false;
                err.push(FieldError::new(
                    format!("{at}.port.targetPort"),
                    "targetPort has no impact on Gateways",
                ));
            }
            match port.name.as_deref().filter(|n| !n.is_empty()) {
                None => {
                    port_ok = false;
                    err.push(FieldError::new(
                        format!("{at}.port.name"),
                        "port name must be set",
                    ));
                }
                Some(name) => {
                    if !port_names.insert(name) {
                        err.push(FieldError::new(
                            format!("{at}.port.name"),
                            format!("port names in servers must be unique: duplicate name {name}"),
                        ));
                    }
                }
            }
            if server.https_redirect() && protocol != ServerProtocol::Http {
                warn.push(FieldError::new(
                    format!("{at}.tls.httpsRedirect"),
                    "tls.httpsRedirect should only be used with http servers",
                ));
            }
            if !port_ok {
                continue;
            }
            match (protocol, &server.tls) {
                (ServerProtocol::Https | ServerProtocol::Tls, None) => err.push(FieldError::new(
                    format!("{at}.tls"),
                    "server must have TLS settings for HTTPS/TLS protocols",
                )),
                (ServerProtocol::Https | ServerProtocol::Tls, Some(tls)) => {
                    err.extend(tls_problems(&at, tls));
                }
                (ServerProtocol::Http, Some(tls)) => {
                    let passthrough = tls.mode.as_deref().is_none_or(|m| m == "PASSTHROUGH");
                    if !passthrough
                        || tls.ca_certificates.is_some()
                        || tls.private_key.is_some()
                        || tls.server_certificate.is_some()
                    {
                        err.push(FieldError::new(
                            format!("{at}.tls"),
                            "server cannot have TLS settings for plain text HTTP ports",
                        ));
                    }
                }
                (ServerProtocol::Tcp, Some(_)) => err.push(FieldError::new(
                    format!("{at}.tls"),
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                )),
                _ => {}
            }
        }
        for (k, v) in &self.selector {
            if k.is_empty() || k.contains('*') || v.contains('*') {
                err.push(FieldError::new(
                    format!("spec.selector.{k}"),
                    format!("invalid label selector \"{k}={v}\""),
                ));
            }
        }
        (err, warn)
    }

    /// Without the mesh CA (chart value `ca.enabled` off), a warning on the `tls.mode` of each
    /// HTTPS or TLS server with `ISTIO_MUTUAL`: the gateway has no workload certificate to
    /// present, so it refuses that server's connections (never serving them in plain text).
    /// A warning, as for a DestinationRule's `ISTIO_MUTUAL` without the CA
    /// ([`crate::checks::destination_rule_tls`]): the object is valid and starts working when
    /// the CA is turned on.
    pub fn istio_mutual_without_ca(&self) -> Vec<FieldError> {
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                matches!(s.protocol(), ServerProtocol::Https | ServerProtocol::Tls)
                    && s.tls_mode() == Some("ISTIO_MUTUAL")
            })
            .map(|(i, _)| {
                FieldError::new(
                    format!("spec.servers[{i}].tls.mode"),
                    "ISTIO_MUTUAL needs the mesh CA (chart value ca.enabled), which is off: the \
                     gateway has no workload certificate and refuses this server's connections",
                )
            })
            .collect()
    }

    /// rustmesh's refusals that depend on a field's value rather than its presence (the
    /// support table's `ReportedBy` entries): a `tls.mode` not in [`TLS_MODES_RENDERED`] on an
    /// HTTPS or TLS server (`AUTO_PASSTHROUGH`), any mode on another server, a credential or
    /// files on a `PASSTHROUGH` server (it terminates nothing: they would be ignored), files
    /// next to a `credentialName`, and `caCertificates` on a `SIMPLE` server. `ISTIO_MUTUAL`
    /// with any of them is Istio's error ([`GatewaySpec::istio_errors`]), not repeated here.
    /// Each names its field.
    pub fn unsupported(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            let protocol = server.protocol();
            let tls_server = matches!(protocol, ServerProtocol::Https | ServerProtocol::Tls);
            if let Some(tls) = &server.tls {
                out.extend(tls_parameter_errors(i, tls, tls_server, server.tls_mode()));
                out.extend(client_pin_errors(i, tls, tls_server, server.tls_mode()));
                out.extend(crl_errors(i, tls, tls_server, server.tls_mode()));
            }
            let Some(mode) = server.tls_mode() else {
                continue;
            };
            if !(tls_server && TLS_MODES_RENDERED.contains(&mode)) {
                out.push(FieldError::new(
                    format!("spec.servers[{i}].tls.mode"),
                    format!(
                        "not implemented by rustmesh: tls.mode {mode}{} (PASSTHROUGH, SIMPLE, \
                         MUTUAL, OPTIONAL_MUTUAL and ISTIO_MUTUAL on HTTPS and TLS servers are \
                         rendered{})",
                        if tls_server {
                            ""
                        } else {
                            " on a server that is not HTTPS or TLS"
                        },
                        if mode == "AUTO_PASSTHROUGH" {
                            "; AUTO_PASSTHROUGH serves multi-network east-west gateways, \
                             which rustmesh does not have"
                        } else {
                            ""
                        }
                    ),
                ));
            } else if let Some(tls) = server
                .tls
                .as_ref()
                // ISTIO_MUTUAL with certificates or a credential: Istio's error, not repeated.
                .filter(|_| mode != "ISTIO_MUTUAL")
            {
                let set = |v: &Option<String>| non_empty(v).is_some();
                let files: Vec<&str> = [
                    ("serverCertificate", &tls.server_certificate),
                    ("privateKey", &tls.private_key),
                    ("caCertificates", &tls.ca_certificates),
                ]
                .into_iter()
                .filter(|(_, v)| set(v))
                .map(|(f, _)| f)
                .collect();
                let secret = set(&tls.credential_name) || !tls.credential_names.is_empty();
                if mode == "PASSTHROUGH" {
                    for field in files
                        .iter()
                        .copied()
                        .chain(set(&tls.credential_name).then_some("credentialName"))
                        .chain((!tls.credential_names.is_empty()).then_some("credentialNames"))
                        .chain((!tls.tls_certificates.is_empty()).then_some("tlsCertificates"))
                    {
                        out.push(FieldError::new(
                            format!("spec.servers[{i}].tls.{field}"),
                            format!(
                                "a PASSTHROUGH server forwards TLS without terminating it: its \
                                 {field} would be ignored, remove it or use SIMPLE or MUTUAL"
                            ),
                        ));
                    }
                } else if secret {
                    // Istio reads the Secret and ignores the files: refused, not ignored.
                    for field in files {
                        out.push(FieldError::new(
                            format!("spec.servers[{i}].tls.{field}"),
                            format!(
                                "{field} would be ignored next to credentialName (the Secret's \
                                 certificate is used): give one or the other"
                            ),
                        ));
                    }
                } else if mode == "SIMPLE" {
                    // SIMPLE verifies no client: the CA would be ignored.
                    let entries = tls.tls_certificates.iter().enumerate();
                    for field in set(&tls.ca_certificates)
                        .then(|| "caCertificates".to_string())
                        .into_iter()
                        .chain(
                            entries
                                .filter(|(_, c)| set(&c.ca_certificates))
                                .map(|(j, _)| format!("tlsCertificates[{j}].caCertificates")),
                        )
                    {
                        out.push(FieldError::new(
                            format!("spec.servers[{i}].tls.{field}"),
                            "a SIMPLE server verifies no client certificate: its \
                             caCertificates would be ignored, remove it or use MUTUAL",
                        ));
                    }
                } else if let Some(ca) = non_empty(&tls.ca_certificates).or_else(|| {
                    tls.tls_certificates
                        .first()
                        .and_then(|c| non_empty(&c.ca_certificates))
                }) {
                    // One CA verifies the clients of every certificate (the server's, else the
                    // first certificate's): another one would be ignored.
                    for (j, c) in tls.tls_certificates.iter().enumerate() {
                        if non_empty(&c.ca_certificates).is_some_and(|own| own != ca) {
                            out.push(FieldError::new(
                                format!(
                                    "spec.servers[{i}].tls.tlsCertificates[{j}].caCertificates"
                                ),
                                format!(
                                    "clients are verified against one CA bundle, {ca:?} (the \
                                     server's caCertificates, else the first certificate's): \
                                     this one would be ignored"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        out
    }
}

/// What is wrong with server `i`'s `minProtocolVersion`, `maxProtocolVersion` and
/// `cipherSuites`: on a server that terminates TLS (an HTTPS or TLS server with `SIMPLE`,
/// `MUTUAL`, `OPTIONAL_MUTUAL` or `ISTIO_MUTUAL`), values rustmesh cannot serve
/// ([`ServerTlsSettings::tls_parameters`]); elsewhere (`PASSTHROUGH`, a plain-text server),
/// any of them, as it would be ignored; and on a plain-text server a `credentialName` (Istio
/// lets it pass there; nothing would present it).
fn tls_parameter_errors(
    i: usize,
    tls: &ServerTlsSettings,
    tls_server: bool,
    mode: Option<&str>,
) -> Vec<FieldError> {
    let at = format!("spec.servers[{i}].tls");
    let terminates =
        tls_server && mode.is_some_and(|m| m != "PASSTHROUGH" && TLS_MODES_RENDERED.contains(&m));
    if terminates {
        return tls.tls_parameters(&at).err().unwrap_or_default();
    }
    let set = |v: &Option<String>| non_empty(v).is_some();
    [
        ("minProtocolVersion", set(&tls.min_protocol_version)),
        ("maxProtocolVersion", set(&tls.max_protocol_version)),
        ("cipherSuites", !tls.cipher_suites.is_empty()),
        // A PASSTHROUGH server's is reported with its certificate files.
        ("credentialName", !tls_server && set(&tls.credential_name)),
        (
            "credentialNames",
            !tls_server && !tls.credential_names.is_empty(),
        ),
        (
            "tlsCertificates",
            !tls_server && !tls.tls_certificates.is_empty(),
        ),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(field, _)| {
        FieldError::new(
            format!("{at}.{field}"),
            format!(
                "this server terminates no TLS (PASSTHROUGH, or not HTTPS or TLS): its {field} \
                 would be ignored, remove it or use SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL"
            ),
        )
    })
    .collect()
}

/// What is wrong with server `i`'s `subjectAltNames`, `verifyCertificateSpki` and
/// `verifyCertificateHash`: on a server that verifies client certificates (an HTTPS or TLS
/// server with `MUTUAL`, `OPTIONAL_MUTUAL` or `ISTIO_MUTUAL`), a digest that is not one
/// (Envoy would refuse the listener); elsewhere, any of them, as no client certificate is asked
/// for and they would be ignored.
fn client_pin_errors(
    i: usize,
    tls: &ServerTlsSettings,
    tls_server: bool,
    mode: Option<&str>,
) -> Vec<FieldError> {
    let at = format!("spec.servers[{i}].tls");
    let verifies = tls_server
        && mode.is_some_and(|m| matches!(m, "MUTUAL" | "OPTIONAL_MUTUAL" | "ISTIO_MUTUAL"));
    if verifies {
        return match tls.client_pins().pinned_digests() {
            Ok(_) => Vec::new(),
            Err((field, message)) => vec![FieldError::new(format!("{at}.{field}"), message)],
        };
    }
    [
        ("subjectAltNames", tls.subject_alt_names.is_empty()),
        (
            "verifyCertificateSpki",
            tls.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            tls.verify_certificate_hash.is_empty(),
        ),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(field, _)| {
        FieldError::new(
            format!("{at}.{field}"),
            format!(
                "this server asks for no client certificate (SIMPLE, PASSTHROUGH, or not HTTPS \
                 or TLS): its {field} would be ignored, remove it or use MUTUAL, \
                 OPTIONAL_MUTUAL or ISTIO_MUTUAL"
            ),
        )
    })
    .collect()
}

/// rustmesh's checks of a server's `caCrl` (a file in the gateway pod, as `caCertificates`):
/// rendered beside `caCertificates` on a `MUTUAL` or `OPTIONAL_MUTUAL` HTTPS or TLS server, as
/// an absolute path; refused where no client certificate is verified against a CA file, where
/// it would be ignored: a server asking for none, `ISTIO_MUTUAL` (the mesh root has no list
/// here), or a `credentialName` (whose Secret carries its lists as `ca.crl` or `crl`).
fn crl_errors(
    i: usize,
    tls: &ServerTlsSettings,
    tls_server: bool,
    mode: Option<&str>,
) -> Vec<FieldError> {
    let Some(crl) = non_empty(&tls.ca_crl) else {
        return Vec::new();
    };
    let field = format!("spec.servers[{i}].tls.caCrl");
    let why = if !(tls_server && mode.is_some_and(|m| matches!(m, "MUTUAL" | "OPTIONAL_MUTUAL"))) {
        "this server verifies no client certificate against a CA file (only MUTUAL and \
         OPTIONAL_MUTUAL HTTPS and TLS servers do): its caCrl would be ignored"
            .to_string()
    } else if non_empty(&tls.credential_name).is_some() || !tls.credential_names.is_empty() {
        "cannot be given with credentialName: the Secret's revocation list (its ca.crl or crl \
         key) is used, as in Istio"
            .to_string()
    } else if !crl.starts_with('/') {
        format!("{crl:?} is not an absolute path to a file in the gateway's pod")
    } else {
        return Vec::new();
    };
    vec![FieldError::new(field, why)]
}

/// A string field's value when it is set and not empty (protobuf's unset string).
pub fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The Gateway a VirtualService's `gateways` entry (or `http[].match[].gateways`) names, as
/// `<namespace>/<name>` (Istio's `resolveGatewayName`): `ns/name` as written; the deprecated
/// `name.ns.svc.<suffix>` as `ns/name`; a bare `name` in the VirtualService's namespace.
/// `mesh` (the sidecars) is returned as it is.
pub fn resolve_gateway_name(name: &str, vs_namespace: &str) -> String {
    if name == MESH || name.contains('/') {
        return name.to_string();
    }
    match name.split_once('.') {
        Some((gw, rest)) => {
            let ns = rest.split('.').next().unwrap_or_default();
            format!("{ns}/{gw}")
        }
        None => format!("{vs_namespace}/{name}"),
    }
}

/// The `tls.mode`s of an HTTPS or TLS server that rustmesh renders (`SIMPLE`, `MUTUAL` and
/// `OPTIONAL_MUTUAL` with a `credentialName` or certificate files, `ISTIO_MUTUAL` with the
/// gateway's workload certificate). `AUTO_PASSTHROUGH` is not.
pub const TLS_MODES_RENDERED: [&str; 5] = [
    "PASSTHROUGH",
    "SIMPLE",
    "MUTUAL",
    "OPTIONAL_MUTUAL",
    "ISTIO_MUTUAL",
];

/// Istio's `ServerTLSSettings.TLSmode` values.
const TLS_MODES: [&str; 6] = [
    "PASSTHROUGH",
    "SIMPLE",
    "MUTUAL",
    "AUTO_PASSTHROUGH",
    "ISTIO_MUTUAL",
    "OPTIONAL_MUTUAL",
];

/// Istio's checks of an HTTPS or TLS server's `tls` (`validateTLSOptions`), each naming its
/// field under `at` (`spec.servers[i]`): a known mode; `SIMPLE`, `MUTUAL` and
/// `OPTIONAL_MUTUAL` need a certificate, from a `credentialName` or files (a key and a
/// certificate), and `MUTUAL` and `OPTIONAL_MUTUAL` with files a CA bundle; `ISTIO_MUTUAL`
/// takes none of them.
fn tls_problems(at: &str, tls: &ServerTlsSettings) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    if !TLS_MODES.contains(&mode) {
        out.push(FieldError::new(
            format!("{at}.tls.mode"),
            format!("unknown TLS mode {mode:?}, one of {}", TLS_MODES.join(", ")),
        ));
        return out;
    }
    let secret = non_empty(&tls.credential_name).is_some() || !tls.credential_names.is_empty();
    let listed = !tls.tls_certificates.is_empty();
    let mut err = |field: String, message: String| {
        out.push(FieldError::new(format!("{at}.tls.{field}"), message))
    };
    // Istio's one-of rules and its limit of two (an RSA and an ECDSA certificate).
    if non_empty(&tls.credential_name).is_some() && !tls.credential_names.is_empty() {
        err(
            "credentialNames".into(),
            "only one of credentialName and credentialNames can be given".into(),
        );
    }
    if listed && (tls.server_certificate.is_some() || tls.private_key.is_some()) {
        err(
            "tlsCertificates".into(),
            "only one of serverCertificate/privateKey and tlsCertificates can be given".into(),
        );
    }
    if listed && secret {
        err(
            "tlsCertificates".into(),
            "only one of credentialName(s) and tlsCertificates can be given".into(),
        );
    }
    for (field, n) in [
        ("credentialNames", tls.credential_names.len()),
        ("tlsCertificates", tls.tls_certificates.len()),
    ] {
        if n > MAX_CERTIFICATES {
            err(
                field.into(),
                format!("at most {MAX_CERTIFICATES} (an RSA and an ECDSA certificate), not {n}"),
            );
        }
    }
    match mode {
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" if !secret && listed => {
            for (j, c) in tls.tls_certificates.iter().enumerate() {
                for (field, value) in [
                    ("serverCertificate", &c.server_certificate),
                    ("privateKey", &c.private_key),
                ] {
                    if non_empty(value).is_none() {
                        err(
                            format!("tlsCertificates[{j}].{field}"),
                            format!("{mode} TLS requires a {field} in each certificate"),
                        );
                    }
                }
            }
            if mode != "SIMPLE"
                && non_empty(&tls.ca_certificates).is_none()
                && non_empty(&tls.tls_certificates[0].ca_certificates).is_none()
            {
                err(
                    "caCertificates".into(),
                    format!("{mode} TLS requires a client CA bundle (or a credentialName)"),
                );
            }
        }
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" if !secret => {
            if tls.server_certificate.as_deref().is_none_or(str::is_empty) {
                out.push(FieldError::new(
                    format!("{at}.tls.serverCertificate"),
                    format!("{mode} TLS requires a server certificate (or a credentialName)"),
                ));
            }
            if tls.private_key.as_deref().is_none_or(str::is_empty) {
                out.push(FieldError::new(
                    format!("{at}.tls.privateKey"),
                    format!("{mode} TLS requires a private key (or a credentialName)"),
                ));
            }
            if mode != "SIMPLE" && tls.ca_certificates.as_deref().is_none_or(str::is_empty) {
                out.push(FieldError::new(
                    format!("{at}.tls.caCertificates"),
                    format!("{mode} TLS requires a client CA bundle (or a credentialName)"),
                ));
            }
        }
        "ISTIO_MUTUAL" => {
            for (field, set) in [
                ("credentialName", tls.credential_name.is_some()),
                ("credentialNames", !tls.credential_names.is_empty()),
                ("serverCertificate", tls.server_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("tlsCertificates", listed),
            ] {
                if set {
                    out.push(FieldError::new(
                        format!("{at}.tls.{field}"),
                        "ISTIO_MUTUAL TLS cannot have an associated certificate, key, CA \
                         or credentialName",
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(name) = tls.credential_name.as_deref().filter(|n| !n.is_empty())
        && let Some(problem) = rustmesh_xds::ca::secret_name_problem(name)
    {
        out.push(FieldError::new(format!("{at}.tls.credentialName"), problem));
    }
    for (j, name) in tls.credential_names.iter().enumerate() {
        if let Some(problem) = rustmesh_xds::ca::secret_name_problem(name) {
            out.push(FieldError::new(
                format!("{at}.tls.credentialNames[{j}]"),
                problem,
            ));
        }
    }
    out
}

/// The most `credentialNames` or `tlsCertificates` a server has (Istio's limit).
pub const MAX_CERTIFICATES: usize = rustmesh_xds::tls::MAX_SERVER_CERTIFICATES;

/// The reserved gateway name meaning every sidecar of the mesh.
pub const MESH: &str = "mesh";

/// Istio's check of a server host (`validateNamespaceSlashWildcardHostname` for gateways).
fn host_problem(host: &str) -> Option<String> {
    let Some((ns, name)) = host.split_once('/') else {
        return wildcard_domain_problem(host);
    };
    if ns.is_empty() || name.is_empty() {
        return Some("config namespace and dnsName in host entry cannot be empty".to_string());
    }
    if ns != "*" && ns != "." && !is_dns_label(ns) {
        return Some(format!("invalid namespace value {ns:?} in gateway"));
    }
    wildcard_domain_problem(name)
}

impl Validate for GatewaySpec {
    /// rustmesh's refusals (fields and values rustmesh does not implement, each naming the field), then
    /// Istio's errors.
    fn validate(&self) -> Vec<FieldError> {
        let mut out = crate::support::refused_fields("Gateway", self);
        out.extend(self.unsupported());
        out.extend(self.istio_errors());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{IstioObject, load_all};

    fn doc(version: &str, spec: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/{version}\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: foo\nspec:\n{spec}"
        )
    }

    fn spec(yaml: &str) -> GatewaySpec {
        crate::parse::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    /// Istio's bookinfo-gateway (samples/bookinfo/networking/bookinfo-gateway.yaml).
    const BOOKINFO: &str = "  selector:\n    istio: ingressgateway\n  servers:\n  - port:\n      number: 8080\n      name: http\n      protocol: HTTP\n    hosts:\n    - \"*\"\n";

    #[test]
    fn bookinfo_gateway_is_read_as_every_served_version() {
        for version in VERSIONS {
            let obj = load_all(&doc(version, BOOKINFO))
                .remove(0)
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            let IstioObject::Gateway(gw) = obj else {
                panic!("{version}: not a Gateway");
            };
            assert_eq!(gw.spec.selector["istio"], "ingressgateway");
            assert_eq!(gw.spec.servers[0].protocol(), ServerProtocol::Http);
        }
    }

    /// Istio's secure ingress (SIMPLE) and mutual TLS ingress (MUTUAL) Gateways validate.
    #[test]
    fn https_servers_with_a_credential_are_accepted() {
        for mode in ["SIMPLE", "MUTUAL"] {
            let text = doc(
                "v1",
                &format!(
                    "  selector:\n    istio: ingressgateway\n  servers:\n  - port:\n      number: 443\n      name: https\n      protocol: HTTPS\n    tls:\n      mode: {mode}\n      credentialName: httpbin-credential\n    hosts:\n    - httpbin.example.com\n"
                ),
            );
            let obj = load_all(&text)
                .remove(0)
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            let IstioObject::Gateway(g) = obj else {
                panic!("not a Gateway")
            };
            assert_eq!(g.spec.servers[0].protocol(), ServerProtocol::Https);
        }
    }

    #[test]
    fn tls_settings_are_checked_as_istio_does() {
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE}\n- port: {number: 444, name: b, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}\n- port: {number: 445, name: c, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: ISTIO_MUTUAL, credentialName: x}\n- port: {number: 446, name: d, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: Not_A_Secret}\n- port: {number: 447, name: e, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: STRICT, credentialName: x}\n",
        );
        assert_eq!(
            fields(s.istio_errors()),
            [
                "spec.servers[0].tls.serverCertificate",
                "spec.servers[0].tls.privateKey",
                "spec.servers[1].tls.caCertificates",
                "spec.servers[2].tls.credentialName",
                "spec.servers[3].tls.credentialName",
                "spec.servers[4].tls.mode",
            ]
        );
    }

    #[test]
    fn refused_fields_are_named_with_issue_20() {
        // AUTO_PASSTHROUGH, or a mode on an HTTP server. ISTIO_MUTUAL (server b) and two
        // credentials (server e) are rendered.
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: TLS}\n  hosts: ['*']\n  tls: {mode: AUTO_PASSTHROUGH}\n- port: {number: 444, name: b, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: ISTIO_MUTUAL}\n- port: {number: 80, name: c, protocol: HTTP}\n  hosts: ['*']\n  tls: {mode: PASSTHROUGH, httpsRedirect: true}\n- port: {number: 446, name: e, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialNames: [rsa, ecdsa]}\n",
        );
        let errors = s.validate();
        let mut named = fields(errors.clone());
        named.sort();
        assert_eq!(
            named,
            ["spec.servers[0].tls.mode", "spec.servers[2].tls.mode",]
        );
        assert!(
            errors
                .iter()
                .any(|e| e.field == "spec.servers[0].tls.mode"
                    && e.message.contains("AUTO_PASSTHROUGH")),
            "{errors:?}"
        );
        for e in &errors {
            assert!(
                e.message.contains(crate::support::GATEWAY_NOT_RENDERED),
                "{}: {}",
                e.field,
                e.message
            );
        }
        // bind, defaultEndpoint; a TCP server itself is rendered.
        let s = spec(
            "servers:\n- port: {number: 31400, name: tcp, protocol: TCP}\n  hosts: ['*']\n  bind: 10.0.0.1\n  defaultEndpoint: 127.0.0.1:9000\n",
        );
        assert_eq!(
            fields(s.validate()),
            ["spec.servers[0].bind", "spec.servers[0].defaultEndpoint"]
        );
        // A credential or files on a PASSTHROUGH server, files next to a credentialName: they
        // would be ignored, so they are refused by name.
        let s = spec(
            "servers:\n- port: {number: 443, name: tls, protocol: TLS}\n  hosts: ['*']\n  tls: {mode: PASSTHROUGH, credentialName: nginx, caCertificates: /ca.pem}\n- port: {number: 445, name: d, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: x, serverCertificate: /c.pem, privateKey: /k.pem}\n",
        );
        assert_eq!(
            fields(s.validate()),
            [
                "spec.servers[0].tls.caCertificates",
                "spec.servers[0].tls.credentialName",
                "spec.servers[1].tls.serverCertificate",
                "spec.servers[1].tls.privateKey",
            ]
        );
    }

    /// Istio's gateway TLS hardening: `minProtocolVersion`, `maxProtocolVersion` and
    /// `cipherSuites` on servers that terminate TLS are accepted and read as Envoy's
    /// `tlsParams`; what rustmesh's TLS cannot serve, or a server that terminates nothing, is
    /// refused naming the field.
    #[test]
    fn tls_versions_and_suites_are_accepted_where_tls_ends_and_refused_by_name_otherwise() {
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_3}\n- port: {number: 444, name: b, protocol: TLS}\n  hosts: ['*']\n  tls: {mode: ISTIO_MUTUAL, maxProtocolVersion: TLSV1_2, cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-CHACHA20-POLY1305]}\n- port: {number: 445, name: c, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: MUTUAL, credentialName: c, minProtocolVersion: TLS_AUTO}\n",
        );
        assert_eq!(s.validate(), vec![]);
        let p = s.servers[1]
            .tls
            .as_ref()
            .unwrap()
            .tls_parameters("spec.servers[1].tls")
            .unwrap()
            .unwrap();
        assert_eq!(
            p.tls_maximum_protocol_version,
            Some(rustmesh_xds::tls::TlsVersion::V1_2)
        );
        assert_eq!(p.cipher_suites.len(), 2);
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_0}\n- port: {number: 444, name: b, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: c, maxProtocolVersion: TLSv1.3, cipherSuites: [AES128-SHA]}\n- port: {number: 445, name: c, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}\n- port: {number: 446, name: d, protocol: TLS}\n  hosts: ['*']\n  tls: {mode: PASSTHROUGH, minProtocolVersion: TLSV1_2}\n- port: {number: 80, name: e, protocol: HTTP}\n  hosts: ['*']\n  tls: {httpsRedirect: true, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256], credentialName: c}\n",
        );
        let errors = s.validate();
        assert_eq!(
            fields(errors.clone()),
            [
                "spec.servers[0].tls.minProtocolVersion",
                "spec.servers[1].tls.maxProtocolVersion",
                "spec.servers[1].tls.cipherSuites[0]",
                "spec.servers[2].tls.minProtocolVersion",
                "spec.servers[3].tls.minProtocolVersion",
                "spec.servers[4].tls.cipherSuites",
                "spec.servers[4].tls.credentialName",
            ]
        );
        assert!(errors[0].message.contains("TLS 1.2 and 1.3"), "{errors:?}");
        assert!(errors[2].message.contains("AES128-SHA"), "{errors:?}");
        assert!(errors[3].message.contains("no version"), "{errors:?}");
        assert!(errors[4].message.contains("would be ignored"), "{errors:?}");
    }

    #[test]
    fn client_pins_are_accepted_where_clients_are_verified_and_refused_by_name_otherwise() {
        let hash = "DF:6F:F7:2F:E9:11:65:21:26:8F:6F:2D:D4:96:6F:51:DF:47:98:83:FE:70:37:B3:9F:75:91:6A:C3:04:9D:1A";
        let spki = "NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=";
        let s = spec(&format!(
            "servers:\n- port: {{number: 443, name: a, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {{mode: MUTUAL, credentialName: c, subjectAltNames: [client.example.com], verifyCertificateHash: ['{hash}']}}\n- port: {{number: 444, name: b, protocol: TLS}}\n  hosts: ['*']\n  tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/a/sa/b], verifyCertificateSpki: ['{spki}']}}\n- port: {{number: 445, name: c, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {{mode: OPTIONAL_MUTUAL, credentialName: c, verifyCertificateSpki: ['{spki}']}}\n"
        ));
        assert_eq!(s.validate(), vec![]);
        let pins = s.servers[0].tls.as_ref().unwrap().client_pins();
        assert_eq!(
            pins.match_subject_alt_names[0].exact.as_deref(),
            Some("client.example.com")
        );
        assert_eq!(pins.verify_certificate_hash, [hash]);
        let s = spec(&format!(
            "servers:\n- port: {{number: 443, name: a, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {{mode: SIMPLE, credentialName: c, subjectAltNames: [client.example.com]}}\n- port: {{number: 444, name: b, protocol: TLS}}\n  hosts: ['*']\n  tls: {{mode: PASSTHROUGH, verifyCertificateSpki: ['{spki}'], verifyCertificateHash: ['{hash}']}}\n- port: {{number: 445, name: c, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {{mode: MUTUAL, credentialName: c, verifyCertificateHash: ['{hash}', 'DF:6F']}}\n- port: {{number: 446, name: d, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {{mode: MUTUAL, credentialName: c, verifyCertificateSpki: [not-base64]}}\n- port: {{number: 80, name: e, protocol: HTTP}}\n  hosts: ['*']\n  tls: {{httpsRedirect: true, subjectAltNames: [a]}}\n"
        ));
        let errors = s.validate();
        assert_eq!(
            fields(errors.clone()),
            [
                "spec.servers[0].tls.subjectAltNames",
                "spec.servers[1].tls.verifyCertificateSpki",
                "spec.servers[1].tls.verifyCertificateHash",
                "spec.servers[2].tls.verifyCertificateHash[1]",
                "spec.servers[3].tls.verifyCertificateSpki[0]",
                "spec.servers[4].tls.subjectAltNames",
            ]
        );
        assert!(errors[0].message.contains("would be ignored"), "{errors:?}");
        assert!(errors[3].message.contains("SHA-256"), "{errors:?}");
    }

    #[test]
    fn istio_mutual_and_optional_mutual_servers_are_accepted() {
        // ISTIO_MUTUAL on HTTPS and TLS servers (the gateway's workload certificate);
        // OPTIONAL_MUTUAL with a credential, or files with their CA.
        let s = spec(
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: ISTIO_MUTUAL}\n- port: {number: 444, name: b, protocol: TLS}\n  hosts: ['*']\n  tls: {mode: ISTIO_MUTUAL}\n- port: {number: 445, name: c, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: OPTIONAL_MUTUAL, credentialName: httpbin-credential}\n- port: {number: 446, name: d, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: OPTIONAL_MUTUAL, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key, caCertificates: /etc/certs/ca.crt}\n",
        );
        assert_eq!(s.validate(), vec![]);
        assert_eq!(s.warnings(), vec![]);
        // Without the mesh CA, each ISTIO_MUTUAL server's mode is warned about, naming the CA.
        let without_ca = s.istio_mutual_without_ca();
        assert_eq!(
            fields(without_ca.clone()),
            ["spec.servers[0].tls.mode", "spec.servers[1].tls.mode"]
        );
        assert!(
            without_ca[0].message.contains("ca.enabled"),
            "{without_ca:?}"
        );
        // OPTIONAL_MUTUAL from files needs the CA bundle, as Istio; files next to its
        // credentialName would be ignored: refused.
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: OPTIONAL_MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}\n- port: {number: 444, name: b, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: OPTIONAL_MUTUAL, credentialName: x, caCertificates: /ca.pem}\n- port: {number: 445, name: c, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: OPTIONAL_MUTUAL}\n",
        );
        assert_eq!(
            fields(s.validate()),
            [
                "spec.servers[1].tls.caCertificates",
                "spec.servers[0].tls.caCertificates",
                "spec.servers[2].tls.serverCertificate",
                "spec.servers[2].tls.privateKey",
                "spec.servers[2].tls.caCertificates",
            ]
        );
    }

    #[test]
    fn two_certificates_are_taken_as_istio_takes_them_and_what_would_be_ignored_is_refused() {
        let server = |i: u16, tls: &str| {
            format!(
                "- port: {{number: {i}, name: s{i}, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {tls}\n"
            )
        };
        let pair = "{serverCertificate: /rsa.pem, privateKey: /rsa.key}, {serverCertificate: /ec.pem, privateKey: /ec.key}";
        let ok = spec(&format!(
            "servers:\n{}{}{}{}",
            server(443, "{mode: SIMPLE, credentialNames: [rsa, ecdsa]}"),
            server(
                444,
                "{mode: MUTUAL, credentialNames: [rsa, ecdsa], caCrl: /x}"
            ),
            server(
                445,
                &format!(
                    "{{mode: MUTUAL, tlsCertificates: [{pair}], caCertificates: /ca.pem, caCrl: /ca.crl}}"
                )
            ),
            server(
                446,
                "{mode: OPTIONAL_MUTUAL, tlsCertificates: [{serverCertificate: /c, privateKey: /k, caCertificates: /ca.pem}, {serverCertificate: /d, privateKey: /l, caCertificates: /ca.pem}]}"
            ),
        ));
        // (server 1's caCrl is next to credentials: the Secret's list is used.)
        assert_eq!(fields(ok.validate()), ["spec.servers[1].tls.caCrl"]);
        let bad = spec(&format!(
            "servers:\n{}{}{}{}{}{}{}{}",
            server(
                443,
                "{mode: SIMPLE, credentialName: a, credentialNames: [b]}"
            ),
            server(444, "{mode: SIMPLE, credentialNames: [a, b, c]}"),
            server(
                445,
                &format!("{{mode: SIMPLE, tlsCertificates: [{pair}], serverCertificate: /c.pem}}")
            ),
            server(
                446,
                "{mode: SIMPLE, tlsCertificates: [{serverCertificate: /c}]}"
            ),
            server(447, &format!("{{mode: MUTUAL, tlsCertificates: [{pair}]}}")),
            server(
                448,
                "{mode: MUTUAL, tlsCertificates: [{serverCertificate: /c, privateKey: /k, caCertificates: /a.pem}, {serverCertificate: /d, privateKey: /l, caCertificates: /b.pem}]}"
            ),
            server(449, "{mode: PASSTHROUGH, credentialNames: [a]}"),
            server(450, "{mode: SIMPLE, credentialNames: [Not_A_Secret]}"),
        ));
        let mut named = fields(bad.validate());
        named.sort();
        assert_eq!(
            named,
            [
                "spec.servers[0].tls.credentialNames",
                "spec.servers[1].tls.credentialNames",
                "spec.servers[2].tls.tlsCertificates",
                "spec.servers[3].tls.tlsCertificates[0].privateKey",
                "spec.servers[4].tls.caCertificates",
                "spec.servers[5].tls.tlsCertificates[1].caCertificates",
                "spec.servers[6].tls.credentialNames",
                "spec.servers[7].tls.credentialNames[0]",
            ]
        );
    }

    #[test]
    fn a_revocation_list_is_taken_where_clients_are_verified_against_a_ca_file() {
        let server = |i: u16, tls: &str| {
            format!(
                "- port: {{number: {i}, name: s{i}, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {tls}\n"
            )
        };
        let files = "serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem";
        let s = spec(&format!(
            "servers:\n{}{}{}{}{}{}",
            server(443, &format!("{{mode: MUTUAL, {files}, caCrl: /ca.crl}}")),
            server(
                444,
                &format!("{{mode: OPTIONAL_MUTUAL, {files}, caCrl: /ca.crl}}")
            ),
            server(445, &format!("{{mode: MUTUAL, {files}, caCrl: ca.crl}}")),
            server(
                446,
                "{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, caCrl: /ca.crl}"
            ),
            server(447, "{mode: MUTUAL, credentialName: c, caCrl: /ca.crl}"),
            server(448, "{mode: PASSTHROUGH, caCrl: /ca.crl}"),
        ));
        let errors = s.validate();
        assert_eq!(
            fields(errors.clone()),
            [
                "spec.servers[2].tls.caCrl",
                "spec.servers[3].tls.caCrl",
                "spec.servers[4].tls.caCrl",
                "spec.servers[5].tls.caCrl",
            ]
        );
        assert!(errors[0].message.contains("absolute"), "{errors:?}");
        assert!(errors[1].message.contains("would be ignored"), "{errors:?}");
        assert!(errors[2].message.contains("ca.crl or crl"), "{errors:?}");
    }

    #[test]
    fn fields_next_to_istio_mutual_stay_refused_naming_them() {
        // Istio's rule: the gateway's own certificates, nothing else.
        for field in [
            "credentialName: x",
            "serverCertificate: /c.pem",
            "privateKey: /k.pem",
            "caCertificates: /ca.pem",
        ] {
            let s = spec(&format!(
                "servers:\n- port: {{number: 443, name: a, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {{mode: ISTIO_MUTUAL, {field}}}\n"
            ));
            let name = field.split(':').next().unwrap();
            let errors = s.validate();
            assert_eq!(
                fields(errors.clone()),
                [format!("spec.servers[0].tls.{name}")],
                "{field}"
            );
            assert!(errors[0].message.contains("ISTIO_MUTUAL"), "{errors:?}");
        }
        // Revocation lists and other credentials are refused next to it too.
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/a/sa/b], credentialNames: [a], caCrl: /crl.pem}\n",
        );
        let mut named = fields(s.validate());
        named.sort();
        assert_eq!(
            named,
            [
                "spec.servers[0].tls.caCrl",
                "spec.servers[0].tls.credentialNames",
            ]
        );
        // ISTIO_MUTUAL on a plain-text server is refused, as any mode there.
        let s = spec(
            "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n  tls: {mode: ISTIO_MUTUAL}\n",
        );
        assert!(
            fields(s.validate()).contains(&"spec.servers[0].tls.mode".to_string()),
            "{:?}",
            s.validate()
        );
        assert_eq!(s.istio_mutual_without_ca(), vec![]);
    }

    #[test]
    fn certificate_files_are_accepted_as_istio_checks_them() {
        // SIMPLE and MUTUAL from files mounted in the gateway pod (MUTUAL needs the CA).
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key}\n- port: {number: 444, name: b, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: MUTUAL, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key, caCertificates: /etc/certs/ca.crt}\n",
        );
        assert_eq!(s.validate(), vec![]);
        let s = spec(
            "servers:\n- port: {number: 444, name: b, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: MUTUAL, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key}\n",
        );
        assert_eq!(fields(s.validate()), ["spec.servers[0].tls.caCertificates"]);
        // SIMPLE verifies no client: a CA there would be ignored, so it is refused by name.
        let s = spec(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key, caCertificates: /etc/certs/ca.crt}\n",
        );
        let errors = s.validate();
        assert_eq!(
            fields(errors.clone()),
            ["spec.servers[0].tls.caCertificates"]
        );
        assert!(
            errors[0].message.contains("SIMPLE"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn tls_servers_and_passthrough_are_accepted() {
        // Istio's ingress SNI passthrough task (an HTTPS server whose mode defaults to
        // PASSTHROUGH), a TLS server terminating with a credential, and a TLS passthrough one.
        let s = spec(
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [nginx.example.com]\n  tls: {}\n- port: {number: 8443, name: tls-a, protocol: TLS}\n  hosts: [a.example.com]\n  tls: {mode: SIMPLE, credentialName: a}\n- port: {number: 9443, name: tls-b, protocol: TLS}\n  hosts: ['*']\n  tls: {mode: PASSTHROUGH}\n",
        );
        assert_eq!(s.validate(), vec![]);
        let modes: Vec<_> = s.servers.iter().map(|s| s.tls_mode()).collect();
        assert_eq!(
            modes,
            [Some("PASSTHROUGH"), Some("SIMPLE"), Some("PASSTHROUGH")]
        );
    }

    #[test]
    fn https_redirect_on_an_http_server_is_accepted() {
        let s = spec(
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [webapp.istioinaction.io]\n  tls: {httpsRedirect: true}\n",
        );
        assert_eq!(s.validate(), vec![]);
        assert!(s.servers[0].https_redirect());
        assert_eq!(s.warnings(), vec![]);
    }

    #[test]
    fn istio_errors_name_their_field() {
        let s = spec(
            "servers:\n- port: {number: 0, name: http, protocol: HTTP}\n  hosts: []\n- port: {number: 80, name: http, protocol: FOO}\n  hosts: ['bad ns/x.com', 'a..b', 'ns/*.example.com', './*', '*']\n- hosts: ['*']\n- port: {number: 81, protocol: HTTP}\n  hosts: ['*']\n  name: s\n- port: {number: 82, name: h2, protocol: HTTP2}\n  hosts: ['*']\n  name: s\n",
        );
        assert_eq!(
            fields(s.istio_errors()),
            [
                "spec.servers[0].hosts",
                "spec.servers[0].port.number",
                "spec.servers[1].hosts[0]",
                "spec.servers[1].hosts[1]",
                "spec.servers[1].port.protocol",
                "spec.servers[1].port.name",
                "spec.servers[2].port",
                "spec.servers[3].port.name",
                "spec.servers[4].name",
            ]
        );
        assert_eq!(
            fields(spec("selector: {app: x}\n").istio_errors()),
            ["spec.servers"]
        );
        let tls_less =
            spec("servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']\n");
        assert_eq!(fields(tls_less.istio_errors()), ["spec.servers[0].tls"]);
    }

    #[test]
    fn virtual_service_gateway_names_resolve_as_istios() {
        assert_eq!(
            resolve_gateway_name("bookinfo-gateway", "default"),
            "default/bookinfo-gateway"
        );
        assert_eq!(
            resolve_gateway_name("istio-system/gw", "default"),
            "istio-system/gw"
        );
        assert_eq!(
            resolve_gateway_name("gw.istio-system.svc.cluster.local", "default"),
            "istio-system/gw"
        );
        assert_eq!(resolve_gateway_name("mesh", "default"), "mesh");
    }

    #[test]
    fn server_hosts_admit_virtual_services_by_namespace() {
        let any = ServerHost::parse("*.example.com");
        assert!(any.admits("a", "istio-system"));
        let own = ServerHost::parse("./bookinfo.com");
        assert!(own.admits("istio-system", "istio-system"));
        assert!(!own.admits("default", "istio-system"));
        let ns = ServerHost::parse("default/bookinfo.com");
        assert_eq!(ns.host, "bookinfo.com");
        assert!(ns.admits("default", "istio-system"));
        assert!(!ns.admits("other", "istio-system"));
        assert!(ServerHost::parse("*/x.com").admits("other", "gw"));
    }
}
