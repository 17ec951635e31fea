//! `proxy`: rustmesh's sidecar binary. The work is done in the `rustmesh_proxy` library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rustmesh_proxy::capture::IstioIptablesArgs;
use rustmesh_proxy::sidecar::RunArgs;
use rustmesh_proxy::wait::{RequestArgs, WaitArgs};

/// jemalloc rather than glibc's malloc: memory freed after a burst of connections (each TLS
/// handshake allocates tens of KiB) goes back to the system, within about a second, from
/// jemalloc's background thread (`background_threads`; `dirty_decay_ms:1000` in
/// .cargo/config.toml), instead of staying in glibc's per-thread arenas at the burst's peak.
/// The sidecar's and the gateway's RSS follow the load down (BENCHMARKS.md, "Ingress gateway").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "proxy", version, about = "rustmesh sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start; the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// The capture step (Istio's istio-init): program iptables to send the pod's traffic to the sidecar.
    IstioIptables(IstioIptablesArgs),
    /// The sidecar: the 15001/15006 capture listeners, admin (15000), the status port for the
    /// app's rewritten probes (15020), readiness (15021) and Prometheus (15090); the
    /// configuration is watched and swapped live; SIGTERM drains. With `--type router` (a
    /// gateway) no capture listener: the configuration's own listeners are bound.
    Run(RunArgs),
    /// Block until the sidecar is ready (the postStart hook of holdApplicationUntilProxyStarts).
    Wait(WaitArgs),
    /// Send one request to a port of the sidecar on localhost (Istio's `pilot-agent request`;
    /// a native sidecar's preStop hook runs `request --debug-port=15020 POST drain`).
    Request(RequestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // RUST_LOG (else `info`) is the starting filter; the admin API's `/logging` changes it.
    rustmesh_proxy::logging::init(std::io::stderr, std::io::stderr().is_terminal());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Each error's message already ends with its cause; `{:#}` would print it twice.
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::IstioIptables(args) => {
            rustmesh_proxy::capture::run(&args, &mut std::io::stdout().lock())?
        }
        Command::Run(args) => rustmesh_proxy::sidecar::run(&args)?,
        Command::Wait(args) => rustmesh_proxy::wait::run(&args)?,
        Command::Request(args) => {
            rustmesh_proxy::wait::request(&args, &mut std::io::stdout().lock())?
        }
    }
    Ok(())
}
