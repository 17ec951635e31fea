//! Reading a verified token's claims the two ways the mesh uses them.
//!
//! * [`claim_strings`]: what Istio's authorization matches `request.auth.claims[a][b]` against.
//!   The path walks nested objects; the value found gives its string, or each string element of
//!   a list (other elements, numbers and objects give nothing). Since Istio 1.21 the top-level
//!   `scope` and `permission` claims, when a string, are split on spaces (OAuth scopes, RFC 8693),
//!   so `request.auth.claims[scope]` matches `read` in `"read write"`; other string claims match
//!   whole.
//! * [`claim_header_value`]: what `outputClaimToHeaders` writes, as Envoy's `claim_to_headers`
//!   does: a string as is, a number in decimal (a whole number without a fraction), a boolean as
//!   `true`/`false`, an object or a list as the standard base64 (padded) of its compact JSON;
//!   `null`, an empty string or a missing claim writes no header. The claim name is a top-level
//!   claim, or failing that a `.`-separated path into nested objects (`nested.key1`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

/// The top-level claims whose string value Istio splits on spaces.
pub const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// The strings of the claim at `path` (`["groups"]`, `["nested", "key"]`); empty when the path
/// leads nowhere or to no string.
pub fn claim_strings<'a>(claims: &'a Map<String, Value>, path: &[&str]) -> Vec<&'a str> {
    let Some((first, rest)) = path.split_first() else {
        return Vec::new();
    };
    let mut value = match claims.get(*first) {
        Some(v) => v,
        None => return Vec::new(),
    };
    for key in rest {
        match value.get(*key) {
            Some(v) if value.is_object() => value = v,
            _ => return Vec::new(),
        }
    }
    match value {
        Value::String(s) if path.len() == 1 && SPACE_DELIMITED_CLAIMS.contains(first) => {
            s.split(' ').filter(|w| !w.is_empty()).collect()
        }
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The value `outputClaimToHeaders` writes for `claim`, if any (see the module doc).
pub fn claim_header_value(claims: &Map<String, Value>, claim: &str) -> Option<String> {
    let value = match claims.get(claim) {
        Some(v) => v,
        None => {
            let mut parts = claim.split('.');
            let mut value = claims.get(parts.next()?)?;
            for key in parts {
                value = value.as_object()?.get(key)?;
            }
            value
        }
    };
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            // A whole float prints without a fraction (Envoy keeps integers integral).
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            (_, _, Some(f)) => f.to_string(),
            _ => return None,
        },
        Value::Object(_) | Value::Array(_) => STANDARD.encode(value.to_string()),
    };
    (!text.is_empty()).then_some(text)
}
