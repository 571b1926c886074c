//! The one accessor layer for kernel memory. Offsets come from `KERNEL_LAYOUT`, which the
//! agent fills from the running kernel's BTF before load; no offset is written here.
//!
//! Two kinds of read. A [`Task`] comes from `bpf_get_current_task_btf`, a BTF-typed pointer:
//! reads through it (and through the struct pointers loaded from it) are plain loads, which
//! the verifier checks against the kernel's BTF at load time (it sees the read-only offsets
//! as constants). Everything else (a `struct file` from the descriptor array, tracepoint
//! arguments, raw tracepoint arguments) is read with `bpf_probe_read_kernel`, roughly a
//! hundred nanoseconds per call on this machine kind, so the hot path uses as few as it can.

use agent_common::{
    config::CaptureConfig, event::make_dev, exec::ImageId, layout::KernelLayout, tty,
};
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task_btf},
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

/// A probe read, for pointers the verifier has no BTF type for.
#[inline(always)]
fn read<T>(base: *const u8, off: usize) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off).cast::<T>()) }.map_err(i64::from)
}

#[inline(always)]
fn read_ptr(base: *const u8, off: usize) -> Result<*const u8, i64> {
    let p: *const u8 = read(base, off)?;
    if p.is_null() { Err(-1) } else { Ok(p) }
}

/// A plain load through a BTF-typed pointer. The verifier rewrites loads through pointers it
/// cannot prove valid into fault-safe ones, which read 0 from a bad address.
#[inline(always)]
fn load<T: Copy>(base: *const u8, off: usize) -> T {
    unsafe { base.wrapping_add(off).cast::<T>().read() }
}

#[inline(always)]
fn load_ptr(base: *const u8, off: usize) -> Result<*const u8, i64> {
    let p: *const u8 = load(base, off);
    if p.is_null() { Err(-1) } else { Ok(p) }
}

/// The current task, through its BTF-typed pointer.
#[derive(Clone, Copy)]
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn current() -> Self {
        Self(unsafe { bpf_get_current_task_btf() } as *const u8)
    }

    #[inline(always)]
    pub fn ppid(self) -> u32 {
        load_ptr(self.0, offset!(task_real_parent)).map_or(0, |p| load(p, offset!(task_tgid)))
    }

    #[inline(always)]
    pub fn euid(self) -> Result<u32, i64> {
        Ok(load(
            load_ptr(self.0, offset!(task_cred))?,
            offset!(cred_euid),
        ))
    }

    #[inline(always)]
    pub fn loginuid(self) -> u32 {
        load(self.0, offset!(task_loginuid))
    }

    #[inline(always)]
    pub fn sessionid(self) -> u32 {
        load(self.0, offset!(task_sessionid))
    }

    /// The task's name. The helper `bpf_get_current_comm` copies the same bytes for about
    /// 80 ns more, on the path of every record (docs/capture.md, "Where a record's time goes").
    #[inline(always)]
    pub fn comm(self) -> [u8; 16] {
        load(self.0, offset!(task_comm))
    }

    /// The id of the task's cgroup in the v2 hierarchy, as `bpf_get_current_cgroup_id`
    /// computes it (`cgroups->dfl_cgrp->kn->id`), in plain loads instead of a helper call.
    #[inline(always)]
    pub fn cgroup_id(self) -> Result<u64, i64> {
        let cgroup = load_ptr(
            load_ptr(self.0, offset!(task_cgroups))?,
            offset!(css_set_dfl_cgrp),
        )?;
        Ok(load(
            load_ptr(cgroup, offset!(cgroup_kn))?,
            offset!(kernfs_node_id),
        ))
    }

    #[inline(always)]
    pub fn exit_code(self) -> i32 {
        load(self.0, offset!(task_exit_code))
    }

    /// True once the last thread of the group has started exiting.
    #[inline(always)]
    pub fn group_dead(self) -> Result<bool, i64> {
        let live: i32 = load(
            load_ptr(self.0, offset!(task_signal))?,
            offset!(signal_live),
        );
        Ok(live == 0)
    }

    /// `dev_t` of the controlling terminal.
    #[inline(always)]
    pub fn tty_dev(self) -> Result<u32, i64> {
        let tty = load_ptr(load_ptr(self.0, offset!(task_signal))?, offset!(signal_tty))?;
        let driver = load_ptr(tty, offset!(tty_driver))?;
        let major: u32 = load(driver, offset!(driver_major));
        let minor_start: u32 = load(driver, offset!(driver_minor_start));
        let index: u32 = load(tty, offset!(tty_index));
        Ok(make_dev(major, minor_start + index))
    }

    /// User addresses of the NUL-separated argument block of the current image.
    #[inline(always)]
    pub fn arg_range(self) -> Result<(u64, u64), i64> {
        let mm = load_ptr(self.0, offset!(task_mm))?;
        Ok((
            load(mm, offset!(mm_arg_start)),
            load(mm, offset!(mm_arg_end)),
        ))
    }

    /// The working directory and the root of the current task (`fs->pwd`, `fs->root`).
    #[inline(always)]
    pub fn fs_paths(self) -> Result<(PathPos, PathPos), i64> {
        let fs = load_ptr(self.0, offset!(task_fs))?;
        Ok((
            PathPos {
                dentry: load(fs, offset!(fs_pwd_dentry)),
                mnt: load(fs, offset!(fs_pwd_mnt)),
            },
            PathPos {
                dentry: load(fs, offset!(fs_root_dentry)),
                mnt: load(fs, offset!(fs_root_mnt)),
            },
        ))
    }

    /// The inode of the file the current image was mapped from (`mm->exe_file`), and where
    /// that file sits.
    #[inline(always)]
    pub fn image(self) -> Result<(ImageId, PathPos), i64> {
        let mm = load_ptr(self.0, offset!(task_mm))?;
        let file = load_ptr(mm, offset!(mm_exe_file))?;
        let inode = load_ptr(file, offset!(file_inode))?;
        let sb = load_ptr(inode, offset!(inode_sb))?;
        let path = PathPos {
            dentry: load_ptr(file, offset!(file_path_dentry))? as u64,
            mnt: load_ptr(file, offset!(file_path_mnt))? as u64,
        };
        let id = ImageId {
            inode: load(inode, offset!(inode_ino)),
            size: load(inode, offset!(inode_size)),
            mtime_sec: load(inode, offset!(inode_mtime_sec)),
            ctime_sec: load(inode, offset!(inode_ctime_sec)),
            dev: u64::from(load::<u32>(sb, offset!(sb_dev))),
            mtime_nsec: load(inode, offset!(inode_mtime_nsec)),
            ctime_nsec: load(inode, offset!(inode_ctime_nsec)),
        };
        Ok((id, path))
    }

    /// The `struct file` behind descriptor `fd`.
    #[inline(always)]
    pub fn file(self, fd: u32) -> Result<File, i64> {
        let fdt = load_ptr(load_ptr(self.0, offset!(task_files))?, offset!(files_fdt))?;
        let max_fds: u32 = load(fdt, offset!(fdt_max_fds));
        if fd >= max_fds {
            return Err(-1);
        }
        // `fd` is `struct file **`: the verifier has no struct type for the array, so the
        // slot is probe-read.
        let fds: *const u8 = load(fdt, offset!(fdt_fd));
        Ok(File(read_ptr(fds, fd as usize * 8)?))
    }
}

/// A task from a raw tracepoint argument, which carries no BTF type.
#[derive(Clone, Copy)]
pub struct RawTask(*const u8);

impl RawTask {
    #[inline(always)]
    pub fn from_arg(p: u64) -> Self {
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
        read_ptr(
            read_ptr(self.0, offset!(file_private_data))?,
            offset!(tty_file_private_tty),
        )
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

/// Whether a terminal reads lines it does not show (a password prompt), from its `c_lflag`.
#[inline(always)]
pub fn tty_hides_input(tty: *const u8) -> Result<bool, i64> {
    let lflag: u32 = read(tty, offset!(tty_lflag))?;
    Ok(tty::hides_input(lflag))
}

/// The other side of a pty pair.
#[inline(always)]
pub fn tty_link(tty: *const u8) -> Result<*const u8, i64> {
    read_ptr(tty, offset!(tty_link))
}

/// The effective uids of the leaders of a terminal's session and of its foreground process
/// group: whose programs read what is pushed into its input. Each is
/// [`tty::NO_LEADER`] when the terminal has none, or the leader has exited. Read without the
/// terminal's lock, as `/proc` reads them: a session or group changing meanwhile can give
/// the one before.
#[inline(always)]
pub fn tty_readers(tty: *const u8) -> (u32, u32) {
    let leader_euid = |pid_at: usize| -> Result<u32, i64> {
        let pid = read_ptr(tty, pid_at)?;
        let link = read_ptr(pid, offset!(pid_tasks))?;
        let task = link.wrapping_sub(offset!(task_pid_links));
        read(read_ptr(task, offset!(task_cred))?, offset!(cred_euid))
    };
    (
        leader_euid(offset!(tty_session)).unwrap_or(tty::NO_LEADER),
        leader_euid(offset!(tty_pgrp)).unwrap_or(tty::NO_LEADER),
    )
}

/// A place in the file tree: a dentry, and the mount (`struct vfsmount`) it is seen through.
/// Plain addresses: a walk keeps them in a `bpf_loop` context, where no BTF type survives,
/// so every read from them is a probe read.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PathPos {
    pub dentry: u64,
    pub mnt: u64,
}

/// The dentry above `dentry`; `dentry` itself at the root of its filesystem.
#[inline(always)]
pub fn dentry_parent(dentry: u64) -> Result<u64, i64> {
    read(dentry as *const u8, offset!(dentry_parent))
}

/// The address and length of `dentry`'s name (not NUL-terminated for this purpose).
#[inline(always)]
pub fn dentry_name(dentry: u64) -> Result<(u64, u32), i64> {
    let d = dentry as *const u8;
    Ok((
        read(d, offset!(dentry_name))?,
        read(d, offset!(dentry_name_len))?,
    ))
}

/// Whether `dentry` was removed from the tree (`d_unhashed`): true of a deleted directory,
/// and of a filesystem's root, which is never hashed.
#[inline(always)]
pub fn dentry_unhashed(dentry: u64) -> Result<bool, i64> {
    let pprev: u64 = read(dentry as *const u8, offset!(dentry_hash_pprev))?;
    Ok(pprev == 0)
}

/// The root dentry of the mount `mnt`.
#[inline(always)]
pub fn mount_root(mnt: u64) -> Result<u64, i64> {
    read(mnt as *const u8, offset!(vfsmount_root))
}

/// Where the mount `mnt` is mounted: its mountpoint, seen through its parent mount. `None`
/// for the top mount of its namespace, which is its own parent.
#[inline(always)]
pub fn mount_up(mnt: u64) -> Result<Option<PathPos>, i64> {
    let mount = mnt.wrapping_sub(offset!(mount_mnt) as u64);
    let parent: u64 = read(mount as *const u8, offset!(mount_parent))?;
    if parent == mount {
        return Ok(None);
    }
    Ok(Some(PathPos {
        dentry: read(mount as *const u8, offset!(mount_mountpoint))?,
        mnt: parent.wrapping_add(offset!(mount_mnt) as u64),
    }))
}

#[inline(always)]
pub fn bprm_filename(bprm: u64) -> Result<*const u8, i64> {
    read_ptr(bprm as *const u8, offset!(bprm_filename))
}

/// The path the kernel ran: `filename` itself, unless a script or `binfmt_misc` handler
/// replaced it with an interpreter's (a string of its own).
#[inline(always)]
pub fn bprm_interp(bprm: u64) -> Result<*const u8, i64> {
    read_ptr(bprm as *const u8, offset!(bprm_interp))
}

/// The opcode of an `io_uring` request (`IORING_OP_*`).
#[inline(always)]
pub fn io_req_opcode(req: u64) -> Result<u8, i64> {
    read(req as *const u8, offset!(io_kiocb_opcode))
}

/// The user address and length of an `io_uring` read or write request: a buffer and its
/// bytes, or for a vectored one an `iovec` array and its count.
#[inline(always)]
pub fn io_rw(req: u64) -> Result<(u64, u32), i64> {
    let req = req as *const u8;
    Ok((
        read(req, offset!(io_rw_addr))?,
        read(req, offset!(io_rw_len))?,
    ))
}

/// The length of an `io_uring` splice, and the descriptor it reads from.
#[inline(always)]
pub fn io_splice(req: u64) -> Result<(u64, i32), i64> {
    let req = req as *const u8;
    Ok((
        read(req, offset!(io_splice_len))?,
        read(req, offset!(io_splice_fd_in))?,
    ))
}

/// The first `N` arguments of a `syscalls/sys_enter_*` tracepoint, in one read. (A tracepoint
/// context can only be loaded from at offsets fixed in the instruction, and ours come from
/// BTF at load time.)
#[inline(always)]
pub fn syscall_args<const N: usize>(ctx: &TracePointContext) -> Result<[u64; N], i64> {
    let off = offset!(sys_enter_args);
    unsafe { ctx.read_at(off) }.map_err(i64::from)
}

/// The return value of a `syscalls/sys_exit_*` tracepoint.
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> Result<i64, i64> {
    let off = offset!(sys_exit_ret);
    unsafe { ctx.read_at(off) }.map_err(i64::from)
}
