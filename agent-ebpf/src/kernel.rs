//! The one accessor layer for kernel memory. Offsets come from `KERNEL_LAYOUT`, which the
//! agent fills from the running kernel's BTF before load; no offset is written here.

use agent_common::{
    config::CaptureConfig,
    event::make_dev,
    layout::KernelLayout,
};
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    programs::TracePointContext,
};

#[unsafe(no_mangle)]
static KERNEL_LAYOUT: KernelLayout = KernelLayout::zeroed();

#[unsafe(no_mangle)]
pub(crate) static CAPTURE_CONFIG: CaptureConfig = CaptureConfig::zeroed();

/// Volatile, so the compiler never folds the zero the object was built with.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const KERNEL_LAYOUT.$field) } as usize
    };
}

macro_rules! config {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::CAPTURE_CONFIG.$field) }
    };
}
pub(crate) use config;

#[inline(always)]
fn read<T>(base: *const u8, off: usize) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off).cast::<T>()) }.map_err(i64::from)
}

#[inline(always)]
fn read_ptr(base: *const u8, off: usize) -> Result<*const u8, i64> {
    let p: *const u8 = read(base, off)?;
    if p.is_null() { Err(-1) } else { Ok(p) }
}

#[derive(Clone, Copy)]
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn current() -> Self {
        Self(unsafe { bpf_get_current_task() } as *const u8)
    }

    #[inline(always)]
    pub fn from_ptr(p: u64) -> Self {
        Self(p as *const u8)
    }

    #[inline(always)]
    pub fn pid(self) -> Result<u32, i64> {
        read(self.0, offset!(task_pid))
    }

    #[inline(always)]
    pub fn tgid(self) -> Result<u32, i64> {
        read(self.0, offset!(task_tgid))
    }

    #[inline(always)]
    pub fn ppid(self) -> Result<u32, i64> {
        Self(read_ptr(self.0, offset!(task_real_parent))?).tgid()
    }

    #[inline(always)]
    pub fn euid(self) -> Result<u32, i64> {
        read(read_ptr(self.0, offset!(task_cred))?, offset!(cred_euid))
    }

    #[inline(always)]
    pub fn loginuid(self) -> Result<u32, i64> {
        read(self.0, offset!(task_loginuid))
    }

    #[inline(always)]
    pub fn sessionid(self) -> Result<u32, i64> {
        read(self.0, offset!(task_sessionid))
    }

    #[inline(always)]
    pub fn exit_code(self) -> Result<i32, i64> {
        read(self.0, offset!(task_exit_code))
    }

    /// True once the last thread of the group has started exiting.
    #[inline(always)]
    pub fn group_dead(self) -> Result<bool, i64> {
        let live: i32 = read(read_ptr(self.0, offset!(task_signal))?, offset!(signal_live))?;
        Ok(live == 0)
    }

    /// `dev_t` of the controlling terminal.
    #[inline(always)]
    pub fn tty_dev(self) -> Result<u32, i64> {
        tty_dev(read_ptr(read_ptr(self.0, offset!(task_signal))?, offset!(signal_tty))?)
    }

    /// User addresses of the NUL-separated argument block of the current image.
    #[inline(always)]
    pub fn arg_range(self) -> Result<(u64, u64), i64> {
        let mm = read_ptr(self.0, offset!(task_mm))?;
        Ok((read(mm, offset!(mm_arg_start))?, read(mm, offset!(mm_arg_end))?))
    }

    /// The `struct file` behind descriptor `fd`.
    #[inline(always)]
    pub fn file(self, fd: u32) -> Result<File, i64> {
        let fdt = read_ptr(read_ptr(self.0, offset!(task_files))?, offset!(files_fdt))?;
        let max_fds: u32 = read(fdt, offset!(fdt_max_fds))?;
        if fd >= max_fds {
            return Err(-1);
        }
        let fds = read_ptr(fdt, offset!(fdt_fd))?;
        Ok(File(read_ptr(fds, fd as usize * 8)?))
    }
}

#[derive(Clone, Copy)]
pub struct File(*const u8);

impl File {
    /// `i_rdev` of the file's inode: 0 for anything but a device node.
    #[inline(always)]
    pub fn rdev(self) -> Result<u32, i64> {
        read(read_ptr(self.0, offset!(file_inode))?, offset!(inode_rdev))
    }

    /// The `tty_struct` of an open terminal file.
    #[inline(always)]
    pub fn tty(self) -> Result<*const u8, i64> {
        read_ptr(read_ptr(self.0, offset!(file_private_data))?, offset!(tty_file_private_tty))
    }
}

/// `dev_t` of a terminal, computed the way the tty core numbers it.
#[inline(always)]
pub fn tty_dev(tty: *const u8) -> Result<u32, i64> {
    let driver = read_ptr(tty, offset!(tty_driver))?;
    let major: u32 = read(driver, offset!(driver_major))?;
    let minor_start: u32 = read(driver, offset!(driver_minor_start))?;
    let index: u32 = read(tty, offset!(tty_index))?;
    Ok(make_dev(major, minor_start + index))
}

/// The other side of a pty pair.
#[inline(always)]
pub fn tty_link(tty: *const u8) -> Result<*const u8, i64> {
    read_ptr(tty, offset!(tty_link))
}

#[inline(always)]
pub fn bprm_filename(bprm: u64) -> Result<*const u8, i64> {
    read_ptr(bprm as *const u8, offset!(bprm_filename))
}

/// Argument `n` of a `syscalls/sys_enter_*` tracepoint.
#[inline(always)]
pub fn syscall_arg(ctx: &TracePointContext, n: usize) -> Result<u64, i64> {
    let off = offset!(sys_enter_args) + n * 8;
    unsafe { ctx.read_at(off) }.map_err(i64::from)
}

/// Return value at a `syscalls/sys_exit_*` tracepoint.
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> Result<i64, i64> {
    let off = offset!(sys_exit_ret);
    unsafe { ctx.read_at(off) }.map_err(i64::from)
}
