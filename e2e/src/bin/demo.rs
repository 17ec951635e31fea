//! `demo`: what `./run.sh` shows on a cluster with rustmesh installed. Deploys the sample into
//! the namespace `bookinfo` (labelled `istio-injection=enabled`), prints the injected pods,
//! applies the reviews DestinationRule and a 90/10 VirtualService with `end-user: jason` → v2,
//! sends requests from productpage's pod (through its sidecar) and prints who answered, and
//! prints productpage's listener table (`rustmeshctl proxy-config listeners`).

use anyhow::Context;
use clap::Parser;
use rustmesh_e2e::sample::{self, HTTP_PORT, TCP_PORT};
use rustmesh_e2e::{Ctx, Summary, poll};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "demo")]
struct Args {
    /// Namespace for the sample (created, or reused with its routing rules removed).
    #[arg(long, default_value = "bookinfo")]
    namespace: String,
}

fn line(s: &Summary) -> String {
    let backends: Vec<String> = s
        .backends
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!(
        "{} requests -> {} | statuses {:?} | errors {}",
        s.requests,
        backends.join(", "),
        s.statuses,
        s.errors
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ns = args.namespace.as_str();
    let ctx = Ctx::connect("demo")
        .await
        .context("connecting to the cluster")?;
    ctx.wait_mesh_ready(Duration::from_secs(180))
        .await
        .context("rustmesh is not installed (e2e/install)")?;
    // Kept when it exists (the sample is applied again and its routing rules removed), so a
    // second run is quick.
    ctx.ensure_namespace(ns, true).await?;
    ctx.delete_istio(ns).await?;
    println!(
        "\n== kubectl create namespace {ns}; kubectl label namespace {ns} istio-injection=enabled"
    );
    let apps = sample::bookinfo();
    sample::deploy(&ctx, ns, &apps).await?;

    println!("\n== the pods: the webhook added istio-init and istio-proxy to each");
    println!("{:<36} {:<8} {:<14} CONTAINERS", "POD", "READY", "INIT");
    for p in ctx.pods_with(ns, "app").await? {
        let (init, containers) = sample::container_names(&p);
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| format!("{}/{}", cs.iter().filter(|c| c.ready).count(), cs.len()))
            .unwrap_or_default();
        println!(
            "{:<36} {:<8} {:<14} {}",
            p.metadata.name.unwrap_or_default(),
            ready,
            init.join(","),
            containers.join(",")
        );
    }

    let pod = ctx.pod_name(ns, &sample::productpage().selector()).await?;
    if let Err(e) = ctx
        .wait_endpoints(ns, &pod, "reviews", ns, HTTP_PORT, 3)
        .await
    {
        println!("(the sidecar does not list reviews' endpoints yet: {e})");
    }
    // By name: the sidecar's DNS proxy answers for the mesh's services (the cluster has no DNS).
    let url = format!("http://reviews:{HTTP_PORT}/");
    let load = |n: u64, headers: &'static [&'static str]| {
        let (ctx, pod, url) = (&ctx, pod.clone(), url.clone());
        async move {
            ctx.http_load(ns, &pod, "productpage", &url, n, 4, headers)
                .await
        }
    };
    println!("\n== from {pod} (through its sidecar): testapp get {url} -n 60, no routing rules");
    match load(60, &[]).await {
        Ok(s) => println!("{}", line(&s)),
        Err(e) => println!("failed: {e}"),
    }

    println!(
        "\n== kubectl apply: DestinationRule reviews (v1, v2, v3) + VirtualService reviews (jason -> v2; 90% v1, 10% v2)"
    );
    let applied = Instant::now();
    ctx.apply_istio(ns, sample::REVIEWS_DESTINATION_RULE)
        .await?;
    ctx.apply_istio(ns, &sample::reviews_virtual_service(90, 10))
        .await?;
    let live = poll(
        "the VirtualService in force",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let s = load(40, &[]).await.map_err(|e| e.to_string())?;
            if s.status(200) == 40 && s.backend("reviews/v3") == 0 {
                Ok(Some(()))
            } else {
                Err(line(&s))
            }
        },
    )
    .await;
    match live {
        Ok(()) => {
            println!(
                "in force {:.1} s after the apply",
                applied.elapsed().as_secs_f64()
            );
            println!("\n== testapp get {url} -n 200");
            println!("{}", line(&load(200, &[]).await?));
            println!("\n== testapp get {url} -n 20 -H end-user:jason");
            println!("{}", line(&load(20, &["end-user:jason"]).await?));
        }
        Err(e) => println!("not in force: {e}"),
    }

    let echo = "tcp-echo"; // by name too
    println!("\n== TCP: testapp tcp {echo}:{TCP_PORT} --send hello-mesh");
    match ctx
        .tcp_send(
            ns,
            &pod,
            "productpage",
            &format!("{echo}:{TCP_PORT}"),
            "hello-mesh",
        )
        .await?
    {
        Ok(answer) => println!("{answer}"),
        Err(e) => println!("failed: {e}"),
    }

    println!("\n== rustmeshctl proxy-config listeners {pod} -n {ns}");
    print!("{}", ctx.proxy_config(ns, &pod, &["listeners"]).await?);

    println!("\nTry it yourself:");
    match &ctx.kubeconfig {
        Some(k) => println!("  export KUBECONFIG={}", k.display()),
        None => println!("  (kubectl with your current context)"),
    }
    println!("  kubectl -n {ns} get pods");
    println!(
        "  kubectl -n {ns} exec deploy/productpage-v1 -c productpage -- testapp get {url} -n 100"
    );
    println!(
        "  kubectl -n {ns} exec deploy/productpage-v1 -c productpage -- testapp get {url} -n 20 -H end-user:jason"
    );
    println!("  target/release/rustmeshctl proxy-config routes {pod} -n {ns}");
    Ok(())
}
