//! Istio's TCP metadata exchange (`istio-peer-exchange`): how two sidecars tell each other
//! their workloads on a TCP connection, where no header can carry them.
//!
//! When the mutual TLS handshake between two sidecars settles on the ALPN protocol
//! `istio-peer-exchange` (a client offers it for TCP, [`crate::transport`]), each side writes a
//! preface at the start of its stream, before any byte of the app's:
//!
//! ```text
//! magic 0x3D230467 (u32, big-endian) | length (u32, big-endian) | google.protobuf.Any
//! ```
//!
//! The `Any` holds a `google.protobuf.Struct` (type URL
//! `type.googleapis.com/google.protobuf.Struct`) with the fields `x-envoy-peer-metadata` (the
//! sidecar's metadata struct, as the HTTP exchange sends it in base64) and
//! `x-envoy-peer-metadata-id` (its node id). That is the wire format of Istio's
//! `metadata_exchange` network filter, so rustmesh and Envoy sidecars understand each other.
//!
//! Both sides write their preface as soon as the connection is up (Envoy's filter writes its
//! own when the first bytes pass either way; an eager writer never waits on it), and
//! [`Exchanged`] reads the peer's from the front of the peer's stream while the other direction
//! carries on, so a protocol where the server speaks first never stalls. Bytes that do not
//! start with the magic are the peer's data and pass on untouched (a peer without the
//! exchange); a preface announcing more than [`MAX_PREFACE_BYTES`] ends the connection (the
//! input is untrusted and is never buffered without bound); a preface that is not a readable
//! struct is removed and the peer stays `unknown`.

use super::{PEER_METADATA, STRUCT_TYPE_URL};
use crate::metrics::WorkloadInfo;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Any, Struct};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The ALPN protocol that asks for the exchange.
pub const ALPN: &[u8] = b"istio-peer-exchange";
/// The preface's first four bytes (Istio's `MetadataExchangeInitialHeader::magic_number`).
pub const MAGIC: u32 = super::PREFACE_MAGIC;
/// Largest preface read (header excluded); a larger one ends the connection.
pub const MAX_PREFACE_BYTES: usize = 16 * 1024;
/// Magic and length.
const HEADER_BYTES: usize = super::PREFACE_HEADER_BYTES;

/// What the first bytes of a peer's stream are.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Too few bytes yet to tell.
    NeedMore,
    /// Not a preface (no magic): the peer's own data.
    NotPreface,
    /// A preface.
    Preface {
        /// Its length, header included.
        len: usize,
        /// The peer it names (`None`: not a struct with `x-envoy-peer-metadata`).
        peer: Option<WorkloadInfo>,
    },
    /// A preface announcing this many bytes, over [`MAX_PREFACE_BYTES`].
    TooLarge(u32),
}

/// Reads a preface from the front of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(magic) = buf.get(..4) else {
        // A peer's data can be shorter than four bytes: tell as soon as a byte differs.
        return if MAGIC.to_be_bytes().starts_with(buf) {
            Parsed::NeedMore
        } else {
            Parsed::NotPreface
        };
    };
    if magic != MAGIC.to_be_bytes() {
        return Parsed::NotPreface;
    }
    let Some(len) = buf.get(4..HEADER_BYTES) else {
        return Parsed::NeedMore;
    };
    let announced = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let size = announced as usize;
    if size > MAX_PREFACE_BYTES {
        return Parsed::TooLarge(announced);
    }
    let Some(body) = buf.get(HEADER_BYTES..HEADER_BYTES + size) else {
        return Parsed::NeedMore;
    };
    let peer = Any::decode(body)
        .ok()
        .filter(|any| any.type_url == STRUCT_TYPE_URL)
        .and_then(|any| Struct::decode(any.value.as_slice()).ok())
        .and_then(
            |s| match s.fields.get(PEER_METADATA.as_str())?.kind.as_ref()? {
                Kind::StructValue(m) => Some(super::from_struct(m)),
                _ => None,
            },
        );
    Parsed::Preface {
        len: HEADER_BYTES + size,
        peer,
    }
}

/// The peer's side of a connection that takes the peer's preface off the front of what it
/// reads, and calls `on_peer` once with the peer it named (`None`: no preface, an unreadable
/// one, or the stream ended first). Writes pass through.
pub struct Exchanged<S, F> {
    io: S,
    /// Bytes read while looking for the preface; what follows the preface is passed on.
    buf: Vec<u8>,
    /// How much of `buf` is consumed (the preface, then what was passed on).
    pos: usize,
    /// Called once the preface is read or known absent; `None` afterwards.
    on_peer: Option<F>,
}

impl<S, F: FnOnce(Option<WorkloadInfo>)> Exchanged<S, F> {
    /// Wraps the peer's stream.
    pub fn new(io: S, on_peer: F) -> Self {
        Exchanged {
            io,
            buf: Vec::new(),
            pos: 0,
            on_peer: Some(on_peer),
        }
    }

    fn resolve(&mut self, peer: Option<WorkloadInfo>) {
        if let Some(f) = self.on_peer.take() {
            f(peer);
        }
    }
}

impl<S: AsyncRead + Unpin, F: FnOnce(Option<WorkloadInfo>) + Unpin> AsyncRead for Exchanged<S, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.on_peer.is_some() {
            match parse(&this.buf) {
                Parsed::NeedMore => {
                    let mut chunk = [0u8; 4096];
                    let mut read = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                    if read.filled().is_empty() {
                        // The stream ended inside (or instead of) a preface: what came is
                        // passed on as data.
                        this.resolve(None);
                    } else {
                        this.buf.extend_from_slice(read.filled());
                    }
                }
                Parsed::NotPreface => this.resolve(None),
                Parsed::Preface { len, peer } => {
                    this.pos = len;
                    this.resolve(peer);
                }
                Parsed::TooLarge(n) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "istio-peer-exchange preface of {n} bytes, over the {MAX_PREFACE_BYTES} bytes read"
                        ),
                    )));
                }
            }
        }
        if this.pos < this.buf.len() {
            let n = out.remaining().min(this.buf.len() - this.pos);
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.buf.len() {
                this.buf = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin, F: Unpin> AsyncWrite for Exchanged<S, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::OwnMetadata;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `peer::tests::reviews` as the exchange carries it (only the labels metrics read).
    fn reviews() -> WorkloadInfo {
        let mut w = crate::peer::tests::reviews();
        w.labels.remove("team");
        w
    }

    #[test]
    fn the_preface_is_istios_header_any_and_struct() {
        let own = OwnMetadata::of(&reviews(), Some("10.0.0.7".parse().unwrap()));
        let p = own.tcp_preface();
        assert_eq!(p[..4], [0x3D, 0x23, 0x04, 0x67]);
        let len = u32::from_be_bytes([p[4], p[5], p[6], p[7]]) as usize;
        assert_eq!(p.len(), 8 + len);
        // Decoded independently of `parse`: an Any holding a Struct with Istio's two keys.
        let any = Any::decode(&p[8..]).unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Struct");
        let s = Struct::decode(any.value.as_slice()).unwrap();
        assert!(matches!(
            s.fields["x-envoy-peer-metadata-id"].kind,
            Some(Kind::StringValue(ref id)) if id == "sidecar~10.0.0.7~reviews-v1-6d8f9c7b5-abcde.bookinfo~bookinfo.svc.cluster.local"
        ));
        let Some(Kind::StructValue(m)) = &s.fields["x-envoy-peer-metadata"].kind else {
            panic!("metadata is a struct: {s:?}")
        };
        assert!(
            matches!(m.fields["WORKLOAD_NAME"].kind, Some(Kind::StringValue(ref w)) if w == "reviews-v1")
        );
        assert_eq!(
            parse(p),
            Parsed::Preface {
                len: p.len(),
                peer: Some(reviews())
            }
        );
    }

    #[test]
    fn partial_foreign_oversized_and_unreadable_prefaces() {
        let own = OwnMetadata::of(&reviews(), None);
        let p = own.tcp_preface();
        for cut in [0, 1, 3, 4, 7, 8, p.len() - 1] {
            assert_eq!(parse(&p[..cut]), Parsed::NeedMore, "{cut} bytes");
        }
        // An app's own bytes: told from the first byte that differs.
        assert_eq!(parse(b"G"), Parsed::NotPreface);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NotPreface);
        assert_eq!(parse(&[0x3D, 0x23, 0x04, 0x68]), Parsed::NotPreface);
        let mut big = MAGIC.to_be_bytes().to_vec();
        big.extend_from_slice(&(MAX_PREFACE_BYTES as u32 + 1).to_be_bytes());
        assert_eq!(parse(&big), Parsed::TooLarge(MAX_PREFACE_BYTES as u32 + 1));
        // The magic and a length, then bytes that are no Any: removed, the peer unknown.
        let mut junk = MAGIC.to_be_bytes().to_vec();
        junk.extend_from_slice(&3u32.to_be_bytes());
        junk.extend_from_slice(&[0xff, 0xff, 0xff, b'x']);
        assert_eq!(
            parse(&junk),
            Parsed::Preface {
                len: 11,
                peer: None
            }
        );
    }

    /// Reads everything through an `Exchanged` fed `chunks` one write at a time.
    async fn through(chunks: Vec<Vec<u8>>) -> (Option<Option<WorkloadInfo>>, io::Result<Vec<u8>>) {
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for c in chunks {
                if tx.write_all(&c).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let mut seen = None;
        let mut ex = Exchanged::new(rx, |p| seen = Some(p));
        let mut out = Vec::new();
        let r = ex.read_to_end(&mut out).await.map(|_| out);
        drop(ex);
        writer.abort();
        (seen, r)
    }

    #[tokio::test]
    async fn the_peers_preface_is_taken_off_and_its_data_passes_whole() {
        let p = OwnMetadata::of(&reviews(), None).tcp_preface().to_vec();
        // The preface in pieces, the data in the same write as its end.
        let (seen, data) = through(vec![
            p[..3].to_vec(),
            p[3..10].to_vec(),
            [&p[10..], b"hello"].concat(),
            b" world".to_vec(),
        ])
        .await;
        assert_eq!(seen, Some(Some(reviews())));
        assert_eq!(data.unwrap(), b"hello world");
        // A peer without the exchange: its bytes pass as they are.
        let (seen, data) = through(vec![b"SSH-2.0-x\r\n".to_vec()]).await;
        assert_eq!(seen, Some(None));
        assert_eq!(data.unwrap(), b"SSH-2.0-x\r\n");
        // A stream that ends inside the magic: what came is data.
        let (seen, data) = through(vec![p[..2].to_vec()]).await;
        assert_eq!(seen, Some(None));
        assert_eq!(data.unwrap(), p[..2]);
        // An oversized announcement ends the connection rather than buffering it.
        let mut big = MAGIC.to_be_bytes().to_vec();
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        let (seen, data) = through(vec![big, vec![0; 1000]]).await;
        assert_eq!(seen, None, "no peer reported");
        assert_eq!(data.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
