//! Kernel-side enforcement: the audit sessions and cgroups whose tasks the kernel kills at
//! their next syscall, and the record it submits for each kill.

use crate::event::Header;

/// `u32` audit session id → [`Deny`].
pub const DENY_SESSIONS_MAP: &str = "DENY_SESSIONS";
/// `u64` cgroup id → [`Deny`].
pub const DENY_CGROUPS_MAP: &str = "DENY_CGROUPS";
/// Entries per deny map. Session ids and cgroup ids are not reused within a boot, so an
/// entry can stay for as long as the agent runs; the maps are LRU so the oldest go first.
pub const DENY_MAX: u32 = 16_384;

/// Why a session or cgroup is denied: an index the agent keeps (grant and reason), so the
/// kill record names them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deny {
    pub cause: u32,
}

/// A task the kernel sent SIGKILL: the header describes it at the moment of the kill.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KillRecord {
    pub header: Header,
    /// [`Deny::cause`] of the entry that matched.
    pub cause: u32,
    /// 0 when `bpf_send_signal` succeeded, else its error.
    pub result: i32,
}

const _: () = assert!(core::mem::size_of::<KillRecord>() == 88);

crate::user_pod!(Deny, KillRecord);
