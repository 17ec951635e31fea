//! Transport sockets: how a filter chain terminates TLS (`DownstreamTlsContext`) and how a
//! cluster originates it (`UpstreamTlsContext`), written as Envoy and Istio write them, so
//! `/config_dump` reads the same:
//!
//! - an inbound chain matching `transportProtocol: tls` and Istio's ALPN carries
//!   `transportSocket: {name: envoy.transport_sockets.tls, typedConfig: DownstreamTlsContext}`
//!   with the workload certificate (`tlsCertificateSdsSecretConfigs: [{name: default}]`), the
//!   mesh root (`validationContextSdsSecretConfig: {name: ROOTCA}`) and
//!   `requireClientCertificate: true`;
//! - an outbound cluster carries either one `transportSocket` (a DestinationRule's `tls.mode:
//!   ISTIO_MUTUAL`) or Istio's auto-mTLS `transportSocketMatches`: `tlsMode-istio` (endpoints
//!   whose metadata `envoy.transport_socket_match` has `tlsMode: istio`, i.e. pods with a
//!   sidecar) gets mutual TLS with `sni` and the expected server identities
//!   (`matchSubjectAltNames`), `tlsMode-disabled` (any other endpoint) plain TCP.
//!
//! - a DestinationRule's `SIMPLE` / `MUTUAL` (TLS origination to a server outside the mesh)
//!   is an `UpstreamTlsContext` with Istio's file secrets ([`external_upstream`]): the server
//!   verified against `file-root:<caCertificates>` or, without one, the system roots
//!   (`file-root:system`, Istio's `VERIFY_CERTIFICATE_AT_CLIENT`); no validation context at all
//!   for `insecureSkipVerify`; `MUTUAL`'s client certificate as `file-cert:<cert>~<key>`.
//!
//! - a DestinationRule's `credentialName` (Istio: at sidecars when the rule has a
//!   `workloadSelector`) names a Kubernetes Secret of the sidecar's namespace instead of files:
//!   `kubernetes://<name>` for `MUTUAL`'s client certificate, `kubernetes://<name>-cacert` for
//!   the roots (Istio's names; the CA serves them to the sidecar, see [`crate::ca`]).
//!
//! - a Gateway server's `credentialName` (`tls.mode` `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL`)
//!   is a `DownstreamTlsContext` with the same names ([`gateway_termination`]): the gateway's
//!   proxy presents the Secret's certificate and, for `MUTUAL`, requires a client certificate
//!   verified against its CA (`OPTIONAL_MUTUAL`: the same validation context, a client without
//!   a certificate accepted); its certificate files (`serverCertificate`, `privateKey`,
//!   `caCertificates`) are Istio's `file-cert:<cert>~<key>` and `file-root:<ca>`, read by the
//!   gateway's proxy. `ISTIO_MUTUAL` is the sidecar's inbound context (`default`, `ROOTCA`,
//!   client certificate required) with the gateway's ALPN ([`gateway_istio_mutual`]).
//!
//! The secrets served ([`Secret`]): the mesh's own (`default`, `ROOTCA`), Kubernetes Secrets,
//! those files and, upstream only, the system roots. Any other name is refused by
//! validation, naming the field, rather than accepted and ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::route::StringMatcher;

/// The transport socket name of TLS.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// The transport socket name of plain TCP.
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// The SDS name of the workload certificate and key.
pub const SDS_DEFAULT: &str = "default";
/// The SDS name of the mesh root certificate(s).
pub const SDS_ROOTCA: &str = "ROOTCA";
/// Istio's SDS name prefix of a certificate and key read from files: `file-cert:<cert>~<key>`.
pub const SDS_FILE_CERT: &str = "file-cert:";
/// Istio's SDS name prefix of root certificates read from a file: `file-root:<path>`.
pub const SDS_FILE_ROOT: &str = "file-root:";
/// Istio's SDS name of the system's root certificates.
pub const SDS_SYSTEM_ROOT: &str = "file-root:system";
/// Istio's SDS name prefix of a Kubernetes Secret (a `credentialName`).
pub const SDS_KUBERNETES: &str = "kubernetes://";
/// Istio's suffix of the SDS name of a `credentialName`'s CA certificates
/// (`kubernetes://<name>-cacert`: Secret `<name>-cacert`, else `<name>`'s `cacert`/`ca.crt`).
pub const SDS_CACERT_SUFFIX: &str = "-cacert";
/// The endpoint metadata namespace `transportSocketMatches` match against.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// The key of that namespace (and the pod label `security.istio.io/tlsMode`'s value goes in it).
pub const TLS_MODE_KEY: &str = "tlsMode";
/// The pod label injected pods carry, and its value for a pod with a sidecar.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// The value of [`TLS_MODE_KEY`] for an endpoint with a sidecar.
pub const TLS_MODE_ISTIO: &str = "istio";
/// The name of the auto-mTLS match for endpoints with a sidecar.
pub const MATCH_TLS_MODE_ISTIO: &str = "tlsMode-istio";
/// The name of the auto-mTLS match for every other endpoint.
pub const MATCH_TLS_MODE_DISABLED: &str = "tlsMode-disabled";

/// Istio's ALPN offered between sidecars for TCP.
pub const ALPN_ISTIO_TCP: [&str; 2] = ["istio-peer-exchange", "istio"];
/// The ALPN values an inbound mTLS chain matches (Istio's `mtlsTCPWithMxcALPNs` and HTTP's).
pub const ALPN_ISTIO_ALL: [&str; 5] = [
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// The ALPN values of an inbound mTLS chain for HTTP (the HTTP connection manager serves them).
pub const ALPN_ISTIO_HTTP: [&str; 3] = ["istio-http/1.0", "istio-http/1.1", "istio-h2"];

/// A filter chain's transport socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", content = "typedConfig", deny_unknown_fields)]
pub enum DownstreamTransportSocket {
    /// Terminate TLS.
    #[serde(rename = "envoy.transport_sockets.tls")]
    Tls(DownstreamTlsContext),
}

/// A cluster's transport socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", content = "typedConfig", deny_unknown_fields)]
pub enum UpstreamTransportSocket {
    /// Originate TLS.
    #[serde(rename = "envoy.transport_sockets.tls")]
    Tls(Box<UpstreamTlsContext>),
    /// Plain TCP.
    #[serde(rename = "envoy.transport_sockets.raw_buffer")]
    RawBuffer(RawBuffer),
}

impl UpstreamTransportSocket {
    /// The TLS context, if this socket originates TLS.
    pub fn tls(&self) -> Option<&UpstreamTlsContext> {
        match self {
            UpstreamTransportSocket::Tls(t) => Some(t),
            UpstreamTransportSocket::RawBuffer(_) => None,
        }
    }
}

/// `RawBuffer`: no settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {}

/// Envoy's `DownstreamTlsContext`, the part Istio's inbound chains use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownstreamTlsContext {
    pub common_tls_context: CommonTlsContext,
    /// Refuse a client without a certificate (Istio: always, for mutual TLS).
    #[serde(default)]
    pub require_client_certificate: bool,
    /// Envoy's switch off for session tickets the server cannot decrypt without a cache: the
    /// proxy never issues such (stateless) tickets, so `true` changes nothing and `false` is
    /// what it does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_stateless_session_resumption: bool,
    /// No resumption from the server's session cache: no TLS 1.3 tickets are sent and no
    /// session is kept, so every handshake is a full one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_stateful_session_resumption: bool,
}

/// Envoy's `UpstreamTlsContext`, the part Istio's outbound clusters use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTlsContext {
    pub common_tls_context: CommonTlsContext,
    /// The server name sent (Istio: `outbound_.<port>_.<subset>_.<host>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Envoy's `maxSessionKeys`: `0` turns session resumption off (every handshake is a full
    /// one); another value is the number of servers whose sessions the client keeps (rustls
    /// keeps up to 8 TLS 1.3 tickets each); unset, rustls' default (256 servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_keys: Option<u32>,
}

/// Envoy's `CommonTlsContext`: certificates, validation and ALPN.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommonTlsContext {
    /// Offered (client) or accepted (server) ALPN values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn_protocols: Vec<String>,
    /// The certificate presented: `[{name: default}]`, the workload certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificate_sds_secret_configs: Vec<SdsSecretConfig>,
    /// How the peer's certificate is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_validation_context: Option<CombinedValidationContext>,
    /// The TLS versions and TLS 1.2 cipher suites allowed (a Gateway server's
    /// `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites`); unset: TLS 1.2 and 1.3,
    /// every suite. Implemented where TLS is terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_params: Option<TlsParameters>,
}

/// Envoy's `TlsParameters`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsParameters {
    /// The lowest version accepted (`TLS_AUTO`, unset: TLS 1.2, Envoy's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_minimum_protocol_version: Option<TlsVersion>,
    /// The highest version accepted (`TLS_AUTO`, unset: TLS 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_maximum_protocol_version: Option<TlsVersion>,
    /// The TLS 1.2 cipher suites allowed, by their BoringSSL names ([`TLS12_CIPHER_SUITES`]);
    /// empty: all of them. TLS 1.3's suites are not configurable, as in Envoy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

/// A TLS protocol version, as Envoy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSv1_0")]
    V1_0,
    #[serde(rename = "TLSv1_1")]
    V1_1,
    #[serde(rename = "TLSv1_2")]
    V1_2,
    #[serde(rename = "TLSv1_3")]
    V1_3,
}

impl TlsVersion {
    /// The version of Istio's name for it (a Gateway server's `minProtocolVersion`:
    /// `TLS_AUTO`, `TLSV1_0` .. `TLSV1_3`).
    pub fn from_istio(name: &str) -> Option<TlsVersion> {
        Some(match name {
            "TLS_AUTO" => TlsVersion::Auto,
            "TLSV1_0" => TlsVersion::V1_0,
            "TLSV1_1" => TlsVersion::V1_1,
            "TLSV1_2" => TlsVersion::V1_2,
            "TLSV1_3" => TlsVersion::V1_3,
            _ => return None,
        })
    }
}

/// The TLS 1.2 cipher suites rustmesh's TLS (rustls) offers, by the BoringSSL names Envoy and
/// Istio's `cipherSuites` use: the ECDHE ones with AES-GCM or ChaCha20-Poly1305. Others (CBC,
/// RSA key exchange, 3DES) are not implemented.
pub const TLS12_CIPHER_SUITES: [&str; 6] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

impl TlsParameters {
    /// The lowest and highest versions allowed, `TLS_AUTO` or unset read as TLS 1.2 and 1.3.
    pub fn versions(&self) -> (TlsVersion, TlsVersion) {
        let min = match self.tls_minimum_protocol_version {
            None | Some(TlsVersion::Auto) => TlsVersion::V1_2,
            Some(v) => v,
        };
        let max = match self.tls_maximum_protocol_version {
            None | Some(TlsVersion::Auto) => TlsVersion::V1_3,
            Some(v) => v,
        };
        (min, max)
    }

    /// Problems, as (field below the parameters, message): a version below TLS 1.2 (rustmesh
    /// speaks TLS 1.2 and 1.3 only: a lower minimum would not admit older clients, a lower
    /// maximum admits none), a minimum above the maximum, a suite not in
    /// [`TLS12_CIPHER_SUITES`], and a suite list with TLS 1.2 excluded.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let old = |v: Option<TlsVersion>| matches!(v, Some(TlsVersion::V1_0 | TlsVersion::V1_1));
        for (field, v) in [
            (
                "tlsMinimumProtocolVersion",
                self.tls_minimum_protocol_version,
            ),
            (
                "tlsMaximumProtocolVersion",
                self.tls_maximum_protocol_version,
            ),
        ] {
            if old(v) {
                out.push((
                    field.to_string(),
                    "rustmesh's TLS speaks TLS 1.2 and 1.3 only: TLS 1.0 and 1.1 are not \
                     implemented"
                        .to_string(),
                ));
            }
        }
        let (min, max) = self.versions();
        if min > max && out.is_empty() {
            out.push((
                "tlsMinimumProtocolVersion".to_string(),
                "above tlsMaximumProtocolVersion: no version would be left".to_string(),
            ));
        }
        for (i, suite) in self.cipher_suites.iter().enumerate() {
            if !TLS12_CIPHER_SUITES.contains(&suite.as_str()) {
                out.push((
                    format!("cipherSuites[{i}]"),
                    format!(
                        "{suite:?} is not implemented: rustmesh's TLS 1.2 suites are {}",
                        TLS12_CIPHER_SUITES.join(", ")
                    ),
                ));
            }
        }
        if !self.cipher_suites.is_empty() && min > TlsVersion::V1_2 {
            out.push((
                "cipherSuites".to_string(),
                "TLS 1.2 suites with a minimum of TLS 1.3 would never be used".to_string(),
            ));
        }
        out
    }
}

/// A secret by SDS name (`default`, `ROOTCA`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SdsSecretConfig {
    pub name: String,
}

impl SdsSecretConfig {
    /// The secret named `name`.
    pub fn named(name: &str) -> Self {
        SdsSecretConfig {
            name: name.to_string(),
        }
    }

    /// What the name refers to.
    pub fn secret(&self) -> Secret<'_> {
        let n = self.name.as_str();
        if n == SDS_DEFAULT {
            Secret::Workload
        } else if n == SDS_ROOTCA {
            Secret::MeshRoot
        } else if n == SDS_SYSTEM_ROOT {
            Secret::SystemRoot
        } else if let Some(path) = n.strip_prefix(SDS_FILE_ROOT) {
            Secret::FileRoot(path)
        } else if let Some((cert, key)) = n
            .strip_prefix(SDS_FILE_CERT)
            .and_then(|rest| rest.split_once('~'))
        {
            Secret::FileCert { cert, key }
        } else if let Some(name) = n.strip_prefix(SDS_KUBERNETES) {
            Secret::Credential(name)
        } else {
            Secret::Unknown(n)
        }
    }
}

/// What an SDS secret name refers to (Istio's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secret<'a> {
    /// `default`: the workload certificate and key.
    Workload,
    /// `ROOTCA`: the mesh root(s).
    MeshRoot,
    /// `file-cert:<cert>~<key>`: a certificate chain and key read from files in the sidecar.
    FileCert { cert: &'a str, key: &'a str },
    /// `file-root:<path>`: root certificates read from a file in the sidecar.
    FileRoot(&'a str),
    /// `file-root:system`: the system's root certificates.
    SystemRoot,
    /// `kubernetes://<name>`: a Kubernetes Secret (`credentialName`).
    Credential(&'a str),
    /// Anything else.
    Unknown(&'a str),
}

/// Which end of a connection a TLS context is for: a filter chain terminates (`Downstream`,
/// the mesh's secrets only), a cluster originates (`Upstream`, also files and system roots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// The peer's chain verifies against `validationContextSdsSecretConfig` (`ROOTCA`) and its
/// identity is one of `defaultValidationContext.matchSubjectAltNames` (any, when empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CombinedValidationContext {
    #[serde(default)]
    pub default_validation_context: CertificateValidationContext,
    pub validation_context_sds_secret_config: SdsSecretConfig,
}

/// The identities accepted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateValidationContext {
    /// `exact` SPIFFE ids or other subject alt names (other matchers are refused by
    /// validation): the peer's certificate names one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_subject_alt_names: Vec<StringMatcher>,
    /// Base64 SHA-256 digests of the DER SubjectPublicKeyInfo of the client certificates
    /// accepted (a gateway server's `verifyCertificateSpki`; terminating chains only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Hex SHA-256 digests (colons between bytes allowed) of the DER client certificates
    /// accepted (`verifyCertificateHash`; terminating chains only). With both lists, a
    /// certificate matching either is accepted, as in Envoy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// The certificate revocation lists (PEM) the peer's chain is checked against: a file in
    /// the proxy (a Gateway server's or a DestinationRule's `caCrl`), beside roots from a
    /// file or the system's. A credential's lists come with its roots (the Secret's `ca.crl`
    /// or `crl`), not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<DataSource>,
}

/// Envoy's `DataSource`, as far as rustmesh reads one: a file in the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSource {
    pub filename: String,
}

impl DataSource {
    /// The file at `path`.
    pub fn file(path: &str) -> Self {
        DataSource {
            filename: path.to_string(),
        }
    }
}

/// `exact` matchers of `sans`.
pub fn exact_sans(sans: &[String]) -> Vec<StringMatcher> {
    sans.iter()
        .map(|s| StringMatcher {
            exact: Some(s.clone()),
            ..StringMatcher::default()
        })
        .collect()
}

/// A SHA-256 digest a client certificate is pinned to.
pub type Sha256 = [u8; 32];

impl CertificateValidationContext {
    /// The digests of `verifyCertificateHash` and of `verifyCertificateSpki`, decoded, or what
    /// is wrong with the first one that is not a SHA-256 digest, as (field below this
    /// context, message).
    pub fn pinned_digests(&self) -> Result<(Vec<Sha256>, Vec<Sha256>), (String, String)> {
        let hashes = self
            .verify_certificate_hash
            .iter()
            .enumerate()
            .map(|(i, h)| {
                hex_digest(h).ok_or_else(|| {
                    (
                        format!("verifyCertificateHash[{i}]"),
                        format!(
                            "{h:?} is not a hex-encoded SHA-256 digest (64 hex digits, colons \
                             between bytes allowed)"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spkis = self
            .verify_certificate_spki
            .iter()
            .enumerate()
            .map(|(i, s)| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .ok()
                    .and_then(|b| Sha256::try_from(b.as_slice()).ok())
                    .ok_or_else(|| {
                        (
                            format!("verifyCertificateSpki[{i}]"),
                            format!("{s:?} is not a base64-encoded SHA-256 digest (32 bytes)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((hashes, spkis))
    }
}

/// A hex SHA-256 digest, plain (`df6f…`) or with colons between bytes (`DF:6F:…`).
fn hex_digest(s: &str) -> Option<Sha256> {
    let digits: Vec<u8> = if s.contains(':') {
        let bytes: Vec<&str> = s.split(':').collect();
        if bytes.iter().any(|b| b.len() != 2) {
            return None;
        }
        bytes.concat().into_bytes()
    } else {
        s.as_bytes().to_vec()
    };
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl CommonTlsContext {
    /// Istio's mutual TLS context: the workload certificate, the mesh root, the peer one of
    /// `sans` (exact SPIFFE ids; any mesh identity when empty), offering/accepting `alpn`.
    pub fn istio_mutual(alpn: &[&str], sans: &[String]) -> Self {
        CommonTlsContext {
            tls_params: None,
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig::named(SDS_DEFAULT)],
            combined_validation_context: Some(CombinedValidationContext {
                default_validation_context: CertificateValidationContext {
                    match_subject_alt_names: exact_sans(sans),
                    ..CertificateValidationContext::default()
                },
                validation_context_sds_secret_config: SdsSecretConfig::named(SDS_ROOTCA),
            }),
        }
    }

    /// Whether this is the mesh's own mutual TLS (the workload certificate or the mesh root),
    /// rather than TLS to a server outside the mesh.
    pub fn is_mesh(&self) -> bool {
        self.tls_certificate_sds_secret_configs
            .iter()
            .any(|c| c.secret() == Secret::Workload)
            || self.combined_validation_context.as_ref().is_some_and(|v| {
                v.validation_context_sds_secret_config.secret() == Secret::MeshRoot
            })
    }

    /// The exact identities of `matchSubjectAltNames`.
    pub fn expected_sans(&self) -> Vec<&str> {
        self.combined_validation_context
            .iter()
            .flat_map(|c| &c.default_validation_context.match_subject_alt_names)
            .filter_map(|m| m.exact.as_deref())
            .collect()
    }

    /// Problems with this context, as (field below the context, message): the mesh's secrets
    /// (and, upstream, Istio's file secrets and the system roots) and exact SAN matchers are
    /// implemented; a certificate from files goes with a root from files or the system, the
    /// workload certificate with the mesh root.
    pub fn problems(&self, side: Side) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let external = side == Side::Upstream;
        for (i, s) in self.tls_certificate_sds_secret_configs.iter().enumerate() {
            let problem = match s.secret() {
                Secret::Workload => None,
                // Upstream: a DestinationRule's client certificate; downstream: a gateway
                // server's `serverCertificate` and `privateKey`.
                Secret::FileCert { cert, key } => (cert.is_empty() || key.is_empty())
                    .then(|| "`file-cert:<certificate>~<key>` needs both paths".to_string()),
                // Downstream: a gateway server's `credentialName`.
                Secret::Credential(name) => credential_problem(name, false),
                _ => Some(format!(
                    "secret {:?} is not served here: only the workload certificate \
                     {SDS_DEFAULT:?}, file-cert:<certificate>~<key> and kubernetes://<secret>",
                    s.name,
                )),
            };
            if let Some(message) = problem {
                out.push((format!("tlsCertificateSdsSecretConfigs[{i}].name"), message));
            }
        }
        // Downstream, a gateway server's two certificates (`credentialNames`,
        // `tlsCertificates`: RSA and ECDSA), of one kind; upstream, one client certificate.
        let certs = &self.tls_certificate_sds_secret_configs;
        let most = if external { 1 } else { MAX_SERVER_CERTIFICATES };
        if certs.len() > most {
            out.push((
                "tlsCertificateSdsSecretConfigs".to_string(),
                format!("at most {most} certificate(s) here"),
            ));
        }
        let kind = |s: &SdsSecretConfig| match s.secret() {
            Secret::Credential(_) => 1,
            Secret::FileCert { .. } => 2,
            _ => 0,
        };
        if certs.len() > 1
            && certs
                .iter()
                .any(|c| kind(c) == 0 || kind(c) != kind(&certs[0]))
        {
            out.push((
                "tlsCertificateSdsSecretConfigs".to_string(),
                "several certificates must all be kubernetes://<secret> or all \
                 file-cert:<certificate>~<key>"
                    .to_string(),
            ));
        }
        let cert_is_mesh = self
            .tls_certificate_sds_secret_configs
            .first()
            .map(|c| c.secret() == Secret::Workload);
        if let Some(v) = &self.combined_validation_context {
            let root = &v.validation_context_sds_secret_config;
            let field = "combinedValidationContext.validationContextSdsSecretConfig.name";
            match root.secret() {
                Secret::MeshRoot if cert_is_mesh == Some(false) => out.push((
                    field.to_string(),
                    "the mesh root ROOTCA goes with the workload certificate \"default\"".into(),
                )),
                Secret::MeshRoot => {}
                Secret::Credential(name) => {
                    if let Some(message) = credential_problem(name, true) {
                        out.push((field.to_string(), message));
                    }
                    if cert_is_mesh == Some(true) {
                        out.push((
                            field.to_string(),
                            "the workload certificate \"default\" goes with the mesh root ROOTCA"
                                .into(),
                        ));
                    }
                }
                // Downstream: a gateway server's `caCertificates` (never the system's roots).
                Secret::SystemRoot if external => {
                    if cert_is_mesh == Some(true) {
                        out.push((
                            field.to_string(),
                            "the workload certificate \"default\" goes with the mesh root ROOTCA"
                                .into(),
                        ));
                    }
                }
                Secret::FileRoot(_) => {
                    if cert_is_mesh == Some(true) {
                        out.push((
                            field.to_string(),
                            "the workload certificate \"default\" goes with the mesh root ROOTCA"
                                .into(),
                        ));
                    }
                }
                _ => out.push((
                    field.to_string(),
                    format!(
                        "secret {:?} is not served here: only the mesh root {SDS_ROOTCA:?}{}",
                        root.name,
                        if external {
                            ", file-root:<path>, file-root:system and kubernetes://<secret>-cacert"
                        } else {
                            ", file-root:<path> and kubernetes://<secret>-cacert"
                        }
                    ),
                )),
            }
        }
        if let Some(v) = &self.combined_validation_context {
            for (i, m) in v
                .default_validation_context
                .match_subject_alt_names
                .iter()
                .enumerate()
            {
                if m.exact_only().is_none() {
                    out.push((
                        format!("combinedValidationContext.defaultValidationContext.matchSubjectAltNames[{i}]"),
                        "only `exact` subject alt name matchers are implemented".to_string(),
                    ));
                }
            }
            let pinned = &v.default_validation_context;
            let at = "combinedValidationContext.defaultValidationContext";
            if let Some(crl) = &pinned.crl {
                let problem = match v.validation_context_sds_secret_config.secret() {
                    Secret::FileRoot(_) => None,
                    Secret::SystemRoot if external => None,
                    Secret::Credential(_) => Some(
                        "a credential's revocation lists come from its Secret (ca.crl or crl), \
                         not a file",
                    ),
                    _ => Some(
                        "revocation lists are checked beside CA certificates from a file or \
                         the system's, not the mesh root",
                    ),
                };
                if let Some(message) = problem {
                    out.push((format!("{at}.crl"), message.to_string()));
                } else if !crl.filename.starts_with('/') {
                    out.push((
                        format!("{at}.crl.filename"),
                        format!("{:?} is not an absolute path", crl.filename),
                    ));
                }
            }
            if external {
                for (field, set) in [
                    (
                        "verifyCertificateSpki",
                        !pinned.verify_certificate_spki.is_empty(),
                    ),
                    (
                        "verifyCertificateHash",
                        !pinned.verify_certificate_hash.is_empty(),
                    ),
                ] {
                    if set {
                        out.push((
                            format!("{at}.{field}"),
                            "pinning certificates is implemented where TLS is terminated (a \
                             client's), not on clusters"
                                .to_string(),
                        ));
                    }
                }
            } else if let Err((field, message)) = pinned.pinned_digests() {
                out.push((format!("{at}.{field}"), message));
            }
        }
        if let Some(params) = &self.tls_params {
            if external {
                out.push((
                    "tlsParams".to_string(),
                    "TLS versions and cipher suites are implemented where TLS is terminated, \
                     not on clusters"
                        .to_string(),
                ));
            }
            for (field, message) in params.problems() {
                out.push((format!("tlsParams.{field}"), message));
            }
        }
        out
    }
}

/// What is wrong with the Kubernetes Secret name of a `kubernetes://` SDS name (`roots`: the
/// `-cacert` one), if anything.
fn credential_problem(name: &str, roots: bool) -> Option<String> {
    let secret = if roots {
        match name.strip_suffix(SDS_CACERT_SUFFIX) {
            Some(base) => base,
            None => {
                return Some(format!(
                    "the roots of a credential are `kubernetes://<secret>{SDS_CACERT_SUFFIX}`, not {name:?}"
                ));
            }
        }
    } else {
        name
    };
    crate::ca::secret_name_problem(secret).map(|why| format!("kubernetes://{name}: {why}"))
}

/// One of a cluster's `transportSocketMatches`: endpoints whose
/// `metadata.filterMetadata["envoy.transport_socket_match"]` has every `match` pair use
/// `transportSocket`; the first match wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransportSocketMatch {
    pub name: String,
    #[serde(rename = "match", default)]
    pub match_: BTreeMap<String, String>,
    pub transport_socket: UpstreamTransportSocket,
}

impl TransportSocketMatch {
    /// Whether an endpoint with `metadata` (its `envoy.transport_socket_match` pairs) matches.
    pub fn matches(&self, metadata: Option<&BTreeMap<String, String>>) -> bool {
        self.match_
            .iter()
            .all(|(k, v)| metadata.and_then(|m| m.get(k)) == Some(v))
    }
}

/// Istio's auto-mTLS matches of an outbound cluster: mutual TLS (with `sni`, ALPN `alpn`,
/// the server one of `sans`) to endpoints with a sidecar, plain TCP to the others.
pub fn auto_mtls_matches(sni: &str, alpn: &[&str], sans: &[String]) -> Vec<TransportSocketMatch> {
    vec![
        TransportSocketMatch {
            name: MATCH_TLS_MODE_ISTIO.to_string(),
            match_: BTreeMap::from([(TLS_MODE_KEY.to_string(), TLS_MODE_ISTIO.to_string())]),
            transport_socket: UpstreamTransportSocket::Tls(Box::new(istio_upstream(
                sni, alpn, sans,
            ))),
        },
        TransportSocketMatch {
            name: MATCH_TLS_MODE_DISABLED.to_string(),
            match_: BTreeMap::new(),
            transport_socket: UpstreamTransportSocket::RawBuffer(RawBuffer {}),
        },
    ]
}

/// Istio's mutual TLS towards a sidecar (a DestinationRule's `ISTIO_MUTUAL`, and the
/// `tlsMode-istio` match of auto mTLS).
pub fn istio_upstream(sni: &str, alpn: &[&str], sans: &[String]) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: CommonTlsContext::istio_mutual(alpn, sans),
        sni: Some(sni.to_string()),
        max_session_keys: None,
    }
}

/// Where the server's certificate is verified against, for TLS to a server outside the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerRoots {
    /// The roots in a file in the sidecar (`caCertificates`): `file-root:<path>`.
    File(String),
    /// The system's roots (no `caCertificates`): `file-root:system`.
    System,
    /// Not verified at all (`insecureSkipVerify: true`): no validation context, as Envoy.
    SkipVerify,
    /// The CA certificates of a `credentialName` Secret: `kubernetes://<name>-cacert`.
    Credential(String),
}

/// The client certificate `MUTUAL` presents to a server outside the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert<'a> {
    /// Files in the sidecar (`clientCertificate`, `privateKey`): `file-cert:<cert>~<key>`.
    Files { cert: &'a str, key: &'a str },
    /// A `credentialName` Secret: `kubernetes://<name>`.
    Credential(&'a str),
}

/// TLS origination to a server outside the mesh, as Istio renders a DestinationRule's `SIMPLE`
/// (`client: None`) or `MUTUAL` (`client: Some(..)`, files in the sidecar or a Secret):
/// `sni`, ALPN `alpn` (none: the proxy offers what the connection carries), the server's
/// chain verified against `roots` and the revocation lists in the file `crl` (`caCrl`), and
/// its name one of `sans` (the `sni` when empty).
pub fn external_upstream(
    sni: &str,
    alpn: &[&str],
    client: Option<ClientCert<'_>>,
    roots: &ServerRoots,
    crl: Option<&str>,
    sans: &[String],
) -> UpstreamTlsContext {
    let root = match roots {
        ServerRoots::File(path) => Some(format!("{SDS_FILE_ROOT}{path}")),
        ServerRoots::System => Some(SDS_SYSTEM_ROOT.to_string()),
        ServerRoots::SkipVerify => None,
        ServerRoots::Credential(name) => Some(format!("{SDS_KUBERNETES}{name}{SDS_CACERT_SUFFIX}")),
    };
    UpstreamTlsContext {
        common_tls_context: CommonTlsContext {
            tls_params: None,
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: client
                .map(|c| SdsSecretConfig {
                    name: match c {
                        ClientCert::Files { cert, key } => format!("{SDS_FILE_CERT}{cert}~{key}"),
                        ClientCert::Credential(name) => format!("{SDS_KUBERNETES}{name}"),
                    },
                })
                .into_iter()
                .collect(),
            combined_validation_context: root.map(|name| CombinedValidationContext {
                default_validation_context: CertificateValidationContext {
                    match_subject_alt_names: exact_sans(sans),
                    crl: crl.map(DataSource::file),
                    ..CertificateValidationContext::default()
                },
                validation_context_sds_secret_config: SdsSecretConfig { name },
            }),
        },
        sni: Some(sni.to_string()),
        max_session_keys: None,
    }
}

/// Istio's SNI for a cluster: `outbound_.<port>_.<subset>_.<host>`.
pub fn istio_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// Istio's mutual TLS termination on an inbound chain.
pub fn istio_downstream(alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: CommonTlsContext::istio_mutual(alpn, &[]),
        require_client_certificate: true,
        ..DownstreamTlsContext::default()
    }
}

/// Where a gateway server's certificate (and, for `MUTUAL` and `OPTIONAL_MUTUAL`, its client
/// CA) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayCert<'a> {
    /// A `credentialName` Secret: `kubernetes://<name>`, clients verified against
    /// `kubernetes://<name>-cacert` (with the Secret's revocation lists, if any).
    Credential(&'a str),
    /// Files in the gateway pod (`serverCertificate`, `privateKey`, `caCertificates`,
    /// `caCrl`): Istio's `file-cert:<cert>~<key>`, clients verified against `file-root:<ca>`
    /// and the revocation lists of the validation context's `crl`.
    Files {
        cert: &'a str,
        key: &'a str,
        ca: Option<&'a str>,
        crl: Option<&'a str>,
    },
}

/// What a gateway server asks of a client's certificate (its `tls.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// `SIMPLE`: none asked for, no validation context.
    Ignored,
    /// `OPTIONAL_MUTUAL`: verified against the server's CA when presented, a client without
    /// one accepted (`requireClientCertificate: false` with a validation context).
    Optional,
    /// `MUTUAL`: required and verified against the server's CA.
    Required,
}

/// The most certificates a terminating chain presents (Istio's limit on `credentialNames` and
/// `tlsCertificates`: an RSA and an ECDSA one).
pub const MAX_SERVER_CERTIFICATES: usize = 2;

/// The ALPN of a gateway server terminating TLS, as Istio's gateways: `h2`, `http/1.1`.
pub const ALPN_GATEWAY: [&str; 2] = ["h2", "http/1.1"];

/// Istio's termination on a gateway server with a certificate of its own (`tls.mode`
/// `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL`): the certificate of `cert`; unless `clients` is
/// [`ClientCerts::Ignored`], a validation context with its CA, and a client certificate
/// required for [`ClientCerts::Required`] (a server from files without `caCertificates` is
/// refused by validation for both mutual modes, so none is rendered here). ALPN
/// [`ALPN_GATEWAY`].
pub fn gateway_termination(cert: GatewayCert<'_>, clients: ClientCerts) -> DownstreamTlsContext {
    gateway_termination_with(&[cert], clients)
}

/// [`gateway_termination`] presenting each of `certs` (a server's `credentialNames` or
/// `tlsCertificates`), in order: the proxy picks one per client (by SNI, then the key types
/// the client can verify). Clients are verified against the first's CA (its credential's
/// `-cacert`, or its CA file and revocation list), as Istio does.
pub fn gateway_termination_with(
    certs: &[GatewayCert<'_>],
    clients: ClientCerts,
) -> DownstreamTlsContext {
    let sds = |cert: &GatewayCert<'_>| match cert {
        GatewayCert::Credential(name) => format!("{SDS_KUBERNETES}{name}"),
        GatewayCert::Files { cert, key, .. } => format!("{SDS_FILE_CERT}{cert}~{key}"),
    };
    let (roots, crl) = match certs.first() {
        Some(GatewayCert::Credential(name)) => (
            Some(format!("{SDS_KUBERNETES}{name}{SDS_CACERT_SUFFIX}")),
            None,
        ),
        Some(GatewayCert::Files { ca, crl, .. }) => (
            ca.map(|ca| format!("{SDS_FILE_ROOT}{ca}")),
            crl.map(DataSource::file),
        ),
        None => (None, None),
    };
    DownstreamTlsContext {
        common_tls_context: CommonTlsContext {
            tls_params: None,
            alpn_protocols: ALPN_GATEWAY.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: certs
                .iter()
                .map(|c| SdsSecretConfig::named(&sds(c)))
                .collect(),
            combined_validation_context: roots.filter(|_| clients != ClientCerts::Ignored).map(
                |name| CombinedValidationContext {
                    default_validation_context: CertificateValidationContext {
                        crl,
                        ..CertificateValidationContext::default()
                    },
                    validation_context_sds_secret_config: SdsSecretConfig::named(&name),
                },
            ),
        },
        require_client_certificate: clients == ClientCerts::Required,
        ..DownstreamTlsContext::default()
    }
}

/// Istio's termination on a gateway server with `tls.mode: ISTIO_MUTUAL`: the gateway's
/// workload certificate (`default`), clients required and verified against the mesh root
/// (`ROOTCA`), as a sidecar's inbound mutual TLS ([`istio_downstream`]) with the ALPN of a
/// gateway ([`ALPN_GATEWAY`]). Any mesh identity is accepted (the operator narrows it with
/// the server's `subjectAltNames` in the validation context).
pub fn gateway_istio_mutual() -> DownstreamTlsContext {
    istio_downstream(&ALPN_GATEWAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_gateway_credential_reads_as_istios_and_validates() {
        let simple = gateway_termination(
            GatewayCert::Credential("bookinfo-credential"),
            ClientCerts::Ignored,
        );
        assert_eq!(
            serde_json::to_value(&simple).unwrap(),
            json!({"commonTlsContext": {"alpnProtocols": ["h2", "http/1.1"],
                "tlsCertificateSdsSecretConfigs": [{"name": "kubernetes://bookinfo-credential"}]},
                "requireClientCertificate": false})
        );
        let mutual = gateway_termination(
            GatewayCert::Credential("bookinfo-credential"),
            ClientCerts::Required,
        );
        assert!(mutual.require_client_certificate);
        assert_eq!(
            mutual
                .common_tls_context
                .combined_validation_context
                .as_ref()
                .unwrap()
                .validation_context_sds_secret_config
                .name,
            "kubernetes://bookinfo-credential-cacert"
        );
        for c in [&simple, &mutual] {
            assert!(!c.common_tls_context.is_mesh());
            assert!(c.common_tls_context.problems(Side::Downstream).is_empty());
        }
        // Certificate files, as Istio names them; MUTUAL verifies against caCertificates.
        let files = |ca| GatewayCert::Files {
            cert: "/etc/certs/tls.crt",
            key: "/etc/certs/tls.key",
            ca,
            crl: None,
        };
        let mutual = gateway_termination(files(Some("/etc/certs/ca.crt")), ClientCerts::Required);
        assert_eq!(
            serde_json::to_value(&mutual).unwrap(),
            json!({"commonTlsContext": {"alpnProtocols": ["h2", "http/1.1"],
                "tlsCertificateSdsSecretConfigs": [{"name": "file-cert:/etc/certs/tls.crt~/etc/certs/tls.key"}],
                "combinedValidationContext": {"defaultValidationContext": {},
                    "validationContextSdsSecretConfig": {"name": "file-root:/etc/certs/ca.crt"}}},
                "requireClientCertificate": true})
        );
        let simple = gateway_termination(files(Some("/etc/certs/ca.crt")), ClientCerts::Ignored);
        assert!(
            simple
                .common_tls_context
                .combined_validation_context
                .is_none()
        );
        for c in [&simple, &mutual] {
            assert!(c.common_tls_context.problems(Side::Downstream).is_empty());
        }
        // caCrl: Envoy's `crl` file beside the CA file.
        let revoking = gateway_termination(
            GatewayCert::Files {
                cert: "/etc/certs/tls.crt",
                key: "/etc/certs/tls.key",
                ca: Some("/etc/certs/ca.crt"),
                crl: Some("/etc/certs/ca.crl"),
            },
            ClientCerts::Required,
        );
        assert_eq!(
            serde_json::to_value(&revoking).unwrap()["commonTlsContext"]["combinedValidationContext"]
                ["defaultValidationContext"],
            json!({"crl": {"filename": "/etc/certs/ca.crl"}})
        );
        assert!(
            revoking
                .common_tls_context
                .problems(Side::Downstream)
                .is_empty()
        );
    }

    #[test]
    fn two_certificates_of_one_kind_are_presented_and_the_first_ones_ca_verifies_clients() {
        let two = gateway_termination_with(
            &[
                GatewayCert::Credential("rsa"),
                GatewayCert::Credential("ecdsa"),
            ],
            ClientCerts::Required,
        );
        assert_eq!(
            serde_json::to_value(&two).unwrap()["commonTlsContext"],
            json!({"alpnProtocols": ["h2", "http/1.1"],
                "tlsCertificateSdsSecretConfigs": [{"name": "kubernetes://rsa"}, {"name": "kubernetes://ecdsa"}],
                "combinedValidationContext": {"defaultValidationContext": {},
                    "validationContextSdsSecretConfig": {"name": "kubernetes://rsa-cacert"}}})
        );
        assert!(two.common_tls_context.problems(Side::Downstream).is_empty());
        let files = |cert, ca| GatewayCert::Files {
            cert,
            key: "/k.pem",
            ca,
            crl: None,
        };
        let two = gateway_termination_with(
            &[files("/rsa.pem", Some("/ca.pem")), files("/ec.pem", None)],
            ClientCerts::Optional,
        );
        let c = &two.common_tls_context;
        assert_eq!(c.tls_certificate_sds_secret_configs.len(), 2);
        assert_eq!(
            c.combined_validation_context
                .as_ref()
                .unwrap()
                .validation_context_sds_secret_config
                .name,
            "file-root:/ca.pem"
        );
        assert!(c.problems(Side::Downstream).is_empty());
        // Three, two kinds, the workload's among others, or two upstream: refused.
        let problems = |certs: &[&str], side| {
            let mut c = two.common_tls_context.clone();
            c.combined_validation_context = None;
            c.tls_certificate_sds_secret_configs =
                certs.iter().map(|n| SdsSecretConfig::named(n)).collect();
            c.problems(side)
        };
        for (certs, side) in [
            (
                &["kubernetes://a", "kubernetes://b", "kubernetes://c"][..],
                Side::Downstream,
            ),
            (&["kubernetes://a", "file-cert:/c~/k"][..], Side::Downstream),
            (&["default", "kubernetes://a"][..], Side::Downstream),
            (&["file-cert:/c~/k", "file-cert:/d~/k"][..], Side::Upstream),
        ] {
            let p = problems(certs, side);
            assert!(
                p.iter().any(|(f, _)| f == "tlsCertificateSdsSecretConfigs"),
                "{certs:?}: {p:?}"
            );
        }
    }

    #[test]
    fn a_revocation_list_file_goes_with_a_ca_file_and_is_an_absolute_path() {
        let crl_problems = |mut ctx: CommonTlsContext, path: &str, side: Side| {
            ctx.combined_validation_context
                .as_mut()
                .unwrap()
                .default_validation_context
                .crl = Some(DataSource::file(path));
            ctx.problems(side)
        };
        let files = gateway_termination(
            GatewayCert::Files {
                cert: "/c.pem",
                key: "/k.pem",
                ca: Some("/ca.pem"),
                crl: None,
            },
            ClientCerts::Required,
        )
        .common_tls_context;
        assert!(crl_problems(files.clone(), "/ca.crl", Side::Downstream).is_empty());
        let relative = crl_problems(files, "ca.crl", Side::Downstream);
        assert_eq!(
            relative[0].0,
            "combinedValidationContext.defaultValidationContext.crl.filename"
        );
        // The mesh root and a credential's roots take no file.
        let mesh = crl_problems(
            gateway_istio_mutual().common_tls_context,
            "/ca.crl",
            Side::Downstream,
        );
        assert!(mesh[0].1.contains("not the mesh root"), "{mesh:?}");
        let credential = crl_problems(
            gateway_termination(GatewayCert::Credential("c"), ClientCerts::Required)
                .common_tls_context,
            "/ca.crl",
            Side::Downstream,
        );
        assert!(credential[0].1.contains("ca.crl or crl"), "{credential:?}");
        // Upstream, beside the system's roots too.
        let system =
            external_upstream("db", &[], None, &ServerRoots::System, Some("/crl.pem"), &[]);
        assert_eq!(
            serde_json::to_value(&system).unwrap()["commonTlsContext"]["combinedValidationContext"]
                ["defaultValidationContext"]["crl"],
            json!({"filename": "/crl.pem"})
        );
        assert!(
            system
                .common_tls_context
                .problems(Side::Upstream)
                .is_empty()
        );
        let back: UpstreamTlsContext =
            serde_json::from_value(serde_json::to_value(&system).unwrap()).unwrap();
        assert_eq!(back, system);
    }

    #[test]
    fn istio_mutual_and_optional_mutual_gateway_servers_read_as_istios() {
        // ISTIO_MUTUAL: the workload certificate, the mesh root, a client certificate
        // required, the gateway's ALPN.
        let mesh = gateway_istio_mutual();
        assert_eq!(
            serde_json::to_value(&mesh).unwrap(),
            json!({"commonTlsContext": {"alpnProtocols": ["h2", "http/1.1"],
                "tlsCertificateSdsSecretConfigs": [{"name": "default"}],
                "combinedValidationContext": {"defaultValidationContext": {},
                    "validationContextSdsSecretConfig": {"name": "ROOTCA"}}},
                "requireClientCertificate": true})
        );
        assert!(mesh.common_tls_context.is_mesh());
        assert!(
            mesh.common_tls_context
                .problems(Side::Downstream)
                .is_empty()
        );
        // OPTIONAL_MUTUAL: MUTUAL's validation context, no client certificate required.
        let optional = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Optional);
        assert!(!optional.require_client_certificate);
        assert_eq!(
            optional
                .common_tls_context
                .combined_validation_context
                .as_ref()
                .unwrap()
                .validation_context_sds_secret_config
                .name,
            "kubernetes://c-cacert"
        );
        let files = GatewayCert::Files {
            cert: "/c.pem",
            key: "/k.pem",
            ca: Some("/ca.pem"),
            crl: None,
        };
        let optional = gateway_termination(files, ClientCerts::Optional);
        assert!(!optional.require_client_certificate);
        assert_eq!(
            optional
                .common_tls_context
                .combined_validation_context
                .as_ref()
                .unwrap()
                .validation_context_sds_secret_config
                .name,
            "file-root:/ca.pem"
        );
        assert!(
            optional
                .common_tls_context
                .problems(Side::Downstream)
                .is_empty()
        );
    }

    #[test]
    fn auto_mtls_reads_and_writes_envoys_shape() {
        let m = auto_mtls_matches(
            &istio_sni(80, "", "nginx.test.svc.cluster.local"),
            &ALPN_ISTIO_TCP,
            &["spiffe://cluster.local/ns/test/sa/default".to_string()],
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!([
                {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                 "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
                    "commonTlsContext": {
                        "alpnProtocols": ["istio-peer-exchange", "istio"],
                        "tlsCertificateSdsSecretConfigs": [{"name": "default"}],
                        "combinedValidationContext": {
                            "defaultValidationContext": {"matchSubjectAltNames": [
                                {"exact": "spiffe://cluster.local/ns/test/sa/default"}]},
                            "validationContextSdsSecretConfig": {"name": "ROOTCA"}}},
                    "sni": "outbound_.80_._.nginx.test.svc.cluster.local"}}},
                {"name": "tlsMode-disabled", "match": {},
                 "transportSocket": {"name": "envoy.transport_sockets.raw_buffer", "typedConfig": {}}}
            ])
        );
        let back: Vec<TransportSocketMatch> = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        let istio = BTreeMap::from([("tlsMode".to_string(), "istio".to_string())]);
        assert!(m[0].matches(Some(&istio)));
        assert!(!m[0].matches(None));
        assert!(m[1].matches(None) && m[1].matches(Some(&istio)));
        assert_eq!(
            m[0].transport_socket
                .tls()
                .unwrap()
                .common_tls_context
                .expected_sans(),
            vec!["spiffe://cluster.local/ns/test/sa/default"]
        );
    }

    #[test]
    fn only_the_mesh_secrets_and_exact_names_are_accepted() {
        assert!(
            istio_downstream(&ALPN_ISTIO_ALL)
                .common_tls_context
                .problems(Side::Downstream)
                .is_empty()
        );
        let mut c = CommonTlsContext::istio_mutual(&[], &["spiffe://a/ns/b/sa/c".into()]);
        c.tls_certificate_sds_secret_configs[0].name = "kubernetes://my-cert".into();
        let v = c.combined_validation_context.as_mut().unwrap();
        v.validation_context_sds_secret_config.name = "kubernetes://my-ca-cacert".into();
        v.default_validation_context.match_subject_alt_names[0].prefix = Some("x".into());
        let fields = |c: &CommonTlsContext, side| -> Vec<String> {
            c.problems(side).into_iter().map(|(f, _)| f).collect()
        };
        // Kubernetes Secrets (a credentialName) are served both ways (a DestinationRule's
        // upstream, a gateway server's downstream); the matcher is not.
        for side in [Side::Downstream, Side::Upstream] {
            assert_eq!(
                fields(&c, side),
                vec!["combinedValidationContext.defaultValidationContext.matchSubjectAltNames[0]"],
            );
        }
        // Files both ways (a gateway server's certificate files); the system's roots only
        // upstream.
        c.tls_certificate_sds_secret_configs[0].name = "file-cert:/c.pem~/k.pem".into();
        for side in [Side::Downstream, Side::Upstream] {
            assert_eq!(fields(&c, side).len(), 1, "{side:?}");
        }
        let v = c.combined_validation_context.as_mut().unwrap();
        v.validation_context_sds_secret_config.name = SDS_SYSTEM_ROOT.into();
        assert_eq!(
            fields(&c, Side::Downstream)[0],
            "combinedValidationContext.validationContextSdsSecretConfig.name"
        );
        assert_eq!(fields(&c, Side::Upstream).len(), 1);
    }

    #[test]
    fn origination_outside_the_mesh_uses_istios_file_secrets() {
        let simple = external_upstream(
            "api.example.com",
            &[],
            None,
            &ServerRoots::File("/etc/ca.pem".into()),
            None,
            &["api.example.com".into()],
        );
        assert_eq!(
            serde_json::to_value(&simple).unwrap(),
            json!({"commonTlsContext": {"combinedValidationContext": {
                    "defaultValidationContext": {"matchSubjectAltNames": [{"exact": "api.example.com"}]},
                    "validationContextSdsSecretConfig": {"name": "file-root:/etc/ca.pem"}}},
                "sni": "api.example.com"})
        );
        assert!(!simple.common_tls_context.is_mesh());
        assert!(
            simple
                .common_tls_context
                .problems(Side::Upstream)
                .is_empty()
        );
        assert!(
            simple
                .common_tls_context
                .problems(Side::Downstream)
                .is_empty()
        );
        let mutual = external_upstream(
            "db",
            &["h2"],
            Some(ClientCert::Files {
                cert: "/c.pem",
                key: "/k.pem",
            }),
            &ServerRoots::System,
            None,
            &[],
        );
        let c = &mutual.common_tls_context;
        assert_eq!(
            c.tls_certificate_sds_secret_configs[0].secret(),
            Secret::FileCert {
                cert: "/c.pem",
                key: "/k.pem"
            }
        );
        assert_eq!(
            c.combined_validation_context
                .as_ref()
                .unwrap()
                .validation_context_sds_secret_config
                .secret(),
            Secret::SystemRoot
        );
        assert!(c.problems(Side::Upstream).is_empty());
        let insecure = external_upstream("db", &[], None, &ServerRoots::SkipVerify, None, &[]);
        assert!(
            insecure
                .common_tls_context
                .combined_validation_context
                .is_none()
        );
        // The workload certificate is not mixed with roots outside the mesh.
        let mut mixed = istio_upstream("x", &ALPN_ISTIO_TCP, &[]).common_tls_context;
        mixed
            .combined_validation_context
            .as_mut()
            .unwrap()
            .validation_context_sds_secret_config = SdsSecretConfig::named(SDS_SYSTEM_ROOT);
        assert_eq!(mixed.problems(Side::Upstream).len(), 1);
    }

    #[test]
    fn a_credential_is_istios_kubernetes_names_upstream_only() {
        let ctx = external_upstream(
            "db.example.com",
            &[],
            Some(ClientCert::Credential("db-client")),
            &ServerRoots::Credential("db-client".into()),
            None,
            &[],
        );
        assert_eq!(
            serde_json::to_value(&ctx).unwrap(),
            json!({"commonTlsContext": {
                    "tlsCertificateSdsSecretConfigs": [{"name": "kubernetes://db-client"}],
                    "combinedValidationContext": {
                        "defaultValidationContext": {},
                        "validationContextSdsSecretConfig": {"name": "kubernetes://db-client-cacert"}}},
                "sni": "db.example.com"})
        );
        let c = &ctx.common_tls_context;
        assert!(!c.is_mesh());
        assert!(
            c.problems(Side::Upstream).is_empty(),
            "{:?}",
            c.problems(Side::Upstream)
        );
        assert!(c.problems(Side::Downstream).is_empty());
        // A roots name without the -cacert suffix, or a name that is no Secret's, is refused.
        let mut bad = c.clone();
        bad.combined_validation_context
            .as_mut()
            .unwrap()
            .validation_context_sds_secret_config = SdsSecretConfig::named("kubernetes://db");
        let p = bad.problems(Side::Upstream);
        assert!(p[0].1.contains("-cacert"), "{p:?}");
        bad.tls_certificate_sds_secret_configs[0] = SdsSecretConfig::named("kubernetes://Db_1");
        let p = bad.problems(Side::Upstream);
        assert_eq!(p[0].0, "tlsCertificateSdsSecretConfigs[0].name");
        assert!(p[0].1.contains("Db_1"), "{p:?}");
    }

    /// A terminating chain's pinned client certificates: Envoy's hex (plain or with colons) and
    /// base64 digests, each malformed one a problem naming it; on clusters, none is rendered.
    #[test]
    fn pinned_client_digests_decode_and_name_what_is_malformed() {
        let hex = "df6ff72fe9116521268f6f2dd4966f51df479883fe7037b39f75916ac3049d1a";
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        let spki = "NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=";
        let mut ctx = gateway_termination(
            GatewayCert::Credential("bookinfo-credential"),
            ClientCerts::Required,
        );
        let v = ctx
            .common_tls_context
            .combined_validation_context
            .as_mut()
            .unwrap();
        v.default_validation_context = CertificateValidationContext {
            match_subject_alt_names: exact_sans(&["client.example.com".to_string()]),
            verify_certificate_spki: vec![spki.to_string()],
            verify_certificate_hash: vec![hex.to_string(), colons],
            crl: None,
        };
        let (hashes, spkis) = v.default_validation_context.pinned_digests().unwrap();
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], hashes[1], "colons or not, the same digest");
        assert_eq!(hashes[0][..3], [0xdf, 0x6f, 0xf7]);
        assert_eq!(spkis[0][..3], [0x36, 0xfa, 0x98]);
        assert!(ctx.common_tls_context.problems(Side::Downstream).is_empty());
        let json = serde_json::to_value(&ctx).unwrap();
        assert_eq!(
            json["commonTlsContext"]["combinedValidationContext"]["defaultValidationContext"]["verifyCertificateSpki"],
            json!([spki])
        );
        let fields = |spki: &str, hash: &str| -> Vec<String> {
            let mut c = ctx.clone();
            let d = &mut c
                .common_tls_context
                .combined_validation_context
                .as_mut()
                .unwrap()
                .default_validation_context;
            d.verify_certificate_spki = vec![spki.to_string()];
            d.verify_certificate_hash = vec![hex.to_string(), hash.to_string()];
            c.common_tls_context
                .problems(Side::Downstream)
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        let at = "combinedValidationContext.defaultValidationContext";
        assert_eq!(
            fields(spki, &hex[2..]),
            [format!("{at}.verifyCertificateHash[1]")]
        );
        assert_eq!(
            fields(spki, "df:6ff7"),
            [format!("{at}.verifyCertificateHash[1]")]
        );
        assert_eq!(
            fields(spki, &hex.replace('d', "g")),
            [format!("{at}.verifyCertificateHash[1]")]
        );
        assert_eq!(
            fields("bm90IDMyIGJ5dGVz", hex),
            [format!("{at}.verifyCertificateSpki[0]")]
        );
        assert_eq!(
            fields("not base64!", hex),
            [format!("{at}.verifyCertificateSpki[0]")]
        );
        // Clusters pin nothing.
        assert_eq!(
            ctx.common_tls_context
                .problems(Side::Upstream)
                .into_iter()
                .map(|(f, _)| f)
                .filter(|f| f.starts_with(at))
                .collect::<Vec<_>>(),
            [
                format!("{at}.verifyCertificateSpki"),
                format!("{at}.verifyCertificateHash")
            ]
        );
    }

    /// A gateway server's TLS versions and suites read as Envoy's `tlsParams`; what rustmesh's
    /// TLS cannot do is a problem naming its field.
    #[test]
    fn tls_params_read_as_envoys_and_name_what_rustmesh_cannot_do() {
        let mut ctx = gateway_termination(
            GatewayCert::Credential("bookinfo-credential"),
            ClientCerts::Ignored,
        );
        ctx.common_tls_context.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: Some(TlsVersion::V1_3),
            tls_maximum_protocol_version: Some(TlsVersion::Auto),
            cipher_suites: vec![],
        });
        let v = serde_json::to_value(&ctx).unwrap();
        assert_eq!(
            v["commonTlsContext"]["tlsParams"],
            json!({"tlsMinimumProtocolVersion": "TLSv1_3", "tlsMaximumProtocolVersion": "TLS_AUTO"})
        );
        let back: DownstreamTlsContext = serde_json::from_value(v).unwrap();
        assert_eq!(back, ctx);
        assert!(ctx.common_tls_context.problems(Side::Downstream).is_empty());
        let params = |j: serde_json::Value| -> TlsParameters { serde_json::from_value(j).unwrap() };
        assert_eq!(
            params(json!({})).versions(),
            (TlsVersion::V1_2, TlsVersion::V1_3),
            "Envoy's defaults"
        );
        let fields = |p: TlsParameters| -> Vec<String> {
            p.problems().into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(
            fields(params(json!({"tlsMinimumProtocolVersion": "TLSv1_0"}))),
            ["tlsMinimumProtocolVersion"]
        );
        assert_eq!(
            fields(params(json!({"tlsMaximumProtocolVersion": "TLSv1_1"}))),
            ["tlsMaximumProtocolVersion"]
        );
        assert_eq!(
            fields(params(
                json!({"tlsMinimumProtocolVersion": "TLSv1_3", "tlsMaximumProtocolVersion": "TLSv1_2"})
            )),
            ["tlsMinimumProtocolVersion"]
        );
        assert_eq!(
            fields(params(
                json!({"cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256", "AES128-SHA"]})
            )),
            ["cipherSuites[1]"]
        );
        assert_eq!(
            fields(params(
                json!({"tlsMinimumProtocolVersion": "TLSv1_3", "cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256"]})
            )),
            ["cipherSuites"]
        );
        assert!(
            serde_json::from_value::<TlsParameters>(
                json!({"tlsMinimumProtocolVersion": "TLSv1.2"})
            )
            .is_err()
        );
        // Clusters originate TLS with the defaults: parameters there are a problem.
        let mut upstream = external_upstream(
            "www.example.com",
            &[],
            None,
            &ServerRoots::System,
            None,
            &[],
        );
        upstream.common_tls_context.tls_params = Some(params(json!({})));
        let p = upstream.common_tls_context.problems(Side::Upstream);
        assert_eq!(
            p.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
            ["tlsParams"]
        );
    }
}
