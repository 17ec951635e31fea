//! Test support: "pods" made of network namespaces, to prove capture with real iptables.
//!
//! A [`Net`] is a bridge in a namespace of its own plus pods, each a namespace joined to the
//! bridge by a veth pair: `lo` up, an address in `10.211.<n>.0/24` (and `fd00:211:<n>::/64` for
//! dual-stack nets), a default route via the bridge. Nothing is created in the host's namespace
//! but the namespaces' names, which are unique per process and net, and everything is deleted on
//! drop, also when a test panics. Traffic never leaves these namespaces.
//!
//! Programs run in a pod with `ip netns exec`; the capture step is the real `proxy` binary. Tests
//! listen in a pod from this process: a thread joins the pod's namespace (`setns` changes only
//! the calling thread) and binds there; the socket stays in that namespace.
//!
//! [`sidecar`] adds the real `proxy run` in a pod, and servers and clients on in-namespace threads.
//!
//! Everything needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), `ip`, `iptables-restore`,
//! `iptables-save`, `setpriv`, `bash` and `timeout`. Without them [`skip`] says why and the
//! tests return early; `RUSTMESH_REQUIRE_NETNS=1` turns that into a failure (for CI).

#![allow(dead_code)] // Each test file uses a part.

pub mod docs;
pub mod sidecar;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustmesh_proxy::socket::OrigDst;

/// The arguments Istio's injector gives `istio-init` (seed 004).
pub const ISTIO_INIT_ARGS: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// The uid an app runs as in these tests (any uid but the proxy's).
pub const APP_UID: u32 = 1000;
/// The proxy's uid and gid.
pub const PROXY_UID: u32 = rustmesh_xds::well_known::PROXY_UID;

/// How long to wait for something that should happen (not a timing assertion: a guard against
/// hanging forever when it does not).
const PATIENCE: Duration = Duration::from_secs(20);

/// True (after saying why) when network namespaces cannot be used here: the test returns early.
pub fn skip() -> bool {
    match skip_reason() {
        Some(reason) => {
            eprintln!("skipping: {reason}");
            true
        }
        None => false,
    }
}

/// Why network-namespace tests cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    let reason = REASON.get_or_init(probe).clone();
    if let Some(reason) = &reason
        && std::env::var_os("RUSTMESH_REQUIRE_NETNS").is_some()
    {
        panic!("RUSTMESH_REQUIRE_NETNS is set, but network namespace tests cannot run: {reason}");
    }
    reason
}

fn probe() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces and iptables need root)".into());
    }
    for program in [
        "ip",
        "iptables-restore",
        "iptables-save",
        "setpriv",
        "bash",
        "timeout",
        "python3",
    ] {
        if which(program).is_none() {
            return Some(format!("`{program}` is not installed (or not on PATH)"));
        }
    }
    let name = format!("rmprobe{}", std::process::id());
    let out = Command::new("ip").args(["netns", "add", &name]).output();
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    match out {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Some(format!("cannot run `ip`: {err}")),
    }
}

/// `program` on `PATH` (or in the sbin directories, which non-root users often lack).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Runs `argv`, panicking with its output if it fails.
pub fn run_ok(argv: &[&str]) -> Output {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Self {
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend(args);
        run_ok(&argv);
    }

    /// Runs `f` on a thread that has joined this namespace, and returns its result.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the namespace panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // `ip netns exec` bind-mounts files from here (see `Pod::resolv_conf`).
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
        // Deleting the namespace deletes its veths (and so their peers) and bridge.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A bridge in its own namespace, and the pods on it.
pub struct Net {
    prefix: String,
    subnet: u8,
    dual_stack: bool,
    pods: usize,
    bridge: Netns,
}

static NETS: AtomicUsize = AtomicUsize::new(0);

impl Net {
    /// An IPv4 net.
    pub fn new() -> Self {
        Self::create(false)
    }

    /// A net whose pods also have IPv6 addresses.
    pub fn dual_stack() -> Self {
        Self::create(true)
    }

    fn create(dual_stack: bool) -> Self {
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("rm{}n{n}", std::process::id());
        let subnet = (n % 250) as u8;
        let bridge = Netns::create(format!("{prefix}br"));
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&[
            "addr",
            "add",
            &format!("10.211.{subnet}.1/24"),
            "dev",
            "br0",
        ]);
        if dual_stack {
            bridge.ip(&[
                "addr",
                "add",
                &format!("fd00:211:{subnet}::1/64"),
                "dev",
                "br0",
                "nodad",
            ]);
        }
        bridge.ip(&["link", "set", "br0", "up"]);
        Self {
            prefix,
            subnet,
            dual_stack,
            pods: 0,
            bridge,
        }
    }

    /// A new pod on this net.
    pub fn pod(&mut self) -> Pod {
        let index = self.pods;
        self.pods += 1;
        let host = 10 + index as u8;
        let ns = Netns::create(format!("{}p{index}", self.prefix));
        let peer = format!("v{index}");
        run_ok(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.bridge.name,
        ]);
        self.bridge.ip(&["link", "set", &peer, "master", "br0"]);
        self.bridge.ip(&["link", "set", &peer, "up"]);
        let ip = Ipv4Addr::new(10, 211, self.subnet, host);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        let ip6 = self.dual_stack.then(|| {
            let ip6: Ipv6Addr = format!("fd00:211:{}::{host:x}", self.subnet)
                .parse()
                .unwrap();
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
            ip6
        });
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("10.211.{}.1", self.subnet),
        ]);
        if self.dual_stack {
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:211:{}::1", self.subnet),
            ]);
        }
        Pod { ns, ip, ip6 }
    }

    /// An address on this net that nobody has (traffic to it only arrives if it is captured).
    pub fn nobody(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 211, self.subnet, 200)
    }
}

/// A pod: a namespace with an address on the net.
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
}

/// Who runs a program in a pod.
#[derive(Debug, Clone, Copy)]
pub enum As {
    /// The app: [`APP_UID`], its own group.
    App,
    /// The proxy: uid and gid 1337.
    Proxy,
    /// The proxy's uid only (the app's gid): the uid rules alone must let it through.
    ProxyUser,
    /// The proxy's gid only (the app's uid): the gid rules alone must let it through.
    ProxyGroup,
}

impl Pod {
    /// `ip netns exec <pod> <argv>`, as root.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(argv)
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {argv:?}: {e}"))
    }

    /// Runs the real `proxy istio-iptables <flags>` in this pod.
    pub fn istio_iptables(&self, flags: &[&str]) -> Output {
        let mut argv = vec![env!("CARGO_BIN_EXE_proxy"), "istio-iptables"];
        argv.extend(flags);
        self.exec(&argv)
    }

    /// [`Pod::istio_iptables`] with environment variables.
    pub fn istio_iptables_env(&self, flags: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns.name,
            env!("CARGO_BIN_EXE_proxy"),
            "istio-iptables",
        ])
        .args(flags)
        .env_remove("RUST_LOG");
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("istio-iptables {flags:?}: {e}"))
    }

    /// [`Pod::istio_iptables`], which must succeed.
    pub fn capture(&self, flags: &[&str]) {
        let out = self.istio_iptables(flags);
        assert!(
            out.status.success(),
            "proxy istio-iptables {flags:?} failed in {}: {}",
            self.ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `iptables-save -t nat` (or ip6tables) of this pod.
    pub fn nat_table(&self, v6: bool) -> String {
        self.table("nat", v6)
    }

    /// `iptables-save -t <table>` (or ip6tables) of this pod.
    pub fn table(&self, table: &str, v6: bool) -> String {
        let out = self.exec(&[
            if v6 {
                "ip6tables-save"
            } else {
                "iptables-save"
            },
            "-t",
            table,
        ]);
        assert!(
            out.status.success(),
            "iptables-save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Gives this pod its own `/etc/resolv.conf`: `ip netns exec` bind-mounts
    /// `/etc/netns/<pod>/resolv.conf` over it for every program run in the pod.
    pub fn resolv_conf(&self, content: &str) {
        let dir = Path::new("/etc/netns").join(&self.ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), content).unwrap();
    }

    /// The IPv4 addresses a DNS server at `server` (UDP, port 53) answers for `name` (an A
    /// query sent from inside this pod, so capture rules may hand it to the DNS proxy).
    pub fn resolve_a(&self, server: &str, name: &str) -> Vec<String> {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RData, RecordType};
        let mut q = Message::new(4242, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let bytes = q.to_vec().unwrap();
        let server = SocketAddr::new(server.parse().unwrap(), 53);
        let answer = self.ns.enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(&bytes, server).unwrap();
            let mut buf = [0u8; 1500];
            let (n, _) = s.recv_from(&mut buf).expect("an answer to the DNS query");
            buf[..n].to_vec()
        });
        Message::from_vec(&answer)
            .unwrap()
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Sends `token` in a UDP datagram from source port `sport` to `dst`, as `who` (Python,
    /// since bash cannot choose the source port).
    pub fn send_udp_from(&self, who: As, sport: u16, dst: SocketAddr, token: &str) {
        let script = format!(
            "exec python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"0.0.0.0\", {sport})); \
             s.sendto(b\"{token}\\n\", (\"{}\", {}))'",
            dst.ip(),
            dst.port()
        );
        let out = self.bash_as(who, &script);
        assert!(
            out.status.success(),
            "{who:?} could not send {token} from port {sport} to {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a bash snippet as `who` (with `setpriv`), bounded by `timeout`.
    pub fn bash_as(&self, who: As, script: &str) -> Output {
        let (uid, gid) = match who {
            As::App => (APP_UID, APP_UID),
            As::Proxy => (PROXY_UID, PROXY_UID),
            As::ProxyUser => (PROXY_UID, APP_UID),
            As::ProxyGroup => (APP_UID, PROXY_UID),
        };
        let (uid, gid) = (uid.to_string(), gid.to_string());
        self.exec(&[
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &gid,
            "--clear-groups",
            "timeout",
            "20",
            "bash",
            "-c",
            script,
        ])
    }

    /// Opens a TCP connection to `dst` as `who` and sends `token` and a newline.
    pub fn send_tcp(&self, who: As, dst: SocketAddr, token: &str) {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{} && printf '%s\\n' {token} >&3",
            dst.ip(),
            dst.port()
        );
        let out = self.bash_as(who, &script);
        assert!(
            out.status.success(),
            "{who:?} in {} could not send {token} to {dst}: {}",
            self.ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sends `token` and a newline in a UDP datagram to `dst`, as `who`.
    pub fn send_udp(&self, who: As, dst: SocketAddr, token: &str) {
        let script = format!(
            "printf '%s\\n' {token} >/dev/udp/{}/{}",
            dst.ip(),
            dst.port()
        );
        let out = self.bash_as(who, &script);
        assert!(
            out.status.success(),
            "{who:?} could not send {token} to {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Listens for TCP on `addr` in this pod.
    pub fn listen_tcp(&self, addr: &str) -> Listener {
        let addr: SocketAddr = addr.parse().unwrap();
        let socket = self.ns.enter(move || TcpListener::bind(addr));
        let socket = socket.unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.ns.name));
        Listener::tcp(format!("{}/tcp {addr}", self.ns.name), socket)
    }

    /// Listens for TCP on `addr` in this pod with `IP_TRANSPARENT`, as a TPROXY listener must:
    /// a connection's local address is then where the client was going.
    pub fn listen_tcp_transparent(&self, addr: &str) -> Listener {
        let addr: SocketAddr = addr.parse().unwrap();
        let socket = self.ns.enter(move || -> std::io::Result<TcpListener> {
            let domain = socket2::Domain::for_address(addr);
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            if addr.is_ipv4() {
                s.set_ip_transparent_v4(true)?;
            } else {
                s.set_ip_transparent_v6(true)?;
            }
            s.bind(&addr.into())?;
            s.listen(64)?;
            Ok(s.into())
        });
        let socket =
            socket.unwrap_or_else(|e| panic!("bind {addr} (transparent) in {}: {e}", self.ns.name));
        Listener::tcp(format!("{}/tcp {addr} (transparent)", self.ns.name), socket)
    }

    /// Receives UDP on `addr` in this pod.
    pub fn listen_udp(&self, addr: &str) -> Listener {
        let addr: SocketAddr = addr.parse().unwrap();
        let socket = self.ns.enter(move || UdpSocket::bind(addr));
        let socket = socket.unwrap_or_else(|e| panic!("bind udp {addr} in {}: {e}", self.ns.name));
        Listener::udp(format!("{}/udp {addr}", self.ns.name), socket)
    }

    /// `addr:port` of this pod.
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port)
    }

    /// `[addr6]:port` of this pod (dual-stack nets only).
    pub fn at6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6.expect("a dual-stack pod")), port)
    }
}

/// What a listener received: one connection (TCP) or datagram (UDP).
#[derive(Debug, Clone)]
pub struct Received {
    /// The first line the client sent.
    pub token: String,
    /// The client's address.
    pub client: SocketAddr,
    /// Where the listener is bound.
    pub local: SocketAddr,
    /// `original_dst()` of the accepted connection (TCP only).
    pub orig_dst: Option<Result<SocketAddr, String>>,
}

/// A listener running on its own thread, stopped on drop. Records everything it receives.
pub struct Listener {
    name: String,
    received: Receiver<Received>,
    seen: std::cell::RefCell<Vec<Received>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn tcp(name: String, socket: TcpListener) -> Self {
        socket.set_nonblocking(true).unwrap();
        Self::spawn(name, move |tx, stop| {
            while !stop.load(Ordering::SeqCst) {
                let (stream, client) = match socket.accept() {
                    Ok(conn) => conn,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                let orig_dst = Some(
                    stream
                        .orig_dst_addr()
                        .map(SocketAddr::from)
                        .map_err(|e| e.to_string()),
                );
                let local = stream.local_addr().unwrap();
                let mut token = String::new();
                let _ = BufReader::new(&stream).read_line(&mut token);
                let token = token.trim().to_string();
                if tx
                    .send(Received {
                        token,
                        client,
                        local,
                        orig_dst,
                    })
                    .is_err()
                {
                    return;
                }
            }
        })
    }

    fn udp(name: String, socket: UdpSocket) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Self::spawn(name, move |tx, stop| {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                let Ok((n, client)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let token = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                let local = socket.local_addr().unwrap();
                if tx
                    .send(Received {
                        token,
                        client,
                        local,
                        orig_dst: None,
                    })
                    .is_err()
                {
                    return;
                }
            }
        })
    }

    fn spawn(
        name: String,
        serve: impl FnOnce(mpsc::Sender<Received>, Arc<AtomicBool>) + Send + 'static,
    ) -> Self {
        let (tx, received) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || serve(tx, stop)
        });
        Self {
            name,
            received,
            seen: Default::default(),
            stop,
            thread: Some(thread),
        }
    }

    fn drain(&self) {
        self.seen.borrow_mut().extend(self.received.try_iter());
    }

    /// Waits until `token` arrives, and returns what was received with it.
    pub fn expect(&self, token: &str) -> Received {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(r) = self.seen.borrow().iter().find(|r| r.token == token) {
                return r.clone();
            }
            match self
                .received
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(r) => self.seen.borrow_mut().push(r),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: {token} never arrived; received: {:#?}",
                        self.name,
                        self.seen.borrow()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!("{}: listener stopped", self.name),
            }
        }
    }

    /// Whether `token` has arrived so far.
    pub fn has_seen(&self, token: &str) -> bool {
        self.drain();
        self.seen.borrow().iter().any(|r| r.token == token)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `-A` rules of the `*nat` section of `iptables-save` output, by chain, chains in the
/// order given; the order of chains differs between iptables backends, the order within one
/// does not.
pub fn rules_by_chain(save: &str, chains: &[&str]) -> Vec<String> {
    let rules: Vec<&str> = save.lines().filter(|l| l.starts_with("-A ")).collect();
    chains
        .iter()
        .flat_map(|chain| {
            let prefix = format!("-A {chain} ");
            rules
                .iter()
                .filter(move |r| r.starts_with(&prefix))
                .map(|r| r.to_string())
        })
        .collect()
}

/// The `*<table>` block (up to its `COMMIT`) of `iptables-save` output or a restore document;
/// empty when the table is not there.
pub fn table_block(doc: &str, table: &str) -> String {
    let Some(start) = doc.find(&format!("*{table}\n")) else {
        return String::new();
    };
    let rest = &doc[start..];
    let end = rest
        .find("COMMIT\n")
        .map_or(rest.len(), |at| at + "COMMIT\n".len());
    rest[..end].to_string()
}

/// The names of the user-defined chains in `iptables-save` output.
pub fn user_chains(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter(|l| l.split_whitespace().nth(1) == Some("-"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}
