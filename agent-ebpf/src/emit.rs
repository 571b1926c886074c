//! Filling record headers and submitting records: the only place that touches the ring
//! buffer and the loss counters.

use agent_common::{
    event::{CONTROL_BYTES, Header, kind},
    loss::LossCounters,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_smp_processor_id,
        bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

use crate::kernel::{Task, config};

/// Terminal records. Default size; the agent sets the real one at load time.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Exec, fork and exit records, apart from the terminal's (`agent_common::event::CONTROL_MAP`).
#[map(name = "CONTROL")]
static CONTROL: RingBuf = RingBuf::with_byte_size(CONTROL_BYTES, 0);

#[map(name = "LOSS")]
static LOSS: PerCpuArray<LossCounters> = PerCpuArray::with_max_entries(1, 0);

/// Fills `h` for the current task. Unreadable fields get the kernel's "unset" values rather
/// than failing the record: a partial identity is better evidence than none.
#[inline(always)]
pub fn fill_header(h: &mut Header, kind: u32, task: Task) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind;
    h.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.pid = pid_tgid as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.ppid = task.ppid();
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h.euid = task.euid().unwrap_or(u32::MAX);
    h.loginuid = task.loginuid();
    h.sessionid = task.sessionid();
    h.cgroup_id = task.cgroup_id().unwrap_or(0);
    h.tty = task.tty_dev().unwrap_or(0);
    h.cpu = unsafe { bpf_get_smp_processor_id() };
    h.comm = task.comm();
}

/// Submits `size` bytes at `record` (a header, then its payload), or counts the record and
/// its `payload` bytes as lost. Submits do not wake the reader until the unread backlog
/// passes `wakeup_bytes`: the reader drains on a short timer, which costs far less than a
/// wakeup per record.
#[inline(always)]
pub fn submit(record: *mut Header, size: usize, payload: u64) {
    let h = unsafe { &mut *record };
    let kind = h.kind;
    h.size = size as u32;
    let ring = if kind == kind::TTY_OUT || kind == kind::TTY_IN {
        &EVENTS
    } else {
        &CONTROL
    };
    let flags = if ring.query(u64::from(BPF_RB_AVAIL_DATA)) >= config!(wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let bytes = unsafe { core::slice::from_raw_parts(record.cast::<u8>(), size) };
    if ring.output::<[u8]>(bytes, u64::from(flags)).is_err() {
        count_loss(kind, 1, payload);
    }
}

#[inline(always)]
pub fn count_loss(kind: u32, records: u64, bytes: u64) {
    let slot = kind as usize;
    if slot >= kind::SLOTS {
        return;
    }
    if let Some(loss) = LOSS.get_ptr_mut(0) {
        let loss = unsafe { &mut *loss };
        loss.records[slot] += records;
        loss.bytes[slot] += bytes;
    }
}
