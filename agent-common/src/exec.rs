//! `exec` records: a successful exec from `sched_process_exec`, or a failed `execve(at)`
//! seen on syscall exit.

use crate::event::Header;

/// Compiled capacity of the argv buffer (with its slack, the per-CPU scratch must stay under
/// the kernel's 32 KiB per-CPU value limit). The runtime bound (`CaptureConfig::argv_max`) may be
/// lower, never higher. A power of two, so the kernel side can mask offsets for the verifier.
pub const ARGV_CAP: usize = 8192;
/// Default runtime argv bound, in bytes of NUL-separated strings.
pub const ARGV_DEFAULT: u32 = 8192;
/// Most argument pointers walked for a failed exec (a successful one reads the whole block).
pub const FAILED_ARGS_MAX: u32 = 128;
pub const FILENAME_CAP: usize = 512;

pub mod flags {
    /// argv was longer than the configured bound; `argv` holds its prefix.
    pub const ARGV_TRUNCATED: u32 = 1;
    pub const FILENAME_TRUNCATED: u32 = 2;
    /// The kernel could not read argv (page not resident, or a bad user pointer).
    pub const ARGV_UNREADABLE: u32 = 4;
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub header: Header,
    /// 0 for success, `-errno` for a failed exec.
    pub result: i32,
    pub flags: u32,
    pub filename_len: u32,
    /// Bytes of `argv` that are valid: NUL-terminated strings back to back.
    pub argv_len: u32,
    pub filename: [u8; FILENAME_CAP],
    pub argv: [u8; ARGV_CAP],
}

/// Bytes before `argv`; a record is submitted as this plus `argv_len`.
pub const EXEC_FIXED: usize = core::mem::offset_of!(ExecRecord, argv);

const _: () = assert!(EXEC_FIXED == 80 + 16 + FILENAME_CAP);
const _: () = assert!(ARGV_CAP.is_power_of_two());
