//! Sidecars in pods: the real `proxy run` as uid 1337 in a pod's namespace (as the webhook
//! injects it), and the peers it talks to, all made of plain threads in this process.
//!
//! Apps and servers are not the `testapp` binary: binaries of other crates are not built for
//! this crate's tests (`CARGO_BIN_EXE_*` only names our own), and building one from a test would
//! fight over the cargo lock. Instead, like ztunnel's namespace tests, each server or client
//! runs on a thread that joined the pod's namespace: a socket made there stays there. A client
//! thread runs as root, and root's traffic is captured like any app's (only uid/gid 1337 is
//! exempt).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Netns, PATIENCE, PROXY_UID, Pod};

/// How long a client waits on one connection (a guard, not an expectation).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl Netns {
    /// Runs `f` on a new thread in this namespace, without waiting for it.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

/// A directory the proxy (uid 1337) can read, removed on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rustmesh-sidecar-")
            .tempdir()
            .unwrap();
        set_mode(dir.path(), 0o755);
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` atomically (write aside, rename), as kubelet swaps ConfigMap files.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        set_mode(&tmp, 0o644);
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A `proxy run` process in a pod, killed on drop.
pub struct Sidecar {
    ns: String,
    child: Option<Child>,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Pod {
    /// Starts `proxy run --config <config> <extra...>` in this pod as uid/gid 1337, and waits
    /// until it answers on its admin port (not until it is ready: see [`Sidecar::wait_ready`]).
    pub fn start_sidecar(&self, scratch: &Scratch, config: &Path, extra: &[&str]) -> Sidecar {
        self.start_sidecar_with_env(scratch, config, extra, &[])
    }

    /// [`Pod::start_sidecar`] with environment variables (Istio's `proxyMetadata`).
    pub fn start_sidecar_with_env(
        &self,
        scratch: &Scratch,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Sidecar {
        let log = scratch.path(&format!("proxy-{}.log", self.ns.name));
        let stderr = File::create(&log).unwrap();
        // TPROXY needs CAP_NET_ADMIN for its transparent listener: Istio's template then runs
        // the sidecar as root with group 1337 (the capture rules exempt the group).
        let tproxy = env
            .iter()
            .any(|(k, v)| *k == "ISTIO_META_INTERCEPTION_MODE" && *v == "TPROXY");
        let gid = PROXY_UID.to_string();
        let uid = if tproxy { "0".to_string() } else { gid.clone() };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args([
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &gid,
                "--clear-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_proxy"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--config-poll-interval", "100ms"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("POD_NAME", "client-v1-5d9f7c6b8d-x2x7q")
            .env("POD_NAMESPACE", "default")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the proxy");
        let sidecar = Sidecar {
            ns: self.ns.name.clone(),
            child: Some(child),
            log,
            exited: None,
        };
        let deadline = Instant::now() + PATIENCE;
        while self.admin_get("/ready").is_err() {
            assert!(
                Instant::now() < deadline,
                "the proxy in {} never answered on 15000; its log:\n{}",
                self.ns.name,
                sidecar.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sidecar
    }

    /// `GET 127.0.0.1:15000<path>` in this pod: (status, body).
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.http_get(SocketAddr::from(([127, 0, 0, 1], 15000)), path)
    }

    /// `GET <addr><path>` from this pod: (status, body).
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
        let path = path.to_string();
        self.ns.enter(move || http_get(addr, &path))
    }

    /// [`http_request`] from this pod (as root: an app's request).
    pub fn http_request(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let (method, path) = (method.to_string(), path.to_string());
        self.ns.enter(move || http_request(&method, addr, &path))
    }

    /// Connects from this pod (as root: captured like an app) to `dst`, sends `line`, and
    /// returns the first line of the answer.
    pub fn talk(&self, dst: SocketAddr, line: &str) -> std::io::Result<String> {
        let line = line.to_string();
        self.ns.enter(move || {
            let mut c = Client::connect(dst)?;
            c.ask(&line)
        })
    }

    /// Serves TCP on `addr` in this pod as `name` (see [`Server`]).
    pub fn serve(&self, addr: &str, name: &str) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        let socket = self.ns.enter(move || TcpListener::bind(addr));
        let socket = socket.unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.ns.name));
        Server::spawn(name.to_string(), socket)
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request("GET", addr, path)
}

/// A plain HTTP/1.1 request without a body, with `Connection: close`: status and body.
pub fn http_request(method: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {out:?}")))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
}

impl Sidecar {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// What the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let deadline = Instant::now() + PATIENCE;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy in {} did not exit; its log:\n{}",
                self.ns,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.exited.is_none()
            && self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `pod`'s admin API says `check` about `path`, or fails with the sidecar's log.
pub fn eventually(
    pod: &Pod,
    sidecar: &Sidecar,
    path: &str,
    what: &str,
    check: impl Fn(u16, &str) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    while Instant::now() < deadline {
        match pod.admin_get(path) {
            Ok((status, body)) if check(status, &body) => return,
            other => last = Some(other),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{what}: {path} never did; last answer {last:?}; the proxy's log:\n{}",
        sidecar.log()
    );
}

/// A client connection (std, blocking, with timeouts).
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(dst: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    /// Sends `line` and a newline, returns the answer's first line (an error if the
    /// connection closes first).
    pub fn ask(&mut self, line: &str) -> std::io::Result<String> {
        writeln!(self.stream, "{line}")?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed without an answer",
            ));
        }
        Ok(answer.trim_end().to_string())
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Half-closes: no more bytes from us.
    pub fn shutdown_write(&self) -> std::io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// Everything until the other side closes.
    pub fn read_to_end(&mut self) -> std::io::Result<String> {
        let mut out = String::new();
        self.reader.read_to_string(&mut out)?;
        Ok(out)
    }
}

/// One connection a [`Server`] saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The client address as the server sees it.
    pub peer: SocketAddr,
    /// The first line it sent.
    pub first_line: String,
}

/// A TCP server on its own thread, stopped on drop. Each connection: read a line `L`, answer
/// `<name> L`, then echo every byte until the client half-closes, then write `bye <n>` (`n`
/// the bytes echoed) and close. Answering after the client's EOF proves half-close survives
/// the proxies.
pub struct Server {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(name: String, socket: TcpListener) -> Server {
        socket.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (name, seen, stop) = (name.clone(), seen.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    let (stream, peer) = match socket.accept() {
                        Ok(c) => c,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(e) => panic!("accept: {e}"),
                    };
                    let (name, seen) = (name.clone(), seen.clone());
                    std::thread::spawn(move || serve_one(&name, stream, peer, &seen));
                }
            }
        });
        Server {
            name,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The connection whose first line was `line`, if any.
    pub fn saw(&self, line: &str) -> Option<Seen> {
        self.seen().into_iter().find(|s| s.first_line == line)
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn serve_one(name: &str, stream: TcpStream, peer: SocketAddr, seen: &Mutex<Vec<Seen>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let line = line.trim_end().to_string();
    seen.lock().unwrap().push(Seen {
        peer,
        first_line: line.clone(),
    });
    if writeln!(writer, "{name} {line}").is_err() {
        return;
    }
    let mut echoed = 0usize;
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                echoed += n;
                if writer.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = writeln!(writer, "bye {echoed}");
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
