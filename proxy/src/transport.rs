//! A connection's bytes, plain or TLS ([`Io`]), and Istio's mutual TLS on them: a filter chain
//! with a `transportSocket` terminates it ([`Terminate`]; a gateway's chains also with a
//! `credentialName`'s certificate), an endpoint whose cluster says so originates it
//! ([`Originate`]). Below the listeners, the HTTP connection manager and the
//! pools; above [`crate::identity`], whose certificate store both read at each handshake.
//!
//! - **Configurations are cached per certificate.** Building a rustls configuration parses the
//!   chain and the key; it is done once per certificate generation (the store counts renewals)
//!   and per ALPN set, not per connection. A renewed certificate is used by the next handshake;
//!   open connections keep theirs (a renewal drops no connection). Client configurations keep
//!   rustls' session cache, so a reconnect to the same sidecar resumes instead of a full
//!   handshake.
//! - **No certificate, no TLS.** Without a valid workload certificate (no CA configured, or not
//!   issued yet) a chain or an endpoint that needs TLS fails ([`TlsError::NoCertificate`]): the
//!   connection is refused, never sent in plain text instead.
//! - **ALPN** is Istio's: a client offers `istio-peer-exchange`, `istio` for TCP, and
//!   `istio-http/1.1`, `istio`, `http/1.1` or `istio-h2`, `istio`, `h2` for HTTP ([`Purpose`]),
//!   so the server's chain matching (`applicationProtocols`) sees a mesh peer and which HTTP it
//!   speaks before any certificate is read; the server selects from the chain's list.
//! - **TLS to a server outside the mesh** (a DestinationRule's `SIMPLE` / `MUTUAL`, an
//!   `UpstreamTlsContext` with Istio's `file-root:`/`file-cert:` secrets): the server's chain is
//!   verified against the roots of the file, or the system's (`file-root:system`), and its name
//!   against the expected subject alt names or the SNI; `MUTUAL` presents the certificate of
//!   the files. The files are read (at most [`MAX_FILE_BYTES`] each) when the cluster is first
//!   used and kept while its configuration stands; one that is missing or bad fails that
//!   cluster's connections, naming the file, before dialing. ALPN: the context's, else `h2` or
//!   `http/1.1` for HTTP and none for TCP. A `credentialName` (`kubernetes://<secret>` and
//!   `kubernetes://<secret>-cacert`) is fetched from the mesh CA instead
//!   ([`crate::identity::credential`]) and followed: a rotated Secret is used by the next
//!   handshakes.
//! - **A gateway's TLS** (a `Gateway` server's `credentialName`, `tls.mode` `SIMPLE`, `MUTUAL`
//!   or `OPTIONAL_MUTUAL`: a chain whose context presents `kubernetes://<secret>`): the Secret's
//!   certificate is presented, fetched from the mesh CA like a DestinationRule's and followed
//!   the same way (kept in memory only, a rotated Secret used by the next handshakes); with a
//!   validation context (`MUTUAL`, `OPTIONAL_MUTUAL`: `kubernetes://<secret>-cacert`) a client
//!   certificate is verified against the Secret's CA, and required with
//!   `requireClientCertificate` (`MUTUAL`; `OPTIONAL_MUTUAL` accepts a client without one).
//!   Certificate files (`file-cert:`, `file-root:`) are served the same way. A server's
//!   `ISTIO_MUTUAL` is the mesh's context (`default`, `ROOTCA`, a client certificate required):
//!   the router presents its own workload certificate (it has one when the mesh CA is on, as it
//!   originates auto mTLS) and verifies clients against the mesh root; without a workload
//!   certificate its handshakes fail as above. The configuration is cached
//!   per credential versions. A credential the CA does not serve (unreachable, no such Secret,
//!   not allowed) fails the handshake ([`TlsError::Credential`], naming it) before any byte is
//!   sent: the connection is refused, never served in plain text nor with the workload
//!   certificate. Subject alt name matchers on client certificates are not implemented and
//!   refuse the chain, naming the field.
//! - **Resumption** is on by default both ways (rustls' session cache and TLS 1.3 tickets);
//!   Envoy's `maxSessionKeys: 0` (client) and `disableStatefulSessionResumption` (server) turn
//!   it off, so every handshake is a full one.
//! - Handshakes are bounded by [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustmesh_xds::identity::SpiffeId;
use rustmesh_xds::tls::{DownstreamTlsContext, SDS_CACERT_SUFFIX, Secret, UpstreamTlsContext};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::Store;
use crate::identity::pinned::ClientPins;
use crate::identity::tls::{
    ChainAndKey, Trust, client_config, credential_server_config, external_client_config,
    peer_identity, pem_crls, server_config_with,
};
use crate::sync::lock;

/// The longest a TLS handshake may take, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest certificate, key or root file read (TLS outside the mesh, a gateway's
/// certificate files; a system bundle is about 200 KiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why TLS could not be set up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The sidecar holds no valid workload certificate (no CA, or not issued yet).
    #[error("no workload certificate: mutual TLS is not possible yet")]
    NoCertificate,
    /// The certificate could not be made into a TLS configuration.
    #[error("{0}")]
    Config(String),
    /// The handshake failed (the peer's certificate was refused, or it refused ours...).
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// A certificate, key or root file for TLS outside the mesh is missing or bad.
    #[error("{0}")]
    File(String),
    /// A `credentialName` Secret was not served, or is bad.
    #[error("{0}")]
    Credential(String),
}

/// A connection's byte stream.
#[derive(Debug)]
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS terminated here (inbound).
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS originated here (outbound).
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Server(s) => s.get_ref().0,
            Io::Client(s) => s.get_ref().0,
        }
    }

    /// Whether TLS runs on it.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Io::Plain(_))
    }

    /// The peer's SPIFFE id, when TLS verified one.
    pub fn peer_identity(&self) -> Option<SpiffeId> {
        match self {
            Io::Plain(_) => None,
            Io::Server(s) => peer_identity(s.get_ref().1.peer_certificates()),
            Io::Client(s) => peer_identity(s.get_ref().1.peer_certificates()),
        }
    }

    /// The peer's leaf certificate, when TLS verified one.
    pub fn peer_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        match self {
            Io::Plain(_) => None,
            Io::Server(s) => s.get_ref().1.peer_certificates()?.first(),
            Io::Client(s) => s.get_ref().1.peer_certificates()?.first(),
        }
    }

    /// Envoy's `x-forwarded-client-cert` element for the client of a connection this side
    /// terminated (`own`: this workload's SPIFFE id): `By=<own>;Hash=<SHA-256 of the client's
    /// leaf, hex>;Subject="";URI=<client's id>`, what Istio's inbound sidecar adds
    /// (`APPEND_FORWARD`, subject and URI set). `None` without a verified client identity.
    pub fn client_cert_details(&self, own: Option<&str>) -> Option<String> {
        let leaf = self.peer_certificate()?;
        let peer = self.peer_identity()?;
        let hash = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let subject = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        let by = own.map(|o| format!("By={o};")).unwrap_or_default();
        Some(format!("{by}Hash={hex};Subject=\"{subject}\";URI={peer}"))
    }

    /// The server name the client asked for (SNI), on a connection whose TLS this side
    /// terminated.
    pub fn sni(&self) -> Option<&str> {
        match self {
            Io::Server(s) => s.get_ref().1.server_name(),
            _ => None,
        }
    }

    /// The negotiated ALPN value, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Io::Plain(_) => None,
            Io::Server(s) => s.get_ref().1.alpn_protocol(),
            Io::Client(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    /// Sets `TCP_NODELAY` on the connection underneath.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }
}

impl From<TcpStream> for Io {
    fn from(s: TcpStream) -> Self {
        Io::Plain(s)
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Server($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Io::Client($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Server(s) => s.is_write_vectored(),
            Io::Client(s) => s.is_write_vectored(),
        }
    }
}

/// What an outbound connection carries, which decides the ALPN a client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Raw TCP (the TCP proxy).
    Tcp,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

impl Purpose {
    /// Istio's ALPN for it (its `alpn` filter's override for HTTP).
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Purpose::Tcp => &[b"istio-peer-exchange", b"istio"],
            Purpose::Http1 => &[b"istio-http/1.1", b"istio", b"http/1.1"],
            Purpose::Http2 => &[b"istio-h2", b"istio", b"h2"],
        }
    }

    /// The ALPN offered to a server outside the mesh: what the connection carries.
    pub fn plain_alpn(self) -> &'static [&'static [u8]] {
        match self {
            Purpose::Tcp => &[],
            Purpose::Http1 => &[b"http/1.1"],
            Purpose::Http2 => &[b"h2"],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A configuration built for one certificate generation.
type Cached<T> = Mutex<Option<(u64, T)>>;

/// A filter chain's `DownstreamTlsContext`, ready to terminate TLS.
pub struct Terminate {
    alpn: Vec<Vec<u8>>,
    /// Whose certificate is presented, and how clients are verified.
    serves: Serves,
    /// Resumption from the session cache (`disableStatefulSessionResumption` turns it off).
    resumption: bool,
    /// The TLS versions and TLS 1.2 suites allowed (`commonTlsContext.tlsParams`).
    params: Option<rustmesh_xds::tls::TlsParameters>,
    /// What a client certificate must name or be, beyond its chain
    /// (`defaultValidationContext`: a gateway server's `subjectAltNames`,
    /// `verifyCertificateSpki`, `verifyCertificateHash`).
    pins: ClientPins,
    store: Arc<Store>,
    /// The configuration last built, with what it was built from: the workload certificate's
    /// generation (`(generation, 0)`), the versions of the credentials (certificate, roots), or
    /// the files' content (`(fingerprint, 0)`).
    cache: CachedFor<Arc<rustls::ServerConfig>>,
    /// What [`Serves::Files`] read last, and when.
    files: Mutex<Option<(std::time::Instant, Arc<ServedFiles>)>>,
}

/// The certificate chain, key and client CA of a [`Serves::Files`] chain, as read.
struct ServedFiles {
    /// Each certificate chain and its key.
    certs: Vec<ChainAndKey>,
    /// The client CA, with the revocation lists of the `crl` file if any.
    roots: Option<Trust>,
    /// A fingerprint of the bytes read: a re-read with the same content keeps the
    /// configuration built.
    version: u64,
}

/// A configuration built for one pair of versions.
type CachedFor<T> = Mutex<Option<((u64, u64), T)>>;

/// What a [`Terminate`] presents and verifies.
#[derive(Clone, Debug, PartialEq)]
enum Serves {
    /// The mesh's mutual TLS: the workload certificate, clients verified against the mesh root.
    Mesh { require_client_certificate: bool },
    /// A gateway server's `credentialName` (or `credentialNames`): the certificate of each
    /// `kubernetes://<cert>`, clients verified against `kubernetes://<roots>` when set (names
    /// without the prefix).
    Credential {
        certs: Vec<String>,
        roots: Option<String>,
        require_client_certificate: bool,
    },
    /// A gateway server's certificate files (each `file-cert:<cert>~<key>` of `certs`),
    /// clients verified against the CA file `roots` (`file-root:<path>`) when set, and the
    /// revocation lists of the file `crl` (the validation context's `crl`, a server's
    /// `caCrl`): read from the gateway pod's filesystem (a mounted Secret), again every
    /// [`crate::identity::credential::REFRESH`].
    Files {
        certs: Vec<(String, String)>,
        roots: Option<String>,
        crl: Option<String>,
        require_client_certificate: bool,
    },
}

impl std::fmt::Debug for Terminate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminate")
            .field("alpn", &self.alpn)
            .field("serves", &self.serves)
            .finish_non_exhaustive()
    }
}

impl Terminate {
    /// Terminates as `ctx` says with the certificates of `store`: the workload certificate and
    /// the mesh root (a sidecar's inbound mutual TLS, a gateway server's `ISTIO_MUTUAL`), a
    /// `credentialName`'s Secret (`kubernetes://<secret>`, clients verified against
    /// `kubernetes://<secret>-cacert` when there is a validation context) or certificate files
    /// (`file-cert:`, clients verified against `file-root:`). A client certificate is required
    /// with `requireClientCertificate`; without it, a validation context verifies one when
    /// presented and accepts a client without (Istio's `OPTIONAL_MUTUAL`); a verified client
    /// certificate must also meet the validation context's pins (subject alt names and
    /// digests, [`ClientPins`]). Fails, naming the field below the context, on what it cannot
    /// do: another secret, roots of another kind than the certificate's, a matcher other than
    /// `exact` or a malformed digest, a required client certificate without roots to verify it
    /// against ([`client_roots`]).
    pub fn new(ctx: &DownstreamTlsContext, store: Arc<Store>) -> Result<Self, (String, String)> {
        let common = &ctx.common_tls_context;
        let validation = common.combined_validation_context.as_ref();
        let err = |field: &str, message: String| (format!("commonTlsContext.{field}"), message);
        let pins = match validation {
            Some(v) => {
                ClientPins::of(&v.default_validation_context).map_err(|(field, message)| {
                    err(
                        &format!("combinedValidationContext.defaultValidationContext.{field}"),
                        message,
                    )
                })?
            }
            None => ClientPins::default(),
        };
        let certs = &common.tls_certificate_sds_secret_configs;
        if certs.len() > rustmesh_xds::tls::MAX_SERVER_CERTIFICATES {
            return Err(err(
                "tlsCertificateSdsSecretConfigs",
                format!(
                    "at most {} certificates are presented",
                    rustmesh_xds::tls::MAX_SERVER_CERTIFICATES
                ),
            ));
        }
        if let Some(p) = &common.tls_params
            && let Some((field, message)) = p.problems().into_iter().next()
        {
            return Err(err(&format!("tlsParams.{field}"), message));
        }
        let roots_field = "combinedValidationContext.validationContextSdsSecretConfig.name";
        let cert = certs.first();
        // Every certificate after the first is of its kind (xds validation says so too).
        let rest = |i: usize, of: &str| {
            err(
                &format!("tlsCertificateSdsSecretConfigs[{i}].name"),
                format!("several certificates are all {of}"),
            )
        };
        let serves = match cert.map(|c| c.secret()) {
            Some(Secret::Workload) | None if common.is_mesh() && certs.len() > 1 => {
                return Err(rest(
                    1,
                    "kubernetes://<secret> or all file-cert:<cert>~<key>",
                ));
            }
            // The mesh's own (an empty list with the mesh root is Istio's inbound too).
            Some(Secret::Workload) | None if common.is_mesh() => {
                if let Some(v) = validation
                    && v.validation_context_sds_secret_config.secret() != Secret::MeshRoot
                {
                    return Err(err(
                        roots_field,
                        format!(
                            "the workload certificate goes with the mesh root ROOTCA, not {:?}",
                            v.validation_context_sds_secret_config.name
                        ),
                    ));
                }
                Serves::Mesh {
                    require_client_certificate: ctx.require_client_certificate,
                }
            }
            Some(Secret::Credential(name)) => Serves::Credential {
                certs: certs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match c.secret() {
                        Secret::Credential(n) => Ok(n.to_string()),
                        _ => Err(rest(i, "kubernetes://<secret>")),
                    })
                    .collect::<Result<_, _>>()?,
                roots: client_roots(
                    ctx,
                    |s| match s {
                        Secret::Credential(roots) => Some(roots),
                        _ => None,
                    },
                    "a credential's certificate goes with a credential's CA",
                    &format!("kubernetes://{name}{SDS_CACERT_SUFFIX}"),
                )?,
                require_client_certificate: ctx.require_client_certificate,
            },
            Some(Secret::FileCert { .. }) => Serves::Files {
                certs: certs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match c.secret() {
                        Secret::FileCert { cert, key } => Ok((cert.to_string(), key.to_string())),
                        _ => Err(rest(i, "file-cert:<cert>~<key>")),
                    })
                    .collect::<Result<_, _>>()?,
                roots: client_roots(
                    ctx,
                    |s| match s {
                        Secret::FileRoot(path) => Some(path),
                        _ => None,
                    },
                    "certificate files go with a CA file",
                    "file-root:<caCertificates>",
                )?,
                crl: validation
                    .and_then(|v| v.default_validation_context.crl.as_ref())
                    .map(|c| c.filename.clone()),
                require_client_certificate: ctx.require_client_certificate,
            },
            Some(_) => {
                return Err(err(
                    "tlsCertificateSdsSecretConfigs[0].name",
                    format!(
                        "secret {:?} cannot be presented by a chain: only the workload \
                         certificate \"default\", file-cert:<cert>~<key> and \
                         kubernetes://<secret>",
                        cert.map(|c| c.name.as_str()).unwrap_or_default()
                    ),
                ));
            }
            None => {
                return Err(err(
                    "tlsCertificateSdsSecretConfigs",
                    "no certificate to present: the workload certificate \"default\" or \
                     kubernetes://<secret>"
                        .into(),
                ));
            }
        };
        Ok(Terminate {
            alpn: common
                .alpn_protocols
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            serves,
            resumption: !ctx.disable_stateful_session_resumption,
            params: common.tls_params.clone(),
            pins,
            store,
            cache: Mutex::new(None),
            files: Mutex::new(None),
        })
    }

    /// The files of [`Serves::Files`]: the copy read less than
    /// [`crate::identity::credential::REFRESH`] ago, else read again (a rotated mounted Secret
    /// is used by the next handshakes). While a re-read fails, the last good copy serves.
    fn served_files(
        &self,
        certs: &[(String, String)],
        roots: Option<&str>,
        crl: Option<&str>,
    ) -> Result<Arc<ServedFiles>, TlsError> {
        let mut held = lock(&self.files);
        if let Some((at, f)) = &*held
            && at.elapsed() < crate::identity::credential::REFRESH
        {
            return Ok(f.clone());
        }
        let now = std::time::Instant::now();
        match read_served_files(certs, roots, crl) {
            Ok(read) => {
                let f = match &*held {
                    Some((_, old)) if old.version == read.version => old.clone(),
                    _ => Arc::new(read),
                };
                *held = Some((now, f.clone()));
                Ok(f)
            }
            Err(e) => match &mut *held {
                Some((at, old)) => {
                    tracing::warn!(error = %e, "certificate files not read again; the last copy serves");
                    *at = now;
                    Ok(old.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The configuration for the next handshake: the cached one while the certificate (or the
    /// credentials) it was built from are current, else a new one.
    async fn config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        // A credential is fetched (or its copy read) before the cache is looked at: its
        // version says whether the cached configuration still holds.
        let fetched = match &self.serves {
            Serves::Mesh { .. } | Serves::Files { .. } => None,
            Serves::Credential { certs, roots, .. } => {
                let credentials = self.store.credentials();
                let mut cert = Vec::with_capacity(certs.len());
                for name in certs {
                    cert.push(credentials.get(name).await.map_err(|e| {
                        TlsError::Credential(format!("the certificate to present: {e}"))
                    })?);
                }
                let roots = match roots {
                    Some(name) => Some(credentials.get(name).await.map_err(|e| {
                        TlsError::Credential(format!("the CA to verify clients against: {e}"))
                    })?),
                    None => None,
                };
                Some((cert, roots))
            }
        };
        let files = match &self.serves {
            Serves::Files {
                certs, roots, crl, ..
            } => Some(self.served_files(certs, roots.as_deref(), crl.as_deref())?),
            _ => None,
        };
        let versions = match (&fetched, &files) {
            (Some((certs, roots)), _) => (
                certs
                    .iter()
                    .fold(0u64, |v, c| v.wrapping_mul(1 << 32).wrapping_add(c.version)),
                roots.as_ref().map_or(0, |r| r.version),
            ),
            (None, Some(f)) => (f.version, 0),
            (None, None) => (self.store.generation(), 0),
        };
        let mut cache = lock(&self.cache);
        if let Some((v, c)) = &*cache
            && *v == versions
        {
            return Ok(c.clone());
        }
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let mut config = match (&self.serves, fetched) {
            (
                Serves::Mesh {
                    require_client_certificate,
                },
                _,
            ) => {
                let cert = self
                    .store
                    .current()
                    .filter(|c| c.is_valid_at(std::time::SystemTime::now()))
                    .ok_or(TlsError::NoCertificate)?;
                server_config_with(
                    &cert,
                    &alpn,
                    *require_client_certificate,
                    self.params.as_ref(),
                    &self.pins,
                )
                .map_err(|e| TlsError::Config(e.to_string()))?
            }
            (
                Serves::Credential {
                    certs: names,
                    roots: roots_name,
                    require_client_certificate,
                },
                Some((certs, roots)),
            ) => {
                let mut presented = Vec::with_capacity(certs.len());
                for (cert, name) in certs.iter().zip(names) {
                    let key = cert.key.as_ref().ok_or_else(|| {
                        TlsError::Credential(format!("kubernetes://{name}: no private key"))
                    })?;
                    presented.push((cert.chain.clone(), key.clone_key()));
                }
                let roots = match (roots, roots_name) {
                    (Some(r), Some(n)) => Some(Trust {
                        roots: root_store(r.roots.iter().cloned(), |e| {
                            TlsError::Credential(format!("kubernetes://{n}: a CA certificate: {e}"))
                        })?,
                        crls: r.crls.clone(),
                    }),
                    _ => None,
                };
                credential_server_config(
                    presented,
                    roots,
                    *require_client_certificate,
                    &alpn,
                    self.params.as_ref(),
                    &self.pins,
                )
                .map_err(|e| {
                    TlsError::Credential(format!(
                        "kubernetes://{}: {e}",
                        names.join(", kubernetes://")
                    ))
                })?
            }
            (Serves::Credential { .. }, None) => {
                return Err(TlsError::Config("a credential that was not fetched".into()));
            }
            (
                Serves::Files {
                    certs,
                    require_client_certificate,
                    ..
                },
                _,
            ) => {
                let f = files.ok_or_else(|| TlsError::Config("files that were not read".into()))?;
                let cert = &certs[0].0;
                credential_server_config(
                    f.certs
                        .iter()
                        .map(|(chain, key)| (chain.clone(), key.clone_key()))
                        .collect(),
                    f.roots.clone(),
                    *require_client_certificate,
                    &alpn,
                    self.params.as_ref(),
                    &self.pins,
                )
                .map_err(|e| TlsError::File(format!("{cert}: {e}")))?
            }
        };
        if !self.resumption {
            let mut c = Arc::unwrap_or_clone(config);
            c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            c.send_tls13_tickets = 0;
            config = Arc::new(c);
        }
        *cache = Some((versions, config.clone()));
        Ok(config)
    }

    /// Runs the server handshake on `tcp` (its ClientHello was only peeked at). Without the
    /// certificate to present (no workload certificate, a credential the CA does not serve)
    /// nothing is sent: the connection is to be closed.
    ///
    /// A client offering none of the chain's ALPN protocols is served without ALPN, as Envoy
    /// serves it (rustls alone would refuse it with `no_application_protocol`): a sidecar's
    /// `ISTIO_MUTUAL` to a gateway offers Istio's protocols (`istio-peer-exchange`, `istio`),
    /// a gateway's chain `h2` and `http/1.1`.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Io, TlsError> {
        let config = self.config().await?;
        let handshake = async {
            if config.alpn_protocols.is_empty() {
                return tokio_rustls::TlsAcceptor::from(config).accept(tcp).await;
            }
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                    .await?;
            let overlap = match start.client_hello().alpn() {
                Some(mut offered) => offered.any(|p| config.alpn_protocols.iter().any(|o| o == p)),
                None => true,
            };
            let config = if overlap {
                config
            } else {
                let mut without = Arc::unwrap_or_clone(config);
                without.alpn_protocols.clear();
                Arc::new(without)
            };
            start.into_stream(config).await
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(s)) => Ok(Io::Server(Box::new(s))),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::Timeout),
        }
    }
}

/// A cluster's `UpstreamTlsContext` (its `transportSocket`, or the `tlsMode-istio` match of
/// auto mTLS), ready to originate TLS to its endpoints.
pub struct Originate {
    sni: ServerName<'static>,
    kind: Kind,
    /// `maxSessionKeys`: `Some(0)` no resumption, `Some(n)` sessions of `n` servers kept.
    sessions: Option<u32>,
    store: Arc<Store>,
    cache: Cached<[Option<Arc<rustls::ClientConfig>>; 3]>,
    /// What the files of [`Kind::External`] held, once read.
    files: Mutex<Option<Arc<Files>>>,
    /// The material last assembled, with the credential versions it was made of.
    material: Mutex<Option<Assembled>>,
}

/// Whose TLS an [`Originate`] speaks.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// Istio's mutual TLS: the workload certificate, the mesh root, the server one of
    /// `expected` (any mesh identity when empty).
    Mesh { expected: Vec<SpiffeId> },
    /// TLS to a server outside the mesh.
    External {
        /// Where the roots are; no verification when `verify` is off.
        roots: RootsFrom,
        /// The file of revocation lists checked beside roots from a file or the system's
        /// (`caCrl`; a credential's come with its roots).
        crl: Option<String>,
        verify: bool,
        /// Where the client certificate and key are (`MUTUAL`).
        client: Option<ClientFrom>,
        /// The subject alt names the server must have one of (the SNI when empty).
        sans: Vec<String>,
        /// The ALPN to offer (empty: by [`Purpose::plain_alpn`]).
        alpn: Vec<Vec<u8>>,
    },
}

/// Where the roots of [`Kind::External`] come from.
#[derive(Clone, Debug, PartialEq)]
enum RootsFrom {
    /// The system's (`file-root:system`).
    System,
    /// A file (`file-root:<path>`).
    File(String),
    /// A credential (`kubernetes://<secret>-cacert`; the name without the prefix).
    Credential(String),
}

/// Where the client certificate of [`Kind::External`] comes from.
#[derive(Clone, Debug, PartialEq)]
enum ClientFrom {
    /// Files (`file-cert:<cert>~<key>`).
    Files(String, String),
    /// A credential (`kubernetes://<secret>`; the name without the prefix).
    Credential(String),
}

/// The roots and client certificate of [`Kind::External`], read from their files or
/// credentials; `version` changes when a credential does.
struct Material {
    roots: Option<Trust>,
    client: Option<ChainAndKey>,
    version: u64,
}

/// A [`Material`] and the versions of the credentials it was made of (roots, client).
type Assembled = ((u64, u64), Arc<Material>);

/// What the files of [`Kind::External`] held, read once.
struct Files {
    roots: Option<Trust>,
    client: Option<ChainAndKey>,
}

impl std::fmt::Debug for Originate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originate")
            .field("sni", &self.sni)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Originate {
    fn eq(&self, other: &Self) -> bool {
        self.sni == other.sni && self.kind == other.kind && self.sessions == other.sessions
    }
}

impl Originate {
    /// Originates as `ctx` says with the certificates of `store` (the mesh's) or of the files
    /// it names. Fails, naming the field, on an `sni` that is not a DNS name or, for the mesh's
    /// mutual TLS, a subject alt name that is not a SPIFFE id.
    pub fn new(ctx: &UpstreamTlsContext, store: Arc<Store>) -> Result<Self, (String, String)> {
        let sni = match &ctx.sni {
            Some(s) => ServerName::try_from(s.clone()).map_err(|e| {
                (
                    "sni".to_string(),
                    format!("{s:?} is not a server name: {e}"),
                )
            })?,
            // No SNI asked: rustls sends none for an address.
            None => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
        };
        let common = &ctx.common_tls_context;
        let sans = common.expected_sans();
        let kind = if common.is_mesh() {
            let mut expected = Vec::new();
            for (i, san) in sans.into_iter().enumerate() {
                let id = san.parse::<SpiffeId>().map_err(|e| {
                    (
                        format!("commonTlsContext.combinedValidationContext.defaultValidationContext.matchSubjectAltNames[{i}].exact"),
                        format!("{san:?} is not a SPIFFE id: {e}"),
                    )
                })?;
                expected.push(id);
            }
            Kind::Mesh { expected }
        } else {
            let validation = common.combined_validation_context.as_ref();
            let roots = match validation.map(|v| v.validation_context_sds_secret_config.secret()) {
                Some(Secret::FileRoot(path)) => RootsFrom::File(path.to_string()),
                Some(Secret::Credential(name)) => RootsFrom::Credential(name.to_string()),
                _ => RootsFrom::System,
            };
            let client = common
                .tls_certificate_sds_secret_configs
                .first()
                .and_then(|c| match c.secret() {
                    Secret::FileCert { cert, key } => {
                        Some(ClientFrom::Files(cert.to_string(), key.to_string()))
                    }
                    Secret::Credential(name) => Some(ClientFrom::Credential(name.to_string())),
                    _ => None,
                });
            Kind::External {
                roots,
                crl: validation
                    .and_then(|v| v.default_validation_context.crl.as_ref())
                    .map(|c| c.filename.clone()),
                verify: validation.is_some(),
                client,
                sans: sans.into_iter().map(str::to_string).collect(),
                alpn: common
                    .alpn_protocols
                    .iter()
                    .map(|p| p.as_bytes().to_vec())
                    .collect(),
            }
        };
        Ok(Originate {
            sni,
            kind,
            sessions: ctx.max_session_keys,
            store,
            cache: Mutex::new(None),
            files: Mutex::new(None),
            material: Mutex::new(None),
        })
    }

    /// Fails when there is nothing to present: checked before dialing, so a sidecar without a
    /// workload certificate opens no connection at all (not even TCP) to a mutual TLS
    /// endpoint, nor one whose certificate, key or root files are missing or bad to a server
    /// outside the mesh (nor whose credential the CA does not serve).
    pub async fn ready(&self) -> Result<(), TlsError> {
        match &self.kind {
            Kind::Mesh { .. } if self.store.ready() => Ok(()),
            Kind::Mesh { .. } => Err(TlsError::NoCertificate),
            Kind::External { .. } => self.material().await.map(|_| ()),
        }
    }

    /// The identities the server must have (any mesh identity when empty; none for a server
    /// outside the mesh).
    pub fn expected(&self) -> &[SpiffeId] {
        match &self.kind {
            Kind::Mesh { expected } => expected,
            Kind::External { .. } => &[],
        }
    }

    /// The files of [`Kind::External`]'s `roots` and `client`, read once (a failure is tried
    /// again next time).
    fn files(
        &self,
        roots: &RootsFrom,
        crl: Option<&str>,
        verify: bool,
        client: Option<&ClientFrom>,
    ) -> Result<Arc<Files>, TlsError> {
        let mut cached = lock(&self.files);
        if let Some(f) = &*cached {
            return Ok(f.clone());
        }
        let roots = match (verify, roots) {
            (true, RootsFrom::File(path)) => Some(root_store(read_certs(path)?, |e| {
                TlsError::File(format!("{path}: {e}"))
            })?),
            (true, RootsFrom::System) => Some(system_roots()?),
            _ => None,
        };
        let roots = match roots {
            Some(roots) => Some(Trust {
                roots,
                crls: crl.map(read_crls).transpose()?.unwrap_or_default(),
            }),
            None => None,
        };
        let client = match client {
            Some(ClientFrom::Files(cert, key)) => {
                use rustls::pki_types::pem::PemObject;
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_slice(&read_file(key)?)
                    .map_err(|e| TlsError::File(format!("{key}: not a PEM private key: {e}")))?;
                Some((chain, key))
            }
            _ => None,
        };
        let f = Arc::new(Files { roots, client });
        *cached = Some(f.clone());
        Ok(f)
    }

    /// The roots and client certificate of [`Kind::External`]: the files', or the
    /// credentials' as the CA serves them now.
    async fn material(&self) -> Result<Arc<Material>, TlsError> {
        let Kind::External {
            roots,
            crl,
            verify,
            client,
            ..
        } = &self.kind
        else {
            return Err(TlsError::Config("not TLS outside the mesh".into()));
        };
        let credentials = self.store.credentials();
        let roots_cred = match (verify, roots) {
            (true, RootsFrom::Credential(name)) => {
                Some(credentials.get(name).await.map_err(TlsError::Credential)?)
            }
            _ => None,
        };
        let client_cred = match client {
            Some(ClientFrom::Credential(name)) => {
                Some(credentials.get(name).await.map_err(TlsError::Credential)?)
            }
            _ => None,
        };
        let files = self.files(roots, crl.as_deref(), *verify, client.as_ref())?;
        let versions = (
            roots_cred.as_ref().map_or(0, |c| c.version),
            client_cred.as_ref().map_or(0, |c| c.version),
        );
        let mut cached = lock(&self.material);
        if let Some((v, m)) = &*cached
            && *v == versions
        {
            return Ok(m.clone());
        }
        let roots = match roots_cred {
            Some(c) => Some(Trust {
                roots: root_store(c.roots.iter().cloned(), |e| {
                    TlsError::Credential(format!("a CA certificate: {e}"))
                })?,
                crls: c.crls.clone(),
            }),
            None => files.roots.clone(),
        };
        let client = match (&client_cred, &files.client) {
            (Some(c), _) => c.key.as_ref().map(|k| (c.chain.clone(), k.clone_key())),
            (None, Some((chain, key))) => Some((chain.clone(), key.clone_key())),
            (None, None) => None,
        };
        let m = Arc::new(Material {
            roots,
            client,
            version: versions.0.wrapping_mul(1 << 32).wrapping_add(versions.1),
        });
        *cached = Some((versions, m.clone()));
        Ok(m)
    }

    fn config(
        &self,
        purpose: Purpose,
        material: Option<&Material>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        // The mesh's configurations follow the certificate's renewals, those outside the mesh
        // their credentials (files are read once).
        let generation = match (&self.kind, material) {
            (Kind::Mesh { .. }, _) => self.store.generation(),
            (Kind::External { .. }, Some(m)) => m.version,
            (Kind::External { .. }, None) => {
                return Err(TlsError::Config(
                    "TLS outside the mesh without material".into(),
                ));
            }
        };
        let mut cache = lock(&self.cache);
        if let Some((g, configs)) = &*cache
            && *g == generation
            && let Some(c) = &configs[purpose.index()]
        {
            return Ok(c.clone());
        }
        let config = match &self.kind {
            Kind::Mesh { expected } => {
                let cert = self
                    .store
                    .current()
                    .filter(|c| c.is_valid_at(std::time::SystemTime::now()))
                    .ok_or(TlsError::NoCertificate)?;
                client_config(&cert, expected.clone(), purpose.alpn())
            }
            Kind::External { sans, alpn, .. } => {
                let Some(m) = material else {
                    return Err(TlsError::Config("no material".into()));
                };
                let offered: Vec<&[u8]> = if alpn.is_empty() {
                    purpose.plain_alpn().to_vec()
                } else {
                    alpn.iter().map(Vec::as_slice).collect()
                };
                external_client_config(
                    m.roots.clone(),
                    sans.clone(),
                    m.client
                        .as_ref()
                        .map(|(chain, key)| (chain.clone(), key.clone_key())),
                    &offered,
                )
            }
        }
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let config = match self.sessions {
            None => config,
            Some(n) => {
                let mut c = Arc::unwrap_or_clone(config);
                c.resumption = match n {
                    0 => rustls::client::Resumption::disabled(),
                    n => rustls::client::Resumption::in_memory_sessions(n as usize),
                };
                Arc::new(c)
            }
        };
        match &mut *cache {
            Some((g, configs)) if *g == generation => {
                configs[purpose.index()] = Some(config.clone())
            }
            other => {
                let mut configs: [Option<Arc<rustls::ClientConfig>>; 3] = Default::default();
                configs[purpose.index()] = Some(config.clone());
                *other = Some((generation, configs));
            }
        }
        Ok(config)
    }

    /// Runs the client handshake on `tcp` for `purpose`; the server must prove one of the
    /// expected identities.
    pub async fn connect(&self, tcp: TcpStream, purpose: Purpose) -> Result<Io, TlsError> {
        let material = match self.kind {
            Kind::Mesh { .. } => None,
            Kind::External { .. } => Some(self.material().await?),
        };
        let connector =
            tokio_rustls::TlsConnector::from(self.config(purpose, material.as_deref())?);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(self.sni.clone(), tcp))
            .await
        {
            Ok(Ok(s)) => Ok(Io::Client(Box::new(s))),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::Timeout),
        }
    }
}

/// The client roots of a chain presenting a certificate of its own (a gateway server's
/// credential or files: `MUTUAL`, `OPTIONAL_MUTUAL`, or none for `SIMPLE`): the name (without
/// its prefix) of the validation context's roots, which must be of the kind `pick` reads
/// (`goes_with` says which, `expected` names them, for the error); `None` without a validation
/// context, which is refused when a client certificate is required (it could not be
/// verified). Errors name the field below the context.
fn client_roots(
    ctx: &DownstreamTlsContext,
    pick: for<'s> fn(Secret<'s>) -> Option<&'s str>,
    goes_with: &str,
    expected: &str,
) -> Result<Option<String>, (String, String)> {
    let Some(v) = ctx.common_tls_context.combined_validation_context.as_ref() else {
        if ctx.require_client_certificate {
            return Err((
                "requireClientCertificate".into(),
                format!(
                    "a client certificate cannot be verified without combinedValidationContext \
                     ({expected})"
                ),
            ));
        }
        return Ok(None);
    };
    let roots = &v.validation_context_sds_secret_config;
    match pick(roots.secret()) {
        Some(name) => Ok(Some(name.to_string())),
        None => Err((
            "commonTlsContext.combinedValidationContext.validationContextSdsSecretConfig.name"
                .into(),
            format!("{goes_with} ({expected}), not {:?}", roots.name),
        )),
    }
}

/// A root store of `certs`; `err` names where a refused one came from.
fn root_store(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
    err: impl Fn(rustls::Error) -> TlsError,
) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(&err)?;
    }
    Ok(store)
}

/// A file's bytes, at most [`MAX_FILE_BYTES`].
fn read_file(path: &str) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| TlsError::File(format!("{path}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TlsError::File(format!(
            "{path}: larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Reads a gateway server's certificate chain, key and (for `MUTUAL`) client CA and revocation
/// list files, each at most [`MAX_FILE_BYTES`]; errors name the file, never the key's content.
fn read_served_files(
    certs: &[(String, String)],
    roots: Option<&str>,
    crl: Option<&str>,
) -> Result<ServedFiles, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut read = Vec::with_capacity(certs.len());
    for (cert, key) in certs {
        let cert_bytes = read_file(cert)?;
        let key_bytes = read_file(key)?;
        (&cert_bytes, &key_bytes).hash(&mut h);
        let chain = pem_certs(cert, &cert_bytes)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
            .map_err(|e| TlsError::File(format!("{key}: not a PEM private key: {e}")))?;
        read.push((chain, key_der));
    }
    let roots_bytes = roots.map(read_file).transpose()?;
    let crls = crl.map(read_crls).transpose()?.unwrap_or_default();
    (&roots_bytes, &crls).hash(&mut h);
    let roots = match (roots, roots_bytes) {
        (Some(path), Some(bytes)) => Some(Trust {
            roots: root_store(pem_certs(path, &bytes)?, |e| {
                TlsError::File(format!("{path}: {e}"))
            })?,
            crls,
        }),
        _ => None,
    };
    Ok(ServedFiles {
        certs: read,
        roots,
        version: h.finish().max(1),
    })
}

/// The certificate revocation lists of a PEM file (`caCrl`), at least one, each parsed.
fn read_crls(path: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    pem_crls(path, &read_file(path)?).map_err(TlsError::File)
}

/// The certificates of a PEM file, at least one.
fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certs(path, &read_file(path)?)
}

/// The certificates of the PEM `bytes` read from `path`, at least one.
fn pem_certs(path: &str, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File(format!("{path}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::File(format!("{path}: no certificate")));
    }
    Ok(certs)
}

/// The system's root certificates (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else the distribution's
/// bundle), at least one.
fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(TlsError::File(format!(
            "no system root certificates found (give caCertificates){}",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        )));
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_testkit::pki::{TestCa, Usage};
    use rustmesh_xds::route::StringMatcher;
    use rustmesh_xds::tls::{
        ClientCerts, GatewayCert, gateway_istio_mutual, gateway_termination, istio_downstream,
    };

    fn serves(ctx: &DownstreamTlsContext) -> Result<Serves, (String, String)> {
        Terminate::new(ctx, Arc::new(Store::default())).map(|t| t.serves)
    }

    #[test]
    fn a_gateway_credential_is_served_from_its_secret_and_the_mesh_from_the_workload() {
        assert_eq!(
            serves(&gateway_termination(
                GatewayCert::Credential("httpbin-credential"),
                ClientCerts::Ignored
            )),
            Ok(Serves::Credential {
                certs: vec!["httpbin-credential".into()],
                roots: None,
                require_client_certificate: false,
            })
        );
        assert_eq!(
            serves(&gateway_termination(
                GatewayCert::Credential("httpbin-credential"),
                ClientCerts::Required
            )),
            Ok(Serves::Credential {
                certs: vec!["httpbin-credential".into()],
                roots: Some("httpbin-credential-cacert".into()),
                require_client_certificate: true,
            })
        );
        assert_eq!(
            serves(&istio_downstream(&["istio"])),
            Ok(Serves::Mesh {
                require_client_certificate: true
            })
        );
        // Istio's OPTIONAL_MUTUAL: clients verified when they present a certificate.
        let mut optional = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Required);
        optional.require_client_certificate = false;
        assert!(matches!(
            serves(&optional),
            Ok(Serves::Credential {
                roots: Some(_),
                require_client_certificate: false,
                ..
            })
        ));
    }

    #[test]
    fn what_a_terminating_chain_cannot_do_is_refused_naming_the_field() {
        let field = |ctx: &DownstreamTlsContext| serves(ctx).unwrap_err().0;
        let mut sans = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Required);
        sans.common_tls_context
            .combined_validation_context
            .as_mut()
            .unwrap()
            .default_validation_context
            .match_subject_alt_names = vec![StringMatcher {
            prefix: Some("client.".into()),
            ..StringMatcher::default()
        }];
        assert_eq!(
            field(&sans),
            "commonTlsContext.combinedValidationContext.defaultValidationContext.matchSubjectAltNames[0]"
        );
        let mut digest = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Required);
        digest
            .common_tls_context
            .combined_validation_context
            .as_mut()
            .unwrap()
            .default_validation_context
            .verify_certificate_hash = vec!["df:6f".into()];
        assert_eq!(
            field(&digest),
            "commonTlsContext.combinedValidationContext.defaultValidationContext.verifyCertificateHash[0]"
        );
        let mut no_roots = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Ignored);
        no_roots.require_client_certificate = true;
        let (f, message) = serves(&no_roots).unwrap_err();
        assert_eq!(f, "requireClientCertificate");
        assert!(message.contains("kubernetes://c-cacert"), "{message}");
        let mut mesh_root =
            gateway_termination(GatewayCert::Credential("c"), ClientCerts::Required);
        mesh_root
            .common_tls_context
            .combined_validation_context
            .as_mut()
            .unwrap()
            .validation_context_sds_secret_config
            .name = "ROOTCA".into();
        assert_eq!(
            field(&mesh_root),
            "commonTlsContext.combinedValidationContext.validationContextSdsSecretConfig.name"
        );
        let mut none = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Ignored);
        none.common_tls_context.tls_certificate_sds_secret_configs = vec![];
        assert_eq!(
            field(&none),
            "commonTlsContext.tlsCertificateSdsSecretConfigs"
        );
        // Certificate files go with a CA file, not a credential's.
        let mut file = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Required);
        file.common_tls_context.tls_certificate_sds_secret_configs[0].name =
            "file-cert:/c.pem~/k.pem".into();
        assert_eq!(
            field(&file),
            "commonTlsContext.combinedValidationContext.validationContextSdsSecretConfig.name"
        );
        let mut unknown = gateway_termination(GatewayCert::Credential("c"), ClientCerts::Ignored);
        unknown
            .common_tls_context
            .tls_certificate_sds_secret_configs[0]
            .name = "other".into();
        assert_eq!(
            field(&unknown),
            "commonTlsContext.tlsCertificateSdsSecretConfigs[0].name"
        );
    }

    /// Files of a gateway server in `dir`: a certificate for `name` issued by `ca`, its key,
    /// and `ca`'s certificate (the client CA), as `tls.crt`, `tls.key` and `ca.crt`: their
    /// paths, in that order.
    fn served_files(dir: &std::path::Path, ca: &TestCa, name: &str) -> (String, String, String) {
        let (chain, key) = ca.issue(name, &[name]);
        let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
        std::fs::write(path("ca.crt"), &ca.pem).unwrap();
        std::fs::write(path("tls.crt"), &chain).unwrap();
        std::fs::write(path("tls.key"), &key).unwrap();
        (path("tls.crt"), path("tls.key"), path("ca.crt"))
    }

    /// A private CA and a server certificate for `name` it issued, as PEM (CA, chain, key).
    fn private_ca(name: &str) -> (String, String, String) {
        let ca = TestCa::new("private CA");
        let (chain, key) = ca.issue(name, &[name]);
        (ca.pem, chain, key)
    }

    /// One TLS client handshake to `t` for `name`, trusting `ca`, without a client
    /// certificate: see [`handshake_as`].
    async fn handshake(t: &Terminate, name: &str, ca: &str) -> Result<Vec<u8>, String> {
        handshake_as(t, name, ca, None).await
    }

    /// One TLS client handshake to `t` for `name`, trusting `ca`, presenting `client` (PEM
    /// certificate and key) if given: the server's leaf, or why the client's handshake (or
    /// the first byte after it) failed.
    async fn handshake_as(
        t: &Terminate,
        name: &str,
        ca: &str,
        client: Option<&(String, String)>,
    ) -> Result<Vec<u8>, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // The server echoes one byte, so the client sees the connection work (or, refused
        // after its own handshake, the server's alert).
        let server = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (tcp, _) = l.accept().await.unwrap();
            let mut io = t.accept(tcp).await?;
            let mut b = [0u8; 1];
            let _ = io.read(&mut b).await;
            let _ = io.write_all(&b).await;
            Ok::<(), TlsError>(())
        };
        let client = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from(name.to_string()).unwrap();
            let s = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            // A TLS 1.3 server may refuse the client's (missing) certificate after the
            // client's handshake is done: read to see it.
            let mut s = s;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(1)) => Ok(leaf),
                Ok(Ok(_)) => Err("closed".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer".to_string()),
            }
        };
        let (server, client) = tokio::join!(server, client);
        let _ = server;
        client
    }

    /// A gateway server's `ISTIO_MUTUAL` (the router's workload certificate, issued by the
    /// mesh root): a client without a certificate is refused, one whose certificate the mesh
    /// root issued is accepted, one from another CA is refused.
    #[tokio::test]
    async fn an_istio_mutual_gateway_server_presents_the_workload_certificate_and_requires_a_mesh_client()
     {
        let mesh = TestCa::new("mesh root");
        let dir = tempfile::tempdir().unwrap();
        // The router's workload certificate (a DNS name too, so the test client can check
        // it with rustls' own verifier).
        let (chain, key) = mesh.issue_with(
            "gw",
            &["gw.example.com"],
            Some("spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"),
            Usage::Any,
        );
        std::fs::write(dir.path().join("cert-chain.pem"), &chain).unwrap();
        std::fs::write(dir.path().join("key.pem"), &key).unwrap();
        std::fs::write(dir.path().join("root-cert.pem"), &mesh.pem).unwrap();
        let store = Arc::new(Store::default());
        store.install(
            crate::identity::WorkloadCert::from_dir(dir.path(), std::time::SystemTime::now())
                .unwrap(),
        );
        let t = Terminate::new(&gateway_istio_mutual(), store).unwrap();
        assert_eq!(
            t.serves,
            Serves::Mesh {
                require_client_certificate: true
            }
        );
        let err = handshake(&t, "gw.example.com", &mesh.pem)
            .await
            .unwrap_err();
        assert!(err.contains("CertificateRequired"), "{err}");
        let sidecar = mesh.issue_with(
            "client",
            &[],
            Some("spiffe://cluster.local/ns/default/sa/sleep"),
            Usage::Any,
        );
        let leaf = handshake_as(&t, "gw.example.com", &mesh.pem, Some(&sidecar))
            .await
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        assert_eq!(
            leaf,
            CertificateDer::from_pem_slice(chain.as_bytes())
                .unwrap()
                .to_vec()
        );
        let stranger = TestCa::new("another mesh's root").issue_with(
            "client",
            &[],
            Some("spiffe://other/ns/default/sa/sleep"),
            Usage::Any,
        );
        let err = handshake_as(&t, "gw.example.com", &mesh.pem, Some(&stranger))
            .await
            .unwrap_err();
        assert!(err.contains("UnknownCA"), "{err}");
        // Without a workload certificate (no mesh CA), nothing is served.
        let none = Terminate::new(&gateway_istio_mutual(), Arc::new(Store::default())).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::spawn(TcpStream::connect(l.local_addr().unwrap()));
        let (tcp, _) = l.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        assert!(matches!(
            none.accept(tcp).await,
            Err(TlsError::NoCertificate)
        ));
    }

    /// A gateway server's `OPTIONAL_MUTUAL` (certificate files and a CA file): a client
    /// without a certificate is accepted, one the CA issued too, one from another CA refused.
    /// One handshake to `t` for `name`, trusting `ca`, from a client speaking only `versions`
    /// and, of TLS 1.2's suites, `tls12` (all when empty): the version and suite agreed, or
    /// why the client's handshake failed.
    async fn negotiated(
        t: &Terminate,
        name: &str,
        ca: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
        tls12: &[rustls::CipherSuite],
    ) -> Result<(rustls::ProtocolVersion, rustls::CipherSuite), String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let mut provider = rustls::crypto::ring::default_provider();
        if !tls12.is_empty() {
            provider.cipher_suites.retain(|s| {
                matches!(s, rustls::SupportedCipherSuite::Tls13(_)) || tls12.contains(&s.suite())
            });
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (_, client) = one_handshake(t, config, name).await;
        let c = client?;
        let c = c.get_ref().1;
        Ok((
            c.protocol_version().unwrap(),
            c.negotiated_cipher_suite().unwrap().suite(),
        ))
    }

    /// One handshake of a rustls client with `config` for `sni` against `t`, on loopback:
    /// what the server's accept gave, and the client's connection or why it failed.
    async fn one_handshake(
        t: &Terminate,
        config: rustls::ClientConfig,
        sni: &str,
    ) -> (
        Result<Io, TlsError>,
        Result<tokio_rustls::client::TlsStream<TcpStream>, String>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = async {
            let (tcp, _) = l.accept().await.unwrap();
            t.accept(tcp).await
        };
        let client = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::join!(server, client)
    }

    /// A gateway server's `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites`
    /// (`tlsParams`), with real rustls clients: a TLS 1.3 minimum refuses a TLS 1.2 client, a
    /// TLS 1.2 maximum is what a client offering both gets, and of TLS 1.2's suites only the
    /// listed ones are agreed. TLS 1.0 cannot be served: refused naming the field.
    #[tokio::test]
    async fn a_gateway_servers_tls_versions_and_suites_are_what_clients_get() {
        use rustls::version::{TLS12, TLS13};
        use rustls::{CipherSuite as Suite, ProtocolVersion as Version};
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("gateway CA");
        let (chain, key) = ca.issue("params", &["params.example.com"]);
        let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        std::fs::write(path("tls.crt"), &chain).unwrap();
        std::fs::write(path("tls.key"), &key).unwrap();
        let (cert_path, key_path) = (path("tls.crt"), path("tls.key"));
        let terminate = |params: serde_json::Value| {
            let mut ctx = gateway_termination(
                GatewayCert::Files {
                    cert: &cert_path,
                    key: &key_path,
                    ca: None,
                    crl: None,
                },
                ClientCerts::Ignored,
            );
            ctx.common_tls_context.tls_params =
                (!params.is_null()).then(|| serde_json::from_value(params).unwrap());
            Terminate::new(&ctx, Arc::new(Store::default()))
        };
        let name = "params.example.com";
        let both: &[&'static rustls::SupportedProtocolVersion] = &[&TLS13, &TLS12];

        let tls13 = terminate(serde_json::json!({"tlsMinimumProtocolVersion": "TLSv1_3"})).unwrap();
        let agreed = negotiated(&tls13, name, &ca.pem, both, &[]).await.unwrap();
        assert_eq!(agreed.0, Version::TLSv1_3);
        let err = negotiated(&tls13, name, &ca.pem, &[&TLS12], &[])
            .await
            .unwrap_err();
        assert!(err.contains("alert"), "a TLS 1.2 client is refused: {err}");

        let tls12 = terminate(serde_json::json!({"tlsMaximumProtocolVersion": "TLSv1_2"})).unwrap();
        let agreed = negotiated(&tls12, name, &ca.pem, both, &[]).await.unwrap();
        assert_eq!(agreed.0, Version::TLSv1_2);

        let suites = terminate(serde_json::json!({
            "tlsMaximumProtocolVersion": "TLSv1_2",
            "cipherSuites": ["ECDHE-ECDSA-AES256-GCM-SHA384"],
        }))
        .unwrap();
        let agreed = negotiated(&suites, name, &ca.pem, &[&TLS12], &[])
            .await
            .unwrap();
        assert_eq!(
            agreed,
            (
                Version::TLSv1_2,
                Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            )
        );
        let err = negotiated(
            &suites,
            name,
            &ca.pem,
            &[&TLS12],
            &[Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("alert"),
            "a client without the suite is refused: {err}"
        );
        // Without parameters, the client's preference among every suite.
        let defaults = terminate(serde_json::Value::Null).unwrap();
        let agreed = negotiated(
            &defaults,
            name,
            &ca.pem,
            &[&TLS12],
            &[Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
        )
        .await
        .unwrap();
        assert_eq!(agreed.1, Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);

        let (field, message) =
            terminate(serde_json::json!({"tlsMinimumProtocolVersion": "TLSv1_0"})).unwrap_err();
        assert_eq!(
            field,
            "commonTlsContext.tlsParams.tlsMinimumProtocolVersion"
        );
        assert!(message.contains("1.2 and 1.3"), "{message}");
    }

    /// Every TLS 1.2 suite name the configuration may carry is one of ring's suites.
    #[test]
    fn every_tls12_suite_name_is_one_of_rings() {
        let ring = rustls::crypto::ring::default_provider();
        for name in rustmesh_xds::tls::TLS12_CIPHER_SUITES {
            let suite = crate::identity::tls::tls12_suite(name).expect(name);
            assert!(
                ring.cipher_suites.iter().any(|s| s.suite() == suite),
                "{name}: {suite:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_optional_mutual_gateway_server_verifies_a_client_certificate_only_when_presented() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("gateway client CA");
        let (chain, key) = ca.issue("optional", &["optional.example.com"]);
        let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        std::fs::write(path("ca.crt"), &ca.pem).unwrap();
        std::fs::write(path("tls.crt"), &chain).unwrap();
        std::fs::write(path("tls.key"), &key).unwrap();
        let (cert_path, key_path, ca_path) = (path("tls.crt"), path("tls.key"), path("ca.crt"));
        let ctx = gateway_termination(
            GatewayCert::Files {
                cert: &cert_path,
                key: &key_path,
                ca: Some(&ca_path),
                crl: None,
            },
            ClientCerts::Optional,
        );
        let t = Terminate::new(&ctx, Arc::new(Store::default())).unwrap();
        assert_eq!(
            t.serves,
            Serves::Files {
                certs: vec![(cert_path.clone(), key_path.clone())],
                roots: Some(ca_path.clone()),
                crl: None,
                require_client_certificate: false,
            }
        );
        let name = "optional.example.com";
        handshake(&t, name, &ca.pem).await.unwrap();
        let client = ca.issue("client", &["client.example.com"]);
        handshake_as(&t, name, &ca.pem, Some(&client))
            .await
            .unwrap();
        let stranger = TestCa::new("another CA").issue("client", &["client.example.com"]);
        let err = handshake_as(&t, name, &ca.pem, Some(&stranger))
            .await
            .unwrap_err();
        assert!(err.contains("UnknownCA"), "{err}");
    }

    /// A gateway server's pins (`subjectAltNames`, `verifyCertificateHash`,
    /// `verifyCertificateSpki`): of two clients the server's CA issued, only the one the pins
    /// name gets in; with `OPTIONAL_MUTUAL` a client without a certificate still does.
    #[tokio::test]
    async fn a_gateway_servers_pins_let_in_only_the_clients_they_name() {
        use base64::Engine as _;
        use rustls::pki_types::pem::PemObject;
        use rustmesh_xds::tls::{CertificateValidationContext, exact_sans};
        use x509_parser::prelude::{FromDer, X509Certificate};
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("gateway client CA");
        let (cert_path, key_path, ca_path) = served_files(dir.path(), &ca, "pinned.example.com");
        let pinned = |clients, pins: CertificateValidationContext| {
            let mut ctx = gateway_termination(
                GatewayCert::Files {
                    cert: &cert_path,
                    key: &key_path,
                    ca: Some(&ca_path),
                    crl: None,
                },
                clients,
            );
            ctx.common_tls_context
                .combined_validation_context
                .as_mut()
                .unwrap()
                .default_validation_context = pins;
            Terminate::new(&ctx, Arc::new(Store::default())).unwrap()
        };
        let alice = ca.issue_with(
            "alice",
            &["alice.example.com"],
            Some("spiffe://cluster.local/ns/foo/sa/alice"),
            Usage::Any,
        );
        let bob = ca.issue("bob", &["bob.example.com"]);
        let der = CertificateDer::from_pem_slice(alice.0.as_bytes()).unwrap();
        let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
        let hash: String = digest(der.as_ref())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let (_, parsed) = X509Certificate::from_der(der.as_ref()).unwrap();
        let spki = base64::engine::general_purpose::STANDARD
            .encode(digest(parsed.tbs_certificate.subject_pki.raw).as_ref());
        let name = "pinned.example.com";
        let cases = [
            CertificateValidationContext {
                match_subject_alt_names: exact_sans(&["alice.example.com".into()]),
                ..Default::default()
            },
            CertificateValidationContext {
                match_subject_alt_names: exact_sans(&[
                    "spiffe://cluster.local/ns/foo/sa/alice".into()
                ]),
                ..Default::default()
            },
            CertificateValidationContext {
                verify_certificate_hash: vec![hash],
                ..Default::default()
            },
            CertificateValidationContext {
                verify_certificate_spki: vec![spki],
                ..Default::default()
            },
        ];
        for pins in cases {
            let t = pinned(ClientCerts::Required, pins.clone());
            handshake_as(&t, name, &ca.pem, Some(&alice))
                .await
                .unwrap_or_else(|e| panic!("{pins:?}: alice is pinned: {e}"));
            let err = handshake_as(&t, name, &ca.pem, Some(&bob))
                .await
                .unwrap_err();
            assert!(
                err.contains("CertificateUnknown"),
                "{pins:?}: bob is refused: {err}"
            );
            let optional = pinned(ClientCerts::Optional, pins.clone());
            handshake(&optional, name, &ca.pem)
                .await
                .unwrap_or_else(|e| panic!("{pins:?}: no certificate, optional: {e}"));
            handshake_as(&optional, name, &ca.pem, Some(&bob))
                .await
                .unwrap_err();
        }
    }

    /// A gateway server's two certificates (`credentialNames`, `tlsCertificates`), with real
    /// rustls clients: each client gets the one whose key it can verify (an Ed25519-only
    /// client the Ed25519 one, an ECDSA-only client the ECDSA one), and, of certificates for
    /// different names, the one for its SNI; a key that is not its certificate's is refused.
    #[tokio::test]
    async fn of_two_certificates_each_client_gets_one_it_can_verify() {
        use rustls::crypto::WebPkiSupportedAlgorithms;
        use rustls::pki_types::SignatureVerificationAlgorithm as Alg;
        use rustls::pki_types::pem::PemObject;
        use webpki::ring::{ECDSA_P256_SHA256, ED25519};
        static ALL: &[&dyn Alg] = &[ECDSA_P256_SHA256, ED25519];
        type Mapping = &'static [(rustls::SignatureScheme, &'static [&'static dyn Alg])];
        static ONLY_ED25519: Mapping = &[(rustls::SignatureScheme::ED25519, &[ED25519])];
        static ONLY_ECDSA: Mapping = &[(
            rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
            &[ECDSA_P256_SHA256],
        )];
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("dual CA");
        let write = |name: &str, (cert, key): (String, String)| {
            let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
            std::fs::write(path(&format!("{name}.crt")), &cert).unwrap();
            std::fs::write(path(&format!("{name}.key")), &key).unwrap();
            (
                path(&format!("{name}.crt")),
                path(&format!("{name}.key")),
                cert,
            )
        };
        let ecdsa = write("ecdsa", ca.issue("ecdsa", &["dual.example.com"]));
        let ed25519 = write(
            "ed25519",
            ca.issue_ed25519("ed25519", &["dual.example.com"]),
        );
        let other = write("other", ca.issue("other", &["other.example.com"]));
        let serving = |certs: &[&(String, String, String)]| {
            let certs: Vec<GatewayCert<'_>> = certs
                .iter()
                .map(|(cert, key, _)| GatewayCert::Files {
                    cert,
                    key,
                    ca: None,
                    crl: None,
                })
                .collect();
            let ctx = rustmesh_xds::tls::gateway_termination_with(&certs, ClientCerts::Ignored);
            Terminate::new(&ctx, Arc::new(Store::default())).unwrap()
        };
        let leaf_of = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        /// The leaf `t` presents to a client trusting `ca` for `sni`, verifying only what
        /// `mapping` lists (all of ring's when `None`), or why the handshake failed.
        async fn presented(
            t: &Terminate,
            ca: &str,
            sni: &'static str,
            mapping: Option<Mapping>,
        ) -> Result<Vec<u8>, String> {
            let mut provider = rustls::crypto::ring::default_provider();
            if let Some(mapping) = mapping {
                provider.signature_verification_algorithms =
                    WebPkiSupportedAlgorithms { all: ALL, mapping };
            }
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let (_, client) = one_handshake(t, config, sni).await;
            client.map(|s| s.get_ref().1.peer_certificates().unwrap()[0].to_vec())
        }
        let dual = serving(&[&ecdsa, &ed25519]);
        let sni = "dual.example.com";
        assert_eq!(
            presented(&dual, &ca.pem, sni, Some(ONLY_ED25519))
                .await
                .unwrap(),
            leaf_of(&ed25519.2)
        );
        assert_eq!(
            presented(&dual, &ca.pem, sni, Some(ONLY_ECDSA))
                .await
                .unwrap(),
            leaf_of(&ecdsa.2)
        );
        assert_eq!(
            presented(&dual, &ca.pem, sni, None).await.unwrap(),
            leaf_of(&ecdsa.2),
            "the first"
        );
        // By name first: other.example.com gets its own certificate.
        let named = serving(&[&ecdsa, &other]);
        assert_eq!(
            presented(&named, &ca.pem, "other.example.com", None)
                .await
                .unwrap(),
            leaf_of(&other.2)
        );
        assert_eq!(
            presented(&named, &ca.pem, sni, None).await.unwrap(),
            leaf_of(&ecdsa.2)
        );
        // Only an ECDSA certificate: an Ed25519-only client gets none, the handshake fails.
        let ecdsa_only = serving(&[&ecdsa, &other]);
        assert!(
            presented(&ecdsa_only, &ca.pem, sni, Some(ONLY_ED25519))
                .await
                .is_err()
        );
        // A key that is not its certificate's is refused.
        let mismatched = (ecdsa.0.clone(), ed25519.1.clone(), String::new());
        let t = serving(&[&mismatched, &ed25519]);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::spawn(TcpStream::connect(l.local_addr().unwrap()));
        let (tcp, _) = l.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        match t.accept(tcp).await {
            Err(TlsError::File(e)) => assert!(e.contains("certificate 0"), "{e}"),
            other => panic!("a mismatched key is refused: {other:?}"),
        }
    }

    /// A gateway chain's ALPN is `h2`, `http/1.1`: a client offering `h2` gets it; a client
    /// offering none of them (a sidecar's `ISTIO_MUTUAL` offers `istio-peer-exchange`,
    /// `istio` for TCP) is served without ALPN, as by Envoy, not refused.
    #[tokio::test]
    async fn a_client_offering_other_alpn_protocols_is_served_without_alpn() {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("gateway CA");
        let (cert, key, _) = served_files(dir.path(), &ca, "alpn.example.com");
        let ctx = gateway_termination(
            GatewayCert::Files {
                cert: &cert,
                key: &key,
                ca: None,
                crl: None,
            },
            ClientCerts::Ignored,
        );
        let t = Terminate::new(&ctx, Arc::new(Store::default())).unwrap();
        let agreed = |offered: &'static [&'static [u8]]| {
            let t = &t;
            let ca = ca.pem.clone();
            async move {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                    .unwrap();
                let mut config = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
                let (server, client) = one_handshake(t, config, "alpn.example.com").await;
                (
                    server
                        .map(|io| io.alpn().map(<[u8]>::to_vec))
                        .map_err(|e| e.to_string()),
                    client.map(|s| s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)),
                )
            }
        };
        let (server, client) = agreed(&[b"h2"]).await;
        assert_eq!(
            (server.unwrap(), client.unwrap()),
            (Some(b"h2".to_vec()), Some(b"h2".to_vec()))
        );
        let (server, client) = agreed(&[b"istio-peer-exchange", b"istio"]).await;
        assert_eq!((server.unwrap(), client.unwrap()), (None, None));
        let (server, client) = agreed(&[]).await;
        assert_eq!((server.unwrap(), client.unwrap()), (None, None));
    }

    /// A gateway server's `caCrl` (the validation context's `crl` file), with real rustls
    /// clients: a client the list revokes is refused (`CertificateRevoked`), one it does not
    /// revoke gets in; a list from another CA says nothing of the client's certificate, which
    /// is refused too (its revocation status is unknown); a file that is no list fails the
    /// handshake naming the file.
    #[tokio::test]
    async fn a_gateway_servers_revocation_list_refuses_the_clients_it_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("gateway client CA");
        let (cert, key, ca_path) = served_files(dir.path(), &ca, "crl.example.com");
        let alice = ca.issue("alice", &["alice.example.com"]);
        let bob = ca.issue("bob", &["bob.example.com"]);
        let crl = |name: &str, pem: &str| {
            let path = dir.path().join(name).to_str().unwrap().to_string();
            std::fs::write(&path, pem).unwrap();
            path
        };
        let serving = |crl: &str, clients| {
            let ctx = gateway_termination(
                GatewayCert::Files {
                    cert: &cert,
                    key: &key,
                    ca: Some(&ca_path),
                    crl: Some(crl),
                },
                clients,
            );
            Terminate::new(&ctx, Arc::new(Store::default())).unwrap()
        };
        let name = "crl.example.com";
        let revokes_bob = crl("bob.crl", &ca.revoke(&[&bob.0]));
        for clients in [ClientCerts::Required, ClientCerts::Optional] {
            let t = serving(&revokes_bob, clients);
            handshake_as(&t, name, &ca.pem, Some(&alice))
                .await
                .unwrap_or_else(|e| panic!("{clients:?}: alice is not revoked: {e}"));
            let err = handshake_as(&t, name, &ca.pem, Some(&bob))
                .await
                .unwrap_err();
            assert!(err.contains("CertificateRevoked"), "{clients:?}: {err}");
        }
        let other = crl("other.crl", &TestCa::new("another CA").revoke(&[]));
        let t = serving(&other, ClientCerts::Required);
        let err = handshake_as(&t, name, &ca.pem, Some(&alice))
            .await
            .unwrap_err();
        // (webpki finds no path whose revocation status it knows: rustls says UnknownCA.)
        assert!(
            err.contains("UnknownCA") || err.contains("CertificateUnknown"),
            "alice's status is unknown: refused: {err}"
        );
        let garbage = crl("garbage.crl", &ca.pem);
        let t = serving(&garbage, ClientCerts::Required);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::spawn(TcpStream::connect(l.local_addr().unwrap()));
        let (tcp, _) = l.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        match t.accept(tcp).await {
            Err(TlsError::File(e)) => assert!(
                e.contains("garbage.crl") && e.contains("revocation list"),
                "{e}"
            ),
            other => panic!("a certificate is no revocation list: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_gateway_server_presents_its_certificate_files_and_mutual_checks_the_ca_file() {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let (ca, chain, key) = private_ca("files.example.com");
        let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        std::fs::write(path("ca.crt"), &ca).unwrap();
        std::fs::write(path("tls.crt"), &chain).unwrap();
        std::fs::write(path("tls.key"), &key).unwrap();
        let (cert_path, key_path, ca_path) = (path("tls.crt"), path("tls.key"), path("ca.crt"));
        let files = |ca| GatewayCert::Files {
            cert: &cert_path,
            key: &key_path,
            ca,
            crl: None,
        };
        // SIMPLE: the chain from the files is presented.
        let simple = Terminate::new(
            &gateway_termination(files(None), ClientCerts::Ignored),
            Arc::new(Store::default()),
        )
        .unwrap();
        let leaf = handshake(&simple, "files.example.com", &ca).await.unwrap();
        assert_eq!(
            leaf,
            CertificateDer::from_pem_slice(chain.as_bytes())
                .unwrap()
                .to_vec()
        );
        // MUTUAL: a client without a certificate is refused.
        let mutual = Terminate::new(
            &gateway_termination(files(Some(&ca_path)), ClientCerts::Required),
            Arc::new(Store::default()),
        )
        .unwrap();
        let err = handshake(&mutual, "files.example.com", &ca)
            .await
            .unwrap_err();
        assert!(err.contains("CertificateRequired"), "{err}");
        // A missing file: the handshake fails naming it, nothing is sent.
        let missing = dir.path().join("gone.crt").to_str().unwrap().to_string();
        let gone = Terminate::new(
            &gateway_termination(
                GatewayCert::Files {
                    cert: &missing,
                    key: &key_path,
                    ca: None,
                    crl: None,
                },
                ClientCerts::Ignored,
            ),
            Arc::new(Store::default()),
        )
        .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::spawn(TcpStream::connect(l.local_addr().unwrap()));
        let (tcp, _) = l.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        let e = gone.accept(tcp).await.unwrap_err().to_string();
        assert!(e.contains("gone.crt"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }

    #[tokio::test]
    async fn without_the_credential_the_handshake_fails_naming_it_before_any_byte() {
        // No CA: the credential cannot be fetched. The connection gets nothing, not the
        // workload certificate, not plain text.
        let t = Terminate::new(
            &gateway_termination(
                GatewayCert::Credential("httpbin-credential"),
                ClientCerts::Ignored,
            ),
            Arc::new(Store::default()),
        )
        .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::spawn(TcpStream::connect(l.local_addr().unwrap()));
        let (tcp, _) = l.accept().await.unwrap();
        let mut client = client.await.unwrap().unwrap();
        let e = t.accept(tcp).await.unwrap_err();
        assert!(matches!(e, TlsError::Credential(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("kubernetes://httpbin-credential"), "{e}");
        let mut got = Vec::new();
        use tokio::io::AsyncReadExt;
        let _ = client.read_to_end(&mut got).await;
        assert!(got.is_empty(), "{got:?}");
    }
}
