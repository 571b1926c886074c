//! Sensor `tty`: the bytes of `write`/`writev` to a terminal. Writes to a pty slave, a
//! console or `/dev/tty` are session output; writes to the pty master (`/dev/ptmx`) are what
//! the user typed, filed under the slave side so input and output share one terminal id.
//! Bytes are read on syscall entry, as the caller asked to write them. Input typed while the
//! terminal reads lines without echo (a password prompt) is never read: only its length is
//! recorded, unless the agent was started with `--record-no-echo-input`.

use core::ffi::c_void;

use agent_common::{
    event::{dev_major, dev_minor, kind},
    layout::IoVec,
    tty::{
        CHUNK, CONSOLE_MINOR, DEV_TTY_MINOR, MAX_STEPS, NO_LEADER, PTMX_MINOR,
        PTY_SLAVE_MAJOR_FIRST, PTY_SLAVE_MAJOR_LAST, TIOCSTI, TIOCSWINSZ, TTY_FIXED, TTY_INJECTED,
        TTY_MAJOR, TTY_REDACTED, TTY_RESIZE, TTY_UNSEEN, TTYAUX_MAJOR, TtyRecord, pack_readers,
    },
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf, generated::bpf_loop,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;

use crate::{
    emit::{count_loss, fill_header, submit},
    kernel::{
        File, Task, config, io_req_opcode, io_rw, io_splice, syscall_args, tty_dev,
        tty_hides_input, tty_link, tty_readers,
    },
};

#[map(name = "TTY_SCRATCH")]
static SCRATCH: PerCpuArray<TtyRecord> = PerCpuArray::with_max_entries(1, 0);

/// `UIO_MAXIOV`: the most iovecs a `writev` can carry.
const UIO_MAXIOV: u32 = 1024;

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn tty_sys_enter_write(ctx: TracePointContext) -> u32 {
    let _ = try_write(&ctx, false);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn tty_sys_enter_writev(ctx: TracePointContext) -> u32 {
    let _ = try_write(&ctx, true);
    0
}

/// `pwritev2(fd, iov, iovcnt, -1, flags)` writes at the current position, as `writev`
/// does, so it reaches a terminal; at any other position a terminal refuses it (`ESPIPE`),
/// as it refuses every `pwrite64` and `pwritev`, so those need no program.
#[tracepoint(category = "syscalls", name = "sys_enter_pwritev2")]
pub fn tty_sys_enter_pwritev2(ctx: TracePointContext) -> u32 {
    // On 64-bit the position is `pos_l` alone: `pos_h` is shifted out.
    if let Ok([_, _, _, pos]) = syscall_args::<4>(&ctx)
        && pos == u64::MAX
    {
        let _ = try_write(&ctx, true);
    }
    0
}

/// `sendfile(out_fd, in_fd, offset, count)` into a terminal: its bytes go from file to
/// terminal inside the kernel, where no write tracepoint sees them; recorded as unseen.
#[tracepoint(category = "syscalls", name = "sys_enter_sendfile64")]
pub fn tty_sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    if let Ok([out_fd, _, _, count]) = syscall_args::<4>(&ctx) {
        let _ = try_unseen(out_fd, count);
    }
    0
}

/// `splice(fd_in, off_in, fd_out, off_out, len, flags)` into a terminal, as `sendfile`.
/// (`copy_file_range` into a terminal fails: it takes regular files only.)
#[tracepoint(category = "syscalls", name = "sys_enter_splice")]
pub fn tty_sys_enter_splice(ctx: TracePointContext) -> u32 {
    if let Ok([_, _, fd_out, _, len]) = syscall_args::<5>(&ctx) {
        let _ = try_unseen(fd_out, len);
    }
    0
}

/// `io_uring` opcodes (`IORING_OP_*`, a stable ABI) that write a buffer or an `iovec` array,
/// or splice into a descriptor.
const IORING_OP_WRITEV: u8 = 2;
const IORING_OP_WRITE_FIXED: u8 = 5;
const IORING_OP_WRITE: u8 = 23;
const IORING_OP_SPLICE: u8 = 30;

/// `io_uring_file_get(req, fd)`: an `io_uring` request is about to use `fd`. Its writes and
/// splices reach a terminal without a write syscall, so one into a terminal is recorded as
/// unseen, with its byte count (a `writev`'s iovecs summed; a splice's length as asked). A
/// write into a pty master is typed input injected, and is counted as input. The step runs
/// once per request, in a thread of the submitting process (the submitter, its SQPOLL thread
/// or an io-wq worker), which shares its descriptors. Requests on registered files skip this
/// step and are not seen.
#[raw_tracepoint(tracepoint = "io_uring_file_get")]
pub fn tty_io_uring_file_get(ctx: RawTracePointContext) -> i32 {
    let req = ctx.arg::<u64>(0);
    // `int fd`, in a 64-bit register.
    let Ok(fd) = u32::try_from(ctx.arg::<u64>(1) as i32) else {
        return 0;
    };
    let count = match io_req_opcode(req) {
        Ok(IORING_OP_WRITE | IORING_OP_WRITE_FIXED) => io_rw(req).map(|(_, len)| u64::from(len)),
        Ok(IORING_OP_WRITEV) => io_rw(req)
            .map(|(iov, n)| iovecs_len(&mut Walk::iovecs(iov, u64::from(n), kind::TTY_OUT))),
        // A splice looks up both its descriptors here: only the one it writes to counts.
        Ok(IORING_OP_SPLICE) => match io_splice(req) {
            Ok((len, fd_in)) if u32::try_from(fd_in).ok() != Some(fd) => Ok(len),
            _ => return 0,
        },
        _ => return 0,
    };
    if let Ok(count) = count {
        let _ = try_unseen(u64::from(fd), count);
    }
    0
}

/// Two `ioctl`s on a terminal. `TIOCSWINSZ`: the window size a session's output was drawn
/// for, recorded as asked (a replay lays the output out by it); either side of a pty may set
/// it, and it is filed under the slave, as writes are. `TIOCSTI`: a byte pushed into the
/// terminal's input as if typed, by a task that need not hold the master: the way one
/// process types commands into another's shell.
#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn tty_sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    let Ok([fd, cmd, arg]) = syscall_args::<3>(&ctx) else {
        return 0;
    };
    // As the kernel reads it: bits above the command's 32 do not hide it.
    match cmd as u32 {
        TIOCSWINSZ => {
            // `struct winsize`: ws_row, ws_col, ws_xpixel, ws_ypixel, each an unsigned short.
            if let Ok([rows, cols, _, _]) = unsafe { bpf_probe_read_user(arg as *const [u16; 4]) } {
                let _ = try_fixed(fd, TTY_RESIZE, u64::from(rows), u32::from(cols));
            }
        }
        TIOCSTI => {
            let _ = try_inject(fd, arg);
        }
        _ => {}
    }
    0
}

/// A record of the byte `ioctl(fd, TIOCSTI, arg)` pushes, by the task pushing it, recorded
/// as asked (the attempt is evidence, allowed or not). A push goes the other way from a
/// write through the same side: through the terminal's own side, into its input as if
/// typed, a `tty_in` record with who reads it (only its count while the terminal hides
/// input, as for typed input); through a master, to the master's reader (the terminal's
/// user sees it, as the terminal's output), a `tty_out` record.
#[inline(always)]
fn try_inject(fd: u64, arg: u64) -> Result<(), i64> {
    if caller_not_agent().is_none() {
        return Ok(());
    }
    let fd = fd as u32;
    let task = Task::current();
    let file = task.file(fd)?;
    let Some((written, device, _)) = classify(file)? else {
        return Ok(());
    };
    let (kind, readers, redacted) = if written == kind::TTY_IN {
        // Its reader holds the master: no leader of the terminal reads it.
        (kind::TTY_OUT, pack_readers(NO_LEADER, NO_LEADER), false)
    } else {
        let tty = file.tty()?;
        let (session, foreground) = tty_readers(tty);
        (
            kind::TTY_IN,
            pack_readers(session, foreground),
            redacts(tty)?,
        )
    };
    let flags = if redacted {
        TTY_INJECTED | TTY_REDACTED
    } else {
        TTY_INJECTED
    };
    let rec = record(task, kind, device, fd, flags, 1)?;
    rec.offset = readers;
    if redacted {
        submit(&raw mut rec.header, TTY_FIXED, 0);
    } else {
        rec.data[0] = unsafe { bpf_probe_read_user(arg as *const u8) }?;
        submit(&raw mut rec.header, TTY_FIXED + 1, 1);
    }
    Ok(())
}

/// One `TTY_UNSEEN` record for `count` bytes into `fd`, if it is a terminal.
#[inline(always)]
fn try_unseen(fd: u64, count: u64) -> Result<(), i64> {
    if count == 0 {
        return Ok(());
    }
    try_fixed(fd, TTY_UNSEEN, 0, u32::try_from(count).unwrap_or(u32::MAX))
}

/// One record without data for `fd`, if it is a terminal: `flags` says what `offset` and
/// `len` hold.
#[inline(always)]
fn try_fixed(fd: u64, flags: u32, offset: u64, len: u32) -> Result<(), i64> {
    if caller_not_agent().is_none() {
        return Ok(());
    }
    let fd = fd as u32;
    let task = Task::current();
    let Some((kind, device, _)) = classify(task.file(fd)?)? else {
        return Ok(());
    };
    let rec = record(task, kind, device, fd, flags, len)?;
    rec.offset = offset;
    submit(&raw mut rec.header, TTY_FIXED, 0);
    Ok(())
}

/// The calling process's id, unless it is the agent: its own terminal writes are never
/// captured (a terminal running `agent --stdout` would otherwise record itself forever).
#[inline(always)]
fn caller_not_agent() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (tgid != config!(agent_tgid)).then_some(tgid)
}

/// Whether input to terminal `tty` is to be counted, not read: it is at a password prompt
/// and the agent was not asked to record such input.
#[inline(always)]
fn redacts(tty: *const u8) -> Result<bool, i64> {
    Ok(config!(record_no_echo_input) == 0 && tty_hides_input(tty)?)
}

/// The scratch record, its header filled for `task`, for `fd` open on terminal `device`,
/// with `flags` and `len` set and at offset 0.
#[inline(always)]
fn record(
    task: Task,
    kind: u32,
    device: u32,
    fd: u32,
    flags: u32,
    len: u32,
) -> Result<&'static mut TtyRecord, i64> {
    let rec = scratch()?;
    fill_header(&mut rec.header, kind, task);
    rec.device = device;
    rec.fd = fd;
    rec.flags = flags;
    rec.offset = 0;
    rec.len = len;
    Ok(rec)
}

/// The record kind and terminal for a file, and whether its bytes are to be redacted; or
/// `None` when it is not a terminal.
#[inline(always)]
fn classify(file: File) -> Result<Option<(u32, u32, bool)>, i64> {
    let rdev = file.rdev()?;
    let major = dev_major(rdev);
    if major == TTY_MAJOR || (PTY_SLAVE_MAJOR_FIRST..=PTY_SLAVE_MAJOR_LAST).contains(&major) {
        return Ok(Some((kind::TTY_OUT, rdev, false)));
    }
    if major != TTYAUX_MAJOR {
        return Ok(None);
    }
    match dev_minor(rdev) {
        PTMX_MINOR => {
            // What the slave's line discipline will do with these bytes decides: a program
            // reading lines with echo off asked not to show them.
            let slave = tty_link(file.tty()?)?;
            Ok(Some((kind::TTY_IN, tty_dev(slave)?, redacts(slave)?)))
        }
        DEV_TTY_MINOR | CONSOLE_MINOR => Ok(Some((kind::TTY_OUT, tty_dev(file.tty()?)?, false))),
        _ => Ok(None),
    }
}

fn try_write(ctx: &TracePointContext, vectored: bool) -> Result<(), i64> {
    let Some(tgid) = caller_not_agent() else {
        return Ok(());
    };
    let [fd, buf, count] = syscall_args::<3>(ctx)?;
    let fd = fd as u32;
    let task = Task::current();
    let Some((kind, device, redact)) = classify(task.file(fd)?)? else {
        return Ok(());
    };

    if vectored && count > u64::from(UIO_MAXIOV) {
        // The kernel fails such a writev with EINVAL before writing anything.
        return Ok(());
    }
    let rec = record(task, kind, device, fd, 0, 0)?;

    let mut walk = if vectored {
        Walk::iovecs(buf, count, kind)
    } else {
        Walk::segment(buf, count, kind)
    };
    if redact {
        let len = if vectored {
            iovecs_len(&mut walk)
        } else {
            count
        };
        if len > 0 {
            rec.flags = TTY_REDACTED;
            rec.len = u32::try_from(len).unwrap_or(u32::MAX);
            submit(&raw mut rec.header, TTY_FIXED, 0);
        }
        return Ok(());
    }
    if !vectored && count <= CHUNK as u64 {
        // Most terminal writes (keystrokes, prompts, lines) fit one record: emit it inline,
        // without the indirect callback calls of bpf_loop.
        if count > 0 {
            emit_chunk(rec, &mut walk);
        }
        return Ok(());
    }
    // bpf_loop lets the verifier check `step` until its state converges instead of once per
    // iteration, which at this length would exceed the instruction budget. Its index is the
    // only step counter: one kept in `Walk` would be tracked precisely and defeat that.
    unsafe {
        bpf_loop(
            MAX_STEPS + UIO_MAXIOV,
            step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    if walk.lost > 0 {
        count_loss(kind, walk.lost.div_ceil(CHUNK as u64), walk.lost);
        // Rare (one syscall writing more than the budget holds), and the loss counters say
        // only how much was lost, summed per kind: this says by whom.
        warn!(
            ctx,
            target: "agent::kernel",
            "tty: a write of tgid {} ran past its budget of {} steps: {} bytes counted as lost",
            tgid,
            MAX_STEPS,
            walk.lost
        );
    }
    Ok(())
}

/// The bytes a `writev` holds (a redacted one, or one `io_uring` makes): its iovecs' lengths,
/// summed without reading a byte.
#[inline(always)]
fn iovecs_len(walk: &mut Walk) -> u64 {
    unsafe {
        bpf_loop(
            UIO_MAXIOV,
            sum_step as *mut c_void,
            core::ptr::from_mut::<Walk>(walk).cast(),
            0,
        );
    }
    walk.offset
}

/// One `bpf_loop` step of `iovecs_len`: adds the next iovec's length. Returns 1 to stop.
#[inline(never)]
extern "C" fn sum_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    let Some(iov) = w.next_iovec() else {
        return 1;
    };
    w.offset = w.offset.saturating_add(iov.len);
    0
}

#[inline(always)]
fn scratch() -> Result<&'static mut TtyRecord, i64> {
    let rec = SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    Ok(unsafe { &mut *rec })
}

/// Where a write's bytes stand: the current segment `(base, len)` and, for `writev`, the
/// iovecs not yet read.
#[repr(C)]
struct Walk {
    base: u64,
    len: u64,
    next_iov: u64,
    iovs_left: u64,
    offset: u64,
    kind: u64,
    /// Bytes past the last step that may emit, counted instead of sent.
    lost: u64,
}

impl Walk {
    /// The bytes of a `write(fd, buf, count)`.
    #[inline(always)]
    fn segment(buf: u64, count: u64, kind: u32) -> Self {
        Self {
            base: buf,
            len: count,
            next_iov: 0,
            iovs_left: 0,
            offset: 0,
            kind: u64::from(kind),
            lost: 0,
        }
    }

    /// The bytes of a `writev(fd, iov, iovcnt)`, starting before its first iovec.
    #[inline(always)]
    fn iovecs(iov: u64, iovcnt: u64, kind: u32) -> Self {
        Self {
            base: 0,
            len: 0,
            next_iov: iov,
            iovs_left: iovcnt,
            offset: 0,
            kind: u64::from(kind),
            lost: 0,
        }
    }

    /// Takes the next iovec of a `writev`; `None` once none is left or one cannot be read.
    #[inline(always)]
    fn next_iovec(&mut self) -> Option<IoVec> {
        if self.iovs_left == 0 {
            return None;
        }
        let iov = unsafe { bpf_probe_read_user(self.next_iov as *const IoVec) }.ok()?;
        self.next_iov += core::mem::size_of::<IoVec>() as u64;
        self.iovs_left -= 1;
        Some(iov)
    }
}

/// One `bpf_loop` step: load the next iovec, or emit one chunk; past `MAX_STEPS`, count the
/// rest as lost. Returns 1 to stop.
#[inline(never)]
extern "C" fn step(index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    if w.len == 0 {
        let Some(iov) = w.next_iovec() else {
            return 1;
        };
        (w.base, w.len) = (iov.base, iov.len);
        return 0;
    }
    if index >= u64::from(MAX_STEPS) {
        w.lost += w.len;
        w.len = 0;
        return 0;
    }
    let Ok(rec) = scratch() else { return 1 };
    emit_chunk(rec, w);
    0
}

/// Emits the next chunk (at most `CHUNK` bytes; `w.len` is not 0) of the current segment.
#[inline(always)]
fn emit_chunk(rec: &mut TtyRecord, w: &mut Walk) {
    rec.len = if w.len > CHUNK as u64 {
        CHUNK as u32
    } else {
        w.len as u32
    };
    // Read back through the map value so the verifier does not tie the read size to `w.len`
    // (which would make it track `w.len` precisely, step by step). The mask is the identity
    // for 1..=CHUNK and shows the verifier the bound.
    let n = unsafe { core::ptr::read_volatile(&raw const rec.len) } as usize;
    let n = (n.wrapping_sub(1) & (CHUNK - 1)) + 1;
    let dst = unsafe { core::slice::from_raw_parts_mut(rec.data.as_mut_ptr(), n) };
    if unsafe { bpf_probe_read_user_buf(w.base as *const u8, dst) }.is_ok() {
        rec.offset = w.offset;
        submit(&raw mut rec.header, TTY_FIXED + n, n as u64);
    } else {
        count_loss(w.kind as u32, 1, n as u64);
    }
    w.base += n as u64;
    w.len -= n as u64;
    w.offset += n as u64;
}
