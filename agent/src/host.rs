//! Who this host is: the id its chains and grants name.

use anyhow::Context as _;

/// This host's stable id: systemd's machine id, else the host name (`pki` defines it, as
/// certificates name hosts by it).
pub use pki::host_id;

/// This boot's id: a restart of the agent within one boot and a reboot are told apart by
/// it.
pub fn boot_id() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading the boot id")?
        .trim()
        .to_owned())
}

/// Bytes of a host's display name at most: a label an operator reads, not an identity.
const NAME_MAX: usize = 64;

/// A display name given in a flag or the config file: 1 to 64 bytes, no control characters
/// (it reaches operators' terminals).
pub fn parse_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(format!("must be 1 to {NAME_MAX} bytes, not {}", name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err("must not hold control characters".into());
    }
    Ok(name.to_owned())
}

/// The name operators see for this host: the configured one, else the kernel's host name
/// (cut to the bound), else none.
#[must_use]
pub fn display_name(configured: Option<&str>) -> String {
    if let Some(name) = configured {
        return name.to_owned();
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut name: String = kernel.trim().chars().filter(|c| !c.is_control()).collect();
    while name.len() > NAME_MAX {
        name.pop();
    }
    name
}

/// Where the one agent of this host holds its lock.
pub const LOCK_FILE: &str = "/run/recorder/agent.lock";

const LOCK_TRIES: usize = 10;

/// Held for as long as this agent runs: a second agent on the host would double every
/// record, fight over the deny maps, and claim to be the host too.
#[derive(Debug)]
pub struct InstanceLock {
    _file: std::fs::File,
}

/// Opens the lock file at `path`, creating it.
pub fn open_lock(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Takes `file`'s exclusive lock, held until the process ends. [`held`] takes a lock
/// shared for an instant to test it: a few tries ride over that.
#[must_use]
pub fn lock_exclusive(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd as _;
    (0..LOCK_TRIES).any(|_| {
        // SAFETY: a valid descriptor; the lock goes with it when the process ends.
        let ok = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        ok
    })
}

/// Whether some process holds the lock at `path`: it is taken shared for an instant, and
/// released at once.
pub fn held(path: &std::path::Path) -> anyhow::Result<bool> {
    use std::os::fd::AsRawFd as _;
    if !path.exists() {
        return Ok(false);
    }
    let file = open_lock(path)?;
    // SAFETY: a valid descriptor.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    }
    Ok(!free)
}

/// Takes the host's agent lock, or fails naming the pid that holds it.
pub fn lock_instance(path: &std::path::Path) -> anyhow::Result<InstanceLock> {
    use std::{
        io::{Read as _, Seek as _, Write as _},
        os::unix::fs::DirBuilderExt as _,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = open_lock(path)?;
    if !lock_exclusive(&file) {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        anyhow::bail!(
            "another agent already runs on this host (pid {}, holding {}): one agent per host, \
             or every record would be doubled and enforcement fought over",
            if holder.is_empty() { "unknown" } else { holder },
            path.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(InstanceLock { _file: file })
}
