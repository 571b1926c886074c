use std::io::IsTerminal as _;

use anyhow::Context as _;
use collector::{Transport, cli::Cli};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    let Some(cli) = settings::daemon::<Cli>(std::path::Path::new(collector::cli::CONFIG))? else {
        return Ok(());
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a journal or a test's log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let limits = cli.limits().map_err(anyhow::Error::msg)?;
    let policy = match &cli.policy {
        Some(path) => collector::policy::load(path)?,
        None => collector::policy::default_policy(),
    };
    let transport = if cli.insecure_plaintext {
        anyhow::ensure!(
            cli.listen.ip().is_loopback(),
            "--insecure-plaintext serves without TLS or identities, so only on a loopback \
             address, not {}",
            cli.listen
        );
        tracing::warn!("serving without TLS: any local process may read and change everything");
        Transport::InsecurePlaintext
    } else {
        Transport::from_dir(&cli.pki_dir, &cli.state_dir).with_context(|| {
            format!(
                "loading the collector's certificates from {} (recorder pki init / issue \
                 collector; or --insecure-plaintext on loopback)",
                cli.pki_dir.display()
            )
        })?
    };
    let tls = collector::StoreTls {
        ca: cli.store_ca.clone(),
        cert: cli.store_cert.clone(),
        key: cli.store_key.clone(),
    };
    let store = collector::open_store(&cli.store, &tls)?;
    let retention = collector::Retention {
        default: cli.retain,
        per_host: cli.retain_host.into_iter().collect(),
    };
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
                fail_closed_on_loss = ?policy.fail_closed_on_loss(),
                "policy"
            );
            let listening = format!("listening on {}", listener.local_addr()?);
            tracing::info!(store = %settings::without_passwords(&cli.store), "{listening}");
            notify_ready(&listening);
            if let Some(interval) = sd_notify::watchdog_enabled() {
                tokio::spawn(watchdog(interval / 2));
            }
            let mut terminate = signal(SignalKind::terminate())?;
            tokio::select! {
                served = collector::serve(listener, store, policy, transport, retention, cli.silent_after, limits) => served?,
                // What is not yet committed is not yet acknowledged either: agents resend it
                // to the next collector, so stopping here loses nothing.
                _ = tokio::signal::ctrl_c() => tracing::info!("stopping on SIGINT"),
                _ = terminate.recv() => tracing::info!("stopping on SIGTERM"),
            }
            Ok(())
        })
}

/// Tells a service manager (or a test, or the main job) that the collector is ready: its
/// store is open and its listener bound, so connections from now on are served. Through the
/// `sd_notify` protocol, when `NOTIFY_SOCKET` is set; a collector that cannot say so still
/// serves.
fn notify_ready(status: &str) {
    if let Err(error) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!(%error, "cannot notify readiness");
    }
}

/// Pings the service manager's watchdog (`WatchdogSec=`) every `period`, half its interval so
/// one late ping is not yet a missed one. Spawned on the runtime that serves every RPC, the
/// pings prove the process lives and that runtime still schedules tasks: a runtime whose
/// workers are all stuck stops them, and the manager restarts the collector. They do not
/// prove that a commit succeeds; a failing store shows in its RPCs' errors.
async fn watchdog(period: std::time::Duration) {
    let mut ticks = tokio::time::interval(period);
    // After a stall, one ping and the normal pace again, not a burst claiming the stall.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = sd_notify::notify(&[NotifyState::Watchdog]) {
            tracing::warn!(%error, "cannot ping the watchdog");
        }
    }
}
