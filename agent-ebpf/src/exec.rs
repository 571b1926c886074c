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
/// past a masked offset, and the working directory and interpreter path are copied past
/// masked lengths; the slack keeps all of that inside the map value where the verifier can
/// see it.
#[repr(C)]
pub struct ExecScratch {
    record: ExecRecord,
    slack: [u8; ARGV_CAP + CWD_CAP + INTERP_CAP],
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
    if let Ok(image) = task.image() {
        rec.image = image;
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
    fill_cwd(rec, task);
    emit(rec, interp);
    Ok(())
}

/// Where the working directory's walk stands. Only addresses live here: the write position
/// and the flags are kept in the record (map memory), which the verifier does not track
/// from step to step, so `cwd_step` is checked until its state converges, not per step.
#[repr(C)]
struct CwdWalk {
    at: PathPos,
    root: PathPos,
    /// The root dentry of `at.mnt`: reaching it means crossing to the parent mount.
    mnt_root: u64,
}

/// Set in the record's flags once the walk has reached the process's root (or stopped for
/// a reason of its own flag), so that running out of steps shows as truncation.
const CWD_DONE: u32 = 1 << 31;

/// Writes the working directory into the last `cwd_len` bytes of `rec.cwd` (sent after
/// argv by `emit`), walking
/// dentries up to the process's root and crossing mounts on the way, as `d_path` does.
#[inline(always)]
fn fill_cwd(rec: &mut ExecRecord, task: Task) {
    rec.cwd_len = CWD_CAP as u64;
    let Ok((pwd, root)) = task.fs_paths() else {
        rec.cwd_len = 0;
        rec.flags |= flags::CWD_UNREADABLE;
        return;
    };
    let Ok(mnt_root) = mount_root(pwd.mnt) else {
        rec.cwd_len = 0;
        rec.flags |= flags::CWD_UNREADABLE;
        return;
    };
    // A removed directory is unhashed; so is a filesystem's root, which is its own parent.
    if dentry_unhashed(pwd.dentry).unwrap_or(false)
        && dentry_parent(pwd.dentry).is_ok_and(|p| p != pwd.dentry)
    {
        rec.flags |= flags::CWD_DELETED;
    }
    let mut walk = CwdWalk {
        at: pwd,
        root,
        mnt_root,
    };
    unsafe {
        bpf_loop(
            CWD_STEPS,
            cwd_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    let pos = unsafe { core::ptr::read_volatile(&raw const rec.cwd_len) };
    if rec.flags & flags::CWD_UNREADABLE != 0 {
        rec.cwd_len = 0;
    } else {
        if rec.flags & CWD_DONE == 0 {
            rec.flags |= flags::CWD_TRUNCATED;
        }
        if pos == CWD_CAP as u64 {
            // Nothing above the directory: it is the root itself.
            rec.cwd[CWD_CAP - 1] = b'/';
            rec.cwd_len = 1;
        } else {
            rec.cwd_len = CWD_CAP as u64 - (pos & (CWD_CAP as u64 - 1));
        }
    }
    rec.flags &= !CWD_DONE;
}

/// One step of the working directory's walk: cross to the parent mount at a mount's root,
/// or prepend one component. Until the walk ends, `rec.cwd_len` is the write position, from
/// `CWD_CAP` down. Returns 1 to stop.
#[inline(never)]
extern "C" fn cwd_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<CwdWalk>() };
    let Ok(s) = scratch() else { return 1 };
    let rec = &mut s.record;
    if w.at == w.root {
        rec.flags |= CWD_DONE;
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
            }
            Ok(None) => rec.flags |= flags::CWD_UNREACHABLE | CWD_DONE,
            Err(_) => rec.flags |= flags::CWD_UNREADABLE,
        }
        return i64::from(rec.flags & (CWD_DONE | flags::CWD_UNREADABLE) != 0);
    }
    let (Ok(parent), Ok((name, len))) = (dentry_parent(w.at.dentry), dentry_name(w.at.dentry))
    else {
        rec.flags |= flags::CWD_UNREADABLE;
        return 1;
    };
    if parent == w.at.dentry {
        // The root of a filesystem no mount leads to (a detached tree).
        rec.flags |= flags::CWD_UNREACHABLE | CWD_DONE;
        return 1;
    }
    let pos = unsafe { core::ptr::read_volatile(&raw const rec.cwd_len) };
    let len = u64::from(len);
    if len + 1 > pos {
        rec.flags |= flags::CWD_TRUNCATED | CWD_DONE;
        return 1;
    }
    let start = pos - len;
    // Masked so the verifier sees the write inside the map value: with `start` and `len`
    // each below CWD_CAP, it ends before `cwd + 2 * CWD_CAP`, in the scratch's slack. (At run time
    // `start + len` is `pos`, at most CWD_CAP.)
    let at = (start as usize) & (CWD_CAP - 1);
    let n = (len as usize) & (CWD_CAP - 1);
    let dst = unsafe { rec.cwd.as_mut_ptr().add(at) };
    if unsafe { bpf_probe_read_kernel(dst.cast(), n as u32, name as *const c_void) } < 0 {
        rec.flags |= flags::CWD_UNREADABLE;
        return 1;
    }
    let slash = (start as usize).wrapping_sub(1) & (CWD_CAP - 1);
    rec.cwd[slash] = b'/';
    rec.cwd_len = start - 1;
    w.at.dentry = parent;
    0
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

/// Sends the record: its fixed part, argv, the working directory right after argv (it was
/// built at the end of `cwd`), then a script's interpreter path, so that only the bytes
/// used go out. The lengths are masked for the verifier (at run time argv is at most
/// `ARGV_CAP`, the directory at most `CWD_CAP` and the interpreter below `INTERP_CAP`
/// bytes), and the scratch's slack holds what the masks allow.
#[inline(always)]
fn emit(rec: &mut ExecRecord, interp: Option<*const u8>) {
    let argv_len = (rec.argv_len as usize) & (ARGV_CAP * 2 - 1);
    let mut cwd_len = (rec.cwd_len as usize) & (CWD_CAP * 2 - 1);
    if cwd_len > 0 {
        let src = rec.cwd.as_ptr().wrapping_add(CWD_CAP).wrapping_sub(cwd_len);
        let dst = rec.argv.as_mut_ptr().wrapping_add(argv_len);
        // Never expected to fail (both sides are this map value); if it does, the record
        // goes without its path, marked.
        if unsafe { bpf_probe_read_kernel(dst.cast(), cwd_len as u32, src.cast()) } < 0 {
            rec.cwd_len = 0;
            rec.flags |= flags::CWD_UNREADABLE;
            cwd_len = 0;
        }
    }
    rec.interp_len = 0;
    if let Some(interp) = interp {
        let dst = rec
            .argv
            .as_mut_ptr()
            .wrapping_add(argv_len)
            .wrapping_add(cwd_len);
        let copied =
            unsafe { bpf_probe_read_kernel_str(dst.cast(), INTERP_CAP as u32, interp.cast()) };
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
        EXEC_FIXED + argv_len + cwd_len + interp_len,
        argv_len as u64,
    );
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
