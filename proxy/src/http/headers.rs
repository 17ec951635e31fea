//! Header handling: hop-by-hop removal (RFC 9110 §7.6.1), configured additions and removals,
//! and the `-shadow` authority of mirrored requests.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use rustmesh_xds::route::{AppendAction, HeaderValueOption};

// Names the proxy sets on requests or answers. Inserting under a `&'static str` copies the name
// into a new buffer each time; these constants share their static bytes.
/// The request's id (set when the client sent none).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Who the mutual-TLS client was (inbound; Envoy's XFCC).
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The downstream scheme, for the upstream.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Milliseconds the upstream took, on the answer.
pub const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
/// The attempt number, when the virtual host asks for it.
pub const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` unless it is `trailers` (which
/// gRPC needs end to end). With `upgrade`, `Upgrade` is kept and `Connection: upgrade` restored,
/// so a WebSocket handshake reaches the upstream.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if upgrade && n == UPGRADE {
            continue;
        }
        // Never let `Connection` remove end-to-end headers the proxy relies on.
        if n == http::header::HOST || n == http::header::CONTENT_LENGTH {
            continue;
        }
        headers.remove(&n);
    }
    headers.remove(CONNECTION);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    let te_trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(TE);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Whether a request asks for a protocol upgrade (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Applies configured changes: removals first, then additions (`APPEND_IF_EXISTS_OR_ADD`
/// appends another value, `OVERWRITE_IF_EXISTS_OR_ADD` replaces), as Envoy does. Names or values
/// that are not valid HTTP are skipped.
pub fn apply(headers: &mut HeaderMap, add: &[HeaderValueOption], remove: &[String]) {
    for name in remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for h in add {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.header.key.as_bytes()),
            HeaderValue::from_str(&h.header.value),
        ) else {
            tracing::debug!(header = %h.header.key, "skipping a header that is not valid HTTP");
            continue;
        };
        match h.append_action {
            AppendAction::AppendIfExistsOrAdd => {
                headers.append(name, value);
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(name, value);
            }
        }
    }
}

/// Envoy's shadow host: `-shadow` goes before the port (`reviews:9080` → `reviews-shadow:9080`).
pub fn shadow_authority(authority: &str) -> String {
    let (host, port) = crate::http::route::split_host_port(authority);
    match port {
        Some(p) => format!("{host}-shadow:{p}"),
        None => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::route::HeaderValue as XHeader;

    fn hv(k: &str, v: &str, a: AppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: XHeader {
                key: k.into(),
                value: v.into(),
            },
            append_action: a,
        }
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("te", "trailers, deflate".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-end", "2".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-end"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn add_and_remove() {
        let mut h = HeaderMap::new();
        h.insert("a", "1".parse().unwrap());
        h.insert("b", "1".parse().unwrap());
        h.insert("gone", "1".parse().unwrap());
        apply(
            &mut h,
            &[
                hv("a", "2", AppendAction::AppendIfExistsOrAdd),
                hv("b", "2", AppendAction::OverwriteIfExistsOrAdd),
                hv("bad name", "x", AppendAction::OverwriteIfExistsOrAdd),
            ],
            &["gone".into()],
        );
        assert_eq!(h.get_all("a").iter().count(), 2);
        assert_eq!(h["b"], "2");
        assert!(!h.contains_key("gone"));
    }

    #[test]
    fn shadow() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }
}
