//! Typed events: what the kernel records say, decoded. Raw records become these in
//! `decode`, and nothing outside the agent ever sees a raw record; `evidence::encode` turns
//! them into the versioned model of `proto/`.

use agent_common::event::{AUDIT_UNSET, dev_major, dev_minor, kind};
use bytes::Bytes;
use proto::kind::Kind;

/// Who acted, as the kernel reported it for this record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    /// `None` when the kernel's value is "unset" (`4294967295`).
    pub loginuid: Option<u32>,
    pub sessionid: Option<u32>,
    pub cgroup_id: u64,
    pub tty: Option<Device>,
    pub comm: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

impl Device {
    /// A kernel `dev_t`; 0 means "no device".
    #[must_use]
    pub fn from_kernel(dev: u32) -> Option<Self> {
        (dev != 0).then(|| Self {
            major: dev_major(dev),
            minor: dev_minor(dev),
        })
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Whose programs read input pushed into a terminal: the effective uids of the leaders of
/// its session and of its foreground process group, as the kernel saw them at the push;
/// `None` for a leader there was not, or that had exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readers {
    pub session_euid: Option<u32>,
    pub foreground_euid: Option<u32>,
}

/// A path the kernel resolved for an exec (its working directory, its executable's file),
/// as the process sees it (up to its own root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPath {
    pub path: String,
    /// Only the path's last components fit.
    pub truncated: bool,
    /// The directory or file was removed; `path` is where it was.
    pub deleted: bool,
    /// Not below the process's root (or, for a `memfd`, in no directory at all); `path`
    /// is what the walk reached.
    pub unreachable: bool,
}

/// The interpreter path of a script's exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    pub path: String,
    /// The path was longer than the kernel program keeps; `path` is its prefix.
    pub truncated: bool,
}

/// The file a successful exec mapped (`mm->exe_file`), as its inode said at that moment:
/// what names its contents, short of reading them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    /// `st_dev`, in the encoding stat(2) gives.
    pub dev: u64,
    pub inode: u64,
    pub size: i64,
    pub mtime_ns: i64,
    /// Set by the kernel on every write or attribute change; unlike mtime, userspace cannot
    /// put it back.
    pub ctime_ns: i64,
    /// The file is the interpreter of the script (`#!`) or `binfmt_misc` program named by
    /// `filename`.
    pub interpreter: bool,
    /// The contents' SHA-256, or why this event has none; `None` until the `image` stage
    /// has looked.
    pub digest: Option<Result<[u8; 32], Unhashed>>,
}

impl Image {
    /// What names the file's contents: two files with the same key hold the same bytes.
    #[must_use]
    pub fn key(&self) -> ImageKey {
        (
            self.dev,
            self.inode,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
        )
    }
}

/// `(dev, inode, size, mtime, ctime)`.
pub type ImageKey = (u64, u64, i64, i64, i64);

/// Why an image's contents have no digest on an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unhashed {
    /// Being read: an `image` event with the digest follows.
    Pending,
    /// Larger than the agent reads.
    TooLarge,
    /// The reader's queue was full: tried again at the file's next exec.
    Busy,
    /// The process exited and no path reaches the file.
    Gone,
    /// The file reached is not, or no longer, the one executed.
    Changed,
    Unreadable,
}

impl Unhashed {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::TooLarge => "too_large",
            Self::Busy => "busy",
            Self::Gone => "gone",
            Self::Changed => "changed",
            Self::Unreadable => "unreadable",
        }
    }
}

#[must_use]
pub fn audit_id(raw: u32) -> Option<u32> {
    (raw != AUDIT_UNSET).then_some(raw)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Exec {
        filename: String,
        filename_truncated: bool,
        /// The argument strings as the kernel held them (not necessarily UTF-8).
        argv: Vec<Bytes>,
        argv_truncated: bool,
        argv_unreadable: bool,
        /// 0, or `-errno` of a failed exec.
        result: i32,
        /// Paths the same process tried first with the same argv, which do not exist: a
        /// shell's `PATH` search (`fold`).
        tried: Vec<String>,
        /// The working directory, resolved by the kernel; `None` when it could not be read.
        cwd: Option<ResolvedPath>,
        /// The file the new image was mapped from (`mm->exe_file`), resolved by the kernel:
        /// a symlink's target, a relative name made whole, a `memfd`'s name. `None` for a
        /// failed exec, or when it could not be read.
        executable: Option<ResolvedPath>,
        /// For a script (or `binfmt_misc` program): the path the kernel ran in its place,
        /// as the `#!` line (or handler) names it. `None` when `filename` was the image.
        interpreter: Option<Interpreter>,
        /// The file a successful exec mapped; `None` for a failed one, or when the kernel
        /// could not read it.
        image: Option<Image>,
    },
    Fork,
    Exit {
        /// Wait status: `code << 8 | signal`.
        exit_code: i32,
        /// The image the process was running, from the process table.
        filename: Option<String>,
    },
    Tty {
        input: bool,
        /// The terminal: written device for output, the pty slave for typed input.
        device: Option<Device>,
        fd: u32,
        /// Position of `data` within the bytes of the syscall that wrote it.
        offset: u64,
        data: Bytes,
        /// Nonzero: input typed while the terminal did not echo, of this many bytes, none
        /// of which were read (`data` is empty).
        redacted_bytes: u64,
        /// Pushed by `ioctl(TIOCSTI)`, by the record's task, not written: input into the
        /// terminal, or output through its master (to the master's reader), and who reads it.
        injected: Option<Readers>,
        /// The kernel records joined into this one (`coalesce`): 1 unless joined.
        writes: u32,
        /// Nanoseconds from the first joined record to the last.
        span_ns: u64,
        /// The bytes of each joined record in `data`, in order, and the nanoseconds from
        /// each to the next (one fewer): empty unless joined, and for input typed without
        /// echo. The encoded event's `write_bytes` and `write_gap_nanos`, as they are.
        write_bytes: Vec<u32>,
        write_gap_ns: Vec<u64>,
    },
    /// The digest of an executed file, read after its exec (whose image said `pending`).
    ImageDigest(Image),
    /// A window size set on a terminal, as asked.
    TtyResize {
        /// The terminal: the pty slave when set through the master.
        device: Option<Device>,
        rows: u32,
        cols: u32,
    },
    /// Records the kernel could not deliver, counted exactly.
    Gap {
        source: GapSource,
        lost_kind: u32,
        records: u64,
        bytes: u64,
    },
    /// Activity the policy says needs a grant, done without one; or input pushed into a
    /// terminal read as another user (`tty_injection`, whatever the policy).
    Violation {
        rule: &'static str,
        /// "alert" or "kill".
        action: &'static str,
        detail: String,
    },
    Kill(Kill),
    /// A process of a login session wrote its loginuid, which gave it a new audit session.
    /// It stays attributed to, and enforced as, the session it was born in.
    LoginuidChange {
        born_loginuid: Option<u32>,
        born_session: u32,
        loginuid: Option<u32>,
        session: Option<u32>,
    },
    /// Exec records were lost while these targets held running kill-mode grants they had
    /// used, and the policy says alert: any of them may have made the lost execs.
    ExecLost {
        records: u64,
        targets: Vec<Target>,
    },
}

/// What an enforcement action is aimed at: a human's audit session, or the cgroup of a
/// non-human identity (or of a process with no audit session).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Target {
    Session(u32),
    Cgroup(u64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(id) => write!(f, "session {id}"),
            Self::Cgroup(id) => write!(f, "cgroup {id}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Killer {
    /// The agent, from userspace.
    Agent,
    /// The kernel, at the task's next syscall.
    Kernel,
    /// The reaper, from userspace, while no agent ran.
    Reaper,
}

impl Killer {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Kernel => "kernel",
            Self::Reaper => "reaper",
        }
    }
}

/// Tasks sent SIGKILL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    pub by: Killer,
    /// The deny entry that caused it; the enforce stage knows its grant and reason.
    pub cause: u32,
    /// Empty for a violation.
    pub grant_id: String,
    /// `expired`, `revoked`, `violation`, `exec_lost`; empty until the enforce stage resolves
    /// `cause`.
    pub reason: &'static str,
    pub target: Option<Target>,
    pub pids: Vec<u32>,
}

impl Kill {
    #[must_use]
    pub fn sessionid(&self) -> Option<u32> {
        match self.target {
            Some(Target::Session(id)) => Some(id),
            _ => None,
        }
    }

    /// 0 unless a cgroup was the target.
    #[must_use]
    pub fn cgroup_id(&self) -> u64 {
        match self.target {
            Some(Target::Cgroup(id)) => id,
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapSource {
    /// The ring buffer was full when the kernel submitted.
    Kernel,
    /// A record arrived but did not decode.
    Decode,
    /// The reader drained it, but the next pipeline stage had no room for its batch.
    Pipeline,
    /// Written into a terminal by a path the kernel programs cannot read (sendfile,
    /// splice): counted per syscall, attributed to the writer.
    Unseen,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds; the output stage turns it into wall-clock time.
    pub ktime_ns: u64,
    /// `None` for records no process made (gaps).
    pub process: Option<Process>,
    pub body: Body,
}

/// The name of a kernel record kind, as gap records name what was lost.
#[must_use]
pub fn lost_kind_name(kind_id: u32) -> &'static str {
    match kind_id {
        kind::EXEC => Kind::Exec.name(),
        kind::FORK => Kind::Fork.name(),
        kind::EXIT => Kind::Exit.name(),
        kind::TTY_OUT => Kind::TtyOut.name(),
        kind::TTY_IN => Kind::TtyIn.name(),
        kind::KILL => Kind::Kill.name(),
        _ => "unknown",
    }
}
