//! Where a captured connection was going.
//!
//! The capture rules `REDIRECT` the app's connections to the sidecar's 15001/15006 listeners;
//! the kernel remembers the destination the app asked for, and `SO_ORIGINAL_DST` reads it back.
//! The address types follow linkerd2-proxy: a bare `SocketAddr` does not say whose address it
//! is, an [`OrigDstAddr`] or a [`ClientAddr`] does.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// The destination a connection had before the capture rules redirected it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

/// The peer (client) address of an accepted connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<OrigDstAddr> for SocketAddr {
    fn from(addr: OrigDstAddr) -> Self {
        addr.0
    }
}

impl From<ClientAddr> for SocketAddr {
    fn from(addr: ClientAddr) -> Self {
        addr.0
    }
}

/// An accepted connection that can say who opened it and where it was going. Listeners take
/// this rather than a socket, so tests can hand them a fake.
pub trait OrigDst {
    /// Where the client wanted to go (before redirection).
    fn orig_dst_addr(&self) -> io::Result<OrigDstAddr>;
    /// Who the client is.
    fn client_addr(&self) -> io::Result<ClientAddr>;
}

impl OrigDst for std::net::TcpStream {
    fn orig_dst_addr(&self) -> io::Result<OrigDstAddr> {
        original_dst(self).map(OrigDstAddr)
    }
    fn client_addr(&self) -> io::Result<ClientAddr> {
        self.peer_addr().map(ClientAddr)
    }
}

impl OrigDst for tokio::net::TcpStream {
    fn orig_dst_addr(&self) -> io::Result<OrigDstAddr> {
        original_dst(self).map(OrigDstAddr)
    }
    fn client_addr(&self) -> io::Result<ClientAddr> {
        self.peer_addr().map(ClientAddr)
    }
}

/// A connection whose addresses are given, for tests of code that takes an [`OrigDst`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FixedAddrs {
    /// Returned by [`OrigDst::orig_dst_addr`].
    pub orig_dst: OrigDstAddr,
    /// Returned by [`OrigDst::client_addr`].
    pub client: ClientAddr,
}

impl OrigDst for FixedAddrs {
    fn orig_dst_addr(&self) -> io::Result<OrigDstAddr> {
        Ok(self.orig_dst)
    }
    fn client_addr(&self) -> io::Result<ClientAddr> {
        Ok(self.client)
    }
}

/// The original destination of a redirected TCP connection (`SO_ORIGINAL_DST`), for IPv4
/// (`SOL_IP`) and IPv6 (`SOL_IPV6`, `IP6T_SO_ORIGINAL_DST`) sockets. An IPv4 client accepted on
/// a dual-stack IPv6 socket (`::ffff:a.b.c.d`) is asked over `SOL_IP`, where its conntrack entry is.
///
/// Takes any socket (`std` or `tokio` `TcpStream`). Fails with `ENOENT` when the kernel has no
/// translation for the connection (it was not redirected and conntrack does not track it).
#[cfg(target_os = "linux")]
pub fn original_dst<S: std::os::fd::AsFd>(stream: &S) -> io::Result<SocketAddr> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
    };

    let fd = stream.as_fd();
    let local: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    let ipv4 = || -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(SockaddrIn::from(getsockopt(
            &fd,
            sockopt::OriginalDst,
        )?)))
    };
    let ipv6 = || -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(SockaddrIn6::from(getsockopt(
            &fd,
            sockopt::Ip6tOriginalDst,
        )?)))
    };
    if local.as_sockaddr_in().is_some() {
        return ipv4();
    }
    match local.as_sockaddr_in6() {
        Some(sin6) if sin6.ip().to_ipv4_mapped().is_some() => ipv4().or_else(|_| ipv6()),
        Some(_) => ipv6(),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "SO_ORIGINAL_DST needs an IPv4 or IPv6 socket, not family {:?}",
                local.family()
            ),
        )),
    }
}

/// `SO_ORIGINAL_DST` exists only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn original_dst<S>(_stream: &S) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_ORIGINAL_DST is only available on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn describe(conn: &impl OrigDst) -> String {
        format!(
            "{} -> {}",
            conn.client_addr().unwrap(),
            conn.orig_dst_addr().unwrap()
        )
    }

    #[test]
    fn code_that_takes_orig_dst_can_be_given_a_fake() {
        let fake = FixedAddrs {
            orig_dst: OrigDstAddr("10.0.0.2:8080".parse().unwrap()),
            client: ClientAddr("10.0.0.1:40000".parse().unwrap()),
        };
        assert_eq!(describe(&fake), "10.0.0.1:40000 -> 10.0.0.2:8080");
    }

    /// Without a redirect the kernel either has no translation (no conntrack) or reports the
    /// address the client connected to. It never reports anything else, and never panics.
    #[test]
    fn unredirected_connection_has_no_other_original_dst() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = TcpListener::bind(bind) else {
                eprintln!("skipping {bind}: cannot bind (no IPv6?)");
                continue;
            };
            let addr = listener.local_addr().unwrap();
            let _client = TcpStream::connect(addr).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            match original_dst(&accepted) {
                Ok(dst) => assert_eq!(dst, addr),
                Err(err) => assert!(
                    err.raw_os_error().is_some() || err.kind() == io::ErrorKind::Unsupported,
                    "{err}"
                ),
            }
            assert_eq!(
                accepted
                    .orig_dst_addr()
                    .ok()
                    .map(SocketAddr::from)
                    .unwrap_or(addr),
                addr
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn not_a_tcp_socket() {
        let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let err = original_dst(&sock).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
