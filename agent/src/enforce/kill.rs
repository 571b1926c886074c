//! Killing the live processes of a denied session or cgroup, from userspace: the kernel
//! catches a task at its next syscall, but an idle one (a shell waiting on its terminal)
//! makes none. Runs on the blocking pool, off the event path.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use crate::{
    capture::event::Target,
    identity::cgroup::{cgroup_dir, cgroup_of, subtree_pids},
};

/// Passes over /proc per kill: the second and third catch children forked during the one
/// before (the kernel's deny map catches them too, at their first syscall).
const KILL_PASSES: usize = 3;

/// Whether process `pid` belongs to `target` now.
fn belongs(pid: u32, target: Target, cgroup_root: Option<&Path>) -> bool {
    match target {
        Target::Session(session) => {
            fs::read_to_string(format!("/proc/{pid}/sessionid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                == Some(session)
        }
        Target::Cgroup(id) => cgroup_root
            .and_then(|root| cgroup_of(root, pid))
            .is_some_and(|(_, ino)| ino == id),
    }
}

/// SIGKILLs every live process of `target` but this agent, and returns their pids. A
/// cgroup is killed whole through `cgroup.kill`, its nested cgroups with it, which no fork
/// can race; where the kernel lacks it, or this agent is inside, processes are killed one
/// by one. Each is pinned by a pidfd before it is checked, so a pid recycled between the
/// check and the signal cannot be hit.
#[must_use]
pub fn kill_live(target: Target, cgroup_root: Option<&Path>) -> Vec<u32> {
    if let Target::Cgroup(id) = target
        && let Some(killed) = cgroup_root.and_then(|root| kill_cgroup(root, id))
    {
        return killed;
    }
    kill_each(target, cgroup_root)
}

/// Writes `cgroup.kill` of cgroup `id`, returning the processes it held; `None` when that
/// cannot be done.
fn kill_cgroup(root: &Path, id: u64) -> Option<Vec<u32>> {
    let dir = cgroup_dir(root, id)?;
    let kill = dir.join("cgroup.kill");
    if !kill.exists() {
        return None;
    }
    let pids = subtree_pids(&dir);
    if pids.contains(&std::process::id()) {
        return None;
    }
    fs::write(&kill, "1").ok()?;
    Some(pids)
}

fn kill_each(target: Target, cgroup_root: Option<&Path>) -> Vec<u32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for _ in 0..KILL_PASSES {
        let mut found = false;
        let Ok(entries) = fs::read_dir("/proc") else {
            break;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || !belongs(pid, target, cgroup_root) {
                continue;
            }
            // SAFETY: plain syscalls; the fd is owned below.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            let Ok(fd) = i32::try_from(fd) else { continue };
            if fd < 0 {
                continue;
            }
            // SAFETY: pidfd_open returned a new fd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
            if !belongs(pid, target, cgroup_root) {
                continue;
            }
            // SAFETY: a valid pidfd, no siginfo, no flags.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if sent == 0 && !killed.contains(&pid) {
                killed.push(pid);
                found = true;
            }
        }
        if !found {
            break;
        }
    }
    killed
}
