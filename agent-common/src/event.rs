//! The header every kernel record starts with.

/// Record kind ids. Never reuse or renumber one: old spools and tools depend on them.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const TTY_OUT: u32 = 4;
    pub const TTY_IN: u32 = 5;
    /// The kernel killed a task of a denied session or cgroup.
    pub const KILL: u32 = 6;
    /// One past the largest kind id; sizes per-kind counter arrays.
    pub const SLOTS: usize = 8;
}

/// Name of the ring buffer terminal records are submitted to.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the ring buffer exec, fork and exit records are submitted to: a ring of their
/// own, so that a terminal flood can never crowd out the exec that judging and enforcement
/// depend on.
pub const CONTROL_MAP: &str = "CONTROL";
/// Bytes of [`CONTROL_MAP`]: about 1,000 execs of the largest argv, or 40,000 forks.
pub const CONTROL_BYTES: u32 = 4 << 20;

pub const COMM_LEN: usize = 16;

/// The acting task's identity, as the kernel saw it when the record was made.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub kind: u32,
    /// Bytes of the whole record as submitted, header included.
    pub size: u32,
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub ktime_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub loginuid: u32,
    pub sessionid: u32,
    /// cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    /// Controlling tty as a kernel `dev_t` (`major << 20 | minor`), 0 when none.
    pub tty: u32,
    pub cpu: u32,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<Header>() == 80);

/// The kernel's "no loginuid / no session" value.
pub const AUDIT_UNSET: u32 = u32::MAX;

pub const MINOR_BITS: u32 = 20;

#[must_use]
pub const fn dev_major(dev: u32) -> u32 {
    dev >> MINOR_BITS
}

#[must_use]
pub const fn dev_minor(dev: u32) -> u32 {
    dev & ((1 << MINOR_BITS) - 1)
}

#[must_use]
pub const fn make_dev(major: u32, minor: u32) -> u32 {
    (major << MINOR_BITS) | minor
}

crate::user_pod!(Header);
