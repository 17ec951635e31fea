//! Access logs, as Istio configures them (meshConfig `accessLogFile: /dev/stdout`,
//! `accessLogEncoding`, `accessLogFormat`, rendered by the operator on every HTTP connection
//! manager and TCP proxy): the formats are compiled once per configuration
//! (`rustmesh_xds::access_log`, Envoy's command operators), and each finished request or
//! connection writes one line per log to the [`Sink`] (standard output or error).
//!
//! A request copies only what the formats read: the request headers they name (with the
//! pseudo-headers `:method`, `:path`, `:authority`, `:scheme`) when it arrives, the response
//! headers when the answer comes, so a sidecar without access logs copies nothing.

use rustmesh_xds::access_log::{AccessLog, AccessLogError, Entry, Formatter};
use std::sync::Arc;

/// Where a log's lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// `/dev/stdout` (Istio's usual `accessLogFile`).
    Stdout,
    /// `/dev/stderr`.
    Stderr,
}

/// What a [`Sink`] calls with each line.
type WriteLine = dyn Fn(Stream, &str) + Send + Sync;

/// Writes access-log lines (standard output or error; tests collect them).
#[derive(Clone)]
pub struct Sink(Arc<WriteLine>);

impl Sink {
    /// Lines to the process's standard output or error, as the log's path says.
    pub fn stdio() -> Self {
        Sink(Arc::new(|stream, line| match stream {
            Stream::Stdout => println!("{line}"),
            Stream::Stderr => eprintln!("{line}"),
        }))
    }

    /// Every line to a function, whatever its stream (tests).
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Sink(Arc::new(move |_, line| f(line)))
    }

    fn write(&self, stream: Stream, line: &str) {
        (self.0)(stream, line)
    }
}

impl Default for Sink {
    fn default() -> Self {
        Sink::stdio()
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// The compiled access logs of one HTTP connection manager or TCP proxy.
#[derive(Clone, Debug, Default)]
pub struct AccessLogs(Arc<[(Stream, Formatter)]>);

impl AccessLogs {
    /// Compiles each log's format; the first error names the log's index.
    pub fn compile(logs: &[AccessLog]) -> Result<Self, (usize, AccessLogError)> {
        let mut out = Vec::with_capacity(logs.len());
        for (i, log) in logs.iter().enumerate() {
            let formatter = log.compile().map_err(|e| (i, e))?;
            let stream = if log.path == rustmesh_xds::access_log::STDERR {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            out.push((stream, formatter));
        }
        Ok(AccessLogs(out.into()))
    }

    /// Whether there is no log (nothing is copied for one then).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request headers (lowercase) some format reads.
    pub fn request_headers(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .flat_map(|(_, f)| f.request_headers())
            .map(String::as_str)
    }

    /// The response headers (lowercase) some format reads.
    pub fn response_headers(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .flat_map(|(_, f)| f.response_headers())
            .map(String::as_str)
    }

    /// Writes `entry` to every log.
    pub fn write(&self, sink: &Sink, entry: &Entry<'_>) {
        for (stream, formatter) in self.0.iter() {
            sink.write(*stream, &formatter.format(entry));
        }
    }
}

/// Header values copied for the access log: `(lowercase name, value)`.
#[derive(Debug, Default)]
pub struct Copied(Vec<(String, String)>);

impl Copied {
    /// Copies the first value of each of `names` that `get` finds.
    pub fn take<'n>(
        names: impl Iterator<Item = &'n str>,
        get: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let mut out: Vec<(String, String)> = Vec::new();
        for n in names {
            if out.iter().any(|(k, _)| k == n) {
                continue;
            }
            if let Some(v) = get(n) {
                out.push((n.to_string(), v));
            }
        }
        Copied(out)
    }

    /// The value copied for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
