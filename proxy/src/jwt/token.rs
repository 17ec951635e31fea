//! Reading one token: the JWS compact form (`header.payload.signature`, each base64url) into its
//! algorithm, key id, claims and signature, refusing what is malformed with the reason
//! `jwt_verify_lib` gives, in its order (format, header, payload, registered claims' types,
//! signature encoding). No key is used here and nothing is trusted yet: the caller picks the
//! rule by `iss`, then checks time ([`Token::check_time`]), audiences and the signature.
//!
//! Limits: a token longer than [`MAX_TOKEN_BYTES`] is refused before any decoding, and JSON is
//! read by `serde_json` (nesting deeper than 128 levels is an error, not a crash).

use std::str::FromStr;

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::{Map, Value};

use super::status::Status;

/// The longest token read, in bytes (8 KiB, the per-header-line limit of common servers such as
/// nginx's default `large_client_header_buffers`): a longer one is refused ("Jwt verification
/// fails") before it is decoded. Tokens are typically under 2 KiB; ones carrying many groups
/// reach 4-6 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The clock skew allowed on `exp` and `nbf`, in seconds: Envoy's default
/// (`clock_skew_seconds`, 60), which Istio does not change.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Base64url as `jwt_verify_lib` reads it: the URL-safe alphabet, padding optional.
pub(crate) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A refusal: the reason, and for logs a detail the reason's fixed text does not carry.
pub type Refused = (Status, Option<String>);

/// A token taken apart, nothing verified yet.
#[derive(Debug)]
pub struct Token<'a> {
    /// `header.payload` as sent: what the signature covers.
    pub signing_input: &'a [u8],
    /// The payload section as sent (base64url, what `outputPayloadToHeader` copies).
    pub payload_b64: &'a str,
    /// The header's `alg` (never `none` nor HMAC).
    pub alg: Algorithm,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
    /// `iss` (empty when absent).
    pub iss: String,
    /// `sub` (empty when absent).
    pub sub: String,
    /// `aud`, a string or a list of them.
    pub aud: Vec<String>,
    /// `azp`, when a string.
    pub azp: Option<String>,
    /// `nbf`, 0 when absent.
    pub nbf: u64,
    /// `exp`, 0 when absent (never expires, as in `jwt_verify_lib`).
    pub exp: u64,
}

/// Whether tokens signed with `alg` are verified at all: HMAC needs a shared secret, which a
/// mesh-wide key set must never carry, and `none` is not an algorithm `jsonwebtoken` parses.
pub fn is_supported(alg: Algorithm) -> bool {
    alg.family() != AlgorithmFamily::Hmac
}

/// Takes `raw` apart. Never panics, whatever the bytes.
pub fn parse(raw: &[u8]) -> Result<Token<'_>, Refused> {
    if raw.len() > MAX_TOKEN_BYTES {
        return Err((
            Status::VerificationFail,
            Some(format!(
                "token of {} bytes is over the limit of {MAX_TOKEN_BYTES} bytes",
                raw.len()
            )),
        ));
    }
    let bad_format = || (Status::BadFormat, None);
    if raw.iter().filter(|b| **b == b'.').count() != 2 {
        return Err(bad_format());
    }
    let mut sections = raw.split(|b| *b == b'.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64)) =
        (sections.next(), sections.next(), sections.next())
    else {
        return Err(bad_format());
    };
    if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
        return Err(bad_format());
    }

    let header = B64URL
        .decode(header_b64)
        .map_err(|_| (Status::HeaderBadBase64, None))?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header) else {
        return Err((Status::HeaderBadJson, None));
    };
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err((Status::HeaderBadAlg, None));
    };
    let alg = match Algorithm::from_str(alg) {
        Ok(a) if is_supported(a) => a,
        _ => {
            return Err((
                Status::HeaderNotImplementedAlg,
                Some(format!("alg {alg:?} is refused")),
            ));
        }
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err((Status::HeaderBadKid, None)),
    };
    if header.contains_key("crit") {
        // RFC 7515 4.1.11: a recipient must refuse extensions it does not understand, and this
        // one understands none (Envoy ignores `crit`; refusing is the safe side).
        return Err((
            Status::VerificationFail,
            Some("the header lists critical extensions (crit), none of which is supported".into()),
        ));
    }

    let payload = B64URL
        .decode(payload_b64)
        .map_err(|_| (Status::PayloadBadBase64, None))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| (Status::PayloadBadJson, None))?;
    let iss = string_claim(&claims, "iss", Status::IssNotString)?;
    let sub = string_claim(&claims, "sub", Status::SubNotString)?;
    numeric_date(&claims, "iat", Status::IatNotInteger, Status::IatOutOfRange)?;
    let nbf = numeric_date(&claims, "nbf", Status::NbfNotInteger, Status::NbfOutOfRange)?;
    let exp = numeric_date(&claims, "exp", Status::ExpNotInteger, Status::ExpOutOfRange)?;
    string_claim(&claims, "jti", Status::JtiNotString)?;
    let aud = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or((Status::AudNotString, None))?,
        Some(_) => return Err((Status::AudNotString, None)),
    };
    let azp = claims
        .get("azp")
        .and_then(Value::as_str)
        .map(str::to_string);

    let signature = B64URL
        .decode(signature_b64)
        .map_err(|_| (Status::SignatureBadBase64, None))?;
    let signing_input = &raw[..header_b64.len() + 1 + payload_b64.len()];
    // The payload section decoded as base64url, so it is ASCII.
    let payload_b64 = std::str::from_utf8(payload_b64).map_err(|_| bad_format())?;
    Ok(Token {
        signing_input,
        payload_b64,
        alg,
        kid,
        signature,
        claims,
        iss,
        sub,
        aud,
        azp,
        nbf,
        exp,
    })
}

impl Token<'_> {
    /// `nbf` and `exp` against `now` (seconds since the epoch), each with
    /// [`CLOCK_SKEW_SECS`] of slack, as `jwt_verify_lib` checks them.
    pub fn check_time(&self, now: u64) -> Result<(), Status> {
        if now.saturating_add(CLOCK_SKEW_SECS) < self.nbf {
            return Err(Status::NotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(Status::Expired);
        }
        Ok(())
    }
}

/// A claim that must be a string when present; empty when absent.
fn string_claim(claims: &Map<String, Value>, name: &str, wrong: Status) -> Result<String, Refused> {
    match claims.get(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err((wrong, None)),
    }
}

/// A NumericDate claim (RFC 7519 2): a JSON number of seconds, fractions dropped; 0 when absent.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    not_number: Status,
    out_of_range: Status,
) -> Result<u64, Refused> {
    const LIMIT: u64 = i64::MAX as u64;
    let Some(value) = claims.get(name) else {
        return Ok(0);
    };
    let Value::Number(n) = value else {
        return Err((not_number, None));
    };
    if let Some(u) = n.as_u64() {
        return if u <= LIMIT {
            Ok(u)
        } else {
            Err((out_of_range, None))
        };
    }
    match n.as_f64() {
        // 2^63 as a float: every float below it truncates into the range.
        Some(f) if (0.0..9_223_372_036_854_775_808.0).contains(&f) => Ok(f as u64),
        _ => Err((out_of_range, None)),
    }
}
