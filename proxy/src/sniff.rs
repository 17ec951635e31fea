//! Protocol sniffing: what Envoy's `tls_inspector` and `http_inspector` listener filters find in
//! the first bytes of a connection, so filter chains can match on `transportProtocol` and
//! `applicationProtocols`.
//!
//! [`classify`] is pure: given the bytes seen so far it answers, or asks for more. [`sniff`] peeks
//! at a socket (`peek` does not consume: the bytes stay for whoever handles the connection) until
//! [`classify`] answers or the listener's `listenerFiltersTimeout` expires. On timeout the
//! connection is plain TCP with no application protocol, so server-first protocols (MySQL, SMTP),
//! whose clients send nothing until the server speaks, fall through to a TCP chain.
//!
//! | first bytes | transport | application protocols |
//! | --- | --- | --- |
//! | a TLS ClientHello | `tls` | its ALPN list (`h2`, `istio-http/1.1`, ...) |
//! | `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` | `raw_buffer` | `h2c` |
//! | `<METHOD> <target> HTTP/1.1\r\n` | `raw_buffer` | `http/1.1` |
//! | `<METHOD> <target> HTTP/1.0\r\n` | `raw_buffer` | `http/1.0` |
//! | anything else, or nothing before the timeout | `raw_buffer` | none |

use std::io;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// The default of `listenerFiltersTimeout`: how long to wait for the first bytes when a chain
/// needs the protocol. Istio renders `0.1s` on the listeners that sniff (its
/// `PILOT_SNIFF_TIMEOUT`-era default, still what a user sees in `config_dump`).
pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// The most bytes looked at. A TLS ClientHello fits in one 16 KiB record; an HTTP/1 request line
/// longer than this is treated as not HTTP (Envoy's http_inspector gives up earlier, at 8 KiB of
/// request line... close enough, and bounded).
pub const MAX_SNIFF_BYTES: usize = 16 * 1024 + 5;

/// The h2c connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The transport protocol of a connection, as filter chains name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain TCP (`raw_buffer`).
    #[default]
    RawBuffer,
    /// A TLS ClientHello was seen (`tls`).
    Tls,
}

impl Transport {
    /// `raw_buffer` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::RawBuffer => rustmesh_xds::listener::RAW_BUFFER,
            Transport::Tls => rustmesh_xds::listener::TLS,
        }
    }
}

/// What sniffing found out about a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detected {
    /// `raw_buffer` unless a ClientHello was seen.
    pub transport: Transport,
    /// `http/1.1`, `http/1.0`, `h2c` for plain text; the ALPN list of a ClientHello. Empty when
    /// nothing was recognised (or nothing arrived in time).
    pub application_protocols: Vec<String>,
    /// The SNI of a ClientHello.
    pub server_name: Option<String>,
}

impl Detected {
    /// Plain TCP, no application protocol: the answer when sniffing is not needed or times out.
    pub fn raw() -> Self {
        Detected::default()
    }

    fn app(protocol: &str) -> Self {
        Detected {
            transport: Transport::RawBuffer,
            application_protocols: vec![protocol.to_string()],
            server_name: None,
        }
    }

    /// Whether the application protocol is one of plain HTTP's (`http/1.0`, `http/1.1`, `h2c`).
    pub fn is_plain_http(&self) -> bool {
        self.transport == Transport::RawBuffer
            && self
                .application_protocols
                .iter()
                .any(|p| ["http/1.0", "http/1.1", "h2c"].contains(&p.as_str()))
    }
}

/// The answer of [`classify`] for the bytes seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The protocol is known.
    Done(Detected),
    /// The bytes so far are a prefix of something recognisable: wait for more.
    NeedMore,
}

/// Classifies the first bytes of a connection. Never panics, whatever the bytes; answers
/// `NeedMore` only while `bytes` is shorter than [`MAX_SNIFF_BYTES`].
pub fn classify(bytes: &[u8]) -> Verdict {
    if bytes.is_empty() {
        return Verdict::NeedMore;
    }
    let verdict = match bytes[0] {
        0x16 => tls(bytes),
        b'P' if is_prefix_either_way(bytes, H2_PREFACE) => {
            if bytes.len() >= H2_PREFACE.len() {
                Verdict::Done(Detected::app("h2c"))
            } else {
                Verdict::NeedMore
            }
        }
        _ => http1(bytes),
    };
    match verdict {
        Verdict::NeedMore if bytes.len() >= MAX_SNIFF_BYTES => Verdict::Done(Detected::raw()),
        v => v,
    }
}

fn is_prefix_either_way(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// An HTTP/1 request line: `token SP target SP HTTP/1.x CRLF` (a bare LF is accepted too).
fn http1(bytes: &[u8]) -> Verdict {
    let not_http = Verdict::Done(Detected::raw());
    // Method: a token (RFC 9110 tchar), at most 20 bytes (Envoy's parser has a similar bound).
    let method_len = bytes.iter().take_while(|b| is_tchar(**b)).count();
    if method_len == bytes.len() {
        return if method_len <= 20 {
            Verdict::NeedMore
        } else {
            not_http
        };
    }
    if method_len == 0 || method_len > 20 || bytes[method_len] != b' ' {
        return not_http;
    }
    // Target: visible ASCII up to the next space.
    let rest = &bytes[method_len + 1..];
    let target_len = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    if target_len == rest.len() {
        return Verdict::NeedMore;
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return not_http;
    }
    let version = &rest[target_len + 1..];
    for (v, name) in [(&b"HTTP/1.1"[..], "http/1.1"), (b"HTTP/1.0", "http/1.0")] {
        if version.len() < v.len() {
            if v.starts_with(version) || b"HTTP/1.0".starts_with(version) {
                return Verdict::NeedMore;
            }
            return not_http;
        }
        if version.starts_with(v) {
            return match &version[v.len()..] {
                [] | [b'\r'] => Verdict::NeedMore,
                [b'\r', b'\n', ..] | [b'\n', ..] => Verdict::Done(Detected::app(name)),
                _ => not_http,
            };
        }
    }
    not_http
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A TLS record carrying a ClientHello: `0x16 0x03 0x0X len(2)`, then handshake type 1.
fn tls(bytes: &[u8]) -> Verdict {
    let not_tls = Verdict::Done(Detected::raw());
    if bytes.len() >= 2 && bytes[1] != 0x03 {
        return not_tls;
    }
    if bytes.len() >= 3 && bytes[2] > 0x04 {
        return not_tls;
    }
    if bytes.len() < 6 {
        return Verdict::NeedMore;
    }
    let record_len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if bytes[5] != 0x01 || record_len < 4 {
        return not_tls;
    }
    let tls_only = Verdict::Done(Detected {
        transport: Transport::Tls,
        ..Detected::default()
    });
    let available = &bytes[5..];
    if available.len() < 4 {
        return Verdict::NeedMore;
    }
    let hello_len = (usize::from(available[1]) << 16)
        | (usize::from(available[2]) << 8)
        | usize::from(available[3]);
    // A ClientHello split over several records is rare: report TLS without its extensions.
    if hello_len + 4 > record_len {
        return tls_only;
    }
    if available.len() < 4 + hello_len {
        return Verdict::NeedMore;
    }
    match client_hello(&available[4..4 + hello_len]) {
        Some(d) => Verdict::Done(d),
        None => tls_only,
    }
}

/// Reads SNI and ALPN from a ClientHello body. `None` when it is malformed.
fn client_hello(body: &[u8]) -> Option<Detected> {
    let mut r = Reader(body);
    r.skip(2 + 32)?; // version, random
    let session = r.u8()?;
    r.skip(usize::from(session))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    let mut detected = Detected {
        transport: Transport::Tls,
        ..Detected::default()
    };
    if r.0.is_empty() {
        return Some(detected);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(usize::from(ext_len))?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let mut data = Reader(exts.take(usize::from(len))?);
        match kind {
            0 => {
                // server_name: list of (type, name).
                let list_len = data.u16()?;
                let mut list = Reader(data.take(usize::from(list_len))?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name_len = list.u16()?;
                    let name = list.take(usize::from(name_len))?;
                    if name_type == 0 && detected.server_name.is_none() {
                        detected.server_name = std::str::from_utf8(name).ok().map(str::to_string);
                    }
                }
            }
            16 => {
                // ALPN: list of length-prefixed protocol names.
                let list_len = data.u16()?;
                let mut list = Reader(data.take(usize::from(list_len))?);
                while !list.0.is_empty() {
                    let len = list.u8()?;
                    let proto = list.take(usize::from(len))?;
                    detected
                        .application_protocols
                        .push(String::from_utf8_lossy(proto).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(detected)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Peeks at `stream` until [`classify`] answers, the peer stops sending (EOF) or `timeout`
/// expires (`None`: no limit, Envoy's `0s`). Nothing is consumed. A timeout or an early EOF
/// gives what the bytes so far allow: plain TCP, no application protocol.
pub async fn sniff(stream: &TcpStream, timeout: Option<Duration>) -> io::Result<Detected> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut buf = vec![0u8; 1024];
    let mut seen = 0;
    loop {
        let n = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.peek(&mut buf)).await {
                Ok(n) => n?,
                Err(_) => return Ok(final_verdict(&buf[..seen])),
            },
            None => stream.peek(&mut buf).await?,
        };
        if n == 0 {
            return Ok(Detected::raw()); // EOF before any byte
        }
        seen = n;
        if let Verdict::Done(d) = classify(&buf[..n]) {
            return Ok(d);
        }
        if n == buf.len() {
            // A full buffer that is still a prefix: look at more at once.
            let grown = (buf.len() * 4).min(MAX_SNIFF_BYTES);
            buf.resize(grown, 0);
            continue;
        }
        // Wait for more bytes. A successful peek leaves the socket "readable", so clear tokio's
        // readiness first (it is edge-triggered: the next segment sets it again), then look
        // once more in case bytes arrived before the clear.
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
        let again = stream.peek(&mut buf).await?;
        if again > seen {
            continue;
        }
        let ready = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.ready(Interest::READABLE)).await {
                Ok(r) => r?,
                Err(_) => return Ok(final_verdict(&buf[..seen])),
            },
            None => stream.ready(Interest::READABLE).await?,
        };
        if ready.is_read_closed() {
            // The client half-closed: no more bytes will come. Decide on what is there.
            let n = stream.peek(&mut buf).await?;
            return Ok(match classify(&buf[..n]) {
                Verdict::Done(d) => d,
                Verdict::NeedMore => final_verdict(&buf[..n]),
            });
        }
    }
}

/// What a prefix that never completed counts as: a ClientHello cut short is still TLS (Envoy's
/// tls_inspector reports `tls` once it has seen a handshake record header); anything else is TCP.
fn final_verdict(bytes: &[u8]) -> Detected {
    if bytes.len() >= 6 && bytes[0] == 0x16 && bytes[1] == 0x03 && bytes[5] == 0x01 {
        Detected {
            transport: Transport::Tls,
            ..Detected::default()
        }
    } else {
        Detected::raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn done(bytes: &[u8]) -> Detected {
        match classify(bytes) {
            Verdict::Done(d) => d,
            Verdict::NeedMore => panic!("{:?} needs more", String::from_utf8_lossy(bytes)),
        }
    }

    fn apps(bytes: &[u8]) -> Vec<String> {
        done(bytes).application_protocols
    }

    /// A ClientHello with the given SNI and ALPN list, as one TLS record.
    pub(crate) fn client_hello_bytes(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut sni_list = vec![0u8];
        sni_list.extend((sni.len() as u16).to_be_bytes());
        sni_list.extend(sni.as_bytes());
        ext.extend(0u16.to_be_bytes());
        ext.extend(((sni_list.len() + 2) as u16).to_be_bytes());
        ext.extend((sni_list.len() as u16).to_be_bytes());
        ext.extend(&sni_list);
        let mut alpn_list = Vec::new();
        for p in alpn {
            alpn_list.push(p.len() as u8);
            alpn_list.extend(p.as_bytes());
        }
        ext.extend(16u16.to_be_bytes());
        ext.extend(((alpn_list.len() + 2) as u16).to_be_bytes());
        ext.extend((alpn_list.len() as u16).to_be_bytes());
        ext.extend(&alpn_list);

        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]);
        body.extend([1, 0]); // compression
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(&ext);

        let mut hs = vec![0x01];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(&hs);
        rec
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(apps(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ["http/1.1"]);
        assert_eq!(apps(b"POST /a?b=c HTTP/1.0\r\n"), ["http/1.0"]);
        assert_eq!(apps(b"OPTIONS * HTTP/1.1\n"), ["http/1.1"]);
        assert_eq!(done(b"GET / HTTP/1.1\r\n").transport, Transport::RawBuffer);
        assert!(done(b"GET / HTTP/1.1\r\n").is_plain_http());
    }

    #[test]
    fn http1_prefixes_need_more() {
        let line = b"GET /index.html HTTP/1.1\r\n";
        for n in 1..line.len() {
            assert_eq!(
                classify(&line[..n]),
                Verdict::NeedMore,
                "{:?}",
                String::from_utf8_lossy(&line[..n])
            );
        }
    }

    #[test]
    fn h2c_preface() {
        assert_eq!(apps(H2_PREFACE), ["h2c"]);
        for n in 1..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..n]), Verdict::NeedMore);
        }
        // `PRI * HTTP/2.0` is not an HTTP/1 request.
        assert_eq!(
            apps(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn not_http() {
        for bytes in [
            &b"\x00\x01\x02"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / FTP/1.1\r\n",
            b"GET\t/ HTTP/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b" GET / HTTP/1.1\r\n",
            b"hello\n",
        ] {
            let d = done(bytes);
            assert_eq!(d, Detected::raw(), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn tls_client_hello_with_sni_and_alpn() {
        let hello = client_hello_bytes("reviews.default.svc.cluster.local", &["h2", "http/1.1"]);
        let d = done(&hello);
        assert_eq!(d.transport, Transport::Tls);
        assert_eq!(d.application_protocols, ["h2", "http/1.1"]);
        assert_eq!(
            d.server_name.as_deref(),
            Some("reviews.default.svc.cluster.local")
        );
        assert!(!d.is_plain_http());
        for n in 1..hello.len() {
            assert_eq!(classify(&hello[..n]), Verdict::NeedMore, "prefix {n}");
        }
        // Cut short and given up on: still TLS.
        assert_eq!(final_verdict(&hello[..10]).transport, Transport::Tls);
    }

    #[test]
    fn tls_lookalikes_are_tcp() {
        assert_eq!(done(b"\x16\x01\x00").transport, Transport::RawBuffer);
        assert_eq!(
            done(b"\x16\x03\x01\x00\x10\x02").transport,
            Transport::RawBuffer
        );
    }

    #[test]
    fn long_prefixes_end() {
        let mut long = b"GET /".to_vec();
        long.resize(MAX_SNIFF_BYTES, b'a');
        assert_eq!(done(&long), Detected::raw());
    }

    proptest! {
        /// Whatever the bytes: no panic, and `NeedMore` only below the limit.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if classify(&bytes) == Verdict::NeedMore {
                prop_assert!(bytes.len() < MAX_SNIFF_BYTES);
            }
        }

        /// Once decided, more bytes never change the answer.
        #[test]
        fn decisions_are_stable(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            more in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Verdict::Done(d) = classify(&bytes) {
                let mut longer = bytes.clone();
                longer.extend(&more);
                prop_assert_eq!(classify(&longer), Verdict::Done(d));
            }
        }

        /// Any well-formed request line is HTTP, in one piece or as a prefix of it.
        #[test]
        fn request_lines(
            method in "[A-Z]{1,10}",
            path in "/[a-zA-Z0-9/._~?=&-]{0,50}",
            v in prop::bool::ANY,
            tail in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            let version = if v { "HTTP/1.1" } else { "HTTP/1.0" };
            let mut bytes = format!("{method} {path} {version}\r\n").into_bytes();
            bytes.extend(&tail);
            let d = done(&bytes);
            prop_assert_eq!(d.application_protocols, vec![version.to_ascii_lowercase()]);
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn sniff_waits_for_a_whole_request_line_and_consumes_nothing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server) = pair().await;
        let writer = tokio::spawn(async move {
            for part in [&b"GE"[..], b"T /x HT", b"TP/1.1\r", b"\nHost: a\r\n\r\n"] {
                client.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client
        });
        let d = sniff(&server, Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(d.application_protocols, ["http/1.1"]);
        let _client = writer.await.unwrap();
        let mut first = [0u8; 3];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET");
    }

    #[tokio::test]
    async fn sniff_times_out_to_tcp_for_server_first_protocols() {
        let (_client, server) = pair().await;
        let d = sniff(&server, Some(Duration::from_millis(20)))
            .await
            .unwrap();
        assert_eq!(d, Detected::raw());
    }

    #[tokio::test]
    async fn sniff_stops_at_half_close() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HT").await.unwrap();
        client.shutdown().await.unwrap();
        // No timeout: only the EOF can end this.
        let d = sniff(&server, None).await.unwrap();
        assert_eq!(d, Detected::raw());
    }
}
