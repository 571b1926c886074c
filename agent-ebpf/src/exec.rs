//! Sensor `exec`. A successful exec is reported from `sched_process_exec`, after the new
//! credentials are committed (so a setuid binary shows its new euid) and with argv read from
//! the new image. A failed `execve`/`execveat` is reported on syscall exit with its errno,
//! from the user pointers stashed on syscall entry (still valid: the old image survives).
//! Syscall exit is watched through the two syscalls' own `sys_exit_*` events: the kernel
//! runs those programs for these syscalls alone, where a raw `sys_exit` program ran on
//! every syscall exit on the host (docs/capture.md).

use core::ffi::c_void;

use agent_common::{
    event::kind,
    exec::{
        ARGV_CAP, CWD_CAP, CWD_STEPS, EXEC_FIXED, ExecRecord, FAILED_ARGS_MAX, FILENAME_CAP,
        INTERP_CAP, ImageId, flags,
    },
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{
            bpf_loop, bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user_str,
        },
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;

use crate::{
    emit::{fill_header, submit},
    kernel::{
        PathPos, Task, bprm_filename, bprm_interp, config, dentry_name, dentry_parent,
        dentry_unhashed, mount_root, mount_up, syscall_args, syscall_ret,
    },
};

/// A record plus slack: each string read of a failed exec may write up to `ARGV_CAP` bytes
/// past a masked offset, and the two walked paths and the interpreter's are copied past
/// masked lengths; the slack keeps all of that inside the map value where the verifier can
/// see it.
#[repr(C)]
pub struct ExecScratch {
    record: ExecRecord,
    slack: [u8; ARGV_CAP + 2 * CWD_CAP + INTERP_CAP],
}

#[map(name = "EXEC_SCRATCH")]
static SCRATCH: PerCpuArray<ExecScratch> = PerCpuArray::with_max_entries(1, 0);

/// User pointers of an exec in flight, by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingExec {
    filename: u64,
    argv: u64,
}

#[map(name = "EXEC_PENDING")]
static PENDING: LruHashMap<u32, PendingExec> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn argv_bound() -> usize {
    let max = config!(argv_max) as usize;
    if max > ARGV_CAP { ARGV_CAP } else { max }
}

#[inline(always)]
fn scratch() -> Result<&'static mut ExecScratch, i64> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    Ok(unsafe { &mut *s })
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_sched_process_exec(ctx: RawTracePointContext) -> i32 {
    match try_exec(&ctx) {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

fn try_exec(ctx: &RawTracePointContext) -> Result<(), i64> {
    let old_pid: u32 = ctx.arg::<u64>(1) as u32;
    let _ = PENDING.remove(old_pid);
    let task = Task::current();
    let s = scratch()?;
    let rec = &mut s.record;
    fill_header(&mut rec.header, kind::EXEC, task);
    rec.result = 0;
    rec.flags = 0;

    let filename = bprm_filename(ctx.arg::<u64>(2)).inspect_err(|&e| {
        // Never expected (the offset comes from this kernel's BTF): without it the exec
        // goes unrecorded, and uncounted, so the agent's log is where it shows.
        warn!(
            ctx,
            target: "agent::kernel",
            "exec: linux_binprm.filename of tgid {} unreadable ({}): exec not recorded",
            rec.header.tgid,
            e
        );
    })?;
    let n = unsafe {
        bpf_probe_read_kernel_str(
            rec.filename.as_mut_ptr().cast(),
            FILENAME_CAP as u32,
            filename.cast(),
        )
    };
    set_filename_len(rec, n);

    rec.argv_len = 0;
    match task.arg_range() {
        Ok((start, end)) if end > start => {
            let total = (end - start) as usize;
            let bound = argv_bound();
            let mut n = total;
            if n > bound {
                n = bound;
                rec.flags |= flags::ARGV_TRUNCATED;
            }
            if n > 0 {
                // Identity for n in 1..=ARGV_CAP; the mask shows the verifier the bound.
                let n = ((n - 1) & (ARGV_CAP - 1)) + 1;
                let dst = unsafe { core::slice::from_raw_parts_mut(rec.argv.as_mut_ptr(), n) };
                if unsafe { bpf_probe_read_user_buf(start as *const u8, dst) }.is_ok() {
                    rec.argv_len = n as u32;
                } else {
                    rec.flags |= flags::ARGV_UNREADABLE;
                }
            }
        }
        _ => rec.flags |= flags::ARGV_UNREADABLE,
    }
    let mut interp = None;
    let mut exe = None;
    if let Ok((image, at)) = task.image() {
        rec.image = image;
        exe = Some(at);
        if let Ok(path) = bprm_interp(ctx.arg::<u64>(2))
            && path != filename
        {
            rec.flags |= flags::IMAGE_INTERPRETER;
            interp = Some(path);
        }
    } else {
        rec.image = ImageId::default();
        rec.flags |= flags::IMAGE_UNREADABLE;
    }
    let root = fill_cwd(rec, task);
    rec.exe_len = 0;
    match (exe, root) {
        (Some(at), Some(root)) => fill_path(rec, at, root, flags::EXE_SHIFT),
        (Some(_), None) => rec.flags |= flags::EXE_UNREADABLE,
        (None, _) => {}
    }
    emit(rec, interp);
    Ok(())
}

/// Where a path's walk stands. Only addresses and which path it is live here: the write
/// position and the flags are kept in the record (map memory), which the verifier does not
/// track from step to step, so `path_step` is checked until its state converges, not per
/// step.
#[repr(C)]
struct PathWalk {
    at: PathPos,
    root: PathPos,
    /// The root dentry of `at.mnt`: reaching it means crossing to the parent mount.
    mnt_root: u64,
    /// `flags::EXE_SHIFT` for the executable's path, 0 for the working directory's: its
    /// flags are shifted by this, and it is built in `exe` rather than `cwd`.
    shift: u32,
}

/// Set in the record's flags once a walk has reached the process's root (or stopped for a
/// reason of its own flag), so that running out of steps shows as truncation.
const WALK_DONE: u32 = 1 << 31;

/// The working directory: the first path `emit` sends after argv.
#[inline(always)]
fn fill_cwd(rec: &mut ExecRecord, task: Task) -> Option<PathPos> {
    let Ok((pwd, root)) = task.fs_paths() else {
        rec.cwd_len = 0;
        rec.flags |= flags::CWD_UNREADABLE;
        return None;
    };
    fill_path(rec, pwd, root, 0);
    Some(root)
}

/// The length (the write position, during a walk) of the path a walk builds, and its buffer.
#[inline(always)]
fn walked(rec: &mut ExecRecord, shift: u32) -> (*mut u64, *mut u8) {
    if shift == 0 {
        (&raw mut rec.cwd_len, rec.cwd.as_mut_ptr())
    } else {
        (&raw mut rec.exe_len, rec.exe.as_mut_ptr())
    }
}

/// Writes the path of `at` as the process sees it into the last bytes of `cwd` (`shift` 0)
/// or `exe` (`flags::EXE_SHIFT`), setting that path's length: it walks dentries up to
/// `root`, crossing mounts on the way, as `d_path` does. `emit` sends the bytes after argv.
#[inline(always)]
fn fill_path(rec: &mut ExecRecord, at: PathPos, root: PathPos, shift: u32) {
    let (len, buf) = walked(rec, shift);
    unsafe { *len = CWD_CAP as u64 };
    let Ok(mnt_root) = mount_root(at.mnt) else {
        unsafe { *len = 0 };
        rec.flags |= flags::CWD_UNREADABLE << shift;
        return;
    };
    // A removed file or directory is unhashed; so is a filesystem's root, which is its own
    // parent.
    if dentry_unhashed(at.dentry).unwrap_or(false)
        && dentry_parent(at.dentry).is_ok_and(|p| p != at.dentry)
    {
        rec.flags |= flags::CWD_DELETED << shift;
    }
    let mut walk = PathWalk {
        at,
        root,
        mnt_root,
        shift,
    };
    unsafe {
        bpf_loop(
            CWD_STEPS,
            path_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    let done = rec.flags & WALK_DONE != 0;
    let unreadable = rec.flags & (flags::CWD_UNREADABLE << shift) != 0;
    if !unreadable && !done {
        rec.flags |= flags::CWD_TRUNCATED << shift;
    }
    rec.flags &= !WALK_DONE;
    let pos = unsafe { core::ptr::read_volatile(len) };
    let path_len = if unreadable {
        0
    } else if pos == CWD_CAP as u64 {
        // Nothing above it: it is the root itself.
        unsafe { *buf.add(CWD_CAP - 1) = b'/' };
        1
    } else {
        CWD_CAP as u64 - (pos & (CWD_CAP as u64 - 1))
    };
    unsafe { *len = path_len };
}

/// One step of a path's walk: cross to the parent mount at a mount's root, or prepend one
/// component. Until the walk ends, the path's length field is the write position, from
/// `CWD_CAP` down. Returns 1 to stop.
#[inline(never)]
extern "C" fn path_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<PathWalk>() };
    let Ok(s) = scratch() else { return 1 };
    let rec = &mut s.record;
    let shift = w.shift;
    if w.at == w.root {
        rec.flags |= WALK_DONE;
        return 1;
    }
    if w.at.dentry == w.mnt_root {
        match mount_up(w.at.mnt).and_then(|up| {
            up.map(|up| mount_root(up.mnt).map(|root| (up, root)))
                .transpose()
        }) {
            Ok(Some((up, root))) => {
                w.at = up;
                w.mnt_root = root;
                return 0;
            }
            Ok(None) => rec.flags |= (flags::CWD_UNREACHABLE << shift) | WALK_DONE,
            Err(_) => rec.flags |= flags::CWD_UNREADABLE << shift,
        }
        return 1;
    }
    let (Ok(parent), Ok((name, len))) = (dentry_parent(w.at.dentry), dentry_name(w.at.dentry))
    else {
        rec.flags |= flags::CWD_UNREADABLE << shift;
        return 1;
    };
    // Its own parent, yet not its mount's root: the root of a tree no mount leads to (a
    // detached filesystem, named "/"), or a file that never had a directory (a `memfd`,
    // named for itself), whose name is the one thing the path can say.
    let detached = parent == w.at.dentry;
    if detached && (len == 0 || (len == 1 && name_starts_with_slash(name as *const u8))) {
        rec.flags |= (flags::CWD_UNREACHABLE << shift) | WALK_DONE;
        return 1;
    }
    let (pos_field, buf) = walked(rec, shift);
    let pos = unsafe { core::ptr::read_volatile(pos_field) };
    let len = u64::from(len);
    if len + 1 > pos {
        rec.flags |= (flags::CWD_TRUNCATED << shift) | WALK_DONE;
        return 1;
    }
    let start = pos - len;
    // Masked so the verifier sees the write inside the map value: with `start` and `len`
    // each below CWD_CAP, it ends before `buf + 2 * CWD_CAP`, in the next buffer or the
    // scratch's slack. (At run time `start + len` is `pos`, at most CWD_CAP.)
    let at = (start as usize) & (CWD_CAP - 1);
    let n = (len as usize) & (CWD_CAP - 1);
    let dst = unsafe { buf.add(at) };
    if unsafe { bpf_probe_read_kernel(dst.cast(), n as u32, name as *const c_void) } < 0 {
        rec.flags |= flags::CWD_UNREADABLE << shift;
        return 1;
    }
    let slash = (start as usize).wrapping_sub(1) & (CWD_CAP - 1);
    unsafe { *buf.add(slash) = b'/' };
    unsafe { *pos_field = start - 1 };
    if detached {
        rec.flags |= (flags::CWD_UNREACHABLE << shift) | WALK_DONE;
        return 1;
    }
    w.at.dentry = parent;
    0
}

#[inline(always)]
fn name_starts_with_slash(name: *const u8) -> bool {
    let mut first = 0u8;
    let read = unsafe { bpf_probe_read_kernel((&raw mut first).cast(), 1, name.cast::<c_void>()) };
    read == 0 && first == b'/'
}

#[inline(always)]
fn set_filename_len(rec: &mut ExecRecord, copied: i64) {
    // `copied` counts the terminating NUL (negative on error); a full buffer means the name
    // was cut.
    rec.filename_len = if copied > 0 {
        (copied - 1).unsigned_abs() as u32
    } else {
        0
    };
    if copied > 0 && copied.unsigned_abs() >= FILENAME_CAP as u64 {
        rec.flags |= flags::FILENAME_TRUNCATED;
    }
}

/// Sends the record: its fixed part, argv, then the working directory and the executable's
/// path (each built at the end of its buffer), then a script's interpreter path, so that
/// only the bytes used go out. The lengths are masked for the verifier (at run time argv is
/// at most `ARGV_CAP`, each path at most `CWD_CAP` and the interpreter below `INTERP_CAP`
/// bytes), and the scratch's slack holds what the masks allow. Each copy moves bytes down
/// or not at all (argv is before both buffers), so none overwrites what it has yet to read.
#[inline(always)]
fn emit(rec: &mut ExecRecord, interp: Option<*const u8>) {
    let argv_len = (rec.argv_len as usize) & (ARGV_CAP * 2 - 1);
    let mut cwd_len = (rec.cwd_len as usize) & (CWD_CAP * 2 - 1);
    let at = rec.argv.as_mut_ptr().wrapping_add(argv_len);
    if !append(at, rec.cwd.as_ptr(), cwd_len) {
        rec.cwd_len = 0;
        rec.flags |= flags::CWD_UNREADABLE;
        cwd_len = 0;
    }
    let mut exe_len = (rec.exe_len as usize) & (CWD_CAP * 2 - 1);
    let at = at.wrapping_add(cwd_len);
    if !append(at, rec.exe.as_ptr(), exe_len) {
        rec.exe_len = 0;
        rec.flags |= flags::EXE_UNREADABLE;
        exe_len = 0;
    }
    let at = at.wrapping_add(exe_len);
    rec.interp_len = 0;
    if let Some(interp) = interp {
        let copied =
            unsafe { bpf_probe_read_kernel_str(at.cast(), INTERP_CAP as u32, interp.cast()) };
        // `copied` counts the NUL, which is not sent; a full buffer means the path was cut.
        if copied > 0 {
            rec.interp_len = (copied - 1).unsigned_abs() & (INTERP_CAP as u64 - 1);
            if copied.unsigned_abs() >= INTERP_CAP as u64 {
                rec.flags |= flags::INTERP_TRUNCATED;
            }
        }
    }
    let interp_len = (rec.interp_len as usize) & (INTERP_CAP - 1);
    submit(
        &raw mut rec.header,
        EXEC_FIXED + argv_len + cwd_len + exe_len + interp_len,
        argv_len as u64,
    );
}

/// Copies the last `len` bytes of a walked path's buffer to `dst`. Never expected to fail
/// (both sides are this map value); if it does, the record goes without that path, marked.
#[inline(always)]
fn append(dst: *mut u8, buf: *const u8, len: usize) -> bool {
    if len == 0 {
        return true;
    }
    let src = buf.wrapping_add(CWD_CAP).wrapping_sub(len);
    unsafe { bpf_probe_read_kernel(dst.cast(), len as u32, src.cast()) >= 0 }
}

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn exec_sys_enter_execve(ctx: TracePointContext) -> u32 {
    stash(&ctx, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn exec_sys_enter_execveat(ctx: TracePointContext) -> u32 {
    stash(&ctx, 1);
    0
}

#[inline(always)]
fn stash(ctx: &TracePointContext, first: usize) {
    let Ok(args) = syscall_args::<3>(ctx) else {
        return;
    };
    let (filename, argv_ptr) = if first == 0 {
        (args[0], args[1])
    } else {
        (args[1], args[2])
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // A full map evicts its least recently used entry: an exec whose thread died before
    // its outcome.
    let _ = PENDING.insert(
        tid,
        PendingExec {
            filename,
            argv: argv_ptr,
        },
        0,
    );
}

#[tracepoint(category = "syscalls", name = "sys_exit_execve")]
pub fn exec_sys_exit_execve(ctx: TracePointContext) -> u32 {
    exited(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_execveat")]
pub fn exec_sys_exit_execveat(ctx: TracePointContext) -> u32 {
    exited(&ctx)
}

/// Always 0: a classic tracepoint's program returns whether perf should record the event.
#[inline(always)]
fn exited(ctx: &TracePointContext) -> u32 {
    let _ = syscall_ret(ctx).and_then(try_exit);
    0
}

/// A failed exec returns to the old image, which made the stashed pointers; a successful
/// one removed its entry at `sched_process_exec`, and returns 0.
fn try_exit(ret: i64) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = (unsafe { PENDING.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = PENDING.remove(tid);
    if ret >= 0 {
        return Ok(());
    }
    let s = scratch()?;
    let rec = &mut s.record;
    fill_header(&mut rec.header, kind::EXEC, Task::current());
    rec.result = ret as i32;
    rec.flags = 0;
    rec.image = ImageId::default();
    rec.exe_len = 0;
    fill_cwd(rec, Task::current());
    let n = unsafe {
        bpf_probe_read_user_str(
            rec.filename.as_mut_ptr().cast(),
            FILENAME_CAP as u32,
            pending.filename as *const core::ffi::c_void,
        )
    };
    set_filename_len(rec, n);
    read_argv_pointers(s, pending.argv);
    emit(&mut s.record, None);
    Ok(())
}

/// Copies the strings of a user `argv` array back to back, up to the configured bound.
#[inline(always)]
fn read_argv_pointers(s: &mut ExecScratch, argv: u64) {
    let bound = argv_bound();
    let base = s.record.argv.as_mut_ptr();
    let mut off = 0usize;
    s.record.argv_len = 0;
    for i in 0..FAILED_ARGS_MAX {
        let Ok(arg) = (unsafe { bpf_probe_read_user((argv + u64::from(i) * 8) as *const u64) })
        else {
            s.record.flags |= flags::ARGV_UNREADABLE;
            break;
        };
        if arg == 0 {
            break;
        }
        if off >= bound {
            s.record.flags |= flags::ARGV_TRUNCATED;
            break;
        }
        let dst = base.wrapping_add(off & (ARGV_CAP - 1));
        let n = unsafe {
            bpf_probe_read_user_str(dst.cast(), ARGV_CAP as u32, arg as *const core::ffi::c_void)
        };
        if n <= 0 {
            s.record.flags |= flags::ARGV_UNREADABLE;
            break;
        }
        off += (n.unsigned_abs() as usize) & (ARGV_CAP * 2 - 1);
    }
    if off > bound {
        off = bound;
        s.record.flags |= flags::ARGV_TRUNCATED;
    }
    s.record.argv_len = off as u32;
}
