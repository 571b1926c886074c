//! `cargo xtask run`: the main job. The collector on the embedded store and the agent on
//! this host, connected; both stop on Ctrl-C (the terminal signals the whole group).

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long the collector may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

pub fn main_job(
    listen: &str,
    store: &Path,
    spool: &Path,
    agent_args: &[String],
) -> anyhow::Result<()> {
    let release = tests::workspace_root().join("target/release");
    if let Some(dir) = store.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut collector = Command::new(release.join("collector"))
        .args(["--listen", listen])
        .arg("--store")
        .arg(format!("sqlite://{}", store.display()))
        .spawn()
        .context("starting the collector")?;
    wait_for_listener(listen, &mut collector)?;
    let url = format!("http://{listen}");
    eprintln!(
        "collector: listening on {listen}, storing in {}\n\
         agent: spooling to {} and shipping to {url}\n\
         in another terminal: `cargo xtask tail` to follow, `cargo xtask sessions`, \
         `cargo xtask replay SESSION`, `cargo xtask verify`; Ctrl-C here stops both",
        store.display(),
        spool.display()
    );
    let mut agent = Command::new(release.join("agent"))
        .arg("--spool")
        .arg(spool)
        .args(["--collector", &url])
        .args(agent_args)
        .spawn()
        .context("starting the agent")?;
    let agent_status = agent.wait()?;
    // The agent has shipped what it could; the collector stops with the same Ctrl-C, or here
    // when the agent failed on its own.
    if collector.try_wait()?.is_none() {
        let pid = libc::pid_t::try_from(collector.id()).context("collector pid")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let collector_status = collector.wait()?;
    if !agent_status.success() {
        bail!("agent exited with {agent_status}");
    }
    if !collector_status.success() {
        bail!("collector exited with {collector_status}");
    }
    Ok(())
}

fn wait_for_listener(listen: &str, collector: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while std::net::TcpStream::connect(listen).is_err() {
        if let Some(status) = collector.try_wait()? {
            bail!("the collector exited with {status} before listening on {listen}");
        }
        if Instant::now() > deadline {
            bail!("the collector did not listen on {listen} within {LISTEN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
