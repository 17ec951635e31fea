//! Asks the mesh CA for this workload's certificate: a fresh P-256 key and CSR made here, sent
//! to Istio's `IstioCertificateService/CreateCertificate` over gRPC and TLS (the CA's certificate
//! verified against the mesh root), authenticated by the pod's projected service-account token.
//!
//! The token and the root are read from their files at each request (the kubelet rotates the
//! token; the root ConfigMap may change during a root rotation), with size limits. The key stays
//! in memory.
//!
//! The same channel fetches a DestinationRule's `credentialName` Secret
//! ([`CaClient::fetch_credential`]), which the CA serves to this workload only if its service
//! account may read it; the answer (a key among it) stays in memory too.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustmesh_xds::ca::{
    CA_PORT, CREATE_CERTIFICATE, FETCH_CREDENTIAL, FetchCredentialRequest, FetchCredentialResponse,
    IstioCertificateRequest, IstioCertificateResponse, MAX_CREDENTIAL_BYTES, MAX_MESSAGE_BYTES,
};
use rustmesh_xds::identity::SpiffeId;

use super::cert::{CertError, WorkloadCert, parse_pem_certs};

/// Where the injector mounts the `istio-ca` token (Istio's path).
pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// Where the injector mounts the `istio-ca-root-cert` ConfigMap's `root-cert.pem`.
pub const ROOT_CERT_PATH: &str = "/var/run/secrets/istio/root-cert.pem";
/// Istio's default `CA_ADDR`.
pub const DEFAULT_CA_ADDR: &str = "istiod.istio-system.svc:15012";
/// The largest token file read (bytes).
pub const MAX_TOKEN_BYTES: u64 = 16 * 1024;
/// How long one request may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no certificate was obtained; names the file, the CA or the check that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// `CA_ADDR` is not `host:port`.
    #[error("CA_ADDR {0:?} is not host:port")]
    Address(String),
    /// The token file could not be read.
    #[error("service-account token {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The mesh root could not be read.
    #[error("mesh root {path}: {reason}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key or CSR could not be made.
    #[error("generating the key and CSR: {0}")]
    Csr(String),
    /// The CA could not be reached.
    #[error("connecting to the CA at {addr}: {reason}")]
    Connect {
        /// `CA_ADDR`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The CA refused.
    #[error("the CA refused: {code:?}: {message}")]
    Refused {
        /// The gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The CA's answer failed a check.
    #[error("the CA's answer: {0}")]
    Answer(#[from] CertError),
}

/// Looks a host name up in the mesh's own name table (the one the DNS proxy answers from), so
/// the CA is found where the cluster has no DNS, as the app's names are.
pub type Resolver = crate::dns::NameTable;

/// A client of the mesh CA for one workload.
#[derive(Clone)]
pub struct CaClient {
    addr: String,
    host: String,
    port: u16,
    token_path: PathBuf,
    root_path: PathBuf,
    ttl: Duration,
    resolver: Option<Resolver>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("addr", &self.addr)
            .field("token_path", &self.token_path)
            .field("root_path", &self.root_path)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    Ok(text)
}

impl CaClient {
    /// A client for the CA at `addr` (`host:port`, Istio's `CA_ADDR`), asking for certificates
    /// valid `ttl` (Istio's `SECRET_TTL`), with the token and root at the given paths.
    pub fn new(
        addr: &str,
        token_path: impl Into<PathBuf>,
        root_path: impl Into<PathBuf>,
        ttl: Duration,
    ) -> Result<Self, FetchError> {
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .map_err(|_| FetchError::Address(addr.to_string()))?,
            ),
            None => (addr, CA_PORT),
        };
        if host.is_empty() {
            return Err(FetchError::Address(addr.to_string()));
        }
        Ok(CaClient {
            addr: addr.to_string(),
            host: host.to_string(),
            port,
            token_path: token_path.into(),
            root_path: root_path.into(),
            ttl,
            resolver: None,
        })
    }

    /// Looks the CA's host up in `resolver` first (the mesh's name table), then in the system
    /// resolver.
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// The address to connect to: an IP literal as is, else the mesh's name table, else the
    /// system resolver.
    async fn resolve(&self) -> Result<std::net::SocketAddr, FetchError> {
        crate::dns::resolve(&self.host, self.port, self.resolver.as_ref())
            .await
            .map_err(|reason| FetchError::Connect {
                addr: self.addr.clone(),
                reason,
            })
    }

    /// The mesh trust bundle, read now.
    pub fn roots(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, FetchError> {
        let roots_err = |reason: String| FetchError::Roots {
            path: self.root_path.clone(),
            reason,
        };
        let pem =
            read_limited(&self.root_path, super::cert::MAX_PEM_BYTES as u64).map_err(roots_err)?;
        parse_pem_certs("the mesh root", &pem).map_err(|e| roots_err(e.to_string()))
    }

    /// The token, read now, as an `authorization` header value.
    fn bearer(&self) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, FetchError> {
        let token = read_limited(&self.token_path, MAX_TOKEN_BYTES).map_err(|reason| {
            FetchError::Token {
                path: self.token_path.clone(),
                reason,
            }
        })?;
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| FetchError::Token {
                path: self.token_path.clone(),
                reason: "not a valid header value".into(),
            })
    }

    /// A gRPC client of the CA over TLS, the CA's certificate verified against the mesh root,
    /// answers of at most `max_answer` bytes.
    async fn connect(
        &self,
        max_answer: usize,
    ) -> Result<tonic::client::Grpc<tonic::transport::Channel>, FetchError> {
        let root_pem = std::fs::read_to_string(&self.root_path).map_err(|e| FetchError::Roots {
            path: self.root_path.clone(),
            reason: e.to_string(),
        })?;
        let connect = |reason: String| FetchError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let target = self.resolve().await?;
        let connector = tower::service_fn(move |_: http::Uri| async move {
            let tcp = tokio::net::TcpStream::connect(target).await?;
            // A request and its answer are small writes: no Nagle delay between them.
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
        });
        let channel =
            tonic::transport::Channel::from_shared(format!("https://{host}:{}", self.port))
                .map_err(|e| connect(e.to_string()))?
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(root_pem))
                        .domain_name(self.host.clone()),
                )
                .map_err(|e| connect(e.to_string()))?
                .connect_timeout(REQUEST_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .connect_with_connector(connector)
                .await
                .map_err(|e| connect(error_chain(&e)))?;
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(max_answer)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        grpc.ready().await.map_err(|e| connect(error_chain(&e)))?;
        Ok(grpc)
    }

    /// A new key and a certificate for `identity`.
    pub async fn fetch(&self, identity: &SpiffeId) -> Result<WorkloadCert, FetchError> {
        let bearer = self.bearer()?;
        let roots = self.roots()?;
        let csr_err = |e: rcgen::Error| FetchError::Csr(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(csr_err)?,
        )];
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(csr_err)?;
        let request = IstioCertificateRequest {
            csr,
            validity_duration: self.ttl.as_secs() as i64,
            metadata: None,
        };
        let answer: IstioCertificateResponse = self
            .call(bearer, CREATE_CERTIFICATE, MAX_MESSAGE_BYTES, request)
            .await?;
        let pkcs8 = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok(WorkloadCert::accept(
            identity,
            pkcs8,
            key.public_key_raw(),
            &answer.cert_chain,
            roots,
            SystemTime::now(),
        )?)
    }

    /// A `credentialName` Secret's SDS resource `name` (`<secret>` or `<secret>-cacert`), as
    /// the CA serves it to this workload.
    pub async fn fetch_credential(
        &self,
        name: &str,
    ) -> Result<FetchCredentialResponse, FetchError> {
        let bearer = self.bearer()?;
        let request = FetchCredentialRequest {
            name: name.to_string(),
        };
        self.call(bearer, FETCH_CREDENTIAL, MAX_CREDENTIAL_BYTES, request)
            .await
    }

    /// One unary call to the CA at `path`, authenticated by `bearer`, with answers of at most
    /// `max_answer` bytes.
    async fn call<Req, Resp>(
        &self,
        bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        path: &'static str,
        max_answer: usize,
        request: Req,
    ) -> Result<Resp, FetchError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.connect(max_answer).await?;
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert("authorization", bearer);
        Ok(grpc
            .unary::<_, Resp, _>(
                request,
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(|s| FetchError::Refused {
                code: s.code(),
                message: s.message().to_string(),
            })?
            .into_inner())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use rustmesh_xds::ca::{ROOT_CERT_MOUNT, TOKEN_FILE, TOKEN_MOUNT};
    use rustmesh_xds::well_known::CA_ROOT_CERT_KEY;

    #[test]
    fn the_paths_are_where_the_injector_mounts() {
        assert_eq!(super::TOKEN_PATH, format!("{TOKEN_MOUNT}/{TOKEN_FILE}"));
        assert_eq!(
            super::ROOT_CERT_PATH,
            format!("{ROOT_CERT_MOUNT}/{CA_ROOT_CERT_KEY}")
        );
    }
}
