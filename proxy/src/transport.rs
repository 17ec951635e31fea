//! A connection's bytes, plain or TLS ([`Io`]), and Istio's mutual TLS on them: a filter chain
//! with a `transportSocket` terminates it ([`Terminate`]), an endpoint whose cluster says so
//! originates it ([`Originate`]). Below the listeners, the HTTP connection manager and the
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
//! - Handshakes are bounded by [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustmesh_xds::identity::SpiffeId;
use rustmesh_xds::tls::{DownstreamTlsContext, UpstreamTlsContext};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::Store;
use crate::identity::tls::{client_config, peer_identity, server_config};
use crate::sync::lock;

/// The longest a TLS handshake may take, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

    fn index(self) -> usize {
        self as usize
    }
}

/// A configuration built for one certificate generation.
type Cached<T> = Mutex<Option<(u64, T)>>;

/// A filter chain's `DownstreamTlsContext`, ready to terminate TLS.
pub struct Terminate {
    alpn: Vec<Vec<u8>>,
    require_client_certificate: bool,
    store: Arc<Store>,
    cache: Cached<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Terminate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminate")
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl Terminate {
    /// Terminates as `ctx` says (validated: the workload certificate, the mesh root) with the
    /// certificates of `store`.
    pub fn new(ctx: &DownstreamTlsContext, store: Arc<Store>) -> Self {
        Terminate {
            alpn: ctx
                .common_tls_context
                .alpn_protocols
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            require_client_certificate: ctx.require_client_certificate,
            store,
            cache: Mutex::new(None),
        }
    }

    fn config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let generation = self.store.generation();
        let mut cache = lock(&self.cache);
        if let Some((g, c)) = &*cache
            && *g == generation
        {
            return Ok(c.clone());
        }
        let cert = self
            .store
            .current()
            .filter(|c| c.is_valid_at(std::time::SystemTime::now()))
            .ok_or(TlsError::NoCertificate)?;
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let config = server_config(&cert, &alpn, self.require_client_certificate)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        *cache = Some((generation, config.clone()));
        Ok(config)
    }

    /// Runs the server handshake on `tcp` (its ClientHello was only peeked at).
    pub async fn accept(&self, tcp: TcpStream) -> Result<Io, TlsError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config()?);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
    expected: Vec<SpiffeId>,
    store: Arc<Store>,
    cache: Cached<[Option<Arc<rustls::ClientConfig>>; 3]>,
}

impl std::fmt::Debug for Originate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originate")
            .field("sni", &self.sni)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Originate {
    fn eq(&self, other: &Self) -> bool {
        self.sni == other.sni && self.expected == other.expected
    }
}

impl Originate {
    /// Originates as `ctx` says with the certificates of `store`. Fails, naming the field, on
    /// an `sni` that is not a DNS name or a subject alt name that is not a SPIFFE id.
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
        let mut expected = Vec::new();
        for (i, san) in ctx
            .common_tls_context
            .expected_sans()
            .into_iter()
            .enumerate()
        {
            let id = san.parse::<SpiffeId>().map_err(|e| {
                (
                    format!("commonTlsContext.combinedValidationContext.defaultValidationContext.matchSubjectAltNames[{i}].exact"),
                    format!("{san:?} is not a SPIFFE id: {e}"),
                )
            })?;
            expected.push(id);
        }
        Ok(Originate {
            sni,
            expected,
            store,
            cache: Mutex::new(None),
        })
    }

    /// Fails when there is no certificate to present: checked before dialing, so a sidecar
    /// without one opens no connection at all (not even TCP) to a mutual TLS endpoint.
    pub fn ready(&self) -> Result<(), TlsError> {
        match self.store.ready() {
            true => Ok(()),
            false => Err(TlsError::NoCertificate),
        }
    }

    /// The identities the server must have (any mesh identity when empty).
    pub fn expected(&self) -> &[SpiffeId] {
        &self.expected
    }

    fn config(&self, purpose: Purpose) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let generation = self.store.generation();
        let mut cache = lock(&self.cache);
        if let Some((g, configs)) = &*cache
            && *g == generation
            && let Some(c) = &configs[purpose.index()]
        {
            return Ok(c.clone());
        }
        let cert = self
            .store
            .current()
            .filter(|c| c.is_valid_at(std::time::SystemTime::now()))
            .ok_or(TlsError::NoCertificate)?;
        let config = client_config(&cert, self.expected.clone(), purpose.alpn())
            .map_err(|e| TlsError::Config(e.to_string()))?;
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
        let connector = tokio_rustls::TlsConnector::from(self.config(purpose)?);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(self.sni.clone(), tcp))
            .await
        {
            Ok(Ok(s)) => Ok(Io::Client(Box::new(s))),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::Timeout),
        }
    }
}
