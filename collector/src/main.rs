use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser as _;
use collector::cli::Cli;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let policy = match &cli.policy {
        Some(path) => collector::policy::load(path)?,
        None => collector::policy::default_policy(),
    };
    let store = collector::store::open(&cli.store)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(cli.listen)
                .await
                .with_context(|| format!("cannot listen on {}", cli.listen))?;
            tracing::info!(
                mode = ?policy.mode(),
                root_exec = policy.root_exec,
                guarded = policy.guarded.len(),
                "policy"
            );
            tracing::info!(store = %cli.store, "listening on {}", listener.local_addr()?);
            let mut terminate = signal(SignalKind::terminate())?;
            tokio::select! {
                served = collector::serve(listener, store, policy) => served?,
                // What is not yet committed is not yet acknowledged either: agents resend it
                // to the next collector, so stopping here loses nothing.
                _ = tokio::signal::ctrl_c() => tracing::info!("stopping on SIGINT"),
                _ = terminate.recv() => tracing::info!("stopping on SIGTERM"),
            }
            Ok(())
        })
}
