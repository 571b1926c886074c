//! Sensor `task`: process creation and exit, so the agent can keep its process table.

use agent_common::{
    event::{Header, kind},
    task::TaskRecord,
};
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    emit::{fill_header, submit},
    kernel::{RawTask, Task},
};

const RECORD_SIZE: usize = core::mem::size_of::<TaskRecord>();

#[inline(always)]
fn blank() -> TaskRecord {
    TaskRecord {
        header: unsafe { core::mem::zeroed::<Header>() },
        exit_code: 0,
        reserved: 0,
    }
}

/// `sched_process_fork(parent, child)`: threads are skipped, only new processes count.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn task_sched_process_fork(ctx: RawTracePointContext) -> i32 {
    match try_fork(&ctx) {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let child = RawTask::from_arg(ctx.arg::<u64>(1));
    let (pid, tgid) = (child.pid()?, child.tgid()?);
    if pid != tgid {
        return Ok(());
    }
    let parent = Task::current();
    let mut rec = blank();
    fill_header(&mut rec.header, kind::FORK, parent);
    rec.header.ppid = rec.header.tgid;
    rec.header.pid = pid;
    rec.header.tgid = tgid;
    submit(&raw mut rec.header, RECORD_SIZE, 0);
    Ok(())
}

/// `sched_process_exit(task, ...)`: reported once, when the last thread of the group exits.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn task_sched_process_exit(ctx: RawTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

fn try_exit(_ctx: &RawTracePointContext) -> Result<(), i64> {
    // The exiting task is the current one.
    let task = Task::current();
    if !task.group_dead()? {
        return Ok(());
    }
    let mut rec = blank();
    fill_header(&mut rec.header, kind::EXIT, task);
    rec.header.pid = rec.header.tgid;
    rec.exit_code = task.exit_code();
    submit(&raw mut rec.header, RECORD_SIZE, 0);
    Ok(())
}
