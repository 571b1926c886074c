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
/// Bytes of the working directory kept per exec: the path is built from its last component
/// back, so a longer one keeps its tail. A power of two, so offsets can be masked.
pub const CWD_CAP: usize = 512;
/// Steps of the working directory's walk: one per component or mount crossed.
pub const CWD_STEPS: u32 = 256;
/// Bytes of a script's interpreter path kept per exec (with its NUL), the kernel's own
/// bound on a `#!` line. A power of two, so offsets can be masked.
pub const INTERP_CAP: usize = 256;

pub mod flags {
    /// argv was longer than the configured bound; `argv` holds its prefix.
    pub const ARGV_TRUNCATED: u32 = 1;
    pub const FILENAME_TRUNCATED: u32 = 2;
    /// The kernel could not read argv (page not resident, or a bad user pointer).
    pub const ARGV_UNREADABLE: u32 = 4;
    /// The working directory is longer than `CWD_CAP` (or deeper than `CWD_STEPS`): `cwd`
    /// holds its last components.
    pub const CWD_TRUNCATED: u32 = 8;
    /// The working directory was removed (its name is the one it had).
    pub const CWD_DELETED: u32 = 16;
    /// The working directory is not below the process's root (a `chroot` with the directory
    /// left outside, or a detached mount): `cwd` is the path up to where the walk stopped.
    pub const CWD_UNREACHABLE: u32 = 32;
    /// The walk could not read a dentry or mount; `cwd_len` is 0.
    pub const CWD_UNREADABLE: u32 = 64;
    /// The new image's file could not be read from `mm->exe_file`; `image` is zero.
    pub const IMAGE_UNREADABLE: u32 = 128;
    /// `filename` named a script (`#!`) or a `binfmt_misc` program: `image` is its
    /// interpreter's file, not the file the caller named.
    pub const IMAGE_INTERPRETER: u32 = 256;
    /// The interpreter's path was longer than `INTERP_CAP`; its prefix is sent.
    pub const INTERP_TRUNCATED: u32 = 512;
    /// The executable's path (`mm->exe_file`) is walked as the working directory is; its
    /// flags are the working directory's, this many bits up.
    pub const EXE_SHIFT: u32 = 7;
    pub const EXE_TRUNCATED: u32 = CWD_TRUNCATED << EXE_SHIFT;
    /// The file was unlinked: `exe` is the path it had.
    pub const EXE_DELETED: u32 = CWD_DELETED << EXE_SHIFT;
    /// The file is not below the process's root: outside a chroot, or in no directory at
    /// all (a `memfd`, whose path is `/` and its name); `exe` is the path as far as it
    /// leads.
    pub const EXE_UNREACHABLE: u32 = CWD_UNREACHABLE << EXE_SHIFT;
    pub const EXE_UNREADABLE: u32 = CWD_UNREADABLE << EXE_SHIFT;
    const _: () = assert!(EXE_TRUNCATED > INTERP_TRUNCATED);
}

/// The file a successful exec mapped, as its inode said at that moment. Times are the raw
/// fields; the nanoseconds may carry kernel flag bits above bit 29 (multigrain ctime), which
/// the reader masks.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ImageId {
    pub inode: u64,
    pub size: i64,
    pub mtime_sec: i64,
    pub ctime_sec: i64,
    /// The kernel's `dev_t` of the file's filesystem (a `u32` in `MINOR_BITS` encoding),
    /// widened so that the record has no padding.
    pub dev: u64,
    pub mtime_nsec: u32,
    pub ctime_nsec: u32,
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
    /// Bytes of the working directory (a `u64` so that the record has no padding).
    pub cwd_len: u64,
    /// Bytes of the interpreter's path, sent after the working directory: set only with
    /// `IMAGE_INTERPRETER` (the path the kernel opened in place of `filename`).
    pub interp_len: u64,
    /// Bytes of the executable's path (`mm->exe_file`, resolved as the working directory
    /// is), sent between the working directory and the interpreter; 0 for a failed exec.
    pub exe_len: u64,
    /// Zero for a failed exec, or when `IMAGE_UNREADABLE` is set.
    pub image: ImageId,
    pub filename: [u8; FILENAME_CAP],
    pub argv: [u8; ARGV_CAP],
    /// Where the kernel builds the working directory, as the process sees it (up to its
    /// root), backwards into the last `cwd_len` bytes. Not sent from here: the path is
    /// copied to just after argv, so a record carries only the bytes it uses.
    pub cwd: [u8; CWD_CAP],
    /// Where the kernel builds the executable's path, as `cwd`.
    pub exe: [u8; CWD_CAP],
}

/// Bytes before `argv`; a record is submitted as this plus `argv_len`, plus `cwd_len` bytes
/// of working directory right after argv, `exe_len` bytes of executable path, and
/// `interp_len` bytes of interpreter path.
pub const EXEC_FIXED: usize = core::mem::offset_of!(ExecRecord, argv);

const _: () = assert!(EXEC_FIXED == 80 + 16 + 24 + 48 + FILENAME_CAP);
const _: () = assert!(CWD_CAP.is_power_of_two());
const _: () = assert!(ARGV_CAP.is_power_of_two());
const _: () = assert!(INTERP_CAP.is_power_of_two());
