//! `proxy wait`: blocks until the sidecar is ready (Istio's `pilot-agent wait`). The webhook
//! runs it as the sidecar's `postStart` hook when `holdApplicationUntilProxyStarts` is on, so
//! the app containers start only once the proxy answers `GET /healthz/ready` with 200.
//!
//! Flags have Istio's names (`--timeoutSeconds`, `--requestTimeoutMillis`, `--periodMillis`,
//! `--url`) as aliases of the kebab-case ones.

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
