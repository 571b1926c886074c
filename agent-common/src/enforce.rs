//! Kernel-side enforcement: the audit sessions and cgroups whose tasks the kernel kills at
//! their next syscall once their deadline has passed, and the record it submits for each
//! kill. These maps are pinned in bpffs (docs/grants.md, "Enforcement without the agent"),
//! so they, and the program that reads them, outlive the agent that wrote them.

use crate::event::Header;

/// `u32` audit session id → [`Deny`].
pub const DENY_SESSIONS_MAP: &str = "DENY_SESSIONS";
/// `u64` cgroup id → [`Deny`].
pub const DENY_CGROUPS_MAP: &str = "DENY_CGROUPS";
/// The enforcement program's own ring buffer of [`KillRecord`]s. It is pinned, so kills the
/// kernel makes while no agent runs wait there for the next one.
pub const KILLS_MAP: &str = "KILLS";
/// Bytes of [`KILLS_MAP`]: about 2,900 kill records.
pub const KILLS_BYTES: u32 = 256 << 10;
/// `u32` index → tgid: the processes the enforcement program never kills, whatever session
/// or cgroup they are in ([`EXEMPT_AGENT`], [`EXEMPT_REAPER`]). A pinned program outlives
/// the agent that loaded it, so the tgids live in a map the next agent rewrites rather than
/// in the program's globals.
pub const EXEMPT_MAP: &str = "EXEMPT";
pub const EXEMPT_AGENT: u32 = 0;
pub const EXEMPT_REAPER: u32 = 1;
pub const EXEMPT_SLOTS: u32 = 2;
/// Entries per deny map. Session ids and cgroup ids are not reused within a boot, so an
/// entry can stay for the whole boot; the maps are LRU so the oldest go first.
pub const DENY_MAX: u32 = 16_384;

/// Why a session or cgroup is denied, and from when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deny {
    /// An index the agent keeps durably (grant and reason), so the kill record names them.
    pub cause: u32,
    _pad: u32,
    /// `CLOCK_BOOTTIME` nanoseconds from which its tasks die; 0 is at once. Boot time
    /// counts on through suspend and no one can step it, so a changed wall clock moves no
    /// deadline.
    pub deadline_ns: u64,
}

impl Deny {
    #[must_use]
    pub const fn new(cause: u32, deadline_ns: u64) -> Self {
        Self {
            cause,
            _pad: 0,
            deadline_ns,
        }
    }
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

const _: () = assert!(core::mem::size_of::<Deny>() == 16);
const _: () = assert!(core::mem::size_of::<KillRecord>() == 88);

crate::user_pod!(Deny, KillRecord);
