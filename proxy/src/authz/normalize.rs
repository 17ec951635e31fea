//! Istio's default path normalization (`BASE`,
//! <https://istio.io/latest/docs/reference/config/security/normalization/>), applied to the
//! request path before a policy reads it and forwarded as normalized, so the application sees
//! the path that was authorized:
//!
//! - a percent-encoded unreserved character (`%2d` `-`, `%2e` `.`, `%30`-`%39`, `%41`-`%5a`,
//!   `%5f` `_`, `%61`-`%7a`, `%7e` `~`, any case) is decoded, once; `%2f` and `%5c` are kept
//!   (decoding them is `DECODE_AND_MERGE_SLASHES`, not the default);
//! - `%00` refuses the request (400);
//! - a backslash becomes a forward slash;
//! - `.` and `..` segments are resolved as RFC 3986 (5.2.4) says;
//! - slashes are not merged (`MERGE_SLASHES` is not the default).
//!
//! A leaf: nothing else in the crate is used here.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// It holds `%00`.
    EncodedNul,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The normalized form of `path` (without its query), borrowed when nothing changes.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    let needs = bytes.contains(&b'%')
        || bytes.contains(&b'\\')
        || path.contains("/.")
        || path.starts_with('.');
    if !needs {
        return Ok(Cow::Borrowed(path));
    }
    // Decoding and slashes, in one pass.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            let c = h * 16 + l;
            if c == 0 {
                return Err(PathError::EncodedNul);
            }
            if unreserved(c) {
                decoded.push(char::from(c));
            } else {
                decoded.push_str(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            decoded.push('/');
            i += 1;
            continue;
        }
        // A whole character (the path is UTF-8; non-ASCII bytes pass as they are).
        let len = path[i..].chars().next().map_or(1, char::len_utf8);
        decoded.push_str(&path[i..i + len]);
        i += len;
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// RFC 3986 5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut out = String::with_capacity(path.len());
    let pop = |out: &mut String| {
        let cut = out.rfind('/').unwrap_or(0);
        out.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop(&mut out);
        } else if input == "/.." {
            input = "/";
            pop(&mut out);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |p| p + start);
            out.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn istio_documented_examples() {
        // "/some%2fdata/%61%62%63" with BASE: %2f kept, letters decoded.
        assert_eq!(n("/some%2fdata/%61%62%63"), "/some%2fdata/abc");
        assert_eq!(n("/some\\data"), "/some/data");
        assert_eq!(n("/public/./data/abc/../xyz"), "/public/data/xyz");
        assert_eq!(n("/a/../b"), "/b");
        assert_eq!(
            n("/some//data///abc"),
            "/some//data///abc",
            "slashes are not merged"
        );
        assert_eq!(normalize("/a%00b"), Err(PathError::EncodedNul));
    }

    #[test]
    fn dot_segments_and_encodings() {
        assert_eq!(n("/a/%2e%2e/admin"), "/admin", "decoded dots are dots");
        assert_eq!(n("/a/%2E%2e/admin"), "/admin");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/../../x"), "/x", "no climbing above the root");
        assert_eq!(n("/a/.b/..c"), "/a/.b/..c", "dots inside names stay");
        assert_eq!(n("/%7euser/%5c"), "/~user/%5c");
        assert_eq!(n("/%41%5A%2D%5f"), "/AZ-_");
        assert_eq!(n("/%zz/%4"), "/%zz/%4", "malformed escapes stay");
        assert_eq!(n("/caf\u{e9}/./x"), "/caf\u{e9}/x");
        assert!(matches!(normalize("/plain/path"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("*"), Ok(Cow::Borrowed(_))));
    }
}
