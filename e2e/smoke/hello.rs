//! A tiny static test binary for proving the local cluster (std only; built with plain `rustc`).
//!
//!   hello serve PORT        HTTP/1.0 server answering "hello from $HOSTNAME"
//!   hello get HOST:PORT     one GET /, prints the answer
//!   hello connect HOST:PORT TCP connect only (e.g. the API server's ClusterIP)
//!   hello sleep             wait forever (a pod to `kubectl exec` into)
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "serve" => serve(&arg(2)),
        "get" => get(&arg(2)),
        "connect" => connect(&arg(2)),
        _ => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

fn addr(target: &str) -> std::net::SocketAddr {
    match target.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => fail(&format!("bad address {target:?}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("hello: {msg}");
    std::process::exit(1)
}

fn serve(port: &str) {
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))
        .unwrap_or_else(|e| fail(&format!("bind {port}: {e}")));
    println!("listening on {port}");
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let body = format!("hello from {host}\n");
        let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        println!("answered {peer}");
    }
}

fn get(target: &str) {
    let mut s = TcpStream::connect_timeout(&addr(target), Duration::from_secs(5))
        .unwrap_or_else(|e| fail(&format!("connect {target}: {e}")));
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(s, "GET / HTTP/1.0\r\n\r\n").unwrap_or_else(|e| fail(&format!("write: {e}")));
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| fail(&format!("read: {e}")));
    match out.split_once("\r\n\r\n") {
        Some((_, body)) => print!("{body}"),
        None => fail(&format!("not HTTP: {out:?}")),
    }
}

fn connect(target: &str) {
    TcpStream::connect_timeout(&addr(target), Duration::from_secs(5))
        .unwrap_or_else(|e| fail(&format!("connect {target}: {e}")));
    println!("connected to {target}");
}
