//! What a policy is evaluated against: the connection's attributes ([`Connection`], once per
//! connection) and, for HTTP, the request's ([`Request`]), with the request identity a
//! validated JWT would give ([`RequestAuth`]; none until request authentication runs, so
//! `requestPrincipals` and `request.auth.*` never match and their negations do).
//!
//! A leaf: nothing else in the crate is used here.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use rustmesh_xds::identity::SpiffeId;

/// A connection's attributes, as Envoy's RBAC filters see them on an inbound connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    /// The peer's mutual-TLS identity without `spiffe://` (`cluster.local/ns/foo/sa/bar`);
    /// `None` for plain text (then `principals` never match and `notPrincipals` do).
    pub principal: Option<String>,
    /// The namespace in the peer's identity.
    pub namespace: Option<String>,
    /// The connection's source address (`source.ip`, `ipBlocks`). It is also the remote address
    /// (`remote.ip`, `remoteIpBlocks`): a sidecar trusts no `X-Forwarded-For` hop.
    pub source: Option<SocketAddr>,
    /// The connection's original destination (`destination.ip`, `destination.port`, `ports`).
    pub destination: Option<SocketAddr>,
    /// The TLS server name the client asked for, when the chain terminated TLS
    /// (`connection.sni`).
    pub sni: Option<String>,
}

impl Connection {
    /// The attributes of an inbound connection from `source` to `destination`, with the peer's
    /// verified identity and SNI when TLS was terminated.
    pub fn new(
        peer: Option<&SpiffeId>,
        source: SocketAddr,
        destination: SocketAddr,
        sni: Option<&str>,
    ) -> Self {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        Connection {
            principal: peer.map(|p| {
                format!(
                    "{}/ns/{}/sa/{}",
                    p.trust_domain(),
                    p.namespace(),
                    p.service_account()
                )
            }),
            namespace: peer.map(|p| p.namespace().to_string()),
            source: Some(canonical(source)),
            destination: Some(canonical(destination)),
            sni: sni.map(str::to_string),
        }
    }

    /// `source.ip`.
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.source.map(|s| s.ip())
    }

    /// `remote.ip`: the source, since a sidecar has no trusted proxy in front of it.
    pub fn remote_ip(&self) -> Option<IpAddr> {
        self.source_ip()
    }

    /// `destination.ip`.
    pub fn destination_ip(&self) -> Option<IpAddr> {
        self.destination.map(|d| d.ip())
    }

    /// `destination.port`, `ports`.
    pub fn destination_port(&self) -> Option<u16> {
        self.destination.map(|d| d.port())
    }
}

/// The identity a validated JWT gives a request (Istio's `request.auth.*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestAuth {
    /// `<iss>/<sub>` (`requestPrincipals`, `request.auth.principal`).
    pub principal: String,
    /// `aud` (`request.auth.audiences`).
    pub audiences: Vec<String>,
    /// `azp` (`request.auth.presenter`).
    pub presenter: Option<String>,
    /// The token's claims (`request.auth.claims[...]`).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl RequestAuth {
    /// The string values of a claim, nested names walking objects (`[a][b]`): a string claim
    /// gives itself, a list gives its strings; anything else gives nothing.
    pub fn claim<'a>(&'a self, names: &[String]) -> Vec<&'a str> {
        let Some((first, rest)) = names.split_first() else {
            return Vec::new();
        };
        let mut value = self.claims.get(first);
        for name in rest {
            value = value.and_then(|v| v.as_object()).and_then(|o| o.get(name));
        }
        match value {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// An HTTP request's attributes.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `:authority` (the `Host` header in HTTP/1.1).
    pub host: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// The path without its query, normalized (see `authz::normalize`).
    pub path: &'a str,
    /// The request's headers (names are compared without case).
    pub headers: &'a HeaderMap,
    /// The validated JWT's identity, if any.
    pub auth: Option<&'a RequestAuth>,
}

impl Request<'_> {
    /// A header's value as Envoy's matchers see it: several values joined with `,`; `None` when
    /// the header is absent.
    pub fn header(&self, name: &http::HeaderName) -> Option<Cow<'_, [u8]>> {
        header_value(self.headers, name)
    }
}

/// [`Request::header`] on a header map.
pub fn header_value<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<Cow<'h, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first.as_bytes())),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                joined.push(b',');
                joined.extend_from_slice(v.as_bytes());
            }
            Some(Cow::Owned(joined))
        }
    }
}

/// Everything a decision reads: the connection, and the request for HTTP (`None`: a TCP
/// connection, evaluated with Istio's TCP semantics).
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// The connection.
    pub conn: &'a Connection,
    /// The HTTP request, if the chain is HTTP.
    pub http: Option<Request<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_identity_gives_principal_and_namespace() {
        let id = SpiffeId::new("cluster.local", "foo", "sleep").unwrap();
        let c = Connection::new(
            Some(&id),
            "[::ffff:10.0.0.1]:4000".parse().unwrap(),
            "10.0.0.2:8000".parse().unwrap(),
            Some("outbound_.8000_._.httpbin.foo.svc.cluster.local"),
        );
        assert_eq!(
            c.principal.as_deref(),
            Some("cluster.local/ns/foo/sa/sleep")
        );
        assert_eq!(c.namespace.as_deref(), Some("foo"));
        assert_eq!(c.source_ip(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(c.remote_ip(), c.source_ip());
        assert_eq!(c.destination_port(), Some(8000));
        let plain = Connection::new(None, c.source.unwrap(), c.destination.unwrap(), None);
        assert_eq!(
            (plain.principal, plain.namespace, plain.sni),
            (None, None, None)
        );
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        let mut h = HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.insert("x-b", "only".parse().unwrap());
        let name = |n: &'static str| http::HeaderName::from_static(n);
        assert_eq!(header_value(&h, &name("x-a")).as_deref(), Some(&b"1,2"[..]));
        assert_eq!(
            header_value(&h, &name("x-b")).as_deref(),
            Some(&b"only"[..])
        );
        assert_eq!(header_value(&h, &name("x-c")), None);
    }

    #[test]
    fn claims_nest_and_list() {
        let auth = RequestAuth {
            claims: serde_json::json!({"groups": ["a", "b", 3], "nested": {"key": "v"}, "n": 1})
                .as_object()
                .unwrap()
                .clone(),
            ..RequestAuth::default()
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(auth.claim(&names(&["groups"])), ["a", "b"]);
        assert_eq!(auth.claim(&names(&["nested", "key"])), ["v"]);
        assert!(auth.claim(&names(&["n"])).is_empty());
        assert!(auth.claim(&names(&["nested", "missing"])).is_empty());
    }
}
