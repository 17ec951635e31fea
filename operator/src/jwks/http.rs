//! One HTTP(S) GET of a key set or discovery document: hyper's HTTP/1.1 client connection over
//! a TCP stream, through rustls (ring, the workspace's one TLS stack) for `https`, trusting the
//! system's roots (`rustls-native-certs`: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
//! distribution's bundle; the operator image ships Debian's `ca-certificates`).
//!
//! One connection per fetch (istiod's client disables keep-alives too), the whole exchange
//! within the caller's timeout; redirects followed (at most [`MAX_REDIRECTS`], never from https
//! to http); a 2xx body of at most [`MAX_BYTES`] is the answer, anything else an error saying
//! what happened (status and the start of the body, as istiod logs it). Not supported: HTTP
//! proxies from the environment (`HTTPS_PROXY`, which istiod honours), extra CA bundles.

use super::{Fetch, MAX_BYTES};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The most redirects one fetch follows.
pub const MAX_REDIRECTS: usize = 5;

/// How much of an error answer's body a message quotes.
const QUOTED_BODY: usize = 100;

/// [`Fetch`] over HTTP(S).
#[derive(Clone)]
pub struct HttpFetch {
    tls: Arc<rustls::ClientConfig>,
}

impl HttpFetch {
    /// Trusting the system's root certificates. Without any, `https` fetches fail (each
    /// saying why) and `http` ones still work.
    pub fn system() -> Self {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            tracing::warn!(
                ?errors,
                "no system root certificates: key sets over https cannot be fetched"
            );
        }
        Self::with_roots(roots)
    }

    /// Trusting only `roots`.
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        HttpFetch {
            tls: Arc::new(config),
        }
    }
}

impl Fetch for HttpFetch {
    fn get(&self, url: &str, timeout: Duration) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let tls = self.tls.clone();
        let url = url.to_string();
        Box::pin(async move {
            match tokio::time::timeout(timeout, follow(&tls, &url)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("GET {url}: no answer within {timeout:?}")),
            }
        })
    }
}

/// What one request gave.
enum Answer {
    Body(Vec<u8>),
    Redirect(String),
}

/// GETs `url`, following redirects.
async fn follow(tls: &Arc<rustls::ClientConfig>, url: &str) -> Result<Vec<u8>, String> {
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        match get_once(tls, &current).await? {
            Answer::Body(body) => return Ok(body),
            Answer::Redirect(location) => {
                let next = resolve(&current, &location)
                    .ok_or_else(|| format!("GET {current}: bad redirect to {location:?}"))?;
                if is_https(&current) && !is_https(&next) {
                    return Err(format!(
                        "GET {current}: redirected from https to http ({next}): refused"
                    ));
                }
                current = next;
            }
        }
    }
    Err(format!("GET {url}: more than {MAX_REDIRECTS} redirects"))
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// A `Location` against the URL it answered: absolute, scheme-relative, absolute-path or
/// relative to the base's directory.
fn resolve(base: &str, location: &str) -> Option<String> {
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Some(location.to_string());
    }
    let uri: Uri = base.parse().ok()?;
    let scheme = uri.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let authority = uri.authority()?;
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!("{scheme}://{authority}{dir}{location}"))
}

/// One GET on a new connection.
async fn get_once(tls: &Arc<rustls::ClientConfig>, url: &str) -> Result<Answer, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("GET {url}: not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        _ => return Err(format!("GET {url}: not an http(s) URL")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("GET {url}: no host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("GET {url}: connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, "rustmesh-operator")
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    if https {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| format!("GET {url}: {host:?} is not a server name: {e}"))?;
        let stream = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("GET {url}: TLS handshake with {host}:{port}: {e}"))?;
        exchange(TokioIo::new(stream), request, url).await
    } else {
        exchange(TokioIo::new(tcp), request, url).await
    }
}

/// Sends `request` on `io` and reads the answer, driving the connection meanwhile.
async fn exchange<I>(io: I, request: Request<Empty<Bytes>>, url: &str) -> Result<Answer, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let work = async move {
        let response = sender.send_request(request).await;
        drop(sender);
        match response {
            Ok(r) => read(r, url).await,
            Err(e) => Err(format!("GET {url}: {e}")),
        }
    };
    // The connection ends once the sender is dropped and the answer read; an error of its own
    // also fails `send_request` or the body, which say it.
    let (answer, _) = tokio::join!(work, conn);
    answer
}

/// The answer: a redirect's location, a 2xx body within [`MAX_BYTES`], or why not.
async fn read(response: Response<Incoming>, url: &str) -> Result<Answer, String> {
    let status = response.status();
    if status.is_redirection()
        && let Some(location) = response.headers().get(header::LOCATION)
    {
        let location = location
            .to_str()
            .map_err(|_| format!("GET {url}: status {status} with a Location that is not text"))?;
        return Ok(Answer::Redirect(location.to_string()));
    }
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BYTES as u64) {
        return Err(too_large(url));
    }
    let body = Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(url)
            } else {
                format!("GET {url}: reading the answer: {e}")
            }
        })?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let quoted: String = text.chars().take(QUOTED_BODY).collect();
        let cut = if quoted.len() < text.len() { "..." } else { "" };
        return Err(format!(
            "GET {url}: status {}, body {quoted:?}{cut}",
            status.as_u16()
        ));
    }
    Ok(Answer::Body(body.to_vec()))
}

fn too_large(url: &str) -> String {
    format!("GET {url}: the answer is larger than {MAX_BYTES} bytes (1 MiB, the operator's limit)")
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn redirect_locations_resolve_against_the_url_they_answered() {
        let base = "https://idp.example.com:8443/realms/a/certs?x=1";
        for (location, want) in [
            ("https://other.example/keys", "https://other.example/keys"),
            ("//cdn.example/keys", "https://cdn.example/keys"),
            ("/keys.json", "https://idp.example.com:8443/keys.json"),
            ("v2/certs", "https://idp.example.com:8443/realms/a/v2/certs"),
        ] {
            assert_eq!(resolve(base, location).as_deref(), Some(want), "{location}");
        }
        assert_eq!(
            resolve("http://h", "keys").as_deref(),
            Some("http://h/keys")
        );
    }
}
