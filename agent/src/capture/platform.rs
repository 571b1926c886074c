//! What the host must provide before any program loads: privileges, tracefs and bpffs.

use std::{ffi::CString, fs, io, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";
const TRACEFS_MAGIC: i64 = 0x7472_6163;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(
        "the agent needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its kernel programs, \
         and this process has neither: run it as root"
    )]
    Privileges,
    #[error("cannot read this process's capabilities: {0}")]
    Capabilities(io::Error),
    #[error("cannot mount {fs} at {path}: {source}")]
    Mount {
        fs: &'static str,
        path: &'static str,
        source: io::Error,
    },
}

/// Fails with a clear message unless the process may load tracing programs.
pub fn check_privileges() -> Result<(), PlatformError> {
    let status = fs::read_to_string("/proc/self/status").map_err(PlatformError::Capabilities)?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| PlatformError::Capabilities(io::Error::other("no CapEff line")))?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(PlatformError::Privileges)
    }
}

/// Mounts tracefs (tracepoint ids are read from it) and bpffs when they are missing. Returns
/// the filesystems it mounted.
pub fn ensure_mounts() -> Result<Vec<&'static str>, PlatformError> {
    let mut mounted = Vec::new();
    for (fs, path, magic) in [
        ("tracefs", TRACEFS, TRACEFS_MAGIC),
        ("bpf", BPFFS, BPF_FS_MAGIC),
    ] {
        if fs_magic(path) == Some(magic) {
            continue;
        }
        mount(fs, path).map_err(|source| PlatformError::Mount { fs, path, source })?;
        mounted.push(fs);
    }
    Ok(mounted)
}

fn fs_magic(path: &str) -> Option<i64> {
    let c = CString::new(path).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    (unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0).then_some(st.f_type)
}

fn mount(fs: &str, path: &str) -> io::Result<()> {
    if !Path::new(path).exists() {
        fs::create_dir_all(path)?;
    }
    let (src, target) = (CString::new(fs)?, CString::new(path)?);
    // SAFETY: all pointers are valid C strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
