//! Envoy-style access logs as Istio configures them (meshConfig `accessLogFile`,
//! `accessLogEncoding`, `accessLogFormat`): the configuration of one log ([`AccessLog`]), its
//! compilation into a [`Formatter`] and the formatting of one request or TCP connection
//! ([`Entry`]) into one line. A pure library: no I/O, no clock.
//!
//! The format language is Envoy's ("Access logging", format strings and format dictionaries)
//! and the defaults are Istio's: [`ISTIO_DEFAULT_TEXT_FORMAT`] (Istio's `EnvoyTextLogFormat`)
//! and [`ISTIO_DEFAULT_JSON_FORMAT`] (Istio's `EnvoyJSONLogFormatIstio` labels).
//!
//! Decisions:
//! - Operators: `START_TIME`, `REQ(X?Y):Z`, `RESP(X?Y):Z`, `TRAILER(X?Y):Z`, `PROTOCOL`,
//!   `RESPONSE_CODE`, `RESPONSE_FLAGS`, `RESPONSE_CODE_DETAILS`,
//!   `CONNECTION_TERMINATION_DETAILS`, `UPSTREAM_TRANSPORT_FAILURE_REASON`, `BYTES_RECEIVED`,
//!   `BYTES_SENT`, `DURATION`, `UPSTREAM_HOST`, `UPSTREAM_CLUSTER`, `UPSTREAM_CLUSTER_RAW`,
//!   `UPSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_REMOTE_ADDRESS`,
//!   `DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT`, `REQUESTED_SERVER_NAME`, `ROUTE_NAME`, and `%%`
//!   for a literal `%`. Every other operator (including Envoy operators this proxy does not
//!   know, such as `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`) is a compile error naming it and its
//!   byte offset; nothing is ever printed verbatim or dropped. A `%` that does not start a
//!   well-formed operator is an error too (Envoy refuses those as well).
//! - `%START_TIME%` is RFC 3339 UTC with milliseconds (`2026-12-05T20:58:03.123Z`, Envoy's
//!   default). `%START_TIME(fmt)%` is refused with an error rather than half-supporting
//!   strftime.
//! - `UPSTREAM_CLUSTER` and `UPSTREAM_CLUSTER_RAW` print the same name: rustmesh clusters have
//!   no `alt_stat_name`, which is the only thing that tells them apart in Envoy.
//! - Header names are matched lowercase (`%REQ(:PATH)%` reads `:path`); `X?Y` reads `Y` when
//!   `X` is absent; `:Z` keeps at most `Z` bytes of the value (cut back to a character
//!   boundary). A maximum length on any other operator is refused. A header that is present
//!   but empty prints empty, as in Envoy; other values that are absent or empty print `-` in
//!   TEXT and `null` in JSON, except `RESPONSE_FLAGS`, which is Envoy's flag string and so
//!   `"-"` in JSON too when no flag is set.
//! - TEXT: header values are printed as they are. One trailing `\n` of the format is dropped
//!   (Istio appends one to every format; the writer adds it back).
//! - JSON: the format is a JSON object of key -> format string (values of other types,
//!   nested objects and duplicate keys are refused). A value that is exactly one operator is
//!   typed: numbers (`RESPONSE_CODE`, `BYTES_*`, `DURATION`) as JSON numbers, absent values
//!   as `null`, everything else (headers included) as JSON strings. A value mixing text and
//!   operators is a JSON string, with absent values as `-`. Keys are written sorted, as
//!   Envoy writes them, compactly on one line.
//! - An empty format means Istio's default for the encoding (as in Istio). A format over
//!   [`MAX_FORMAT_BYTES`] is refused. The only paths are `/dev/stdout` and `/dev/stderr` (the
//!   sidecar's root filesystem is read-only).
//! - Error positions are 0-based byte offsets into the format (TEXT) or into the value of the
//!   named key (JSON, reported as field `format["key"]`).

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

/// The standard output of the proxy.
pub const STDOUT: &str = "/dev/stdout";
/// The standard error of the proxy.
pub const STDERR: &str = "/dev/stderr";
/// The longest format accepted, in bytes.
pub const MAX_FORMAT_BYTES: usize = 16 * 1024;

/// Istio's default sidecar TEXT format (Istio 1.9 onwards), trailing newline included.
pub const ISTIO_DEFAULT_TEXT_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n",
);

/// Istio's default JSON labels, as a JSON object of key -> format string.
pub const ISTIO_DEFAULT_JSON_FORMAT: &str = r#"{
  "start_time": "%START_TIME%",
  "route_name": "%ROUTE_NAME%",
  "method": "%REQ(:METHOD)%",
  "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
  "protocol": "%PROTOCOL%",
  "response_code": "%RESPONSE_CODE%",
  "response_flags": "%RESPONSE_FLAGS%",
  "response_code_details": "%RESPONSE_CODE_DETAILS%",
  "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
  "bytes_received": "%BYTES_RECEIVED%",
  "bytes_sent": "%BYTES_SENT%",
  "duration": "%DURATION%",
  "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
  "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
  "user_agent": "%REQ(USER-AGENT)%",
  "request_id": "%REQ(X-REQUEST-ID)%",
  "authority": "%REQ(:AUTHORITY)%",
  "upstream_host": "%UPSTREAM_HOST%",
  "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
  "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
  "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
  "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
  "requested_server_name": "%REQUESTED_SERVER_NAME%",
  "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
}"#;

const SUPPORTED: &str = "START_TIME, REQ(X?Y):Z, RESP(X?Y):Z, TRAILER(X?Y):Z, PROTOCOL, \
RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS, CONNECTION_TERMINATION_DETAILS, \
UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, BYTES_SENT, DURATION, UPSTREAM_HOST, \
UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, UPSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS, \
DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, REQUESTED_SERVER_NAME, \
ROUTE_NAME, and %% for a literal %";

/// One access log of a listener (Istio: meshConfig accessLogFile / accessLogEncoding / accessLogFormat).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    /// Where lines go: "/dev/stdout" or "/dev/stderr" (the sidecar's root filesystem is read-only).
    pub path: String,
    #[serde(default)]
    pub encoding: Encoding,
    /// Envoy format: a text format string for TEXT, a JSON object text of key -> format string
    /// for JSON. None (or empty): Istio's default for the encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Which requests are logged (a Telemetry `accessLogging[].filter.expression`, in the CEL
    /// subset of [`crate::cel`]); None: every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// Istio's `accessLogEncoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Encoding {
    #[default]
    Text,
    Json,
}

/// Why an [`AccessLog`] does not compile. Each message starts with the field at fault
/// (`path`, `format`, or `format["key"]` for a value of a JSON format).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessLogError {
    #[error(
        "path: {path:?} is not supported: the sidecar writes access logs only to /dev/stdout or /dev/stderr"
    )]
    UnsupportedPath { path: String },
    #[error("format: {len} bytes is over the limit of {max} bytes")]
    FormatTooLong { len: usize, max: usize },
    #[error(
        "{field}: unknown command operator %{operator}% at byte {position} (supported: {SUPPORTED})"
    )]
    UnknownOperator {
        field: String,
        operator: String,
        position: usize,
    },
    #[error(
        "{field}: the '%' at byte {position} starts a command operator that is never closed (write %% for a literal '%')"
    )]
    Unterminated { field: String, position: usize },
    #[error("{field}: malformed command operator at byte {position}: {reason}")]
    Malformed {
        field: String,
        position: usize,
        reason: String,
    },
    #[error("{field}: command operator %{operator}% at byte {position}: {reason}")]
    BadArgument {
        field: String,
        operator: String,
        position: usize,
        reason: String,
    },
    #[error("format: not a JSON object of key -> format string: {reason}")]
    BadJson { reason: String },
    #[error("filter: {0}")]
    Filter(crate::cel::CelError),
}

impl AccessLog {
    /// Parses the format (Istio's default when None) into a Formatter; every error names the
    /// field (`path`, `format`) and what is wrong.
    pub fn compile(&self) -> Result<Formatter, AccessLogError> {
        if self.path != STDOUT && self.path != STDERR {
            return Err(AccessLogError::UnsupportedPath {
                path: self.path.clone(),
            });
        }
        let format = match self.format.as_deref() {
            None | Some("") => match self.encoding {
                Encoding::Text => ISTIO_DEFAULT_TEXT_FORMAT,
                Encoding::Json => ISTIO_DEFAULT_JSON_FORMAT,
            },
            Some(f) => f,
        };
        if format.len() > MAX_FORMAT_BYTES {
            return Err(AccessLogError::FormatTooLong {
                len: format.len(),
                max: MAX_FORMAT_BYTES,
            });
        }
        let mut used = Used::default();
        let body = match self.encoding {
            Encoding::Text => {
                let text = format.strip_suffix('\n').unwrap_or(format);
                Body::Text(parse_template(text, "format", &mut used)?)
            }
            Encoding::Json => Body::Json(compile_json(format, &mut used)?),
        };
        let filter = match self.filter.as_deref() {
            None => None,
            Some(f) => {
                let f = crate::cel::Filter::compile(f).map_err(AccessLogError::Filter)?;
                for h in f.request_headers() {
                    used.add(HeaderSource::Request, h);
                }
                for h in f.response_headers() {
                    used.add(HeaderSource::Response, h);
                }
                for h in f.response_trailers() {
                    used.add(HeaderSource::Trailer, h);
                }
                Some(f)
            }
        };
        Ok(Formatter {
            body,
            filter,
            request_headers: used.request,
            response_headers: used.response,
            response_trailers: used.trailers,
        })
    }
}

/// What one request (or TCP connection) gives the formatter. Missing values print as Envoy
/// prints them ("-" in TEXT, null in JSON; numbers as numbers in JSON).
pub struct Entry<'a> {
    pub start_time: SystemTime,
    /// "HTTP/1.1", "HTTP/2"; None for TCP (prints "-").
    pub protocol: Option<&'a str>,
    /// 0 for TCP, as Envoy.
    pub response_code: u16,
    /// "" means none -> "-".
    pub response_flags: &'a str,
    pub response_code_details: Option<&'a str>,
    pub connection_termination_details: Option<&'a str>,
    pub upstream_transport_failure_reason: Option<&'a str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// `%DURATION%`, printed in milliseconds.
    pub duration: std::time::Duration,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_local_address: Option<SocketAddr>,
    pub downstream_local_address: Option<SocketAddr>,
    pub downstream_remote_address: Option<SocketAddr>,
    pub requested_server_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// Request header (lowercase name, including pseudo-headers ":method", ":path",
    /// ":authority", ":scheme"), first value.
    pub request_header: &'a dyn Fn(&str) -> Option<&'a str>,
    pub response_header: &'a dyn Fn(&str) -> Option<&'a str>,
    pub response_trailer: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// A compiled access-log format: compiled once per configuration, used for every request.
#[derive(Clone, Debug)]
pub struct Formatter {
    body: Body,
    filter: Option<crate::cel::Filter>,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    response_trailers: Vec<String>,
}

impl Formatter {
    /// Lowercase names of the request headers the format reads (so the proxy copies only
    /// those per request), each once, in order of first use.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// Lowercase names of the response headers the format reads.
    pub fn response_headers(&self) -> &[String] {
        &self.response_headers
    }

    /// Lowercase names of the response trailers the format reads (`%TRAILER(...)%`).
    pub fn response_trailers(&self) -> &[String] {
        &self.response_trailers
    }

    /// Whether `e` is logged: its filter accepts it, or there is no filter.
    pub fn accepts(&self, e: &Entry<'_>) -> bool {
        self.filter.as_ref().is_none_or(|f| f.accepts(e))
    }

    /// One log line, without a trailing newline (a newline at the end of a TEXT format is
    /// dropped; the writer adds one).
    pub fn format(&self, e: &Entry<'_>) -> String {
        let mut out = String::with_capacity(256);
        self.format_into(e, &mut out);
        out
    }

    /// Appends one log line (without a trailing newline) to `out`: what [`Formatter::format`]
    /// returns, written straight into the caller's buffer, with no string made per value.
    pub fn format_into(&self, e: &Entry<'_>, out: &mut String) {
        match &self.body {
            Body::Text(pieces) => render_text(pieces, e, out),
            Body::Json(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_json_str(out, key);
                    out.push(':');
                    match value {
                        JsonValue::Single(op) => match eval(op, e) {
                            Val::Missing => out.push_str("null"),
                            Val::Num(n) => {
                                let _ = write!(out, "{n}");
                            }
                            Val::Str(s) => push_json_str(out, s),
                            // Addresses and times need no escaping.
                            shown => {
                                out.push('"');
                                shown.push_to(out);
                                out.push('"');
                            }
                        },
                        JsonValue::Template(pieces) => {
                            let mut s = String::new();
                            render_text(pieces, e, &mut s);
                            push_json_str(out, &s);
                        }
                    }
                }
                out.push('}');
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Body {
    Text(Vec<Piece>),
    /// Sorted by key.
    Json(Vec<(String, JsonValue)>),
}

#[derive(Clone, Debug)]
enum JsonValue {
    /// Exactly one operator: typed output.
    Single(Operator),
    /// Text and operators: a string.
    Template(Vec<Piece>),
}

#[derive(Clone, Debug)]
enum Piece {
    Literal(String),
    Op(Operator),
}

#[derive(Clone, Debug)]
struct Operator {
    command: Command,
    max_len: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderSource {
    Request,
    Response,
    Trailer,
}

#[derive(Clone, Debug)]
enum Command {
    StartTime,
    Header {
        source: HeaderSource,
        main: String,
        alternative: Option<String>,
    },
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    /// `UPSTREAM_CLUSTER` and `UPSTREAM_CLUSTER_RAW` (no `alt_stat_name` here).
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
}

/// The headers a format reads, each once.
#[derive(Default)]
struct Used {
    request: Vec<String>,
    response: Vec<String>,
    trailers: Vec<String>,
}

impl Used {
    fn add(&mut self, source: HeaderSource, name: &str) {
        let list = match source {
            HeaderSource::Request => &mut self.request,
            HeaderSource::Response => &mut self.response,
            HeaderSource::Trailer => &mut self.trailers,
        };
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }
}

/// Parses a format string (`field` names it in errors).
fn parse_template(s: &str, field: &str, used: &mut Used) -> Result<Vec<Piece>, AccessLogError> {
    let bytes = s.as_bytes();
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < s.len() {
        let Some(off) = s[i..].find('%') else {
            literal.push_str(&s[i..]);
            break;
        };
        let start = i + off;
        literal.push_str(&s[i..start]);
        if bytes.get(start + 1) == Some(&b'%') {
            literal.push('%');
            i = start + 2;
            continue;
        }
        let (op, end) = parse_operator(s, start, field, used)?;
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Op(op));
        i = end;
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// Parses the operator whose `%` is at `start`; returns it and the offset after its closing `%`.
fn parse_operator(
    s: &str,
    start: usize,
    field: &str,
    used: &mut Used,
) -> Result<(Operator, usize), AccessLogError> {
    let bytes = s.as_bytes();
    let unterminated = || AccessLogError::Unterminated {
        field: field.to_string(),
        position: start,
    };
    let malformed = |reason: String| AccessLogError::Malformed {
        field: field.to_string(),
        position: start,
        reason,
    };
    let mut j = start + 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
        j += 1;
    }
    let name = &s[start + 1..j];
    if name.is_empty() {
        if j >= bytes.len() {
            return Err(unterminated());
        }
        return Err(malformed(
            "'%' is not followed by a command operator name (write %% for a literal '%')"
                .to_string(),
        ));
    }
    let mut argument = None;
    if bytes.get(j) == Some(&b'(') {
        let Some(close) = s[j + 1..].find(')') else {
            return Err(unterminated());
        };
        argument = Some(&s[j + 1..j + 1 + close]);
        j = j + 1 + close + 1;
    }
    let mut max_len = None;
    let mut max_len_text = None;
    if bytes.get(j) == Some(&b':') {
        let digits = j + 1;
        let mut k = digits;
        while k < bytes.len() && bytes[k].is_ascii_digit() {
            k += 1;
        }
        if k == digits {
            if k >= bytes.len() {
                return Err(unterminated());
            }
            return Err(malformed(format!(
                "the ':' after %{name} must be followed by a maximum length in bytes (digits)"
            )));
        }
        max_len_text = Some(&s[digits..k]);
        j = k;
    }
    match s[j..].chars().next() {
        Some('%') => {}
        None => return Err(unterminated()),
        Some(c) => {
            return Err(malformed(format!(
                "expected '%' closing %{name} at byte {j}, found {c:?}"
            )));
        }
    }
    let bad = |reason: String| AccessLogError::BadArgument {
        field: field.to_string(),
        operator: name.to_string(),
        position: start,
        reason,
    };
    let source = match name {
        "REQ" => Some(HeaderSource::Request),
        "RESP" => Some(HeaderSource::Response),
        "TRAILER" => Some(HeaderSource::Trailer),
        _ => None,
    };
    let command = if let Some(source) = source {
        let arg = argument.ok_or_else(|| {
            bad(format!(
                "needs a header name: %{name}(NAME)% or %{name}(NAME?ALTERNATIVE)%"
            ))
        })?;
        let (main, alternative) = header_argument(arg).map_err(bad)?;
        used.add(source, &main);
        if let Some(alt) = &alternative {
            used.add(source, alt);
        }
        if let Some(text) = max_len_text {
            max_len = Some(text.parse::<usize>().map_err(|_| {
                bad(format!(
                    "maximum length {text} is too large (at most {})",
                    usize::MAX
                ))
            })?);
        }
        Command::Header {
            source,
            main,
            alternative,
        }
    } else {
        let command = match name {
            "START_TIME" => Command::StartTime,
            "PROTOCOL" => Command::Protocol,
            "RESPONSE_CODE" => Command::ResponseCode,
            "RESPONSE_FLAGS" => Command::ResponseFlags,
            "RESPONSE_CODE_DETAILS" => Command::ResponseCodeDetails,
            "CONNECTION_TERMINATION_DETAILS" => Command::ConnectionTerminationDetails,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => Command::UpstreamTransportFailureReason,
            "BYTES_RECEIVED" => Command::BytesReceived,
            "BYTES_SENT" => Command::BytesSent,
            "DURATION" => Command::Duration,
            "UPSTREAM_HOST" => Command::UpstreamHost,
            "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Command::UpstreamCluster,
            "UPSTREAM_LOCAL_ADDRESS" => Command::UpstreamLocalAddress,
            "DOWNSTREAM_LOCAL_ADDRESS" => Command::DownstreamLocalAddress,
            "DOWNSTREAM_REMOTE_ADDRESS" => Command::DownstreamRemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Command::DownstreamRemoteAddressWithoutPort,
            "REQUESTED_SERVER_NAME" => Command::RequestedServerName,
            "ROUTE_NAME" => Command::RouteName,
            _ => {
                return Err(AccessLogError::UnknownOperator {
                    field: field.to_string(),
                    operator: name.to_string(),
                    position: start,
                });
            }
        };
        if let Some(arg) = argument {
            return Err(bad(if matches!(command, Command::StartTime) {
                format!(
                    "a time format ({arg:?}) is not supported; %START_TIME% prints RFC 3339 UTC with milliseconds"
                )
            } else {
                format!("takes no argument, found ({arg})")
            }));
        }
        if max_len_text.is_some() {
            return Err(bad(
                "a maximum length (:Z) applies only to REQ, RESP and TRAILER".to_string(),
            ));
        }
        command
    };
    Ok((Operator { command, max_len }, j + 1))
}

/// `X` or `X?Y`, lowercased.
fn header_argument(arg: &str) -> Result<(String, Option<String>), String> {
    let mut parts = arg.split('?');
    let main = parts.next().unwrap_or_default();
    let alternative = parts.next();
    if parts.next().is_some() {
        return Err(format!(
            "({arg}) names more than one alternative header; write (NAME?ALTERNATIVE)"
        ));
    }
    let check = |h: &str| -> Result<String, String> {
        if h.is_empty() {
            return Err(format!("({arg}) has an empty header name"));
        }
        if let Some(c) = h.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "header name {h:?} contains {c:?}, which no header name contains"
            ));
        }
        Ok(h.to_ascii_lowercase())
    };
    let main = check(main)?;
    let alternative = alternative.map(check).transpose()?;
    Ok((main, alternative))
}

/// Compiles a JSON format: an object of key -> format string, sorted by key.
fn compile_json(format: &str, used: &mut Used) -> Result<Vec<(String, JsonValue)>, AccessLogError> {
    let Labels(labels) =
        serde_json::from_str::<Labels>(format).map_err(|e| AccessLogError::BadJson {
            reason: e.to_string(),
        })?;
    if labels.is_empty() {
        return Err(AccessLogError::BadJson {
            reason: "the object has no keys; give at least one, or no format for Istio's default"
                .to_string(),
        });
    }
    let mut fields = Vec::with_capacity(labels.len());
    for (key, value) in labels {
        let serde_json::Value::String(text) = value else {
            let kind = match value {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "a nested object",
                serde_json::Value::String(_) => "a string",
            };
            return Err(AccessLogError::BadJson {
                reason: format!("the value of key {key:?} is {kind}; it must be a format string"),
            });
        };
        let field = format!("format[{key:?}]");
        let mut pieces = parse_template(&text, &field, used)?;
        let value = if pieces.len() == 1 && matches!(pieces[0], Piece::Op(_)) {
            match pieces.pop() {
                Some(Piece::Op(op)) => JsonValue::Single(op),
                _ => JsonValue::Template(Vec::new()),
            }
        } else {
            JsonValue::Template(pieces)
        };
        fields.push((key, value));
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = fields.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(AccessLogError::BadJson {
            reason: format!("key {:?} appears more than once", w[0].0),
        });
    }
    Ok(fields)
}

/// A JSON object's entries in the order written, duplicates kept (so they can be refused).
struct Labels(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Labels;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of key -> format string")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Labels, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = m.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Labels(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A value as an operator yields it.
enum Val<'a> {
    Missing,
    Str(&'a str),
    Num(u64),
    /// Addresses and the start time are written where they go, never made into a string first.
    Addr(SocketAddr),
    Ip(std::net::IpAddr),
    Time(SystemTime),
}

impl Val<'_> {
    /// The value as TEXT prints it.
    fn push_to(&self, out: &mut String) {
        match self {
            Val::Missing => out.push('-'),
            Val::Str(s) => out.push_str(s),
            Val::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Val::Addr(a) => {
                let _ = write!(out, "{a}");
            }
            Val::Ip(ip) => {
                let _ = write!(out, "{ip}");
            }
            Val::Time(t) => push_rfc3339_millis(out, *t),
        }
    }
}

fn opt<'a>(s: Option<&'a str>) -> Val<'a> {
    match s {
        Some(s) if !s.is_empty() => Val::Str(s),
        _ => Val::Missing,
    }
}

fn addr<'a>(a: Option<SocketAddr>) -> Val<'a> {
    a.map_or(Val::Missing, Val::Addr)
}

/// At most `max` bytes of `s`, cut back to a character boundary (the access log's `:Z`, and
/// the proxy's span tags).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn eval<'a>(op: &Operator, e: &Entry<'a>) -> Val<'a> {
    match &op.command {
        Command::StartTime => Val::Time(e.start_time),
        Command::Header {
            source,
            main,
            alternative,
        } => {
            let lookup = match source {
                HeaderSource::Request => e.request_header,
                HeaderSource::Response => e.response_header,
                HeaderSource::Trailer => e.response_trailer,
            };
            let value = lookup(main).or_else(|| alternative.as_deref().and_then(lookup));
            match value {
                None => Val::Missing,
                Some(v) => Val::Str(match op.max_len {
                    Some(max) => truncate(v, max),
                    None => v,
                }),
            }
        }
        Command::Protocol => opt(e.protocol),
        Command::ResponseCode => Val::Num(u64::from(e.response_code)),
        // Envoy's flag string is "-" when no flag is set, in JSON too.
        Command::ResponseFlags => Val::Str(if e.response_flags.is_empty() {
            "-"
        } else {
            e.response_flags
        }),
        Command::ResponseCodeDetails => opt(e.response_code_details),
        Command::ConnectionTerminationDetails => opt(e.connection_termination_details),
        Command::UpstreamTransportFailureReason => opt(e.upstream_transport_failure_reason),
        Command::BytesReceived => Val::Num(e.bytes_received),
        Command::BytesSent => Val::Num(e.bytes_sent),
        Command::Duration => Val::Num(u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX)),
        Command::UpstreamHost => addr(e.upstream_host),
        Command::UpstreamCluster => opt(e.upstream_cluster),
        Command::UpstreamLocalAddress => addr(e.upstream_local_address),
        Command::DownstreamLocalAddress => addr(e.downstream_local_address),
        Command::DownstreamRemoteAddress => addr(e.downstream_remote_address),
        Command::DownstreamRemoteAddressWithoutPort => e
            .downstream_remote_address
            .map_or(Val::Missing, |a| Val::Ip(a.ip())),
        Command::RequestedServerName => opt(e.requested_server_name),
        Command::RouteName => opt(e.route_name),
    }
}

fn render_text(pieces: &[Piece], e: &Entry<'_>, out: &mut String) {
    for piece in pieces {
        match piece {
            Piece::Literal(s) => out.push_str(s),
            Piece::Op(op) => eval(op, e).push_to(out),
        }
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `2026-12-05T20:58:03.123Z`: RFC 3339, UTC, milliseconds (days to civil date after
/// Howard Hinnant's algorithm). Times before 1970 count backwards; nothing here can overflow.
fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
    let millis: i128 = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    };
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (hour, minute, second) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn find<'a>(list: &'a [(&'a str, &'a str)], name: &str) -> Option<&'a str> {
        list.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn none<'a>(_: &str) -> Option<&'a str> {
        None
    }

    const REQUEST: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/status/418"),
        (":authority", "httpbin:8000"),
        (":scheme", "http"),
        ("user-agent", "curl/7.73.0-DEV"),
        ("x-request-id", "84961386-6d84-929d-98bd-c5aee93b5c88"),
    ];
    const RESPONSE: &[(&str, &str)] = &[("x-envoy-upstream-service-time", "4")];

    /// The curl -> httpbin request of Istio's access-log task (outbound side).
    fn http_entry<'a>(
        req: &'a dyn Fn(&str) -> Option<&'a str>,
        resp: &'a dyn Fn(&str) -> Option<&'a str>,
    ) -> Entry<'a> {
        Entry {
            start_time: UNIX_EPOCH + Duration::from_millis(1_606_339_578_409),
            protocol: Some("HTTP/1.1"),
            response_code: 418,
            response_flags: "",
            response_code_details: Some("via_upstream"),
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 135,
            duration: Duration::from_micros(4_700),
            upstream_host: Some("10.44.1.27:80".parse().unwrap()),
            upstream_cluster: Some("outbound|8000||httpbin.foo.svc.cluster.local"),
            upstream_local_address: Some("10.44.1.23:37652".parse().unwrap()),
            downstream_local_address: Some("10.0.45.184:8000".parse().unwrap()),
            downstream_remote_address: Some("10.44.1.23:46520".parse().unwrap()),
            requested_server_name: None,
            route_name: Some("default"),
            request_header: req,
            response_header: resp,
            response_trailer: &none,
        }
    }

    fn text(format: &str) -> Result<Formatter, AccessLogError> {
        AccessLog {
            filter: None,
            path: STDOUT.to_string(),
            encoding: Encoding::Text,
            format: Some(format.to_string()),
        }
        .compile()
    }

    fn json(format: Option<&str>) -> Result<Formatter, AccessLogError> {
        AccessLog {
            filter: None,
            path: STDOUT.to_string(),
            encoding: Encoding::Json,
            format: format.map(str::to_string),
        }
        .compile()
    }

    #[test]
    fn istio_default_text_line() {
        let f = AccessLog {
            filter: None,
            path: STDOUT.to_string(),
            encoding: Encoding::Text,
            format: None,
        }
        .compile()
        .unwrap();
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        let line = f.format(&http_entry(&req, &resp));
        assert_eq!(
            line,
            "[2020-11-25T21:26:18.409Z] \"GET /status/418 HTTP/1.1\" 418 - via_upstream - \"-\" \
             0 135 4 4 \"-\" \"curl/7.73.0-DEV\" \"84961386-6d84-929d-98bd-c5aee93b5c88\" \
             \"httpbin:8000\" \"10.44.1.27:80\" outbound|8000||httpbin.foo.svc.cluster.local \
             10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default"
        );
    }

    /// What formatting Istio's default TEXT line costs (ignored: a figure, not a test). Run
    /// with `cargo test --release -p rustmesh-xds --lib access_log_format_cost -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn access_log_format_cost() {
        let f = text(ISTIO_DEFAULT_TEXT_FORMAT).unwrap();
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        let e = http_entry(&req, &resp);
        const N: u32 = 20_000;
        let mut best = Duration::MAX;
        let mut buf = String::with_capacity(64 * 1024);
        for _ in 0..20 {
            buf.clear();
            let t = std::time::Instant::now();
            for _ in 0..N {
                f.format_into(&e, &mut buf);
                buf.push('\n');
                if buf.len() > 60_000 {
                    buf.clear();
                }
            }
            best = best.min(t.elapsed());
        }
        println!(
            "Istio's default TEXT line: {:?} per line (best of 20 x {N})",
            best / N
        );
    }

    #[test]
    fn format_into_appends_what_format_returns() {
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        let e = http_entry(&req, &resp);
        for f in [
            text(ISTIO_DEFAULT_TEXT_FORMAT).unwrap(),
            json(None).unwrap(),
        ] {
            let mut out = String::from("before|");
            f.format_into(&e, &mut out);
            assert_eq!(out, format!("before|{}", f.format(&e)));
        }
    }

    #[test]
    fn empty_format_is_istio_default() {
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        let e = http_entry(&req, &resp);
        let default = text(ISTIO_DEFAULT_TEXT_FORMAT).unwrap().format(&e);
        assert_eq!(text("").unwrap().format(&e), default);
        assert_eq!(
            json(Some("")).unwrap().format(&e),
            json(None).unwrap().format(&e)
        );
    }

    #[test]
    fn istio_default_json_line() {
        let f = json(None).unwrap();
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        let line = f.format(&http_entry(&req, &resp));
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = vec![
            "start_time",
            "method",
            "path",
            "protocol",
            "response_code",
            "response_flags",
            "response_code_details",
            "connection_termination_details",
            "upstream_transport_failure_reason",
            "bytes_received",
            "bytes_sent",
            "duration",
            "upstream_service_time",
            "x_forwarded_for",
            "user_agent",
            "request_id",
            "authority",
            "upstream_host",
            "upstream_cluster",
            "upstream_local_address",
            "downstream_local_address",
            "downstream_remote_address",
            "requested_server_name",
            "route_name",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["start_time"], "2020-11-25T21:26:18.409Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/status/418");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["response_code"], 418);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["response_code_details"], "via_upstream");
        assert_eq!(v["connection_termination_details"], serde_json::Value::Null);
        assert_eq!(
            v["upstream_transport_failure_reason"],
            serde_json::Value::Null
        );
        assert_eq!(v["bytes_received"], 0);
        assert_eq!(v["bytes_sent"], 135);
        assert_eq!(v["duration"], 4);
        // A header is a string, even when it holds a number.
        assert_eq!(v["upstream_service_time"], "4");
        assert_eq!(v["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "curl/7.73.0-DEV");
        assert_eq!(v["authority"], "httpbin:8000");
        assert_eq!(v["upstream_host"], "10.44.1.27:80");
        assert_eq!(
            v["upstream_cluster"],
            "outbound|8000||httpbin.foo.svc.cluster.local"
        );
        assert_eq!(v["downstream_remote_address"], "10.44.1.23:46520");
        assert_eq!(v["requested_server_name"], serde_json::Value::Null);
        assert_eq!(v["route_name"], "default");
        // Keys sorted, as Envoy writes them, compact.
        assert!(line.starts_with(r#"{"authority":"httpbin:8000","bytes_received":0,"bytes_sent":135,"connection_termination_details":null,"#));
    }

    fn rfc3339_millis(t: SystemTime) -> String {
        let mut out = String::new();
        push_rfc3339_millis(&mut out, t);
        out
    }

    #[test]
    fn rfc3339_with_milliseconds() {
        let at = |ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_796_504_283_123), "2026-12-05T20:58:03.123Z");
        assert_eq!(at(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_millis(1)),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn original_path_falls_back_to_path() {
        let f = text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%").unwrap();
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        assert_eq!(f.format(&http_entry(&req, &resp)), "/status/418");
        let rewritten: &[(&str, &str)] =
            &[(":path", "/418"), ("x-envoy-original-path", "/status/418")];
        let req = |n: &str| find(rewritten, n);
        assert_eq!(f.format(&http_entry(&req, &resp)), "/status/418");
        let nothing = |n: &str| find(&[], n);
        assert_eq!(f.format(&http_entry(&nothing, &resp)), "-");
    }

    #[test]
    fn max_length_truncates() {
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        let e = http_entry(&req, &resp);
        assert_eq!(text("%REQ(USER-AGENT):4%").unwrap().format(&e), "curl");
        assert_eq!(text("%REQ(USER-AGENT):0%").unwrap().format(&e), "");
        assert_eq!(
            text("%REQ(USER-AGENT):100%").unwrap().format(&e),
            "curl/7.73.0-DEV"
        );
        assert_eq!(text("%REQ(X-FOO?:PATH):7%").unwrap().format(&e), "/status");
        // Cut back to a character boundary: "é" is two bytes.
        let accented: &[(&str, &str)] = &[("x-name", "aé")];
        let req = |n: &str| find(accented, n);
        assert_eq!(
            text("%REQ(X-NAME):2%")
                .unwrap()
                .format(&http_entry(&req, &resp)),
            "a"
        );
        assert_eq!(
            text("%REQ(X-NAME):3%")
                .unwrap()
                .format(&http_entry(&req, &resp)),
            "aé"
        );
    }

    #[test]
    fn double_percent_is_a_literal_percent() {
        let (req, resp) = (|n: &str| find(REQUEST, n), |n: &str| find(RESPONSE, n));
        let e = http_entry(&req, &resp);
        assert_eq!(
            text("100%% of %RESPONSE_CODE%%%").unwrap().format(&e),
            "100% of 418%"
        );
        assert_eq!(
            json(Some(r#"{"share":"%%"}"#)).unwrap().format(&e),
            r#"{"share":"%"}"#
        );
    }

    #[test]
    fn unknown_operator_is_an_error_naming_it_and_its_position() {
        let err = text("[%START_TIME%] %UPSTREAM_REQUEST_ATTEMPT_COUNT%").unwrap_err();
        assert_eq!(
            err,
            AccessLogError::UnknownOperator {
                field: "format".to_string(),
                operator: "UPSTREAM_REQUEST_ATTEMPT_COUNT".to_string(),
                position: 15,
            }
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "format: unknown command operator %UPSTREAM_REQUEST_ATTEMPT_COUNT% at byte 15"
            ),
            "{msg}"
        );
        // Names are case-sensitive, as in Envoy.
        assert!(matches!(
            text("%protocol%").unwrap_err(),
            AccessLogError::UnknownOperator { position: 0, .. }
        ));
        let err = json(Some(r#"{"a":"%PROTOCOL%","b":"x %NOPE%"}"#)).unwrap_err();
        assert_eq!(
            err,
            AccessLogError::UnknownOperator {
                field: "format[\"b\"]".to_string(),
                operator: "NOPE".to_string(),
                position: 2,
            }
        );
    }

    #[test]
    fn unterminated_percent_is_an_error_naming_the_position() {
        for (format, position) in [
            ("abc %PROTOCOL", 4),
            ("abc %REQ(X-FOO", 4),
            ("%REQ(X-FOO):", 0),
            ("ok %PROTOCOL% 50%", 16),
        ] {
            let err = text(format).unwrap_err();
            assert_eq!(
                err,
                AccessLogError::Unterminated {
                    field: "format".to_string(),
                    position
                },
                "{format}"
            );
            assert!(err.to_string().contains(&format!("at byte {position}")));
        }
        let err = text("100% sure").unwrap_err();
        assert!(
            matches!(err, AccessLogError::Malformed { position: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("%%"), "{err}");
        let err = text("%PROTOCOL x").unwrap_err();
        assert!(
            matches!(err, AccessLogError::Malformed { position: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for format in [
            "%START_TIME(%s)%",
            "%PROTOCOL(x)%",
            "%DURATION:10%",
            "%REQ%",
            "%REQ()%",
            "%REQ(A?B?C)%",
            "%REQ(A?)%",
            "%REQ(A B)%",
            "%RESP(X):99999999999999999999999999%",
        ] {
            let err = text(format).unwrap_err();
            assert!(
                matches!(err, AccessLogError::BadArgument { position: 0, .. }),
                "{format}: {err}"
            );
        }
        assert!(
            text("%START_TIME(%Y)%")
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
        assert!(text("%REQ:5%").unwrap_err().to_string().contains("REQ"));
    }

    #[test]
    fn only_stdout_and_stderr() {
        for path in [STDOUT, STDERR] {
            let log = AccessLog {
                filter: None,
                path: path.to_string(),
                encoding: Encoding::Text,
                format: None,
            };
            assert!(log.compile().is_ok(), "{path}");
        }
        for path in ["/var/log/access.log", "", "/dev/stdout/", "/dev/null"] {
            let err = AccessLog {
                filter: None,
                path: path.to_string(),
                encoding: Encoding::Json,
                format: None,
            }
            .compile()
            .unwrap_err();
            assert_eq!(
                err,
                AccessLogError::UnsupportedPath {
                    path: path.to_string()
                }
            );
            assert!(err.to_string().starts_with("path: "), "{err}");
        }
    }

    #[test]
    fn format_over_the_limit_is_refused() {
        let long = "x".repeat(MAX_FORMAT_BYTES + 1);
        let err = text(&long).unwrap_err();
        assert_eq!(
            err,
            AccessLogError::FormatTooLong {
                len: MAX_FORMAT_BYTES + 1,
                max: MAX_FORMAT_BYTES
            }
        );
        assert!(err.to_string().starts_with("format: "));
        assert!(text(&"x".repeat(MAX_FORMAT_BYTES)).is_ok());
    }

    #[test]
    fn tcp_prints_dashes_and_zero() {
        let f = text(ISTIO_DEFAULT_TEXT_FORMAT).unwrap();
        let e = Entry {
            start_time: UNIX_EPOCH + Duration::from_millis(1_796_504_283_123),
            protocol: None,
            response_code: 0,
            response_flags: "",
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 10,
            bytes_sent: 20,
            duration: Duration::from_millis(5),
            upstream_host: Some("10.0.0.2:9000".parse().unwrap()),
            upstream_cluster: Some("outbound|9000||tcp.default.svc.cluster.local"),
            upstream_local_address: Some("10.0.0.1:40000".parse().unwrap()),
            downstream_local_address: Some("10.96.0.20:9000".parse().unwrap()),
            downstream_remote_address: Some("10.0.0.1:51000".parse().unwrap()),
            requested_server_name: None,
            route_name: None,
            request_header: &none,
            response_header: &none,
            response_trailer: &none,
        };
        assert_eq!(
            f.format(&e),
            "[2026-12-05T20:58:03.123Z] \"- - -\" 0 - - - \"-\" 10 20 5 - \"-\" \"-\" \"-\" \"-\" \
             \"10.0.0.2:9000\" outbound|9000||tcp.default.svc.cluster.local 10.0.0.1:40000 \
             10.96.0.20:9000 10.0.0.1:51000 - -"
        );
        let v: serde_json::Value = serde_json::from_str(&json(None).unwrap().format(&e)).unwrap();
        assert_eq!(v["protocol"], serde_json::Value::Null);
        assert_eq!(v["response_code"], 0);
        assert_eq!(v["method"], serde_json::Value::Null);
        assert_eq!(v["response_flags"], "-");
    }

    #[test]
    fn request_headers_lists_what_the_format_reads() {
        let f = text(ISTIO_DEFAULT_TEXT_FORMAT).unwrap();
        assert_eq!(
            f.request_headers(),
            [
                ":method",
                "x-envoy-original-path",
                ":path",
                "x-forwarded-for",
                "user-agent",
                "x-request-id",
                ":authority"
            ]
        );
        assert_eq!(f.response_headers(), ["x-envoy-upstream-service-time"]);
        assert!(f.response_trailers().is_empty());
        let f = text("%REQ(:PATH)% %REQ(:path)% %TRAILER(GRPC-STATUS)% %RESP(X-A?X-B)%").unwrap();
        assert_eq!(f.request_headers(), [":path"]);
        assert_eq!(f.response_headers(), ["x-a", "x-b"]);
        assert_eq!(f.response_trailers(), ["grpc-status"]);
        let mut from_json = json(None).unwrap().request_headers().to_vec();
        from_json.sort();
        let mut from_text = text(ISTIO_DEFAULT_TEXT_FORMAT)
            .unwrap()
            .request_headers()
            .to_vec();
        from_text.sort();
        assert_eq!(from_json, from_text);
    }

    #[test]
    fn trailers_and_addresses() {
        let trailers: &[(&str, &str)] = &[("grpc-status", "14")];
        let (req, resp, tr) = (
            |n: &str| find(REQUEST, n),
            |n: &str| find(RESPONSE, n),
            |n: &str| find(trailers, n),
        );
        let mut e = http_entry(&req, &resp);
        e.response_trailer = &tr;
        e.downstream_remote_address = Some("[2001:db8::1]:443".parse().unwrap());
        let f = text(
            "%TRAILER(GRPC-STATUS)% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW%\n",
        )
        .unwrap();
        assert_eq!(
            f.format(&e),
            "14 [2001:db8::1]:443 2001:db8::1 outbound|8000||httpbin.foo.svc.cluster.local \
             outbound|8000||httpbin.foo.svc.cluster.local"
        );
    }

    #[test]
    fn text_headers_as_is_json_headers_as_strings() {
        let odd: &[(&str, &str)] = &[("user-agent", "a \"quoted\" \\ agent"), ("x-empty", "")];
        let (req, resp) = (|n: &str| find(odd, n), |n: &str| find(RESPONSE, n));
        let e = http_entry(&req, &resp);
        assert_eq!(
            text("%REQ(USER-AGENT)%|%REQ(X-EMPTY)%|%REQ(X-NONE)%")
                .unwrap()
                .format(&e),
            "a \"quoted\" \\ agent||-"
        );
        let line = json(Some(
            r#"{"ua":"%REQ(USER-AGENT)%","empty":"%REQ(X-EMPTY)%","none":"%REQ(X-NONE)%","mixed":"code=%RESPONSE_CODE% sni=%REQUESTED_SERVER_NAME%","lit":"fixed"}"#,
        ))
        .unwrap()
        .format(&e);
        assert_eq!(
            line,
            r#"{"empty":"","lit":"fixed","mixed":"code=418 sni=-","none":null,"ua":"a \"quoted\" \\ agent"}"#
        );
    }

    #[test]
    fn bad_json_formats_are_refused() {
        for format in [
            "not json",
            r#"["%PROTOCOL%"]"#,
            r#"{"a":1}"#,
            r#"{"a":{"b":"%PROTOCOL%"}}"#,
            r#"{"a":"%PROTOCOL%","a":"%DURATION%"}"#,
            "{}",
            r#"{"a":"%PROTOCOL%"} trailing"#,
        ] {
            let err = json(Some(format)).unwrap_err();
            assert!(
                matches!(err, AccessLogError::BadJson { .. }),
                "{format}: {err}"
            );
            assert!(err.to_string().starts_with("format: "), "{err}");
        }
    }

    #[test]
    fn serde_shape() {
        let log: AccessLog =
            serde_json::from_str(r#"{"path":"/dev/stdout","encoding":"JSON"}"#).unwrap();
        assert_eq!(log.encoding, Encoding::Json);
        assert_eq!(log.format, None);
        assert_eq!(
            serde_json::to_string(&log).unwrap(),
            r#"{"path":"/dev/stdout","encoding":"JSON"}"#
        );
        let log: AccessLog = serde_json::from_str(r#"{"path":"/dev/stderr"}"#).unwrap();
        assert_eq!(log.encoding, Encoding::Text);
        assert!(serde_json::from_str::<AccessLog>(r#"{"path":"/dev/stdout","file":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<AccessLog>(r#"{"path":"/dev/stdout","encoding":"json"}"#)
                .is_err()
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn operatorish() -> impl Strategy<Value = String> {
            proptest::string::string_regex(
                "([a-z \"{}:,é\\\\]|%%|%|%[A-Z_]{0,40}(\\([A-Za-z:?-]{0,10}\\)?)?(:[0-9]{0,4})?%?){0,20}",
            )
            .unwrap()
        }

        /// Mostly valid formats, so that `format` runs on many compiled ones.
        fn known() -> impl Strategy<Value = String> {
            let snippets = vec![
                "%START_TIME%",
                "%REQ(:PATH)%",
                "%REQ(X-A?:PATH):3%",
                "%RESP(X-B):0%",
                "%TRAILER(GRPC-STATUS)%",
                "%PROTOCOL%",
                "%RESPONSE_CODE%",
                "%RESPONSE_FLAGS%",
                "%RESPONSE_CODE_DETAILS%",
                "%CONNECTION_TERMINATION_DETAILS%",
                "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                "%BYTES_RECEIVED%",
                "%BYTES_SENT%",
                "%DURATION%",
                "%UPSTREAM_HOST%",
                "%UPSTREAM_CLUSTER%",
                "%UPSTREAM_CLUSTER_RAW%",
                "%UPSTREAM_LOCAL_ADDRESS%",
                "%DOWNSTREAM_LOCAL_ADDRESS%",
                "%DOWNSTREAM_REMOTE_ADDRESS%",
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                "%REQUESTED_SERVER_NAME%",
                "%ROUTE_NAME%",
                "%%",
                " ",
                "\"",
                "\\",
                "é",
                "\n",
            ];
            proptest::collection::vec(proptest::sample::select(snippets), 0..24)
                .prop_map(|v| v.concat())
        }

        proptest! {
            #[test]
            fn compile_and_format_never_panic(
                s in prop_oneof![any::<String>(), operatorish(), known()],
                value in any::<String>(),
                code in any::<u16>(),
                ms in any::<u64>(),
                secs in any::<u64>(),
                bytes in any::<u64>(),
            ) {
                let req = |_: &str| Some(value.as_str());
                let start = UNIX_EPOCH
                    .checked_add(Duration::from_secs(secs / 2))
                    .unwrap_or(UNIX_EPOCH);
                let e = Entry {
                    start_time: start,
                    protocol: Some(value.as_str()),
                    response_code: code,
                    response_flags: value.as_str(),
                    response_code_details: Some(value.as_str()),
                    connection_termination_details: None,
                    upstream_transport_failure_reason: Some(""),
                    bytes_received: bytes,
                    bytes_sent: bytes,
                    duration: Duration::from_millis(ms),
                    upstream_host: Some("[::1]:1".parse().unwrap()),
                    upstream_cluster: Some(value.as_str()),
                    upstream_local_address: None,
                    downstream_local_address: None,
                    downstream_remote_address: Some("1.2.3.4:5".parse().unwrap()),
                    requested_server_name: Some(value.as_str()),
                    route_name: None,
                    request_header: &req,
                    response_header: &req,
                    response_trailer: &none,
                };
                let wrapped = serde_json::json!({ "k": s }).to_string();
                for (encoding, format) in [
                    (Encoding::Text, s.clone()),
                    (Encoding::Json, s.clone()),
                    (Encoding::Json, wrapped),
                ] {
                    let log = AccessLog { filter: None, path: STDOUT.to_string(), encoding, format: Some(format) };
                    if let Ok(f) = log.compile() {
                        let line = f.format(&e);
                        if encoding == Encoding::Json {
                            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                            prop_assert!(v.is_object());
                        }
                    }
                }
                let path = AccessLog { filter: None, path: s.clone(), encoding: Encoding::Text, format: None };
                let _ = path.compile();
            }
        }
    }
}
