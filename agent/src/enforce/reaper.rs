//! The reaper: a small process of its own that kills the idle tasks of a denied session or
//! cgroup while no agent runs. The kernel kills a task at its first syscall past the
//! deadline, agent or not, but a shell waiting on its terminal or a `sleep` makes none; the
//! agent kills those itself, and when it is dead, the reaper does, from the same pinned
//! maps. It records each kill in the spool directory for the next agent to chain.
//!
//! The agent starts it (`agent --reaper`) when it first writes a deadline still to come, in
//! a session of its own so that signals to the agent's process group spare it. One runs at
//! a time, under a lock beside the agent's. It exits once no deadline is left to it.

use std::{
    collections::HashSet,
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use agent_common::enforce::{Deny, EXEMPT_AGENT, EXEMPT_REAPER};
use anyhow::Context as _;
use tracing::{info, warn};

use super::{kernel::DenyMaps, kill};
use crate::{
    capture::event::Target,
    clock::boot_ns,
    evidence::write_private,
    host::{held, lock_exclusive, open_lock},
    identity::cgroup::cgroup2_mount,
};

/// How often the reaper looks: a deadline passes unnoticed for at most this long.
const TICK: Duration = Duration::from_millis(200);
/// Deadlines this close before the agent was last seen alive are still the reaper's: the
/// agent may have died before its sweep reached them.
const OVERLAP_NS: u64 = 2_000_000_000;
/// The kills the reaper made, one JSON object a line, for the next agent to chain.
pub const REAPED_FILE: &str = "reaped.jsonl";
/// The reaper's log, in the spool directory.
const REAPER_LOG: &str = "reaper.log";

/// Where the reaper finds everything.
#[derive(Clone, Debug)]
pub struct Reaper {
    /// The pinned maps' directory.
    pub pins: PathBuf,
    /// The agent's instance lock: held means the agent runs.
    pub agent_lock: PathBuf,
    /// The spool directory, where its kills are recorded.
    pub spool: Option<PathBuf>,
}

/// One kill by the reaper.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Reaped {
    pub target: Target,
    pub cause: u32,
    pub pids: Vec<u32>,
    pub boot_ns: u64,
}

impl Reaper {
    fn lock_path(&self) -> PathBuf {
        self.agent_lock.with_file_name("reaper.lock")
    }

    /// Starts the reaper unless one runs already.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        if held(&self.lock_path())? {
            return Ok(());
        }
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--reaper")
            .arg("--bpf-dir")
            .arg(self.pins.parent().unwrap_or(&self.pins))
            .arg("--lock-file")
            .arg(&self.agent_lock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(spool) = &self.spool {
            command.arg("--spool").arg(spool);
            // Its own log, not the agent's stderr: it outlives the agent, and whatever
            // reads the agent's output must see it end when the agent does.
            let log = spool.join(REAPER_LOG);
            if !log.exists() {
                write_private(&log, b"")?;
            }
            command.stderr(fs::OpenOptions::new().append(true).open(&log)?);
        }
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting the reaper")?;
        info!(pid = child.id(), "reaper started");
        // Collected when it exits, so it never lingers as a zombie while the agent runs.
        std::thread::spawn(move || child.wait());
        Ok(())
    }

    /// The reaper's life: until no deadline is left to it, or the maps are uninstalled.
    pub fn run(&self) -> anyhow::Result<()> {
        let lock = open_lock(&self.lock_path())?;
        if !lock_exclusive(&lock) {
            info!("another reaper runs");
            return Ok(());
        }
        let mut maps = DenyMaps::open_pinned(&self.pins)?;
        maps.exempt.set(EXEMPT_REAPER, std::process::id(), 0)?;
        let cgroup_root = cgroup2_mount();
        let mut agent_seen = boot_ns();
        let mut done: HashSet<(Target, u64)> = HashSet::new();
        info!(pins = %self.pins.display(), "reaper running");
        loop {
            if !self.pins.exists() {
                info!("the pinned maps are gone (uninstalled): reaper exits");
                return Ok(());
            }
            let now = boot_ns();
            let agent = held(&self.agent_lock)?;
            if agent {
                agent_seen = now;
            } else {
                // Its pid may come back as anyone's: it is no longer exempt.
                let _ = maps.exempt.set(EXEMPT_AGENT, 0, 0);
            }
            let entries = maps.entries();
            let mine = |deny: &Deny| deny.deadline_ns + OVERLAP_NS > agent_seen;
            if !agent {
                for (target, deny) in entries.iter().filter(|(_, d)| mine(d)) {
                    if deny.deadline_ns <= now && done.insert((*target, deny.deadline_ns)) {
                        self.reap(*target, deny, cgroup_root.as_deref());
                    }
                }
            }
            let pending = entries.iter().any(|(target, deny)| {
                deny.deadline_ns > now
                    || (mine(deny) && !done.contains(&(*target, deny.deadline_ns)) && !agent)
            });
            if !pending {
                info!("no deadline left: reaper exits");
                return Ok(());
            }
            std::thread::sleep(TICK);
        }
    }

    fn reap(&self, target: Target, deny: &Deny, cgroup_root: Option<&Path>) {
        let pids = kill::kill_live(target, cgroup_root);
        info!(?target, cause = deny.cause, ?pids, "reaped");
        if pids.is_empty() {
            return;
        }
        let Some(spool) = &self.spool else { return };
        let record = Reaped {
            target,
            cause: deny.cause,
            pids,
            boot_ns: boot_ns(),
        };
        if let Err(e) = append(&spool.join(REAPED_FILE), &record) {
            warn!(error = %e, "cannot record a kill for the next agent");
        }
    }
}

fn append(path: &Path, record: &Reaped) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .or_else(|_| {
            write_private(path, b"")?;
            fs::OpenOptions::new().append(true).open(path)
        })?;
    file.write_all(&line)?;
    file.sync_data()?;
    Ok(())
}

/// The kills a reaper recorded, taken: the file is emptied once read.
#[must_use]
pub fn take_reaped(spool: &Path) -> Vec<Reaped> {
    let path = spool.join(REAPED_FILE);
    let Ok(text) = fs::read_to_string(&path) else {
        return Vec::new();
    };
    let reaped = text
        .lines()
        .filter_map(|line| {
            serde_json::from_str(line)
                .inspect_err(|e| warn!(error = %e, "an unreadable line in {REAPED_FILE}"))
                .ok()
        })
        .collect();
    let _ = fs::remove_file(&path);
    reaped
}
