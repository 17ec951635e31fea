//! The certificate service's wire contract, between the sidecar (client) and the mesh CA in the
//! operator (server): Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate`, so a
//! sidecar speaks to rustmesh's CA exactly as Istio's agent speaks to istiod on port 15012.
//!
//! The caller authenticates with its projected service-account token (audience `istio-ca`) as
//! `authorization: Bearer <token>` metadata; the request carries a PEM CSR and the lifetime
//! asked for; the answer is the chain, leaf first and root last.

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
}
