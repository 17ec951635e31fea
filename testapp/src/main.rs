use anyhow::Context;
use clap::{Parser, Subcommand};
use rustmesh_testapp::{client, collector, relay, server, tcp, tls};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A bookinfo-style test peer: servers that say who they are, and a client that counts answers.
#[derive(Parser)]
#[command(name = "testapp", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (HTTP/1.1 + h2c), HTTPS, TCP echo and server-first ports until killed.
    Serve {
        /// HTTP ports (repeatable).
        #[arg(long = "http", value_delimiter = ',')]
        http: Vec<u16>,
        /// HTTPS ports: the same answers over TLS (HTTP/1.1 and HTTP/2), each reporting the
        /// handshake (`tls`: version, SNI, ALPN, the client certificate's common name).
        #[arg(long = "https", value_delimiter = ',', requires_all = ["tls_cert", "tls_key"])]
        https: Vec<u16>,
        /// The HTTPS ports' certificate chain (PEM, leaf first).
        #[arg(long, value_name = "FILE", requires = "https")]
        tls_cert: Option<std::path::PathBuf>,
        /// The HTTPS ports' private key (PEM).
        #[arg(long, value_name = "FILE", requires = "https")]
        tls_key: Option<std::path::PathBuf>,
        /// Mutual TLS: require a client certificate signed by a CA of this PEM file.
        #[arg(long, value_name = "FILE", requires = "https")]
        tls_client_ca: Option<std::path::PathBuf>,
        /// TCP echo ports.
        #[arg(long = "tcp-echo", value_delimiter = ',')]
        tcp_echo: Vec<u16>,
        /// Server-first ports: a banner is written before anything is read.
        #[arg(long = "server-first", value_delimiter = ',')]
        server_first: Vec<u16>,
        #[arg(long, env = "SERVICE_NAME", default_value = "testapp")]
        service: String,
        #[arg(long, env = "SERVICE_VERSION", default_value = "v1")]
        version: String,
        #[arg(long, env = "POD_NAME", default_value = "")]
        pod: String,
        /// Address to bind (0.0.0.0 for pods; 127.0.0.1 to be reachable only through the sidecar).
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// On SIGTERM, GET this URL (an app's own shutdown call, e.g. deregistering itself),
        /// print the outcome, and exit. Without it SIGTERM ends the process at once.
        #[arg(long, value_name = "URL")]
        on_sigterm_get: Option<String>,
        /// With --on-sigterm-get: wait this many milliseconds after SIGTERM before the call (an
        /// app finishing its work first).
        #[arg(
            long,
            value_name = "MS",
            default_value_t = 0,
            requires = "on_sigterm_get"
        )]
        on_sigterm_delay_ms: u64,
        /// A fixed JSON document at a path, `PATH=TEXT` (repeatable): a GET of PATH answers TEXT.
        #[arg(long = "document", value_name = "PATH=TEXT", value_parser = parse_document)]
        documents: Vec<(String, String)>,
    },
    /// Send N GET requests and print a JSON summary (answers per backend and status, latency;
    /// requests without an answer, e.g. a failed TLS handshake, count under `errors`).
    Get {
        /// `http://` or `https://` (TLS: needs --cacert; SNI and the name verified are the URL's
        /// host; ALPN offers h2 and http/1.1 and the server's pick is spoken).
        url: String,
        #[arg(short = 'n', long, default_value_t = 1)]
        requests: u64,
        #[arg(short = 'c', long, default_value_t = 1)]
        concurrency: usize,
        /// Header `name:value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// HTTP/2 only: with prior knowledge (h2c) for http://; for https:// ALPN offers only h2
        /// and a server that does not pick it fails the request.
        #[arg(long)]
        h2c: bool,
        /// Print the single response body instead of a summary (with -n 1); a failed request
        /// (e.g. the TLS handshake) fails the command with the reason.
        #[arg(long)]
        body: bool,
        /// https://: the CA certificates (PEM) the server's certificate must chain to (only
        /// these: no system roots), like curl's --cacert.
        #[arg(long, value_name = "FILE")]
        cacert: Option<std::path::PathBuf>,
        /// https:// with mutual TLS: the client certificate chain (PEM, leaf first) to present;
        /// with --key.
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// The private key (PEM) of --cert.
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<std::path::PathBuf>,
        /// Connect TCP to ADDR (`host:port` or `ip:port`) instead of the URL's host and port;
        /// the Host header and the TLS server name stay the URL's (curl's --connect-to, or
        /// --resolve with an address).
        #[arg(long, value_name = "ADDR", value_parser = client::parse_connect_to)]
        connect_to: Option<http::uri::Authority>,
    },
    /// The benchmark's floor: relay bytes from the capture ports to where a sidecar would send
    /// them (no HTTP). Run it as uid 1337 behind `proxy istio-iptables`.
    Relay {
        /// Outbound capture port: connects to the original destination.
        #[arg(long, default_value_t = 15001)]
        outbound: u16,
        /// Inbound capture port: connects to 127.0.0.1 at the original port.
        #[arg(long, default_value_t = 15006)]
        inbound: u16,
    },
    /// Send one POST with an empty body and print the answer (fails on a status >= 400), e.g.
    /// a Job's last step: `testapp post http://127.0.0.1:15020/quitquitquit`.
    Post { url: String },
    /// Collect trace spans in memory until killed: Zipkin v2 JSON (`POST /api/v2/spans`, and
    /// Zipkin's query API on the same port), OTLP/gRPC and OTLP/HTTP (`POST /v1/traces`).
    #[command(group(
        clap::ArgGroup::new("receivers")
            .required(true)
            .multiple(true)
            .args(["zipkin", "otlp_grpc", "otlp_http"])
    ))]
    Collector {
        /// Zipkin port (9411 by convention).
        #[arg(long, value_name = "PORT")]
        zipkin: Option<u16>,
        /// OTLP/gRPC port (4317 by convention).
        #[arg(long, value_name = "PORT")]
        otlp_grpc: Option<u16>,
        /// OTLP/HTTP port (4318 by convention).
        #[arg(long, value_name = "PORT")]
        otlp_http: Option<u16>,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
    },
    /// Send a line over TCP and print what comes back.
    Tcp {
        addr: String,
        #[arg(long, default_value = "ping")]
        send: String,
    },
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if let Command::Relay { outbound, inbound } = command {
        // One thread and its own event loop, as lean as a proxy can be: no tokio runtime.
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        let relay = relay::Relay::bind(&[
            ((any, outbound).into(), relay::Side::Outbound),
            ((any, inbound).into(), relay::Side::Inbound),
        ])?;
        eprintln!("testapp: relaying :{outbound} (outbound) and :{inbound} (inbound)");
        return Ok(relay.run()?);
    }
    tokio::runtime::Runtime::new()?.block_on(run(command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            http,
            https,
            tls_cert,
            tls_key,
            tls_client_ca,
            tcp_echo,
            server_first,
            service,
            version,
            pod,
            bind,
            on_sigterm_get,
            on_sigterm_delay_ms,
            documents,
        } => {
            let pod = if pod.is_empty() {
                std::env::var("HOSTNAME").unwrap_or_default()
            } else {
                pod
            };
            let id = Arc::new(server::Identity {
                service: service.clone(),
                version,
                pod,
                documents: documents.into_iter().collect(),
            });
            let mut tasks = tokio::task::JoinSet::new();
            for port in http {
                let l = tokio::net::TcpListener::bind((bind, port)).await?;
                tasks.spawn(server::serve_http(l, id.clone()));
            }
            if !https.is_empty() {
                let (Some(cert), Some(key)) = (&tls_cert, &tls_key) else {
                    anyhow::bail!("--https needs --tls-cert and --tls-key");
                };
                let config = tls::load_server_config(cert, key, tls_client_ca.as_deref())?;
                for port in https {
                    let l = tokio::net::TcpListener::bind((bind, port)).await?;
                    tasks.spawn(server::serve_https(l, id.clone(), config.clone()));
                }
            }
            for port in tcp_echo {
                let l = tokio::net::TcpListener::bind((bind, port)).await?;
                tasks.spawn(tcp::serve_echo(l));
            }
            for port in server_first {
                let l = tokio::net::TcpListener::bind((bind, port)).await?;
                tasks.spawn(tcp::serve_server_first(
                    l,
                    format!("hello from {service}\n"),
                ));
            }
            anyhow::ensure!(
                !tasks.is_empty(),
                "nothing to serve: give --http, --https, --tcp-echo or --server-first"
            );
            eprintln!("testapp: serving");
            if let Some(url) = on_sigterm_get {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tasks.spawn(async move {
                    term.recv().await;
                    tokio::time::sleep(std::time::Duration::from_millis(on_sigterm_delay_ms)).await;
                    match client::fetch(&url, &[], false).await {
                        Ok((status, _)) => eprintln!("testapp: SIGTERM: GET {url}: {status}"),
                        Err(e) => eprintln!("testapp: SIGTERM: GET {url} failed: {e}"),
                    }
                    std::process::exit(0)
                });
            }
            while let Some(res) = tasks.join_next().await {
                res??;
            }
            Ok(())
        }
        Command::Get {
            url,
            requests,
            concurrency,
            headers,
            h2c,
            body,
            cacert,
            cert,
            key,
            connect_to,
        } => {
            let https = match url.split_once("://") {
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => true,
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => false,
                _ => anyhow::bail!("{url:?}: want an http:// or https:// URL"),
            };
            let tls = match (https, cacert) {
                (true, Some(ca)) => Some(tls::load_client_config(
                    &ca,
                    cert.as_deref().zip(key.as_deref()),
                )?),
                (true, None) => anyhow::bail!(
                    "{url}: https needs --cacert FILE, the CA certificates (PEM) to verify the \
                     server with (there are no system roots)"
                ),
                (false, ca) => {
                    anyhow::ensure!(
                        ca.is_none() && cert.is_none(),
                        "--cacert, --cert and --key are for https:// URLs, not {url}"
                    );
                    None
                }
            };
            let options = client::Options {
                h2c,
                connect_to,
                tls,
            };
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|h| {
                    let (k, v) = h
                        .split_once(':')
                        .ok_or_else(|| anyhow::anyhow!("header {h:?} is not name:value"))?;
                    Ok((k.trim().to_string(), v.trim().to_string()))
                })
                .collect::<anyhow::Result<_>>()?;
            if body {
                let (status, bytes) = client::fetch_with(&url, &headers, &options).await?;
                println!("{}", String::from_utf8_lossy(&bytes));
                anyhow::ensure!(status < 400, "status {status}");
                return Ok(());
            }
            let summary = client::run_with(&url, requests, concurrency, headers, &options).await;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Command::Post { url } => {
            let (status, bytes) = client::post(&url).await?;
            println!("{status} {}", String::from_utf8_lossy(&bytes));
            anyhow::ensure!(status < 400, "status {status}");
            Ok(())
        }
        Command::Collector {
            zipkin,
            otlp_grpc,
            otlp_http,
            bind,
        } => {
            let store = collector::Store::default();
            let mut tasks: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
            let mut listening = Vec::new();
            if let Some(port) = zipkin {
                let l = tokio::net::TcpListener::bind((bind, port))
                    .await
                    .with_context(|| format!("zipkin: binding {bind}:{port}"))?;
                let store = store.clone();
                tasks.spawn(async move {
                    collector::serve_zipkin(l, store)
                        .await
                        .with_context(|| format!("zipkin receiver on :{port}"))
                });
                listening.push(format!("zipkin :{port}"));
            }
            if let Some(port) = otlp_grpc {
                let l = tokio::net::TcpListener::bind((bind, port))
                    .await
                    .with_context(|| format!("otlp-grpc: binding {bind}:{port}"))?;
                let store = store.clone();
                tasks.spawn(async move {
                    collector::serve_otlp_grpc(l, store)
                        .await
                        .with_context(|| format!("otlp-grpc receiver on :{port}"))
                });
                listening.push(format!("otlp-grpc :{port}"));
            }
            if let Some(port) = otlp_http {
                let l = tokio::net::TcpListener::bind((bind, port))
                    .await
                    .with_context(|| format!("otlp-http: binding {bind}:{port}"))?;
                let store = store.clone();
                tasks.spawn(async move {
                    collector::serve_otlp_http(l, store)
                        .await
                        .with_context(|| format!("otlp-http receiver on :{port}"))
                });
                listening.push(format!("otlp-http :{port}"));
            }
            eprintln!(
                "testapp: collecting spans on {bind}: {}",
                listening.join(", ")
            );
            while let Some(res) = tasks.join_next().await {
                res??;
            }
            Ok(())
        }
        Command::Relay { .. } => unreachable!("main runs the relay without a runtime"),
        Command::Tcp { addr, send } => {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.write_all(send.as_bytes()).await?;
            s.shutdown().await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            print!("{out}");
            Ok(())
        }
    }
}

/// `PATH=TEXT` of `serve --document`.
fn parse_document(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((path, text)) if path.starts_with('/') => Ok((path.to_string(), text.to_string())),
        _ => Err(format!("{s:?}: want PATH=TEXT with PATH starting with /")),
    }
}
