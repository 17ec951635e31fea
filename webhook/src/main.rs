//! `webhook`: the rustmesh sidecar injector. Everything is in the library; see `rustmesh_webhook::run`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = rustmesh_webhook::Args::parse();
    rustmesh_webhook::run(args).await?;
    Ok(())
}
