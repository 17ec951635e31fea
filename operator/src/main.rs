//! `operator`: the rustmesh control plane. Thin: flags, logging, then the library's `run`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .json()
        .init();
    let args = rustmesh_operator::cli::Args::parse();
    rustmesh_operator::cli::run(args).await?;
    Ok(())
}
