//! Sensor `enforce`: a task whose audit session or cgroup the agent has denied (its grant
//! ended, or it violated a kill-mode policy) gets SIGKILL at its next syscall, whatever the
//! agent is doing at that moment. The agent kills idle tasks from userspace; this catches
//! the ones it races with (a fork during its scan) and the ones it cannot see yet.
//!
//! The signal is sent at syscall entry and delivered when the syscall returns, so that one
//! syscall may still complete: stopping it would take an LSM hook or `bpf_override_return`,
//! and this kernel allows neither.

use agent_common::{
    enforce::{DENY_MAX, Deny, KillRecord},
    event::{AUDIT_UNSET, Header, kind},
};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, generated::bpf_send_signal},
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};

use crate::{
    emit::{fill_header, submit},
    kernel::{Task, config},
};

const SIGKILL: u32 = 9;

#[map(name = "DENY_SESSIONS")]
static SESSIONS: LruHashMap<u32, Deny> = LruHashMap::with_max_entries(DENY_MAX, 0);

#[map(name = "DENY_CGROUPS")]
static CGROUPS: LruHashMap<u64, Deny> = LruHashMap::with_max_entries(DENY_MAX, 0);

/// Every syscall entry on the host passes here once the agent has attached it, which it
/// does at its first deny.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn enforce_sys_enter(_ctx: RawTracePointContext) -> i32 {
    let task = Task::current();
    let Some(deny) = denied(task) else {
        return 0;
    };
    let mut rec = KillRecord {
        header: unsafe { core::mem::zeroed::<Header>() },
        cause: deny.cause,
        result: 0,
    };
    fill_header(&mut rec.header, kind::KILL, task);
    if rec.header.tgid == config!(agent_tgid) {
        return 0;
    }
    rec.result = unsafe { bpf_send_signal(SIGKILL) } as i32;
    submit(&raw mut rec.header, core::mem::size_of::<KillRecord>(), 0);
    0
}

#[inline(always)]
fn denied(task: Task) -> Option<Deny> {
    let session = task.sessionid();
    if session != AUDIT_UNSET
        && let Some(deny) = unsafe { SESSIONS.get(session) }
    {
        return Some(*deny);
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    unsafe { CGROUPS.get(cgroup) }.copied()
}
