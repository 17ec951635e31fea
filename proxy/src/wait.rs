//! The sidecar's small HTTP clients, run by the webhook's lifecycle hooks:
//!
//! * `proxy wait`: blocks until the sidecar is ready (Istio's `pilot-agent wait`). The webhook
//!   runs it as the sidecar's `postStart` hook when `holdApplicationUntilProxyStarts` is on, so
//!   the app containers start only once the proxy answers `GET /healthz/ready` with 200. Flags
//!   have Istio's names (`--timeoutSeconds`, `--requestTimeoutMillis`, `--periodMillis`,
//!   `--url`) as aliases of the kebab-case ones.
//! * `proxy request [--debug-port N] METHOD PATH [BODY]`: one request to a port of the sidecar
//!   on localhost (Istio's `pilot-agent request`, with its arguments). The webhook runs
//!   `proxy request --debug-port=15020 POST drain` as a native sidecar's `preStop` hook, as
//!   Istio's template does, so the sidecar starts draining when the pod starts shutting down
//!   (the status port's `POST /drain`, `crate::status`). The answer's body goes to standard
//!   output; an answer other than 2xx, or none, is an error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Flags of `proxy wait`.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// The readiness URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:15021/healthz/ready")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(
        long = "timeout-seconds",
        alias = "timeoutSeconds",
        default_value_t = 60
    )]
    pub timeout_seconds: u64,
    /// Timeout of each request, in milliseconds.
    #[arg(
        long = "request-timeout-millis",
        alias = "requestTimeoutMillis",
        default_value_t = 500
    )]
    pub request_timeout_millis: u64,
    /// Pause between requests, in milliseconds.
    #[arg(long = "period-millis", alias = "periodMillis", default_value_t = 100)]
    pub period_millis: u64,
}

/// Flags of `proxy request` (Istio's `pilot-agent request`).
#[derive(Debug, Clone, clap::Args)]
pub struct RequestArgs {
    /// The HTTP method (`GET`, `POST`, ...).
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// The path, with or without its leading `/` (`drain`, `/stats?usedonly`).
    #[arg(value_name = "PATH")]
    pub path: String,
    /// A body to send (none by default).
    #[arg(value_name = "BODY")]
    pub body: Option<String>,
    /// The port on 127.0.0.1: 15000, the admin port, as Istio's default (its Envoy admin); the
    /// status port (15020) serves `/drain` and `/quitquitquit`.
    #[arg(long = "debug-port", value_name = "PORT", default_value_t = 15000)]
    pub debug_port: u16,
    /// Give up after this many seconds.
    #[arg(long = "timeout-seconds", default_value_t = 10)]
    pub timeout_seconds: u64,
}

/// Sends the request and copies the answer's body to `out`: Ok on a 2xx answer, else an error
/// naming the request, the status and the body.
pub fn request(args: &RequestArgs, out: &mut impl Write) -> Result<()> {
    let method = &args.method;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Error::InvalidFlag {
            flag: "METHOD",
            value: method.clone(),
            reason: "not an HTTP method (GET, POST, ...)".into(),
        });
    }
    let method = method.to_ascii_uppercase();
    let path = format!("/{}", args.path.trim_start_matches('/'));
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(Error::InvalidFlag {
            flag: "PATH",
            value: args.path.clone(),
            reason: "a path has no spaces or control characters".into(),
        });
    }
    if args.debug_port == 0 {
        return Err(Error::InvalidFlag {
            flag: "--debug-port",
            value: "0".into(),
            reason: "port 0 is no port (the sidecar serves no status port then)".into(),
        });
    }
    let what = format!("{method} http://127.0.0.1:{}{path}", args.debug_port);
    let failed = |status: String, detail: String| Error::CommandFailed {
        program: what.clone(),
        status,
        detail,
    };
    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    let (status, body) = exchange(
        args.debug_port,
        &method,
        &path,
        args.body.as_deref().unwrap_or(""),
        timeout,
    )
    .map_err(|e| failed("no answer".into(), e.to_string()))?;
    if !(200..300).contains(&status) {
        return Err(failed(
            format!("HTTP {status}"),
            String::from_utf8_lossy(&body).trim().to_string(),
        ));
    }
    out.write_all(&body).map_err(Error::Output)?;
    Ok(())
}

/// The most `proxy request` reads of an answer (a `config_dump` of a large mesh fits).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// One HTTP/1.1 request to 127.0.0.1:`port` (the connection closed after it); the status and
/// the body (everything after the head, to the end of the connection), all within `timeout`.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: rustmesh-proxy-request\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // The whole answer within `timeout` of the start and at most MAX_ANSWER bytes: a server that
    // trickles or never stops cannot hold the command (a preStop hook) or its memory.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no complete answer within {timeout:?}"),
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left))?;
        // A read timeout surfaces as WouldBlock on Unix (EAGAIN) and TimedOut elsewhere.
        let n = match stream.read(&mut chunk) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            other => other?,
        };
        if n == 0 {
            break;
        }
        if answer.len() + n > MAX_ANSWER {
            return Err(std::io::Error::other(format!(
                "the answer is larger than {MAX_ANSWER} bytes"
            )));
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let status = answer
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .filter(|_| answer.starts_with(b"HTTP/1."))
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => answer.split_off(i + 4),
        None => Vec::new(),
    };
    Ok((status, body))
}

/// Polls until the URL answers 200 (Ok) or the timeout expires (an error with the last
/// answer).
pub fn run(args: &WaitArgs) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let request_timeout = Duration::from_millis(args.request_timeout_millis.max(1));
    let period = Duration::from_millis(args.period_millis);
    let deadline = Instant::now() + timeout;
    let invalid = |reason: &str| Error::InvalidFlag {
        flag: "--url",
        value: args.url.clone(),
        reason: reason.to_string(),
    };
    let rest = args
        .url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut last: String;
    loop {
        match probe(&host_port, authority, path, request_timeout) {
            Ok(200) => {
                tracing::info!(url = %args.url, "the proxy is ready");
                return Ok(());
            }
            Ok(status) => last = format!("HTTP {status}"),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() + period >= deadline {
            return Err(Error::WaitTimeout {
                url: args.url.clone(),
                timeout,
                last,
            });
        }
        std::thread::sleep(period);
    }
}

fn probe(host_port: &str, host: &str, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let addr = host_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host_port} does not resolve")))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rustmesh-proxy-wait\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn args(url: String, timeout_seconds: u64) -> WaitArgs {
        WaitArgs {
            url,
            timeout_seconds,
            request_timeout_millis: 500,
            period_millis: 10,
        }
    }

    #[test]
    fn waits_until_200() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz/ready", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for n in 0.. {
                let Ok((mut s, _)) = l.accept() else { return };
                // Read the whole head, so closing does not reset the connection.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let status = if n < 2 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        run(&args(url, 20)).unwrap();
    }

    /// A one-connection server on 127.0.0.1 that answers `status` with `body`; returns its
    /// port and, once the exchange is over, the request it read.
    fn answer_once(
        status: &'static str,
        body: &'static str,
    ) -> (u16, std::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            let mut sent = vec![0u8; length];
            s.read_exact(&mut sent).unwrap();
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tx.send(format!("{text}{}", String::from_utf8_lossy(&sent)))
                .unwrap();
        });
        (port, rx)
    }

    fn request_args(port: u16, method: &str, path: &str, body: Option<&str>) -> RequestArgs {
        RequestArgs {
            method: method.into(),
            path: path.into(),
            body: body.map(Into::into),
            debug_port: port,
            timeout_seconds: 10,
        }
    }

    /// `pilot-agent request POST drain`, as Istio's preStop hook runs it: a POST of /drain to
    /// the port on localhost, the answer's body on standard output.
    #[test]
    fn request_posts_the_path_to_the_port_and_prints_the_answer() {
        let (port, sent) = answer_once("200 OK", "OK");
        let mut out = Vec::new();
        request(&request_args(port, "post", "drain", None), &mut out).unwrap();
        assert_eq!(out, b"OK");
        let sent = sent.recv().unwrap();
        assert!(
            sent.starts_with("POST /drain HTTP/1.1\r\n")
                && sent.contains(&format!("Host: 127.0.0.1:{port}\r\n"))
                && sent.contains("Content-Length: 0\r\n"),
            "{sent}"
        );
        // A leading slash and a body are sent as given.
        let (port, sent) = answer_once("200 OK", "");
        request(
            &request_args(port, "PUT", "/logging?level=debug", Some("x=1")),
            &mut Vec::new(),
        )
        .unwrap();
        let sent = sent.recv().unwrap();
        assert!(
            sent.starts_with("PUT /logging?level=debug HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(sent.ends_with("\r\n\r\nx=1"), "{sent}");
    }

    #[test]
    fn request_fails_on_an_error_answer_or_none() {
        let (port, _sent) = answer_once("403 Forbidden", "only from localhost");
        let err = request(&request_args(port, "POST", "drain", None), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("`POST http://127.0.0.1:{port}/drain` failed (HTTP 403): only from localhost")
        );
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = request(&request_args(port, "POST", "drain", None), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed (no answer)"), "{err}");
        for (args, flag) in [
            (request_args(1, "PO ST", "drain", None), "METHOD"),
            (request_args(1, "POST", "dr ain", None), "PATH"),
            (request_args(0, "POST", "drain", None), "--debug-port"),
        ] {
            let err = request(&args, &mut Vec::new()).unwrap_err().to_string();
            assert!(err.contains(&format!("for {flag}:")), "{err}");
        }
    }

    /// A server that trickles its answer (a byte every 50 ms, never closing) or sends more than
    /// MAX_ANSWER bytes fails the request within its timeout; it cannot hold a preStop hook.
    #[test]
    fn an_endless_or_oversized_answer_fails_the_request() {
        fn serve(chunk: usize, pause: Duration) -> u16 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                let data = vec![b'x'; chunk];
                while s.write_all(&data).is_ok() {
                    std::thread::sleep(pause);
                }
            });
            port
        }
        let started = Instant::now();
        let port = serve(1, Duration::from_millis(50));
        let err = exchange(port, "GET", "/stats", "", Duration::from_millis(600)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        let port = serve(1024 * 1024, Duration::ZERO);
        let err = exchange(port, "GET", "/config_dump", "", Duration::from_secs(30)).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn gives_up_with_the_last_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz/ready", l.local_addr().unwrap());
        drop(l);
        let err = run(&args(url, 0)).unwrap_err();
        assert!(matches!(err, Error::WaitTimeout { .. }), "{err}");
        let err = run(&args("https://x/".into(), 1)).unwrap_err();
        assert!(err.to_string().contains("--url"), "{err}");
    }
}
