//! A bookinfo-style test peer for rustmesh's proxy tests, benchmarks and end-to-end suite.
//!
//! - [`server`]: HTTP/1.1 and h2c (prior knowledge) on the same port; every answer is a JSON
//!   [`server::Report`] naming the service, version and pod and echoing the request, so a test can
//!   see which backend answered and what the proxy changed. `/status/<code>` answers that status,
//!   `/delay/<ms>` waits first, `?upstream=<url>` calls another service (productpage -> reviews
//!   -> ratings) forwarding the user and tracing headers ([`server::FORWARDED_HEADERS`]).
//!   [`server::serve_https`] serves the same over TLS.
//! - [`tls`]: the server's TLS (`serve --https`): certificate and key from PEM files, mutual TLS
//!   with a client CA; the answers report the handshake (SNI, ALPN, the client certificate's CN).
//!   And the client's (`get --cacert [--cert --key]`): only the given CAs are trusted.
//! - [`tcp`]: a TCP echo server and a server-first one (sends a banner before reading, like MySQL).
//! - [`client`]: sends N requests and counts answers per backend and status (failures under
//!   `errors`), over `http://` or `https://` (SNI the URL's host, ALPN h2 or http/1.1), TCP
//!   optionally going elsewhere than the URL's host ([`client::Options::connect_to`], curl's
//!   `--connect-to`).
//! - [`collector`]: a trace collector for tests: receives spans as Zipkin v2 JSON, OTLP/gRPC and
//!   OTLP/HTTP into one in-memory [`collector::Store`], and answers Zipkin's query API.
//! - [`relay`]: the benchmark's floor, a byte relay on the capture ports (no HTTP).
#![forbid(unsafe_code)]

pub mod client;
pub mod collector;
pub mod relay;
pub mod server;
pub mod tcp;
pub mod tls;

/// Errors of the test app.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("TLS {what}: {reason}")]
    Tls { what: String, reason: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
