//! The CA as the sidecars reach it: Istio's `IstioCertificateService/CreateCertificate` over
//! gRPC and TLS (port 15012), its decision core [`Ca::create_certificate`] kept apart from the
//! transport so it is tested without a network.
//!
//! A request is answered in this order, each refusal counted under Istio's metric names
//! (`citadel_server_*`, with the OpenMetrics `_total` suffix) and answered with the gRPC code Istio's CA uses:
//! 1. the bearer token is reviewed by the API server ([`super::review`]): `UNAUTHENTICATED`;
//! 2. metadata (Istio's impersonation) is not supported: `INVALID_ARGUMENT` naming the field;
//! 3. the CSR is signed for exactly the token's identity ([`super::authority`]):
//!    `INVALID_ARGUMENT` for a bad CSR, a foreign name or a lifetime over the maximum.
//!
//! On the same server, rustmesh's `rustmesh.v1.CredentialService/FetchCredential` serves a
//! DestinationRule's `credentialName` ([`super::credential`]): the token is reviewed the same
//! way (`UNAUTHENTICATED`), then a bad name is `INVALID_ARGUMENT`, a caller without the right to
//! list Secrets `PERMISSION_DENIED`, a missing Secret `NOT_FOUND`, a Secret without the keys
//! `FAILED_PRECONDITION`; counted in `rustmesh_ca_credential_*`. A CA without a Secret source
//! answers `UNIMPLEMENTED`.
//!
//! [`CaServer::new`] binds (a bad address fails at start) and [`CaServer::run`] serves. Neither
//! the token nor any key is logged.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rustmesh_xds::ca::{
    CREATE_CERTIFICATE, CREDENTIAL_SERVICE, FETCH_CREDENTIAL, FetchCredentialRequest,
    FetchCredentialResponse, IstioCertificateRequest, IstioCertificateResponse,
    MAX_CREDENTIAL_BYTES, MAX_MESSAGE_BYTES, SERVICE,
};
use rustmesh_xds::identity::SpiffeId;
use tonic::{Code, Status};

use super::authority::{Authority, SignError};
use super::credential::{CredentialError, SecretSource};
use super::review::{AuthError, Reviewer};

/// How the CA authenticates callers: the API server's TokenReview, or (unit tests only) a fixed
/// answer.
pub trait Authenticate: Send + Sync + 'static {
    /// The identity `token` authenticates.
    fn authenticate(&self, token: &str)
    -> impl Future<Output = Result<SpiffeId, AuthError>> + Send;
}

impl Authenticate for Reviewer {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
        Reviewer::authenticate(self, token).await
    }
}

/// The CA's counters, named after Istio's `citadel_server_*_count` (no prefix); exposed in
/// OpenMetrics form, so `citadel_server_csr_count` reads `citadel_server_csr_total`.
#[derive(Clone, Default)]
pub struct CaMetrics {
    /// `citadel_server_csr_total`: every request.
    pub csr: Counter,
    /// `citadel_server_authentication_failure_total`.
    pub authentication_failure: Counter,
    /// `citadel_server_csr_parsing_err_total`: CSRs that do not parse or verify.
    pub csr_parsing_err: Counter,
    /// `citadel_server_id_extraction_err_total`: names the caller may not have, unsupported
    /// metadata, lifetimes over the maximum.
    pub id_extraction_err: Counter,
    /// `citadel_server_csr_sign_err_total`: signing failures.
    pub csr_sign_err: Counter,
    /// `citadel_server_success_cert_issuance_total`.
    pub success_cert_issuance: Counter,
    /// `rustmesh_ca_credential_requests_total`: every credential request.
    pub credential_requests: Counter,
    /// `rustmesh_ca_credential_refused_total`: credential requests not served.
    pub credential_refused: Counter,
    /// `rustmesh_ca_connections_refused_total`: connections closed as they were accepted
    /// because [`CaServer`]'s connection limit was reached.
    pub connections_refused: Counter,
}

impl CaMetrics {
    /// Registers the counters in `registry` (its root: the names carry no prefix).
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, c) in [
            ("citadel_server_csr", "CSRs received", &self.csr),
            (
                "citadel_server_authentication_failure",
                "CSRs whose caller was not authenticated",
                &self.authentication_failure,
            ),
            (
                "citadel_server_csr_parsing_err",
                "CSRs that did not parse or verify",
                &self.csr_parsing_err,
            ),
            (
                "citadel_server_id_extraction_err",
                "CSRs asking for what the caller may not have",
                &self.id_extraction_err,
            ),
            (
                "citadel_server_csr_sign_err",
                "CSRs that failed to sign",
                &self.csr_sign_err,
            ),
            (
                "citadel_server_success_cert_issuance",
                "Certificates issued",
                &self.success_cert_issuance,
            ),
            (
                "rustmesh_ca_credential_requests",
                "credentialName Secrets asked for by sidecars",
                &self.credential_requests,
            ),
            (
                "rustmesh_ca_credential_refused",
                "credentialName requests refused (authentication, right, name, Secret)",
                &self.credential_refused,
            ),
            (
                "rustmesh_ca_connections_refused",
                "Connections to the CA closed at accept: its connection limit was reached",
                &self.connections_refused,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
    }
}

/// The CA: an authority, how callers are authenticated, and its counters.
pub struct Ca<A> {
    authority: Arc<Authority>,
    authenticator: A,
    metrics: CaMetrics,
    /// Where `credentialName` Secrets are read; `None`: not served.
    credentials: Option<Arc<dyn SecretSource>>,
}

impl<A: Authenticate> Ca<A> {
    /// A CA signing with `authority` for callers `authenticator` vouches for.
    pub fn new(authority: Arc<Authority>, authenticator: A, metrics: CaMetrics) -> Self {
        Ca {
            authority,
            authenticator,
            metrics,
            credentials: None,
        }
    }

    /// Also serves `credentialName` Secrets read from `source`.
    pub fn with_credentials(mut self, source: Arc<dyn SecretSource>) -> Self {
        self.credentials = Some(source);
        self
    }

    /// Answers one credential request whose `authorization` metadata was `authorization`.
    pub async fn fetch_credential(
        &self,
        authorization: Option<&str>,
        request: &FetchCredentialRequest,
    ) -> Result<FetchCredentialResponse, Status> {
        self.metrics.credential_requests.inc();
        let refused = |status: Status| {
            self.metrics.credential_refused.inc();
            Err(status)
        };
        let Some(source) = &self.credentials else {
            return refused(Status::unimplemented(
                "this CA serves no credentialName Secrets",
            ));
        };
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        let identity = match self.authenticator.authenticate(token).await {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(error = %e, "CA: credential request not authenticated");
                return refused(Status::unauthenticated(format!(
                    "request authentication failed: {e}"
                )));
            }
        };
        match super::credential::fetch(source.as_ref(), &identity, &request.name).await {
            Ok(answer) => {
                tracing::debug!(%identity, name = %request.name, "CA: credential served");
                Ok(answer)
            }
            Err(e) => {
                tracing::info!(%identity, name = %request.name, error = %e,
                    "CA: credential refused");
                let code = match e {
                    CredentialError::Name(_) => Code::InvalidArgument,
                    CredentialError::Forbidden { .. } => Code::PermissionDenied,
                    CredentialError::NotFound { .. } => Code::NotFound,
                    CredentialError::Keys { .. } | CredentialError::NotText { .. } => {
                        Code::FailedPrecondition
                    }
                    CredentialError::Api(_) => Code::Unavailable,
                };
                refused(Status::new(code, e.to_string()))
            }
        }
    }

    /// Answers one request whose `authorization` metadata was `authorization`.
    pub async fn create_certificate(
        &self,
        authorization: Option<&str>,
        request: &IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Status> {
        self.metrics.csr.inc();
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        let identity = match self.authenticator.authenticate(token).await {
            Ok(id) => id,
            Err(e) => {
                self.metrics.authentication_failure.inc();
                tracing::info!(error = %e, "CA: request not authenticated");
                return Err(Status::unauthenticated(format!(
                    "request authentication failed: {e}"
                )));
            }
        };
        if let Some(field) = request
            .metadata
            .as_ref()
            .and_then(|m| m.fields.keys().next())
        {
            self.metrics.id_extraction_err.inc();
            return Err(Status::invalid_argument(format!(
                "request metadata field {field:?} is not supported by rustmesh's CA \
                 (no impersonation): send no metadata"
            )));
        }
        let ttl = match u64::try_from(request.validity_duration) {
            Ok(0) => None,
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => {
                self.metrics.id_extraction_err.inc();
                return Err(Status::invalid_argument(format!(
                    "validity_duration {} is negative",
                    request.validity_duration
                )));
            }
        };
        match self
            .authority
            .sign(&request.csr, &identity, ttl, SystemTime::now())
        {
            Ok(cert_chain) => {
                self.metrics.success_cert_issuance.inc();
                tracing::debug!(%identity, "CA: certificate issued");
                Ok(IstioCertificateResponse { cert_chain })
            }
            Err(e) => {
                let counter = match &e {
                    SignError::TooLarge(_) | SignError::Csr(_) => &self.metrics.csr_parsing_err,
                    SignError::ForeignName { .. }
                    | SignError::TrustDomain { .. }
                    | SignError::TtlTooLong { .. } => &self.metrics.id_extraction_err,
                    SignError::Signing(_) => &self.metrics.csr_sign_err,
                };
                counter.inc();
                tracing::info!(%identity, error = %e, "CA: request refused");
                let code = match e {
                    SignError::Signing(_) => Code::Internal,
                    _ => Code::InvalidArgument,
                };
                Err(Status::new(code, e.to_string()))
            }
        }
    }
}

/// One unary method of the CA's server: its service and path, its messages, the largest
/// answer it sends, and how [`Ca`] answers it.
pub trait Method: Send + Sync + 'static {
    /// The gRPC service name.
    const SERVICE: &'static str;
    /// The method path.
    const PATH: &'static str;
    /// The largest answer encoded (bytes); requests are at most [`MAX_MESSAGE_BYTES`].
    const MAX_ANSWER: usize;
    /// The request.
    type Request: prost::Message + Default + Send + Sync + 'static;
    /// The answer.
    type Response: prost::Message + Send + 'static;
    /// `ca`'s answer to `request`, whose `authorization` metadata was `authorization`.
    fn answer<A: Authenticate>(
        ca: &Ca<A>,
        authorization: Option<&str>,
        request: &Self::Request,
    ) -> impl Future<Output = Result<Self::Response, Status>> + Send;
}

/// Istio's `CreateCertificate`.
pub struct CreateCertificate;

impl Method for CreateCertificate {
    const SERVICE: &'static str = SERVICE;
    const PATH: &'static str = CREATE_CERTIFICATE;
    const MAX_ANSWER: usize = MAX_MESSAGE_BYTES;
    type Request = IstioCertificateRequest;
    type Response = IstioCertificateResponse;
    fn answer<A: Authenticate>(
        ca: &Ca<A>,
        authorization: Option<&str>,
        request: &IstioCertificateRequest,
    ) -> impl Future<Output = Result<IstioCertificateResponse, Status>> + Send {
        ca.create_certificate(authorization, request)
    }
}

/// rustmesh's `FetchCredential` (its own service name; the answer may carry a CA bundle).
pub struct FetchCredential;

impl Method for FetchCredential {
    const SERVICE: &'static str = CREDENTIAL_SERVICE;
    const PATH: &'static str = FETCH_CREDENTIAL;
    const MAX_ANSWER: usize = MAX_CREDENTIAL_BYTES;
    type Request = FetchCredentialRequest;
    type Response = FetchCredentialResponse;
    fn answer<A: Authenticate>(
        ca: &Ca<A>,
        authorization: Option<&str>,
        request: &FetchCredentialRequest,
    ) -> impl Future<Output = Result<FetchCredentialResponse, Status>> + Send {
        ca.fetch_credential(authorization, request)
    }
}

/// The gRPC service of method `M` (a tower service tonic's server routes to).
pub struct CaService<A, M> {
    ca: Arc<Ca<A>>,
    method: PhantomData<fn() -> M>,
}

/// Istio's certificate service.
pub type CertificateService<A> = CaService<A, CreateCertificate>;
/// The credential service.
pub type CredentialService<A> = CaService<A, FetchCredential>;

impl<A, M> CaService<A, M> {
    fn new(ca: Arc<Ca<A>>) -> Self {
        CaService {
            ca,
            method: PhantomData,
        }
    }
}

impl<A, M> Clone for CaService<A, M> {
    fn clone(&self) -> Self {
        CaService::new(self.ca.clone())
    }
}

impl<A, M: Method> tonic::server::NamedService for CaService<A, M> {
    const NAME: &'static str = M::SERVICE;
}

struct Unary<A, M>(Arc<Ca<A>>, PhantomData<fn() -> M>);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<A: Authenticate, M: Method> tonic::server::UnaryService<M::Request> for Unary<A, M> {
    type Response = M::Response;
    type Future = BoxFuture<Result<tonic::Response<M::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<M::Request>) -> Self::Future {
        let ca = self.0.clone();
        Box::pin(async move {
            let authorization = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            M::answer(&ca, authorization.as_deref(), request.get_ref())
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<A, M, B> tower::Service<http::Request<B>> for CaService<A, M>
where
    A: Authenticate,
    M: Method,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let ca = self.ca.clone();
        Box::pin(async move {
            if request.uri().path() != M::PATH {
                return Ok(Status::unimplemented(format!(
                    "{} is not a method of {}",
                    request.uri().path(),
                    M::SERVICE
                ))
                .into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(M::MAX_ANSWER);
            Ok(grpc.unary(Unary::<A, M>(ca, PhantomData), request).await)
        })
    }
}

/// How long the CA's server waits for open connections after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connections the CA serves at once by default (`--ca-max-connections`): every sidecar
/// connects for its certificate at start and at each renewal (one short connection per
/// request), so a rollout of many pods at once makes hundreds.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Time for a TLS handshake, the ClientHello's arrival included.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which no byte moved for this long is closed: it covers a client that sends
/// no request after the handshake and one that stays connected between requests (the sidecar
/// gives each request 10 s, connection included, and connects again for the next).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a connection lives (then HTTP/2 GOAWAY: requests in flight finish, for at most
/// [`MAX_CONNECTION_AGE_GRACE`]). The CA has only unary methods, no long-lived streams.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// How long requests in flight may take after [`MAX_CONNECTION_AGE`].
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);

/// The CA's server: TLS with a certificate the CA issues itself (DNS names of its Services).
pub struct CaServer<A> {
    listener: tokio::net::TcpListener,
    tls: tonic::transport::ServerTlsConfig,
    service: CertificateService<A>,
    credentials: CredentialService<A>,
    gate: rustmesh_xds::serve::Gate,
    idle_timeout: Duration,
}

/// A connection admitted under the CA's connection limit, as tonic's server takes it.
struct CaConn(rustmesh_xds::serve::Conn<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for CaConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CaConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for CaConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(self.0.get_ref())
    }
}

/// Why the CA server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("CA: binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The serving certificate could not be made or loaded.
    #[error("CA: serving certificate: {0}")]
    Tls(String),
    /// Serving failed.
    #[error("CA: serving: {0}")]
    Serve(String),
}

impl<A: Authenticate> CaServer<A> {
    /// Binds `addr` and prepares TLS with a serving certificate for `dns_names`, issued by the
    /// CA itself (so sidecars verify it with the mesh root they already trust).
    pub async fn new(
        addr: SocketAddr,
        ca: Arc<Ca<A>>,
        dns_names: &[String],
    ) -> Result<Self, ServerError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let (chain, key) = ca
            .authority
            .serving_certificate(dns_names, SystemTime::now())
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(chain.concat(), key))
            .timeout(HANDSHAKE_TIMEOUT);
        let refused = ca.metrics.connections_refused.clone();
        Ok(CaServer {
            listener,
            tls,
            service: CaService::new(ca.clone()),
            credentials: CaService::new(ca),
            gate: rustmesh_xds::serve::Gate::new("ca", DEFAULT_MAX_CONNECTIONS).on_refused(
                move || {
                    refused.inc();
                },
            ),
            idle_timeout: IDLE_TIMEOUT,
        })
    }

    /// The same server serving at most `max` connections at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`]); more are closed as they are accepted and counted in
    /// `rustmesh_ca_connections_refused_total`.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        let refused = self.service.ca.metrics.connections_refused.clone();
        self.gate = rustmesh_xds::serve::Gate::new("ca", max).on_refused(move || {
            refused.inc();
        });
        self
    }

    /// The same server closing connections idle for `idle` (default [`IDLE_TIMEOUT`]; tests).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    /// Serves until `shutdown` completes, then lets open requests finish for at most
    /// [`SHUTDOWN_GRACE`] (a client that keeps its connection open does not hold the process).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        // Connections over the cap are closed at accept (`rustmesh_xds::serve`); idle ones fail
        // their reads. Small request/answer writes: no Nagle delay.
        let idle = self.idle_timeout;
        let gate = Arc::new(self.gate);
        let incoming =
            futures::stream::unfold((self.listener, gate), move |(listener, gate)| async move {
                let (stream, _, permit) = rustmesh_xds::serve::accept(&listener, &gate).await;
                let _ = stream.set_nodelay(true);
                let conn = rustmesh_xds::serve::Conn::new(stream, permit).fail_when_idle(idle);
                Some((Ok::<_, std::io::Error>(CaConn(conn)), (listener, gate)))
            });
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = tonic::transport::Server::builder()
            .max_connection_age(MAX_CONNECTION_AGE)
            .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
            .tls_config(self.tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .add_service(self.service)
            .add_service(self.credentials)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                let _ = stopping.send(());
            });
        let grace = async move {
            if stopped.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = serve => served.map_err(|e| ServerError::Serve(e.to_string())),
            () = grace => {
                tracing::info!(grace = ?SHUTDOWN_GRACE, "CA: connections still open after the grace period, stopping");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::Material;
    use crate::ca::authority::tests::{csr, uri};
    use std::collections::BTreeMap;

    /// Vouches for one token only.
    struct OneToken(&'static str, SpiffeId);

    impl Authenticate for OneToken {
        async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
            if token == self.0 {
                Ok(self.1.clone())
            } else {
                Err(AuthError::Rejected("unknown token".into()))
            }
        }
    }

    fn ca() -> (Ca<OneToken>, CaMetrics, SpiffeId) {
        let who = SpiffeId::new("cluster.local", "bookinfo", "reviews").unwrap();
        let authority = Authority::new(
            "cluster.local",
            &Material::self_signed_root("cluster.local", SystemTime::now()).unwrap(),
        )
        .unwrap();
        let metrics = CaMetrics::default();
        (
            Ca::new(
                Arc::new(authority),
                OneToken("good", who.clone()),
                metrics.clone(),
            ),
            metrics,
            who,
        )
    }

    fn request(csr: String) -> IstioCertificateRequest {
        IstioCertificateRequest {
            csr,
            validity_duration: 0,
            metadata: None,
        }
    }

    #[tokio::test]
    async fn each_refusal_has_istios_code_and_counter() {
        let (ca, m, who) = ca();
        let good = request(csr(vec![uri(&who.to_string())]));

        let e = ca.create_certificate(None, &good).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = ca
            .create_certificate(Some("Bearer bad"), &good)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(m.authentication_failure.get(), 2);

        let mut impersonating = good.clone();
        impersonating.metadata = Some(prost_types::Struct {
            fields: BTreeMap::from([("ImpersonatedIdentity".to_string(), Default::default())]),
        });
        let e = ca
            .create_certificate(Some("Bearer good"), &impersonating)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("\"ImpersonatedIdentity\""),
            "{}",
            e.message()
        );

        let foreign = request(csr(vec![uri(
            "spiffe://cluster.local/ns/bookinfo/sa/admin",
        )]));
        let e = ca
            .create_certificate(Some("Bearer good"), &foreign)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("sa/admin"));
        let mut negative = good.clone();
        negative.validity_duration = -1;
        assert_eq!(
            ca.create_certificate(Some("Bearer good"), &negative)
                .await
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        assert_eq!(m.id_extraction_err.get(), 3);

        let e = ca
            .create_certificate(Some("Bearer good"), &request("garbage".into()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(m.csr_parsing_err.get(), 1);

        let ok = ca
            .create_certificate(Some("Bearer good"), &good)
            .await
            .unwrap();
        assert_eq!(ok.cert_chain.len(), 2);
        assert_eq!((m.success_cert_issuance.get(), m.csr.get()), (1, 7));
    }

    #[tokio::test]
    async fn served_over_grpc_and_tls_verified_with_the_mesh_root() {
        let (ca, m, who) = ca();
        let root = ca.authority.root_bundle().to_string();
        let ca = Arc::new(ca);
        let server = CaServer::new(
            "127.0.0.1:0".parse().unwrap(),
            ca,
            &["istiod.istio-system.svc".to_string()],
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&root))
                    .domain_name("istiod.istio-system.svc"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        let call = |token: &'static str, path: &'static str| {
            let mut req = tonic::Request::new(request(csr(vec![uri(&who.to_string())])));
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let mut client = client.clone();
            async move {
                client.ready().await.unwrap();
                client
                    .unary::<_, IstioCertificateResponse, _>(
                        req,
                        http::uri::PathAndQuery::from_static(path),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await
            }
        };
        let chain = call("good", CREATE_CERTIFICATE)
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].trim(), root.trim());
        assert_eq!(
            call("bad", CREATE_CERTIFICATE).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            call("good", "/istio.v1.auth.IstioCertificateService/Other")
                .await
                .unwrap_err()
                .code(),
            Code::Unimplemented
        );
        assert_eq!(m.success_cert_issuance.get(), 1);
        client.ready().await.unwrap();
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
    }

    /// Issue 17 item 3: the CA caps its connections (closed at accept, counted) and closes
    /// idle ones, and still serves a fresh client.
    #[tokio::test]
    async fn connections_over_the_cap_are_refused_and_idle_ones_closed() {
        use tokio::io::AsyncReadExt;
        let (ca, m, _) = ca();
        let root = ca.authority.root_bundle().to_string();
        let server = CaServer::new(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(ca),
            &["istiod.istio-system.svc".to_string()],
        )
        .await
        .unwrap()
        .with_max_connections(2)
        .with_idle_timeout(Duration::from_millis(500));
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        let closed = |mut s: tokio::net::TcpStream, within: Duration| async move {
            let mut buf = [0u8; 64];
            tokio::time::timeout(within, async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok()
        };
        let a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let b = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let over = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed(over, Duration::from_secs(5)).await,
            "the third was not refused"
        );
        assert_eq!(m.connections_refused.get(), 1);
        // Neither sends a byte: closed once idle, well before the handshake timeout.
        assert!(closed(a, Duration::from_secs(8)).await);
        assert!(closed(b, Duration::from_secs(8)).await);
        // A real client is served again.
        let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&root))
                    .domain_name("istiod.istio-system.svc"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        let err = client
            .unary::<_, IstioCertificateResponse, _>(
                tonic::Request::new(request("x".into())),
                http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "answered by the CA: {err}"
        );
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_connection_that_stays_open() {
        let (ca, _, _) = ca();
        let root = ca.authority.root_bundle().to_string();
        let server = CaServer::new(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(ca),
            &["istiod.istio-system.svc".to_string()],
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        // A client that opens an HTTP/2 connection over TLS, then neither reads (so never
        // acknowledges the server's goodbye) nor leaves: graceful shutdown alone would wait
        // for it forever.
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        use tokio::io::AsyncWriteExt;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut idle = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                ServerName::try_from("istiod.istio-system.svc").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        // The preface and an empty SETTINGS frame.
        idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        idle.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop.send(());
        tokio::time::timeout(SHUTDOWN_GRACE * 3, serving)
            .await
            .expect("the server stopped within its grace period")
            .unwrap()
            .unwrap();
    }
}
