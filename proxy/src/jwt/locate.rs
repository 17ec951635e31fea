//! Where tokens are looked for, and taking them out of a request.
//!
//! Each rule names header locations (a name and an optional value prefix such as `Bearer `),
//! query parameters and cookies; a rule that names none reads the defaults
//! (`Authorization: Bearer <token>` and `?access_token=<token>`). As in Envoy's extractor, rules
//! naming the same location share it, and each location remembers which rules named it: a token
//! found there is only checked against those rules' issuers.
//!
//! Reading a location: every value of the header (a prefix is matched ignoring ASCII case and
//! stripped, a value without it is not a token); the first occurrence of the query parameter,
//! percent-decoded; the first cookie of that name in the `Cookie` headers. Surrounding spaces
//! are trimmed and an empty value is no token. A token may be any bytes here: it is only parsed
//! later, with a length limit.

use std::borrow::Cow;

use http::header::{COOKIE, HeaderName};
use http::{HeaderMap, Uri};

/// A place a token can be in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLocation {
    /// A request header, the token after `prefix` (empty: the whole value).
    Header {
        /// The header.
        name: HeaderName,
        /// What precedes the token in the value (`Bearer `), matched ignoring ASCII case.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// A location and the rules (positions in the verifier's rule list) that read it.
#[derive(Debug)]
struct Spot {
    location: TokenLocation,
    rules: Vec<usize>,
}

/// Every location of a verifier's rules.
#[derive(Debug, Default)]
pub struct Locations {
    spots: Vec<Spot>,
}

/// A token as found: its bytes, where, and which rules may claim it.
#[derive(Debug)]
pub struct Found<'a> {
    /// The token's bytes, as sent (or percent-decoded, for a query parameter).
    pub token: Cow<'a, [u8]>,
    /// Where it was.
    pub location: &'a TokenLocation,
    /// The rules that read that location.
    pub rules: &'a [usize],
}

impl Locations {
    /// Records that `rule` reads `location`.
    pub fn add(&mut self, location: TokenLocation, rule: usize) {
        match self.spots.iter_mut().find(|s| s.location == location) {
            Some(spot) => {
                if !spot.rules.contains(&rule) {
                    spot.rules.push(rule);
                }
            }
            None => self.spots.push(Spot {
                location,
                rules: vec![rule],
            }),
        }
    }

    /// Every location, in the order the rules named them.
    pub fn iter(&self) -> impl Iterator<Item = &TokenLocation> {
        self.spots.iter().map(|s| &s.location)
    }

    /// The tokens of a request, at most `limit + 1` of them (so that the caller can tell there
    /// were more than `limit` without reading them all): headers, parameters and cookies, in the
    /// order the rules named their locations.
    pub fn extract<'a>(
        &'a self,
        headers: &'a HeaderMap,
        uri: &'a Uri,
        limit: usize,
    ) -> Vec<Found<'a>> {
        let mut out = Vec::new();
        for spot in &self.spots {
            if out.len() > limit {
                break;
            }
            let found = |token: Cow<'a, [u8]>| Found {
                token,
                location: &spot.location,
                rules: &spot.rules,
            };
            match &spot.location {
                TokenLocation::Header { name, prefix } => {
                    for value in headers.get_all(name) {
                        if let Some(token) = after_prefix(value.as_bytes(), prefix.as_bytes()) {
                            out.push(found(Cow::Borrowed(token)));
                            if out.len() > limit {
                                return out;
                            }
                        }
                    }
                }
                TokenLocation::Param(param) => {
                    if let Some(token) = query_param(uri, param) {
                        out.push(found(Cow::Owned(token)));
                    }
                }
                TokenLocation::Cookie(cookie) => {
                    if let Some(token) = cookie_value(headers, cookie) {
                        out.push(found(Cow::Borrowed(token)));
                    }
                }
            }
        }
        out
    }
}

/// The token in a header value: after `prefix` (ASCII case ignored), trimmed; `None` when the
/// prefix does not match or nothing is left.
fn after_prefix<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let token = value[prefix.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The first value of query parameter `name`, percent-decoded.
fn query_param(uri: &Uri, name: &str) -> Option<Vec<u8>> {
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim().as_bytes().to_vec())
        .filter(|v| !v.is_empty())
}

/// The first cookie called `name` in the request's `Cookie` headers, without quotes.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            if pair[..eq].trim_ascii() != name.as_bytes() {
                return None;
            }
            let value = pair[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            (!value.is_empty()).then_some(value)
        })
}

/// Takes the tokens at `locations` out of a request (a verified token whose rule does not have
/// `forwardOriginalToken`): a header location removes the whole header, as Envoy does; a query
/// parameter removes every occurrence of that parameter (the other parameters are kept as sent);
/// a cookie removes that cookie from the `Cookie` headers (a header left empty is dropped).
pub fn remove_tokens(headers: &mut HeaderMap, uri: &mut Uri, locations: &[TokenLocation]) {
    for location in locations {
        match location {
            TokenLocation::Header { name, .. } => {
                headers.remove(name);
            }
            TokenLocation::Param(param) => remove_param(uri, param),
            TokenLocation::Cookie(cookie) => remove_cookie(headers, cookie),
        }
    }
}

fn remove_param(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let named = |pair: &str| {
        let key = pair.split('=').next().unwrap_or_default();
        form_urlencoded::parse(key.as_bytes())
            .next()
            .is_some_and(|(k, _)| k == name)
    };
    if !query.split('&').any(named) {
        return;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !named(p)).collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}

fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let values: Vec<http::HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(COOKIE);
    for value in values {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| {
                let key = pair.split(|b| *b == b'=').next().unwrap_or_default();
                !pair.is_empty() && key.trim_ascii() != name.as_bytes()
            })
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(v) = http::HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            headers.append(COOKIE, v);
        }
    }
}
