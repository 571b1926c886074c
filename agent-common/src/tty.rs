//! `tty_out` / `tty_in` records: the bytes of one `write`/`writev` to a terminal, in chunks.

use crate::event::Header;

/// Data bytes per record. A power of two, so the kernel side can mask lengths.
pub const CHUNK: usize = 4096;
/// Steps one syscall may take: each emits one record or, for `writev`, loads one iovec. Bytes
/// past the last step (4 MiB for a `write`) are counted as lost, never dropped silently.
/// Past it, the iovecs of a `writev` (at most `UIO_MAXIOV`) are still walked to count them.
pub const MAX_STEPS: u32 = 1024;

/// pty slaves (Unix98).
pub const PTY_SLAVE_MAJOR_FIRST: u32 = 136;
pub const PTY_SLAVE_MAJOR_LAST: u32 = 143;
/// Virtual consoles and serial ttys.
pub const TTY_MAJOR: u32 = 4;
/// `/dev/tty` (5:0), `/dev/console` (5:1), `/dev/ptmx` (5:2).
pub const TTYAUX_MAJOR: u32 = 5;
pub const DEV_TTY_MINOR: u32 = 0;
pub const CONSOLE_MINOR: u32 = 1;
pub const PTMX_MINOR: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TtyRecord {
    pub header: Header,
    /// The terminal the bytes belong to (`dev_t`): the device written for output, the slave
    /// side of the pair for input typed into a pty master.
    pub device: u32,
    pub fd: u32,
    /// Position of `data[0]` within the bytes the syscall writes (over all its iovecs).
    pub offset: u64,
    /// Bytes in `data`; in a `TTY_REDACTED` record, the bytes the write held, none of which
    /// are in the record.
    pub len: u32,
    pub flags: u32,
    pub data: [u8; CHUNK],
}

/// `flags`: input typed into a pty while its terminal read lines without echoing them (a
/// password prompt). Only its length is recorded, in `len`; the record ends before `data`.
pub const TTY_REDACTED: u32 = 1;
/// `flags`: bytes written into a terminal by `sendfile` or `splice`, whose data the program
/// cannot read: `len` is the count asked for (saturated), and the record ends before `data`.
pub const TTY_UNSEEN: u32 = 2;
/// `flags`: a window size set on a terminal (`ioctl(fd, TIOCSWINSZ, &winsize)`), as asked:
/// `offset` holds its rows and `len` its columns, and the record ends before `data`.
pub const TTY_RESIZE: u32 = 3;
/// `flags`: a byte pushed by `ioctl(fd, TIOCSTI, &byte)`, by the record's task, holding the
/// byte (`len` 1). Through the terminal's own side it goes into the terminal's input, as if
/// typed at it: a `tty_in` record; with `TTY_REDACTED` as well, the terminal hid its input,
/// `len` is the count and the record ends before `data`. Through a pty master it goes to the
/// master's reader, as the terminal's output does: a `tty_out` record. In place of the
/// position, `offset` holds who reads the byte: the effective uids of the leaders of the
/// terminal's session (low 32 bits) and of its foreground process group (high 32 bits),
/// each [`NO_LEADER`] when there is none (always, through a master).
pub const TTY_INJECTED: u32 = 4;
/// In a `TTY_INJECTED` record: no leader, or one that has exited. No task has this euid:
/// it is `(uid_t)-1`, which the kernel refuses as an id.
pub const NO_LEADER: u32 = u32::MAX;

/// The `offset` of a `TTY_INJECTED` record: the euids of the leaders of the terminal's
/// session and of its foreground process group.
#[must_use]
pub const fn pack_readers(session: u32, foreground: u32) -> u64 {
    session as u64 | (foreground as u64) << 32
}

/// The leaders' euids (session, foreground) a `TTY_INJECTED` record's `offset` holds.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "each half is one euid, as `pack_readers` put it"
)]
pub const fn unpack_readers(offset: u64) -> (u32, u32) {
    (offset as u32, (offset >> 32) as u32)
}
/// `TIOCSTI` (`include/uapi/asm-generic/ioctls.h`): push one byte into a terminal's input.
pub const TIOCSTI: u32 = 0x5412;
/// `TIOCSWINSZ` (`include/uapi/asm-generic/ioctls.h`). The kernel takes an ioctl's command
/// as an `unsigned int`: only the low 32 bits of the register count.
pub const TIOCSWINSZ: u32 = 0x5414;
/// `ICANON` of a terminal's `c_lflag` (`include/uapi/asm-generic/termbits.h`): input is read
/// a line at a time, edited by the line discipline.
pub const ICANON: u32 = 0o2;
/// `ECHO` of a terminal's `c_lflag`: the terminal shows what is typed.
pub const ECHO: u32 = 0o10;

/// Whether input to a terminal with this `c_lflag` is a secret: read as lines, not echoed.
/// The kernel's own tty auditing draws the line here (`tty_audit_add_data`): a program in
/// raw mode (readline, an editor) clears `ECHO` too, but echoes what it reads itself.
#[must_use]
pub const fn hides_input(lflag: u32) -> bool {
    lflag & ICANON != 0 && lflag & ECHO == 0
}

/// Bytes before `data`; a record is submitted as this plus `len`.
pub const TTY_FIXED: usize = core::mem::offset_of!(TtyRecord, data);

const _: () = assert!(TTY_FIXED == 80 + 24);
const _: () = assert!(CHUNK.is_power_of_two());
