//! Access logs, as Istio configures them (meshConfig `accessLogFile: /dev/stdout`,
//! `accessLogEncoding`, `accessLogFormat`, rendered by the operator on every HTTP connection
//! manager and TCP proxy): the formats are compiled once per configuration
//! (`rustmesh_xds::access_log`, Envoy's command operators), and each finished request or
//! connection writes one line per log to the [`Sink`] (standard output or error).
//!
//! A request copies only what the formats read: the request headers they name (with the
//! pseudo-headers `:method`, `:path`, `:authority`, `:scheme`) when it arrives, the response
//! headers when the answer comes, so a sidecar without access logs copies nothing.
//!
//! Lines are not written one `write(2)` each on the request path: as Envoy's file access log
//! does, they are appended to a buffer that a writer thread flushes every second, or at once
//! when it passes [`FLUSH_BYTES`]. Should the output stall (a blocked pipe), the buffer stops
//! at [`MAX_BUFFERED_BYTES`] and further lines are dropped and counted (reported as a warning
//! when the writer gets through again), so memory never grows without bound and requests never
//! wait on the log. [`flush`] writes what is buffered (the sidecar calls it before exiting).

use rustmesh_xds::access_log::{AccessLog, AccessLogError, Entry, Formatter};
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Buffered bytes that make the writer flush at once (Envoy's default is 64 KiB too).
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Buffered bytes past which lines are dropped (the output has stalled).
pub const MAX_BUFFERED_BYTES: usize = 4 * 1024 * 1024;
/// How often the writer flushes what is buffered.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Where a log's lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// `/dev/stdout` (Istio's usual `accessLogFile`).
    Stdout = 0,
    /// `/dev/stderr`.
    Stderr = 1,
}

/// A function that takes every line (tests).
type TakeLine = dyn Fn(&str) + Send + Sync;

/// Writes access-log lines (standard output or error; tests collect them).
#[derive(Clone)]
pub struct Sink(Option<Arc<TakeLine>>);

impl Sink {
    /// Lines to the process's standard output or error, as the log's path says, through the
    /// buffered writer (see the module doc).
    pub fn stdio() -> Self {
        Sink(None)
    }

    /// Every line to a function, whatever its stream (tests).
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Sink(Some(Arc::new(f)))
    }

    /// Writes the line `write` appends to the string it is given: straight into the buffered
    /// writer's pending bytes for standard output and error, so a line is never a string of
    /// its own.
    fn write(&self, stream: Stream, write: impl FnOnce(&mut String)) {
        match &self.0 {
            None => stdio_writer().push_with(stream, write),
            Some(f) => {
                let mut line = String::new();
                write(&mut line);
                f(&line)
            }
        }
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

/// The compiled access logs of one HTTP connection manager or TCP proxy, with the header and
/// trailer names their formats read (each once, lowercase), so a request copies those values
/// and nothing else.
#[derive(Clone, Debug, Default)]
pub struct AccessLogs(Arc<Compiled>);

#[derive(Debug, Default)]
struct Compiled {
    logs: Vec<(Stream, Formatter)>,
    request: Names,
    response: Names,
    trailers: Names,
}

/// Header names (lowercase, each once) whose values a request copies for its log line.
pub type Names = Arc<[String]>;

/// The distinct names `names` yields.
fn distinct<'a>(names: impl Iterator<Item = &'a String>) -> Names {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out.into()
}

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
        let request = distinct(out.iter().flat_map(|(_, f)| f.request_headers()));
        let response = distinct(out.iter().flat_map(|(_, f)| f.response_headers()));
        let trailers = distinct(out.iter().flat_map(|(_, f)| f.response_trailers()));
        Ok(AccessLogs(Arc::new(Compiled {
            logs: out,
            request,
            response,
            trailers,
        })))
    }

    /// Whether there is no log (nothing is copied for one then).
    pub fn is_empty(&self) -> bool {
        self.0.logs.is_empty()
    }

    /// The request headers (lowercase) some format reads.
    pub fn request_headers(&self) -> &Names {
        &self.0.request
    }

    /// The response headers (lowercase) some format reads.
    pub fn response_headers(&self) -> &Names {
        &self.0.response
    }

    /// The response trailers (lowercase) some format reads (`%TRAILER(...)%`).
    pub fn response_trailers(&self) -> &Names {
        &self.0.trailers
    }

    /// Writes `entry` to every log.
    pub fn write(&self, sink: &Sink, entry: &Entry<'_>) {
        for (stream, formatter) in self.0.logs.iter() {
            if formatter.accepts(entry) {
                sink.write(*stream, |out| formatter.format_into(entry, out));
            }
        }
    }
}

/// Header values copied for the access log, one per name of a [`Names`] list: a header value
/// is a shared buffer, so copying it costs a reference count, not a string.
#[derive(Debug, Default)]
pub struct Copied {
    names: Names,
    values: Vec<Option<http::HeaderValue>>,
}

impl Copied {
    /// Copies the first value of each of `names` that `get` finds.
    pub fn take(names: &Names, get: impl Fn(&str) -> Option<http::HeaderValue>) -> Self {
        Copied {
            values: names.iter().map(|n| get(n)).collect(),
            names: names.clone(),
        }
    }

    /// The value copied for `name` (lowercase, as formats and filters name headers), if it is
    /// UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.names.iter().position(|k| k == name)?;
        std::str::from_utf8(self.values[i].as_ref()?.as_bytes()).ok()
    }
}

/// What is waiting to be written to one stream.
#[derive(Default)]
struct Pending {
    bytes: String,
    dropped: u64,
}

/// The buffered standard output and error of the access logs, and the thread that writes them.
pub struct Writer {
    pending: Mutex<[Pending; 2]>,
    wake: Condvar,
    /// The buffers being written, swapped with the pending ones at each write: the two pairs
    /// keep their room, so a flush neither frees nor allocates (freeing a 64 KiB block made
    /// the allocator consolidate its free lists on every flush).
    writing: Mutex<[String; 2]>,
}

fn stdio_writer() -> &'static Writer {
    static WRITER: OnceLock<&'static Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let w: &'static Writer = Box::leak(Box::new(Writer::new()));
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                loop {
                    w.wait(FLUSH_INTERVAL);
                    w.write_to(&mut std::io::stdout(), &mut std::io::stderr());
                }
            });
        if let Err(e) = spawned {
            tracing::error!("access log writer thread: {e}; lines are written as they come");
        }
        w
    })
}

/// Writes what the access logs buffered (before the process exits).
pub fn flush() {
    stdio_writer().write_to(&mut std::io::stdout(), &mut std::io::stderr());
}

impl Writer {
    fn new() -> Self {
        Writer {
            pending: Mutex::new([Pending::default(), Pending::default()]),
            wake: Condvar::new(),
            writing: Mutex::new([String::new(), String::new()]),
        }
    }

    /// Appends one line (and a newline).
    pub fn push(&self, stream: Stream, line: &str) {
        self.push_with(stream, |out| out.push_str(line))
    }

    /// Appends the line `write` appends (and a newline), or drops it, counted, when that
    /// would take the buffer past [`MAX_BUFFERED_BYTES`]. Wakes the writer when the buffer
    /// crosses [`FLUSH_BYTES`] (once: a wake-up is a system call).
    pub fn push_with(&self, stream: Stream, write: impl FnOnce(&mut String)) {
        let mut pending = crate::sync::lock(&self.pending);
        let p = &mut pending[stream as usize];
        let before = p.bytes.len();
        write(&mut p.bytes);
        p.bytes.push('\n');
        if p.bytes.len() > MAX_BUFFERED_BYTES {
            p.bytes.truncate(before);
            p.dropped += 1;
            return;
        }
        if before < FLUSH_BYTES && p.bytes.len() >= FLUSH_BYTES {
            self.wake.notify_one();
        }
    }

    /// Waits until woken or `at_most` has passed; returns at once, with `true`, when a buffer
    /// is already past [`FLUSH_BYTES`] (its one wake-up came while the writer was writing).
    fn wait(&self, at_most: Duration) -> bool {
        let pending = crate::sync::lock(&self.pending);
        if pending.iter().any(|p| p.bytes.len() >= FLUSH_BYTES) {
            return true;
        }
        let _ = self.wake.wait_timeout(pending, at_most);
        false
    }

    /// Writes and empties both buffers (one `write` each), outside the lock.
    pub fn write_to(&self, out: &mut impl Write, err: &mut impl Write) {
        let mut writing = crate::sync::lock(&self.writing);
        let mut dropped = [0; 2];
        {
            let mut pending = crate::sync::lock(&self.pending);
            for ((p, w), d) in pending.iter_mut().zip(writing.iter_mut()).zip(&mut dropped) {
                std::mem::swap(&mut p.bytes, w);
                *d = std::mem::take(&mut p.dropped);
            }
        }
        for ((bytes, dropped), sink) in writing
            .iter_mut()
            .zip(dropped)
            .zip([out as &mut dyn Write, err as &mut dyn Write])
        {
            if !bytes.is_empty() {
                let _ = sink.write_all(bytes.as_bytes()).and_then(|()| sink.flush());
                bytes.clear();
                // After a stall (up to MAX_BUFFERED_BYTES), give the room back.
                bytes.shrink_to(2 * FLUSH_BYTES);
            }
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "access log lines dropped: the output did not keep up (over {MAX_BUFFERED_BYTES} bytes waiting)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_batched_per_stream_and_bounded() {
        let w = Writer::new();
        w.push(Stream::Stdout, "one");
        w.push(Stream::Stderr, "err");
        w.push(Stream::Stdout, "two");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        w.write_to(&mut out, &mut err);
        assert_eq!(out, b"one\ntwo\n");
        assert_eq!(err, b"err\n");
        // Emptied.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        w.write_to(&mut out, &mut err);
        assert!(out.is_empty() && err.is_empty());
        // A stalled output: the buffer stops at its limit and counts what it dropped.
        let line = "x".repeat(1023);
        for _ in 0..(MAX_BUFFERED_BYTES / 1024 + 10) {
            w.push(Stream::Stdout, &line);
        }
        {
            let pending = crate::sync::lock(&w.pending);
            assert!(pending[0].bytes.len() <= MAX_BUFFERED_BYTES);
            assert_eq!(pending[0].dropped, 10);
        }
        let mut out = Vec::new();
        w.write_to(&mut out, &mut Vec::new());
        assert_eq!(out.len(), MAX_BUFFERED_BYTES);
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting_for_the_interval() {
        let w = Writer::new();
        // Nothing buffered: the writer waits (here 1 ms).
        assert!(!w.wait(Duration::from_millis(1)));
        // The buffer crosses FLUSH_BYTES while the writer is not waiting (the only wake-up is
        // lost): its next wait returns at once rather than sleeping a whole interval.
        let line = "y".repeat(999);
        for _ in 0..=FLUSH_BYTES / 1000 {
            w.push(Stream::Stderr, &line);
        }
        assert!(w.wait(Duration::from_secs(3600)));
        let mut err = Vec::new();
        w.write_to(&mut Vec::new(), &mut err);
        assert!(err.len() >= FLUSH_BYTES);
        // Written and emptied, the buffers keep their room for the next lines.
        assert!(!w.wait(Duration::from_millis(1)));
        assert!(crate::sync::lock(&w.writing)[1].capacity() >= FLUSH_BYTES);
    }
}
