//! `cargo xtask run`: the main job. The collector on the embedded store and the agent on
//! this host, connected. Each is declared started only once it says so itself (the
//! `sd_notify` protocol, as under systemd); if either fails to start, or exits later, the
//! other is stopped and the job fails saying which and why. Ctrl-C stops both, the agent
//! first, and the job exits once both have stopped.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tests::notify::Notify;

/// How long the collector may take to listen, and the agent to load its programs.
const COLLECTOR_START: Duration = Duration::from_secs(30);
const AGENT_START: Duration = Duration::from_mins(2);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Release);
}

pub struct MainJob<'a> {
    pub bin_dir: PathBuf,
    pub listen: &'a str,
    pub store: &'a Path,
    pub spool: &'a Path,
    /// The local PKI: made on first start.
    pub pki_dir: &'a Path,
    pub agent_args: &'a [String],
}

/// A component of the job.
struct Component {
    name: &'static str,
    child: Child,
    _notify: Notify,
}

impl Component {
    fn start(
        name: &'static str,
        mut cmd: Command,
        timeout: Duration,
    ) -> anyhow::Result<(Self, Vec<String>)> {
        let notify = Notify::new();
        notify.pass_to(&mut cmd);
        // A process group of its own: Ctrl-C in the terminal signals the job alone, which
        // stops the components in order. Should the job itself be killed, each component is
        // sent SIGTERM (its parent's death signal) rather than left running.
        let job = std::process::id();
        cmd.process_group(0).stdin(Stdio::null());
        // SAFETY: `prctl` and `getppid` are async-signal-safe, and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The job may have died before the death signal was set.
                if u32::try_from(libc::getppid()) != Ok(job) {
                    return Err(std::io::Error::other("the main job has ended"));
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        match notify.wait_ready(&mut child, timeout) {
            Ok(statuses) => Ok((
                Self {
                    name,
                    child,
                    _notify: notify,
                },
                statuses,
            )),
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the {name} did not start: {why} (its own error is above)")
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Stops it (SIGTERM unless it has already gone) and waits for it.
    fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if self.child.try_wait()?.is_none() {
            self.signal(libc::SIGTERM);
        }
        Ok(self.child.wait()?)
    }
}

pub fn main_job(job: &MainJob<'_>) -> anyhow::Result<()> {
    // Ctrl-C (or SIGTERM) only tells the job to stop its components; it stays to see them
    // stop.
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, interrupted as *const () as libc::sighandler_t) };
    }
    if let Some(dir) = job.store.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listen: std::net::SocketAddr = job
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not an address and port", job.listen))?;
    crate::pki::ensure(job.pki_dir, listen.ip())?;
    let mut cmd = Command::new(job.bin_dir.join("collector"));
    cmd.args(["--listen", job.listen])
        .arg("--store")
        .arg(format!("sqlite://{}", job.store.display()))
        .arg("--pki-dir")
        .arg(job.pki_dir)
        // Beside its store: the checkpoint of its own log, kept outside the database.
        .arg("--state-dir")
        .arg(job.store.with_extension("state"));
    let (collector, statuses) = Component::start("collector", cmd, COLLECTOR_START)?;
    let listening = statuses
        .iter()
        .find_map(|s| s.strip_prefix("listening on "))
        .unwrap_or(job.listen)
        .to_owned();
    eprintln!("main job: collector ready, listening on {listening} (mutual TLS)");
    let url = format!("https://{listening}");
    let mut cmd = Command::new(job.bin_dir.join("agent"));
    cmd.arg("--spool")
        .arg(job.spool)
        .args(["--collector", &url])
        .arg("--pki-dir")
        .arg(job.pki_dir)
        .args(job.agent_args);
    let agent = match Component::start("agent", cmd, AGENT_START) {
        Ok((agent, _)) => agent,
        Err(e) => {
            let status = collector.stop()?;
            eprintln!("main job: stopped the collector ({status})");
            return Err(e);
        }
    };
    eprintln!(
        "main job: agent ready, capturing\n\
         \n  store    {} (SQLite)\n  spool    {}\n  address  {url}\n  pki      {} (you are \
         its admin operator)\n\n\
         Try in another terminal: `cargo xtask tail` (every exec and terminal line, live).\n\
         Ctrl-C here stops both.",
        job.store.display(),
        job.spool.display(),
        job.pki_dir.display()
    );
    supervise(collector, agent)
}

/// Waits for Ctrl-C or for a component to exit; either way stops both and says how each
/// ended.
fn supervise(mut collector: Component, mut agent: Component) -> anyhow::Result<()> {
    let failed = loop {
        if INTERRUPTED.load(Ordering::Acquire) {
            break None;
        }
        if let Some(status) = collector.exited()? {
            break Some((collector.name, status));
        }
        if let Some(status) = agent.exited()? {
            break Some((agent.name, status));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some((name, status)) = failed {
        eprintln!("main job: the {name} exited ({status}) while running; stopping the rest");
    } else {
        eprintln!("main job: stopping");
    }
    // The agent first, and the collector once it has gone: the agent ships what it can
    // while the collector still runs, and ends its stream itself.
    let agent_status = agent.stop()?;
    let collector_status = collector.stop()?;
    eprintln!("main job: agent {agent_status}, collector {collector_status}");
    if let Some((name, status)) = failed {
        bail!("the {name} exited unexpectedly ({status})");
    }
    if !agent_status.success() {
        bail!("the agent stopped with {agent_status}");
    }
    if !collector_status.success() {
        bail!("the collector stopped with {collector_status}");
    }
    Ok(())
}
