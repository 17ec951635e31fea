//! The benchmark's floor: the least a sidecar behind Istio's capture rules can cost.
//!
//! It takes connections on the two capture ports, connects where a sidecar would (outbound: the
//! original destination; inbound: 127.0.0.1 and the original port) and copies bytes both ways in
//! one thread around one epoll set (mio), as an event-loop proxy does: no HTTP, no routing, no
//! metrics, no tasks. Every request still costs what the machine charges any such proxy: the
//! wake-ups, the system calls and the TCP path of both legs. `bench/run` runs it as the `floor`
//! contestant, so a table shows how much of a proxy's CPU and latency is its own work and how
//! much is this floor.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::SockRef;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};

/// Where the relay sends what arrives on a capture port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Port 15001: to the original destination (the relay runs as uid 1337, so its own
    /// connection is not captured again).
    Outbound,
    /// Port 15006: to the application on 127.0.0.1, at the original destination's port.
    Inbound,
}

impl Side {
    /// The address to connect to for a connection whose original destination was `orig`.
    pub fn target(self, orig: SocketAddr) -> SocketAddr {
        match self {
            Side::Outbound => orig,
            Side::Inbound => SocketAddr::from((Ipv4Addr::LOCALHOST, orig.port())),
        }
    }
}

/// Where a redirected connection was going, refusing one that was not redirected (conntrack then
/// reports the listener's own address, and relaying would connect the relay to itself).
fn original_dst(s: &TcpStream) -> io::Result<SocketAddr> {
    let orig = SockRef::from(s)
        .original_dst_v4()?
        .as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))?;
    if orig == s.local_addr()? {
        return Err(io::Error::other(format!(
            "connection to {orig} was not redirected"
        )));
    }
    Ok(orig)
}

/// One direction's receiving socket and what was read for it but not yet written.
struct Half {
    sock: TcpStream,
    pending: Vec<u8>,
    /// Its peer sent end of stream: no more reads from the peer into this half.
    peer_done: bool,
    /// Our write side is shut (after `pending` drained).
    shut: bool,
}

impl Half {
    fn new(sock: TcpStream) -> Self {
        Half {
            sock,
            pending: Vec::new(),
            peer_done: false,
            shut: false,
        }
    }

    /// Writes what is pending; false if the socket is full (it will say when it is writable).
    fn flush(&mut self) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match self.sock.write(&self.pending) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// A captured connection (`down`) and the relay's connection to its destination (`up`).
struct Pair {
    down: Half,
    up: Half,
    connected: bool,
}

/// Copies from `from` into `to` until `from` would block, `to` is full, or `from` ends.
fn pump(from: &mut Half, to: &mut Half, buf: &mut [u8]) -> io::Result<()> {
    if !to.flush()? {
        return Ok(());
    }
    while !to.peer_done {
        match from.sock.read(buf) {
            Ok(0) => to.peer_done = true,
            Ok(n) => {
                to.pending.extend_from_slice(&buf[..n]);
                if !to.flush()? {
                    return Ok(()); // `to` is full: read on when it is writable
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if to.pending.is_empty() && !to.shut {
        to.shut = true;
        let _ = to.sock.shutdown(Shutdown::Write);
    }
    Ok(())
}

impl Pair {
    /// Moves what can move both ways; Ok(false) once both directions have ended.
    fn run(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.connected {
            if let Some(e) = self.up.sock.take_error()? {
                return Err(e);
            }
            match self.up.sock.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        let (down, up) = (&mut self.down, &mut self.up);
        pump(down, up, buf)?;
        pump(up, down, buf)?;
        Ok(!(self.down.shut && self.up.shut))
    }
}

/// The relay: listeners first (tokens `0..listeners.len()`), then two tokens per pair.
pub struct Relay {
    poll: Poll,
    listeners: Vec<(TcpListener, Side)>,
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    buf: Vec<u8>,
}

impl Relay {
    /// Binds every listener now, so a port in use fails at start.
    pub fn bind(ports: &[(SocketAddr, Side)]) -> io::Result<Relay> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        for (i, (addr, side)) in ports.iter().enumerate() {
            let mut l = TcpListener::bind(*addr)?;
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            listeners.push((l, *side));
        }
        Ok(Relay {
            poll,
            listeners,
            pairs: Vec::new(),
            free: Vec::new(),
            buf: vec![0; 64 * 1024],
        })
    }

    /// The bound addresses, in the order given to [`Relay::bind`].
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|(l, _)| l.local_addr()).collect()
    }

    /// Serves until an error of the event loop itself (one connection's error closes only it).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                let t = ev.token().0;
                if t < self.listeners.len() {
                    self.accept(t)?;
                } else {
                    self.drive((t - self.listeners.len()) / 2);
                }
            }
        }
    }

    fn accept(&mut self, i: usize) -> io::Result<()> {
        loop {
            let (down, _) = match self.listeners[i].0.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            let side = self.listeners[i].1;
            if let Err(e) = self.open(down, side) {
                eprintln!("testapp relay: {side:?} connection: {e}");
            }
        }
    }

    fn open(&mut self, mut down: TcpStream, side: Side) -> io::Result<()> {
        let orig = original_dst(&down)?;
        let mut up = TcpStream::connect(side.target(orig))?;
        down.set_nodelay(true)?;
        up.set_nodelay(true)?;
        let k = self.free.pop().unwrap_or_else(|| {
            self.pairs.push(None);
            self.pairs.len() - 1
        });
        let base = self.listeners.len() + 2 * k;
        let both = Interest::READABLE | Interest::WRITABLE;
        let reg = self.poll.registry();
        reg.register(&mut down, Token(base), both)?;
        reg.register(&mut up, Token(base + 1), both)?;
        self.pairs[k] = Some(Pair {
            down: Half::new(down),
            up: Half::new(up),
            connected: false,
        });
        Ok(())
    }

    fn drive(&mut self, k: usize) {
        let Some(pair) = self.pairs.get_mut(k).and_then(Option::as_mut) else {
            return; // an event for a pair closed earlier in this batch
        };
        match pair.run(&mut self.buf) {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => {
                let _ = pair.down.sock.shutdown(Shutdown::Both);
                let _ = pair.up.sock.shutdown(Shutdown::Both);
            }
        }
        if let Some(mut pair) = self.pairs[k].take() {
            let reg = self.poll.registry();
            let _ = reg.deregister(&mut pair.down.sock);
            let _ = reg.deregister(&mut pair.up.sock);
            self.free.push(k);
        }
    }
}

/// Accept errors that concern one connection, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_goes_to_loopback_at_the_original_port() {
        let orig: SocketAddr = "10.1.2.3:9080".parse().unwrap();
        assert_eq!(
            Side::Inbound.target(orig),
            "127.0.0.1:9080".parse().unwrap()
        );
        assert_eq!(Side::Outbound.target(orig), orig);
    }

    #[test]
    fn a_connection_without_capture_is_refused_not_relayed() {
        // No REDIRECT rule: SO_ORIGINAL_DST fails, or names the listener itself (conntrack).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (down, _) = l.accept().unwrap();
        assert!(original_dst(&TcpStream::from_std(down)).is_err());
    }

    fn stream(addr: SocketAddr) -> TcpStream {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        TcpStream::from_std(s)
    }

    /// Two connected non-blocking halves of a pair over loopback, and the far ends.
    fn pair() -> (Pair, std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let down = stream(l.local_addr().unwrap());
        let (client, _) = l.accept().unwrap();
        let up = stream(l.local_addr().unwrap());
        let (server, _) = l.accept().unwrap();
        let p = Pair {
            down: Half::new(down),
            up: Half::new(up),
            connected: false,
        };
        (p, client, server)
    }

    /// Runs the pair until `done` says so (a test of logic: no event loop, just retries).
    fn run_until(p: &mut Pair, mut done: impl FnMut() -> bool) -> bool {
        let mut buf = vec![0; 1024];
        for _ in 0..2000 {
            let open = p.run(&mut buf).unwrap();
            if done() || !open {
                return open;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no progress");
    }

    #[test]
    fn bytes_cross_both_ways_and_end_of_stream_is_passed_on() {
        let (mut p, mut client, mut server) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        run_until(&mut p, || {
            let mut b = [0; 64];
            match server.read(&mut b) {
                Ok(0) => true, // the client's end of stream arrived after its bytes
                Ok(n) => {
                    got.extend_from_slice(&b[..n]);
                    false
                }
                Err(_) => false,
            }
        });
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        let open = run_until(&mut p, || false);
        assert!(!open, "both directions ended: the pair closes");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn a_full_receiver_holds_the_rest_until_it_drains() {
        let (mut p, mut client, mut server) = pair();
        // More than the loopback socket buffers hold: the relay must keep what it cannot write.
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| i as u8).collect();
        let sender = std::thread::spawn(move || {
            client.write_all(&data).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            data
        });
        server.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        run_until(&mut p, || {
            let mut b = vec![0; 256 * 1024];
            loop {
                match server.read(&mut b) {
                    Ok(0) => return true,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                    Err(_) => return false,
                }
            }
        });
        assert!(got == sender.join().unwrap(), "every byte, in order");
    }
}
