//! The certificate service's wire contract, between the sidecar (client) and the mesh CA in the
//! operator (server): Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate`, so a
//! sidecar speaks to rustmesh's CA exactly as Istio's agent speaks to istiod on port 15012.
//!
//! The caller authenticates with its projected service-account token (audience `istio-ca`) as
//! `authorization: Bearer <token>` metadata; the request carries a PEM CSR and the lifetime
//! asked for; the answer is the chain, leaf first and root last.
//!
//! On the same channel, rustmesh's own `rustmesh.v1.CredentialService/FetchCredential` serves
//! a DestinationRule's `credentialName` Secret to a sidecar allowed to read it (below).

/// The gRPC service name.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";

/// The method path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// The CA's port (Istio's istiod 15012: gRPC over TLS).
pub const CA_PORT: u16 = 15012;

/// The largest message either side accepts (bytes): a CSR is about 1 KiB, a chain a few.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The audience of the token the sidecar presents (Istio's default `TOKEN_AUDIENCES`).
pub const TOKEN_AUDIENCE: &str = "istio-ca";

/// Where the injector mounts the projected `istio-ca` token (volume `istio-token`).
pub const TOKEN_MOUNT: &str = "/var/run/secrets/tokens";
/// The token's file name in [`TOKEN_MOUNT`].
pub const TOKEN_FILE: &str = "istio-token";
/// The token's lifetime asked of the kubelet (Istio's 12 h; the kubelet renews it at 80 %).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 43200;
/// Where the injector mounts ConfigMap `istio-ca-root-cert` (volume `istiod-ca-cert`).
pub const ROOT_CERT_MOUNT: &str = "/var/run/secrets/istio";

/// `IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate request; only its public key is used.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds (0: the CA's default).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Opaque metadata (Istio uses it for impersonation by trusted callers). rustmesh's CA
    /// supports none and refuses a request carrying any field, naming it.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the leaf first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

// ---- credentials: a `credentialName` Secret, served to the sidecar that may read it --------
//
// Istio serves a DestinationRule's `credentialName` to a sidecar over SDS from istiod; rustmesh
// has no xDS stream, so the sidecar asks the CA, on the same authenticated channel as its
// certificate, with its own small service. The CA answers only for a Secret in the caller's
// namespace that the caller's service account may `list` (Istio's check: a SubjectAccessReview),
// and the key never leaves memory on either side.

/// The largest credential answer either side accepts (bytes): a CA bundle may be large.
pub const MAX_CREDENTIAL_BYTES: usize = 1024 * 1024;

/// The credential service's gRPC name (rustmesh's own; Istio uses SDS over xDS).
pub const CREDENTIAL_SERVICE: &str = "rustmesh.v1.CredentialService";

/// The method path.
pub const FETCH_CREDENTIAL: &str = "/rustmesh.v1.CredentialService/FetchCredential";

/// Istio's keys of a generic (`Opaque`) credential Secret: certificate chain, key, CA.
pub const KEY_CERT: &str = "cert";
/// See [`KEY_CERT`].
pub const KEY_KEY: &str = "key";
/// See [`KEY_CERT`].
pub const KEY_CACERT: &str = "cacert";
/// Istio's keys of a `kubernetes.io/tls` credential Secret (with the CA as `ca.crt`).
pub const KEY_TLS_CRT: &str = "tls.crt";
/// See [`KEY_TLS_CRT`].
pub const KEY_TLS_KEY: &str = "tls.key";
/// See [`KEY_TLS_CRT`].
pub const KEY_CA_CRT: &str = "ca.crt";
/// Istio's key of the certificate revocation lists (PEM) of a generic credential Secret,
/// read with its CA certificates.
pub const KEY_CRL: &str = "crl";
/// Istio's key of the certificate revocation lists of a `kubernetes.io/tls` credential Secret.
pub const KEY_CA_CRL: &str = "ca.crl";

/// `FetchCredentialRequest`: one SDS resource of a credential, by Istio's name without the
/// `kubernetes://` prefix: `<secret>` (certificate and key) or `<secret>-cacert` (the roots).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchCredentialRequest {
    /// `<secret>` or `<secret>-cacert`.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `FetchCredentialResponse`: PEM texts; for `<secret>` the chain and key, for
/// `<secret>-cacert` the CA certificates and revocation lists. Its `Debug` never shows the
/// key.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct FetchCredentialResponse {
    /// The certificate chain, leaf first (empty for the roots).
    #[prost(string, tag = "1")]
    pub cert_chain: String,
    /// The private key (empty for the roots).
    #[prost(string, tag = "2")]
    pub private_key: String,
    /// The CA certificates (empty for a certificate and key).
    #[prost(string, tag = "3")]
    pub ca_certificates: String,
    /// The certificate revocation lists of the CA (empty: none; only for the roots).
    #[prost(string, tag = "4")]
    pub crl: String,
}

impl std::fmt::Debug for FetchCredentialResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchCredentialResponse")
            .field("cert_chain", &self.cert_chain.len())
            .field("private_key", &"<redacted>")
            .field("ca_certificates", &self.ca_certificates.len())
            .field("crl", &self.crl.len())
            .finish()
    }
}

/// Why `name` cannot be a Kubernetes Secret's name (a DNS-1123 subdomain), if it cannot.
pub fn secret_name_problem(name: &str) -> Option<String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 253 {
        Some(format!(
            "{name:?} is not a Secret name: 1 to 253 characters"
        ))
    } else if !name.chars().all(ok_char) || !edge(name.chars().next()) || !edge(name.chars().last())
    {
        Some(format!(
            "{name:?} is not a Secret name: lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_are_istios() {
        // csr = 1 (string), validity_duration = 3 (int64): the bytes Istio's agent sends.
        let req = IstioCertificateRequest {
            csr: "C".into(),
            validity_duration: 5,
            metadata: None,
        };
        assert_eq!(req.encode_to_vec(), vec![0x0a, 1, b'C', 0x18, 5]);
        let resp = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(resp.encode_to_vec(), vec![0x0a, 1, b'a', 0x0a, 1, b'b']);
        assert_eq!(
            IstioCertificateResponse::decode(&resp.encode_to_vec()[..]).unwrap(),
            resp
        );
    }

    #[test]
    fn credential_messages_never_show_the_key() {
        let r = FetchCredentialResponse {
            cert_chain: "C".into(),
            private_key: "SECRET-KEY".into(),
            ca_certificates: String::new(),
            crl: String::new(),
        };
        assert!(!format!("{r:?}").contains("SECRET-KEY"));
        assert_eq!(
            FetchCredentialRequest { name: "db".into() }.encode_to_vec(),
            vec![0x0a, 2, b'd', b'b']
        );
    }

    #[test]
    fn secret_names_are_dns_subdomains() {
        for ok in ["db", "db-client.v1", "a"] {
            assert_eq!(secret_name_problem(ok), None, "{ok}");
        }
        for bad in ["", "Db", "db_1", "-db", "db-", "a/b", &"x".repeat(254)] {
            assert!(secret_name_problem(bad).is_some(), "{bad}");
        }
    }
}
