//! Workload identity: the SPIFFE id Istio gives every workload,
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! One type shared by the mesh CA (the operator signs certificates carrying it as their only URI
//! SAN) and the sidecar (which asks for it and checks its peers' against what it expects).
//! Parsing is strict and bounded: an id comes from certificates and CSRs, untrusted input.

use std::fmt;
use std::str::FromStr;

/// The trust domain when mesh settings name none (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The longest SPIFFE id accepted (the SPIFFE specification's limit, in bytes).
pub const MAX_LEN: usize = 2048;

/// A workload's identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a workload SPIFFE id; names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Longer than [`MAX_LEN`].
    #[error("SPIFFE id is {0} bytes long, the limit is {MAX_LEN}")]
    TooLong(usize),
    /// Not `spiffe://...`.
    #[error("SPIFFE id {0:?} does not start with \"spiffe://\"")]
    Scheme(String),
    /// The path is not `/ns/<namespace>/sa/<service account>`.
    #[error("SPIFFE id {0:?}: the path must be /ns/<namespace>/sa/<service account>")]
    Path(String),
    /// A part is empty or has a character SPIFFE does not allow there.
    #[error("SPIFFE id: {part} {value:?} is empty or has a character other than {allowed}")]
    Part {
        /// Which part: `trust domain`, `namespace` or `service account`.
        part: &'static str,
        /// Its value.
        value: String,
        /// What the part may contain.
        allowed: &'static str,
    },
}

const DOMAIN_CHARS: &str = "a-z, 0-9, '.', '-', '_'";
const SEGMENT_CHARS: &str = "A-Z, a-z, 0-9, '.', '-', '_'";

fn check(
    part: &'static str,
    value: &str,
    allowed: &'static str,
    ok: fn(u8) -> bool,
) -> Result<(), IdentityError> {
    if value.is_empty() || !value.bytes().all(ok) || value == "." || value == ".." {
        return Err(IdentityError::Part {
            part,
            value: value.to_string(),
            allowed,
        });
    }
    Ok(())
}

fn domain_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl SpiffeId {
    /// The id of service account `service_account` in `namespace`, in `trust_domain`.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check("trust domain", trust_domain, DOMAIN_CHARS, domain_char)?;
        check("namespace", namespace, SEGMENT_CHARS, segment_char)?;
        check(
            "service account",
            service_account,
            SEGMENT_CHARS,
            segment_char,
        )?;
        let id = SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        let len = id.to_string().len();
        if len > MAX_LEN {
            return Err(IdentityError::TooLong(len));
        }
        Ok(id)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_LEN {
            return Err(IdentityError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Path(s.to_string()))?;
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => SpiffeId::new(domain, ns, sa),
            _ => Err(IdentityError::Path(s.to_string())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn istio_shape_parses_and_prints_back() {
        let id: SpiffeId = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "bookinfo");
        assert_eq!(id.service_account(), "bookinfo-reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn malformed_ids_name_what_is_wrong() {
        let err = |s: &str| s.parse::<SpiffeId>().unwrap_err().to_string();
        assert!(err("https://cluster.local/ns/a/sa/b").contains("spiffe://"));
        assert!(err("spiffe://cluster.local").contains("/ns/<namespace>/sa/"));
        assert!(err("spiffe://cluster.local/ns/a/sa/b/extra").contains("/ns/<namespace>/sa/"));
        assert!(err("spiffe://cluster.local/sa/b/ns/a").contains("/ns/<namespace>/sa/"));
        assert!(err("spiffe://Cluster.Local/ns/a/sa/b").contains("trust domain"));
        assert!(err("spiffe://cluster.local/ns//sa/b").contains("namespace"));
        assert!(err("spiffe://cluster.local/ns/a/sa/b%2F").contains("service account"));
        assert!(err("spiffe://cluster.local/ns/../sa/b").contains("namespace"));
        let long = format!("spiffe://cluster.local/ns/a/sa/{}", "b".repeat(MAX_LEN));
        assert!(err(&long).contains("limit"));
    }

    #[test]
    fn serde_is_the_string_form() {
        let id = SpiffeId::new("td", "ns1", "sa1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/ns/ns1/sa/sa1\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/ns/a\"").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(td in "[a-z0-9._-]{1,40}", ns in "[a-z0-9-]{1,63}", sa in "[A-Za-z0-9._-]{1,63}") {
            prop_assume!(td != "." && td != ".." && sa != "." && sa != "..");
            let id = SpiffeId::new(&td, &ns, &sa).unwrap();
            prop_assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,200}") {
            let _ = s.parse::<SpiffeId>();
        }
    }
}
