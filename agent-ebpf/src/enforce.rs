//! Sensor `enforce`: a task whose audit session or cgroup the agent has denied (its grant
//! ended, or it violated a kill-mode policy) gets SIGKILL at its first syscall once the
//! entry's `CLOCK_BOOTTIME` deadline has passed, whatever the agent is doing then, or
//! whether it runs at all: the maps are pinned and the program is attached through a pinned
//! link, so both outlive the agent (docs/grants.md). The agent's reaper kills the idle
//! tasks, which make no syscall.
//!
//! The signal is sent at syscall entry and delivered when the syscall returns, so that one
//! syscall may still complete: stopping it would take an LSM hook or `bpf_override_return`,
//! and this kernel allows neither.

use agent_common::{
    enforce::{DENY_MAX, Deny, EXEMPT_AGENT, EXEMPT_REAPER, EXEMPT_SLOTS, KILLS_BYTES, KillRecord},
    event::{AUDIT_UNSET, Header, kind},
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated::bpf_send_signal},
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap, RingBuf},
    programs::RawTracePointContext,
};

use crate::{
    emit::{count_loss, fill_header},
    kernel::Task,
};

const SIGKILL: u32 = 9;

#[map(name = "DENY_SESSIONS")]
static SESSIONS: LruHashMap<u32, Deny> = LruHashMap::pinned(DENY_MAX, 0);

#[map(name = "DENY_CGROUPS")]
static CGROUPS: LruHashMap<u64, Deny> = LruHashMap::pinned(DENY_MAX, 0);

#[map(name = "EXEMPT")]
static EXEMPT: Array<u32> = Array::pinned(EXEMPT_SLOTS, 0);

#[map(name = "KILLS")]
static KILLS: RingBuf = RingBuf::pinned(KILLS_BYTES, 0);

/// Every syscall entry on the host passes here once the agent has attached it, which it
/// does when it first writes a deny entry.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn enforce_sys_enter(_ctx: RawTracePointContext) -> i32 {
    let task = Task::current();
    let Some(deny) = denied(task) else {
        return 0;
    };
    if deny.deadline_ns > unsafe { bpf_ktime_get_boot_ns() } {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if exempt(EXEMPT_AGENT, tgid) || exempt(EXEMPT_REAPER, tgid) {
        return 0;
    }
    let mut rec = KillRecord {
        header: unsafe { core::mem::zeroed::<Header>() },
        cause: deny.cause,
        result: unsafe { bpf_send_signal(SIGKILL) } as i32,
    };
    fill_header(&mut rec.header, kind::KILL, task);
    rec.header.size = core::mem::size_of::<KillRecord>() as u32;
    // Kills are rare: each one wakes the reader at once. A full ring (thousands of kills
    // unread, with no agent running) is counted like any other loss.
    if KILLS.output::<KillRecord>(&rec, 0).is_err() {
        count_loss(kind::KILL, 1, 0);
    }
    0
}

#[inline(always)]
fn exempt(slot: u32, tgid: u32) -> bool {
    EXEMPT.get(slot).is_some_and(|t| *t == tgid && tgid != 0)
}

#[inline(always)]
fn denied(task: Task) -> Option<Deny> {
    let session = task.sessionid();
    if session != AUDIT_UNSET
        && let Some(deny) = unsafe { SESSIONS.get(session) }
    {
        return Some(*deny);
    }
    let cgroup = task.cgroup_id().ok()?;
    unsafe { CGROUPS.get(cgroup) }.copied()
}
