//! The trace context a request carries, in the three header formats Istio's sidecars and apps
//! use: W3C Trace Context (`traceparent`, `tracestate`), B3 multi-header (`x-b3-traceid`,
//! `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`) and B3 single-header
//! (`b3`). [`Incoming::parse`] reads what a request brought; [`inject`] writes the context of
//! this proxy's span onto the request it forwards. Pure functions over a header map: the
//! request stage calls them, and the `sidecar_env` fuzz target feeds them arbitrary headers.
//!
//! Decisions:
//! - When several formats are present, `traceparent` wins, then `b3`, then `x-b3-*`; a
//!   malformed header is ignored as if absent (as Envoy's extractors do), so a bad value never
//!   fails a request.
//! - A sampling decision alone (`x-b3-sampled: 0`, `b3: 0`, `b3: d`) is honoured for the new
//!   trace this proxy starts. `x-b3-flags: 1` (debug) and `b3: d` sample.
//! - The forwarded request carries this proxy's span in the provider's own format, as Envoy's
//!   tracers write it (Zipkin: B3 multi-headers; OpenTelemetry: `traceparent`), and in every
//!   other format the request came with, rewritten so that no header is left describing the
//!   caller's span ([`Formats`]). `tracestate` passes untouched.
//! - A trace id of all zeros or a span id of zero is invalid (W3C and B3 both say so).

use http::{HeaderMap, HeaderValue, header::HeaderName};

/// `traceparent` (W3C).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `b3` (B3 single header).
pub static B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags` (`1`: debug, which samples).
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// What a request brought: a parent span and/or a sampling decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's trace and span (absent: this proxy starts a trace).
    pub parent: Option<Parent>,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// The formats the request carried (each is rewritten when forwarding).
    pub formats: Formats,
}

/// Which propagation formats a request carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats {
    /// `traceparent`.
    pub w3c: bool,
    /// `x-b3-*`.
    pub b3_multi: bool,
    /// `b3`.
    pub b3_single: bool,
}

/// The caller's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: u128,
    /// Whether the caller's trace id has 64 bits (B3 allows 16 hex digits): ours keeps them.
    pub trace_id_64bit: bool,
    /// The caller's span (our span's parent).
    pub span_id: u64,
}

/// The span this proxy reports (or would report, unsampled), as it propagates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: u128,
    /// A 64-bit trace id (written with 16 hex digits in B3).
    pub trace_id_64bit: bool,
    /// This proxy's span.
    pub span_id: u64,
    /// The caller's span, if the request brought one.
    pub parent_span_id: Option<u64>,
    /// Whether the trace is sampled (reported).
    pub sampled: bool,
}

impl SpanContext {
    /// The trace id as B3 writes it (16 hex digits for a 64-bit id, 32 otherwise).
    pub fn trace_id_hex(&self) -> String {
        if self.trace_id_64bit {
            format!("{:016x}", self.trace_id as u64)
        } else {
            format!("{:032x}", self.trace_id)
        }
    }
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().filter(|v| *v != 0)
}

/// A B3 trace id: 16 or 32 hex digits, not zero.
fn hex_trace_id(s: &str) -> Option<(u128, bool)> {
    if !(s.len() == 16 || s.len() == 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u128::from_str_radix(s, 16).ok().filter(|v| *v != 0)?;
    Some((v, s.len() == 16))
}

fn text<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// B3's sampling states: `1`/`true`/`d` sample, `0`/`false` do not.
fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex flags>` (a later version may append
/// fields, which are ignored as the spec asks).
fn parse_traceparent(s: &str) -> Option<(Parent, bool)> {
    let mut it = s.split('-');
    let version = it.next()?;
    let trace = it.next()?;
    let span = it.next()?;
    let flags = it.next()?;
    if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if version == "00" && it.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !(trace.bytes().chain(span.bytes()).chain(flags.bytes())).all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Uppercase hex is not allowed by the spec; refuse it as Envoy does.
    if (trace.bytes().chain(span.bytes())).any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (trace_id, _) = hex_trace_id(trace)?;
    let span_id = hex_u64(span)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        Parent {
            trace_id,
            trace_id_64bit: false,
            span_id,
        },
        flags & 1 == 1,
    ))
}

/// B3 single: `<traceid>-<spanid>[-<sampled>[-<parentspanid>]]`, or just `<sampled>`.
fn parse_b3_single(s: &str) -> Option<(Option<Parent>, Option<bool>)> {
    if let Some(d) = b3_sampled(s) {
        return Some((None, Some(d)));
    }
    let mut it = s.split('-');
    let (trace_id, trace_id_64bit) = hex_trace_id(it.next()?)?;
    let span_id = hex_u64(it.next()?)?;
    let sampled = match it.next() {
        Some(d) => Some(b3_sampled(d)?),
        None => None,
    };
    if let Some(p) = it.next() {
        hex_u64(p)?;
    }
    if it.next().is_some() {
        return None;
    }
    Some((
        Some(Parent {
            trace_id,
            trace_id_64bit,
            span_id,
        }),
        sampled,
    ))
}

impl Incoming {
    /// What the request's headers carry (see the module doc for precedence).
    pub fn parse(h: &HeaderMap) -> Incoming {
        let formats = Formats {
            w3c: h.contains_key(&TRACEPARENT),
            b3_multi: h.contains_key(&X_B3_TRACEID)
                || h.contains_key(&X_B3_SPANID)
                || h.contains_key(&X_B3_SAMPLED),
            b3_single: h.contains_key(&B3),
        };
        if let Some((parent, sampled)) = text(h, &TRACEPARENT).and_then(parse_traceparent) {
            return Incoming {
                parent: Some(parent),
                sampled: Some(sampled),
                formats,
            };
        }
        if let Some((parent, sampled)) = text(h, &B3).and_then(parse_b3_single) {
            return Incoming {
                parent,
                sampled,
                formats,
            };
        }
        let debug = text(h, &X_B3_FLAGS) == Some("1");
        let sampled = if debug {
            Some(true)
        } else {
            text(h, &X_B3_SAMPLED).and_then(b3_sampled)
        };
        let parent = match (
            text(h, &X_B3_TRACEID).and_then(hex_trace_id),
            text(h, &X_B3_SPANID).and_then(hex_u64),
        ) {
            (Some((trace_id, trace_id_64bit)), Some(span_id)) => Some(Parent {
                trace_id,
                trace_id_64bit,
                span_id,
            }),
            _ => None,
        };
        Incoming {
            parent,
            sampled,
            formats,
        }
    }
}

/// Lowercase hex digits of `v`'s low `digits` nibbles, written into `out`.
fn hex(out: &mut Vec<u8>, v: u128, digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn set(h: &mut HeaderMap, name: &HeaderName, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        h.insert(name.clone(), v);
    }
}

/// Writes `span`'s context onto a request this proxy forwards (see the module doc). The
/// values are written into one scratch buffer, each header a copy of its part: this runs for
/// every request of a traced connection manager, sampled or not.
pub fn inject(h: &mut HeaderMap, span: &SpanContext, formats: Formats) {
    let trace_digits = if span.trace_id_64bit { 16 } else { 32 };
    let sampled = if span.sampled { b'1' } else { b'0' };
    let mut buf = Vec::with_capacity(128);
    if formats.b3_multi {
        hex(&mut buf, span.trace_id, trace_digits);
        set(h, &X_B3_TRACEID, &buf);
        buf.clear();
        hex(&mut buf, span.span_id as u128, 16);
        set(h, &X_B3_SPANID, &buf);
        match span.parent_span_id {
            Some(p) => {
                buf.clear();
                hex(&mut buf, p as u128, 16);
                set(h, &X_B3_PARENTSPANID, &buf);
            }
            None => {
                h.remove(&X_B3_PARENTSPANID);
            }
        }
        h.insert(
            X_B3_SAMPLED.clone(),
            HeaderValue::from_static(if span.sampled { "1" } else { "0" }),
        );
    }
    if formats.w3c {
        buf.clear();
        buf.extend_from_slice(b"00-");
        hex(&mut buf, span.trace_id, 32);
        buf.push(b'-');
        hex(&mut buf, span.span_id as u128, 16);
        buf.extend_from_slice(&[b'-', b'0', sampled]);
        set(h, &TRACEPARENT, &buf);
    }
    if formats.b3_single {
        buf.clear();
        hex(&mut buf, span.trace_id, trace_digits);
        buf.push(b'-');
        hex(&mut buf, span.span_id as u128, 16);
        buf.extend_from_slice(&[b'-', sampled]);
        if let Some(p) = span.parent_span_id {
            buf.push(b'-');
            hex(&mut buf, p as u128, 16);
        }
        set(h, &B3, &buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn w3c_traceparent_is_read_with_its_sampled_flag() {
        let i = Incoming::parse(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-00f067aa0ba902b7-01"),
        )]));
        let p = i.parent.unwrap();
        assert_eq!(format!("{:032x}", p.trace_id), TRACE);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert_eq!(i.sampled, Some(true));
        let i = Incoming::parse(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-00f067aa0ba902b7-00"),
        )]));
        assert_eq!(i.sampled, Some(false));
        // A later version may add fields; version 00 may not; ff is invalid; zero ids are.
        assert!(
            Incoming::parse(&headers(&[(
                "traceparent",
                &format!("01-{TRACE}-00f067aa0ba902b7-01-extra")
            )]))
            .parent
            .is_some()
        );
        for bad in [
            format!("00-{TRACE}-00f067aa0ba902b7-01-extra"),
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-00f067aa0ba902b-01"),
            "garbage".to_string(),
        ] {
            // Ignored as a context; the header is still rewritten with ours when forwarding.
            let i = Incoming::parse(&headers(&[("traceparent", &bad)]));
            assert_eq!((i.parent, i.sampled), (None, None), "{bad}");
            assert!(i.formats.w3c);
        }
    }

    #[test]
    fn b3_multi_and_single_and_their_sampling_states() {
        let i = Incoming::parse(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]));
        let p = i.parent.unwrap();
        assert!(p.trace_id_64bit);
        assert_eq!(p.trace_id, 0x463ac35c9f6413ad);
        assert_eq!(p.span_id, 0xa2fb4a1d1a96d312);
        assert_eq!(i.sampled, Some(true));
        // Debug samples whatever x-b3-sampled says; a decision alone starts a trace with it.
        let i = Incoming::parse(&headers(&[("x-b3-sampled", "0"), ("x-b3-flags", "1")]));
        assert_eq!((i.parent, i.sampled), (None, Some(true)));
        let i = Incoming::parse(&headers(&[("x-b3-sampled", "0")]));
        assert_eq!((i.parent, i.sampled), (None, Some(false)));

        let i = Incoming::parse(&headers(&[(
            "b3",
            &format!("{TRACE}-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90"),
        )]));
        assert_eq!(format!("{:032x}", i.parent.unwrap().trace_id), TRACE);
        assert_eq!(i.sampled, Some(true));
        assert!(i.formats.b3_single && !i.formats.w3c && !i.formats.b3_multi);
        let i = Incoming::parse(&headers(&[("b3", &format!("{TRACE}-e457b5a2e4d86bd1"))]));
        assert_eq!(i.sampled, None);
        assert!(i.parent.is_some());
        assert_eq!(
            Incoming::parse(&headers(&[("b3", "0")])).sampled,
            Some(false)
        );
        for bad in [
            "x",
            "463ac35c9f6413ad",
            "463ac35c9f6413ad-a2fb4a1d1a96d312-2",
            "463ac35c9f6413ad-a2fb4a1d1a96d312-1-zz",
            "463ac35c9f6413ad-a2fb4a1d1a96d312-1-0020000000000001-more",
        ] {
            assert_eq!(
                Incoming::parse(&headers(&[("b3", bad)])).parent,
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn traceparent_wins_over_b3_and_b3_single_over_multi() {
        let i = Incoming::parse(&headers(&[
            ("traceparent", &format!("00-{TRACE}-00f067aa0ba902b7-00")),
            ("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-1"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "1111111111111111"),
        ]));
        assert_eq!(i.parent.unwrap().span_id, 0x00f067aa0ba902b7);
        assert_eq!(i.sampled, Some(false));
        let i = Incoming::parse(&headers(&[
            ("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-1"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "1111111111111111"),
        ]));
        assert_eq!(i.parent.unwrap().span_id, 0xa2fb4a1d1a96d312);
    }

    #[test]
    fn injection_writes_b3_and_w3c_for_our_span_and_rewrites_b3_single() {
        let mut h = headers(&[
            ("b3", "stale"),
            ("tracestate", "vendor=1"),
            ("x-b3-parentspanid", "9999999999999999"),
        ]);
        let span = SpanContext {
            trace_id: u128::from_str_radix(TRACE, 16).unwrap(),
            trace_id_64bit: false,
            span_id: 0x1234,
            parent_span_id: Some(0xabcd),
            sampled: true,
        };
        let all = Formats {
            w3c: true,
            b3_multi: true,
            b3_single: true,
        };
        inject(&mut h, &span, all);
        assert_eq!(h["x-b3-traceid"], TRACE);
        assert_eq!(h["x-b3-spanid"], "0000000000001234");
        assert_eq!(h["x-b3-parentspanid"], "000000000000abcd");
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-0000000000001234-01").as_str()
        );
        assert_eq!(
            h["b3"],
            format!("{TRACE}-0000000000001234-1-000000000000abcd").as_str()
        );
        assert_eq!(h["tracestate"], "vendor=1");
        // What was injected reads back as the parent of the next hop.
        let next = Incoming::parse(&h);
        assert_eq!(next.parent.unwrap().span_id, 0x1234);
        // A root span removes a stale parent; 64-bit ids stay 64-bit in B3.
        let root = SpanContext {
            trace_id: 0x463ac35c9f6413ad,
            trace_id_64bit: true,
            span_id: 7,
            parent_span_id: None,
            sampled: false,
        };
        inject(&mut h, &root, all);
        assert!(h.get("x-b3-parentspanid").is_none());
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad");
        assert_eq!(h["x-b3-sampled"], "0");
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
        // Only the formats asked for are written.
        let mut w3c_only = HeaderMap::new();
        let w3c = Formats {
            w3c: true,
            ..Formats::default()
        };
        inject(&mut w3c_only, &span, w3c);
        assert_eq!(w3c_only.len(), 1, "{w3c_only:?}");
        assert_eq!(Incoming::parse(&w3c_only).formats, w3c);
    }
}
