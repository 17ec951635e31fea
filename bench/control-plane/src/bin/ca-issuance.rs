//! Mesh CA issuance rate: certificates signed per second by the operator's CA on one core,
//! through its real request path (`rustmesh_operator::ca::service::CaServer`: gRPC over TLS,
//! Istio's `IstioCertificateService/CreateCertificate`), asked for by the sidecar's own client
//! (`rustmesh_proxy::identity::ca_client::CaClient`: a new P-256 key and CSR, a new TLS
//! connection per certificate, the answer checked against the root, as a sidecar does).
//!
//! The one stand-in is the authenticator: a fixed token table instead of the API server's
//! TokenReview (as the proxy's CA tests do), so the figure is the CA's own work, not the API
//! server's.
//!
//! The CA runs on a current-thread runtime on one thread pinned to `--server-core`; the clients
//! (`--concurrency` fetches in flight) on another pinned to `--client-core`. The CA thread's
//! CPU time per certificate gives its capacity on one core whether or not the clients saturate
//! it. Prints one JSON document on stdout. Run by `bench/control-plane/run`.
//!
//! ```text
//! ca-issuance [--duration S] [--concurrency N] [--server-core C] [--client-core C]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustmesh_operator::ca::authority::{Authority, Material};
use rustmesh_operator::ca::review::AuthError;
use rustmesh_operator::ca::service::{Authenticate, Ca, CaMetrics, CaServer};
use rustmesh_proxy::identity::ca_client::CaClient;
use rustmesh_xds::identity::SpiffeId;
use serde_json::json;

const TRUST_DOMAIN: &str = "cluster.local";
const TOKEN: &str = "bench-token";

/// Vouches for one token (the TokenReview stand-in).
struct OneToken(SpiffeId);

impl Authenticate for OneToken {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
        if token == TOKEN {
            Ok(self.0.clone())
        } else {
            Err(AuthError::Rejected("unknown token".into()))
        }
    }
}

/// Pins the calling thread (and the threads it starts later) to `core`.
fn pin(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).expect("a core number");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("pinning to core {core}: {e}"));
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let duration = Duration::from_secs(arg(&args, "--duration", 10));
    let concurrency = arg(&args, "--concurrency", 16) as usize;
    let (server_core, client_core) = (
        arg(&args, "--server-core", 1) as usize,
        arg(&args, "--client-core", 0) as usize,
    );
    let identity = SpiffeId::new(TRUST_DOMAIN, "bench", "client").expect("a SPIFFE id");
    let material = Material::self_signed_root(TRUST_DOMAIN, SystemTime::now()).expect("a root");
    let authority = Arc::new(Authority::new(TRUST_DOMAIN, &material).expect("an authority"));
    let metrics = CaMetrics::default();

    // The CA, on its own thread and core.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ca = Arc::new(Ca::new(
        authority.clone(),
        OneToken(identity.clone()),
        metrics.clone(),
    ));
    let server = std::thread::spawn(move || {
        pin(server_core);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let names = ["localhost".to_string()];
            let server = CaServer::new("127.0.0.1:0".parse().unwrap(), ca, &names)
                .await
                .expect("the CA starts");
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            let cpu0 = thread_cpu();
            server
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("the CA serves");
            thread_cpu() - cpu0
        })
    });
    let addr = addr_rx.recv().expect("the CA's address");

    // The files a sidecar reads: the token and the mesh root.
    let dir = std::env::temp_dir().join(format!("rustmesh-ca-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    std::fs::write(dir.join("root-cert.pem"), authority.root_bundle()).unwrap();
    let client = Arc::new(
        CaClient::new(
            &format!("localhost:{}", addr.port()),
            dir.join("token"),
            dir.join("root-cert.pem"),
            Duration::from_secs(24 * 3600),
        )
        .expect("a CA client"),
    );

    // The sidecars, on the other core: `concurrency` fetches in flight, warm-up first.
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    pin(client_core);
    let (wall, client_cpu, csr_total_before) = rt.block_on(async {
        for _ in 0..10 {
            client
                .fetch(&identity)
                .await
                .expect("a certificate (warm-up)");
        }
        let before = metrics.csr.get();
        let (start, cpu0) = (Instant::now(), thread_cpu());
        let deadline = start + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, identity) = (client.clone(), identity.clone());
            let (done, failed) = (done.clone(), failed.clone());
            tasks.spawn(async move {
                while Instant::now() < deadline {
                    match client.fetch(&identity).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("fetch: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        (start.elapsed(), thread_cpu() - cpu0, before)
    });
    // The client runtime runs only inside `block_on`: connections its channels left to
    // background tasks would stay open, and the CA's graceful shutdown waits for every
    // connection to close. Dropping the runtime closes them.
    drop(rt);
    let _ = stop_tx.send(());
    let server_cpu = server.join().expect("the CA thread");
    let _ = std::fs::remove_dir_all(&dir);

    let n = done.load(Ordering::Relaxed);
    let csrs = metrics.csr.get() - csr_total_before;
    // The server's CPU includes the warm-up's 10 certificates and the start.
    let server_us = server_cpu.as_secs_f64() * 1e6 / (csrs + 10).max(1) as f64;
    let doc = json!({
        "duration_s": wall.as_secs_f64(),
        "concurrency": concurrency,
        "certificates": n,
        "failed": failed.load(Ordering::Relaxed),
        "csrs_seen_by_ca": csrs,
        "csrs_per_s": n as f64 / wall.as_secs_f64(),
        "ca_cpu_us_per_csr": server_us,
        "ca_capacity_per_core": 1e6 / server_us,
        "ca_core_utilisation": server_cpu.as_secs_f64() / wall.as_secs_f64(),
        "client_cpu_us_per_csr": client_cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
        "client_core_utilisation": client_cpu.as_secs_f64() / wall.as_secs_f64(),
    });
    println!("{doc:#}");
}
