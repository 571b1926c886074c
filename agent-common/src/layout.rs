//! Offsets of the kernel struct fields the probes read. The agent resolves each one from the
//! running kernel's BTF and writes the table into the programs' read-only global
//! [`LAYOUT_GLOBAL`]; nothing here is a hard-coded kernel offset.

pub const LAYOUT_GLOBAL: &str = "KERNEL_LAYOUT";

/// The offset of an optional field this kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Where one offset comes from: a struct in vmlinux BTF and a dotted member path (anonymous
/// structs and unions are searched through), and the size the probe reads at that offset.
/// `path` may list alternatives separated by `|`, for members that kernels have renamed: the
/// first one this kernel has is used.
/// A `ty` starting with `?` is optional: on a kernel without that struct or member the offset
/// is [`ABSENT`], and the programs that read it have no hook there either (those of
/// `io_uring`, on a kernel built without it). `size` 0 skips the size check (flexible arrays,
/// and members whose size differs between kernels).
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: &'static str,
    pub path: &'static str,
    pub size: u32,
}

macro_rules! kernel_layout {
    ($($field:ident => $ty:literal $path:literal $size:literal),* $(,)?) => {
        /// Byte offsets, one per field the probes read.
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        pub struct KernelLayout {
            $(pub $field: u32,)*
        }

        impl KernelLayout {
            pub const FIELDS: &[FieldSpec] = &[
                $(FieldSpec { name: stringify!($field), ty: $ty, path: $path, size: $size },)*
            ];

            #[must_use]
            pub const fn zeroed() -> Self {
                Self { $($field: 0,)* }
            }

            /// Builds the table by asking `offset_of` for each field, in `FIELDS` order.
            pub fn resolve<E>(mut offset_of: impl FnMut(&FieldSpec) -> Result<u32, E>) -> Result<Self, E> {
                let mut specs = Self::FIELDS.iter();
                Ok(Self {
                    $($field: offset_of(specs.next().expect("one spec per field"))?,)*
                })
            }
        }
    };
}

kernel_layout! {
    task_pid => "task_struct" "pid" 4,
    task_tgid => "task_struct" "tgid" 4,
    task_real_parent => "task_struct" "real_parent" 8,
    task_cred => "task_struct" "cred" 8,
    task_loginuid => "task_struct" "loginuid.val" 4,
    task_sessionid => "task_struct" "sessionid" 4,
    task_mm => "task_struct" "mm" 8,
    task_files => "task_struct" "files" 8,
    task_signal => "task_struct" "signal" 8,
    task_fs => "task_struct" "fs" 8,
    task_exit_code => "task_struct" "exit_code" 4,
    task_comm => "task_struct" "comm" 16,
    task_cgroups => "task_struct" "cgroups" 8,
    css_set_dfl_cgrp => "css_set" "dfl_cgrp" 8,
    cgroup_kn => "cgroup" "kn" 8,
    kernfs_node_id => "kernfs_node" "id" 8,
    cred_euid => "cred" "euid.val" 4,
    mm_arg_start => "mm_struct" "arg_start" 8,
    mm_arg_end => "mm_struct" "arg_end" 8,
    files_fdt => "files_struct" "fdt" 8,
    fdt_max_fds => "fdtable" "max_fds" 4,
    fdt_fd => "fdtable" "fd" 8,
    file_inode => "file" "f_inode" 8,
    file_path_mnt => "file" "f_path.mnt" 8,
    file_path_dentry => "file" "f_path.dentry" 8,
    file_private_data => "file" "private_data" 8,
    inode_rdev => "inode" "i_rdev" 4,
    mm_exe_file => "mm_struct" "exe_file" 8,
    inode_ino => "inode" "i_ino" 8,
    inode_sb => "inode" "i_sb" 8,
    inode_size => "inode" "i_size" 8,
    // The times moved from `timespec64` members to split fields in 6.11 (and were renamed
    // in 6.6 before that). The nanoseconds are a `u32` or a `long`: the probe reads the low
    // four bytes, which hold the whole value either way on this little-endian target.
    inode_mtime_sec => "inode" "i_mtime_sec|__i_mtime.tv_sec|i_mtime.tv_sec" 8,
    inode_mtime_nsec => "inode" "i_mtime_nsec|__i_mtime.tv_nsec|i_mtime.tv_nsec" 0,
    inode_ctime_sec => "inode" "i_ctime_sec|__i_ctime.tv_sec|i_ctime.tv_sec" 8,
    inode_ctime_nsec => "inode" "i_ctime_nsec|__i_ctime.tv_nsec|i_ctime.tv_nsec" 0,
    sb_dev => "super_block" "s_dev" 4,
    fs_pwd_mnt => "fs_struct" "pwd.mnt" 8,
    fs_pwd_dentry => "fs_struct" "pwd.dentry" 8,
    fs_root_mnt => "fs_struct" "root.mnt" 8,
    fs_root_dentry => "fs_struct" "root.dentry" 8,
    dentry_parent => "dentry" "d_parent" 8,
    dentry_name_len => "dentry" "d_name.len" 4,
    dentry_name => "dentry" "d_name.name" 8,
    dentry_hash_pprev => "dentry" "d_hash.pprev" 8,
    vfsmount_root => "vfsmount" "mnt_root" 8,
    // `struct vfsmount` is embedded in `struct mount`, whose size differs between kernels.
    mount_mnt => "mount" "mnt" 0,
    mount_parent => "mount" "mnt_parent" 8,
    mount_mountpoint => "mount" "mnt_mountpoint" 8,
    tty_file_private_tty => "tty_file_private" "tty" 8,
    tty_driver => "tty_struct" "driver" 8,
    tty_index => "tty_struct" "index" 4,
    tty_link => "tty_struct" "link" 8,
    tty_lflag => "tty_struct" "termios.c_lflag" 4,
    // Who reads what `TIOCSTI` pushes: the terminal's session and foreground process group
    // (`struct pid`, in `ctrl` since 5.11), and through each its leader's task: the first of
    // the pid's `tasks[PIDTYPE_PID]`, linked by the task's `pid_links[PIDTYPE_PID]`.
    // `PIDTYPE_PID` is 0 in every kernel, so both are at their array's start.
    tty_session => "tty_struct" "ctrl.session|session" 8,
    tty_pgrp => "tty_struct" "ctrl.pgrp|pgrp" 8,
    pid_tasks => "pid" "tasks" 0,
    task_pid_links => "task_struct" "pid_links" 0,
    driver_major => "tty_driver" "major" 4,
    driver_minor_start => "tty_driver" "minor_start" 4,
    signal_tty => "signal_struct" "tty" 8,
    signal_live => "signal_struct" "live.counter" 4,
    bprm_filename => "linux_binprm" "filename" 8,
    bprm_interp => "linux_binprm" "interp" 8,
    // A request's command data (`struct io_rw` for reads and writes) is at its start.
    io_kiocb_opcode => "?io_kiocb" "opcode" 1,
    io_rw_addr => "?io_rw" "addr" 8,
    io_rw_len => "?io_rw" "len" 4,
    io_splice_len => "?io_splice" "len" 8,
    io_splice_fd_in => "?io_splice" "splice_fd_in" 4,
    sys_enter_args => "syscall_trace_enter" "args" 0,
    sys_exit_ret => "syscall_trace_exit" "ret" 8,
}

crate::user_pod!(KernelLayout);

/// `struct iovec` is user-space ABI, fixed for every kernel, so it is not resolved from BTF.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoVec {
    pub base: u64,
    pub len: u64,
}
