//! `cargo xtask bench capture`: each workload detached, then with the agent attached, in one
//! session; prints the slowdown, what the agent drained, and what it lost. The agent runs
//! three ways: `--discard` (capture alone), `--stdout` (capture and JSON), and as deployed,
//! spooling and shipping over mutual TLS to a collector on this machine. Then the peers in
//! the same run: the exec loop under auditd's exec rule, and the pty floods under `script`
//! and `tlog-rec`.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tests::{
    agent::{Agent, Sink},
    collector::{Collector, scratch_dir},
    pty::Pty,
};

use super::{median, require_root, spread, use_release_binaries};

struct Workload {
    name: &'static str,
    /// Operations per run (execs or writes) and bytes per run.
    ops: u64,
    bytes: u64,
    run: Box<dyn Fn() -> Sample>,
}

/// One run: its wall-clock time and, for the floods, the writing thread's CPU time. The
/// kernel programs run in the writer's context, so its CPU time is what capture costs each
/// write, whatever the pty's flow control does to the wall clock.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    writer_cpu: Option<Duration>,
}

fn workloads() -> Vec<Workload> {
    const EXECS: u64 = 3000;
    const SMALL: (usize, u64) = (64, 32 << 20);
    const LARGE: (usize, u64) = (4096, 512 << 20);
    vec![
        Workload {
            name: "exec loop",
            ops: EXECS,
            bytes: 0,
            run: Box::new(|| exec_loop(EXECS)),
        },
        Workload {
            name: "pty flood, 64 B writes",
            ops: SMALL.1 / SMALL.0 as u64,
            bytes: SMALL.1,
            run: Box::new(|| pty_flood(SMALL.0, SMALL.1)),
        },
        Workload {
            name: "pty flood, 4 KiB writes",
            ops: LARGE.1 / LARGE.0 as u64,
            bytes: LARGE.1,
            run: Box::new(|| pty_flood(LARGE.0, LARGE.1)),
        },
    ]
}

fn exec_loop(n: u64) -> Sample {
    let start = Instant::now();
    for _ in 0..n {
        assert!(
            Command::new("/bin/true")
                .status()
                .expect("run /bin/true")
                .success()
        );
    }
    Sample {
        wall: start.elapsed(),
        writer_cpu: None,
    }
}

/// Writes `total` bytes to a pty slave in `size`-byte `write(2)` calls, timing the writing
/// thread's CPU as well as the wall clock.
fn pty_flood(size: usize, total: u64) -> Sample {
    let buf = vec![b'x'; size];
    let (wall, drained, writer_cpu) = through_pty(Some(total), |slave| {
        let cpu_start = thread_cpu();
        let mut written = 0u64;
        while written < total {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::write(slave.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            assert!(n > 0, "pty write: {}", std::io::Error::last_os_error());
            written += n.unsigned_abs() as u64;
        }
        thread_cpu().saturating_sub(cpu_start)
    });
    assert_eq!(drained, total);
    Sample {
        wall,
        writer_cpu: Some(writer_cpu),
    }
}

/// Hands `write` the slave of a new pty whose master a thread drains. With `expected`, the
/// drain ends once that many bytes came out, and the slave is closed after it; without, the
/// slave is closed when `write` returns, and the drain ends when every copy `write` made is
/// closed too. Returns the time until the last byte came out of the master, the bytes
/// drained, and what `write` returned.
fn through_pty<T>(expected: Option<u64>, write: impl FnOnce(&File) -> T) -> (Duration, u64, T) {
    let mut pty = Pty::open();
    let slave = File::from(pty.take_slave());
    let start = Instant::now();
    let drain = pty.drain_master_up_to(expected.unwrap_or(u64::MAX));
    let written = write(&slave);
    if expected.is_none() {
        drop(slave);
    }
    let drained = drain.join().expect("drain");
    (start.elapsed(), drained, written)
}

/// The calling thread's CPU time, user and system.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(
        ts.tv_sec.unsigned_abs(),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    require_root("the capture benchmark loads kernel programs")?;
    use_release_binaries();
    // The deployed mode's collector shares this machine's two cores with the workload and
    // the agent: its ingest is part of what the row costs, as it would be for a collector
    // on the host it records (one elsewhere costs the host only the agent's sending).
    let dir = scratch_dir("bench-capture");
    let collector = Collector::start(&dir.join("store.db"));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "capture benchmark: {runs} runs per mode, detached and attached alternating; times are \
         min/median/max, the slowdown is of the medians; agent = {}",
        tests::agent::binary().display()
    )?;
    writeln!(
        out,
        "{:<24} {:<14} {:>20} {:>20} {:>9} {:>19} {:>13} {:>9} {:>8} {:>9} {:>8} {:>9} {:>10}  note",
        "workload",
        "recorder",
        "detached s",
        "attached s",
        "slowdown",
        "writer CPU ns/op",
        "rec. CPU ns/op",
        "ops/s det",
        "MB/s det",
        "events/s",
        "drain MB/s",
        "lost recs",
        "lost bytes"
    )?;
    for w in workloads() {
        for mode in [Mode::Discard, Mode::Stdout, Mode::Shipping] {
            (w.run)();
            // Detached and attached runs alternate, so drift in this shared machine's speed
            // lands on both sides of the ratio.
            let mut row = Row::new(&w, mode.label());
            for _ in 0..runs {
                let agent = mode.start(&collector, &dir);
                // What the recorder's own processes spend while the workload runs: the
                // agent, and for the deployed mode the collector that stores its batches.
                let recorders = || -> anyhow::Result<[Duration; 2]> {
                    let collector_cpu = match mode {
                        Mode::Shipping => process_cpu(collector.pid())?,
                        Mode::Discard | Mode::Stdout => Duration::ZERO,
                    };
                    Ok([process_cpu(agent.pid())?, collector_cpu])
                };
                let before = recorders()?;
                row.push(true, (w.run)());
                let after = recorders()?;
                row.recorder_cpu(
                    after[0].saturating_sub(before[0]),
                    after[1].saturating_sub(before[1]),
                );
                let stopped = agent.stop();
                anyhow::ensure!(stopped.success, "agent failed:\n{}", stopped.stderr);
                // The agent's own closing totals, summed over its runs.
                let total = |key| stopped.total(key).unwrap_or(0);
                row.count(
                    total("events"),
                    total("lost_records"),
                    Some((total("tty_bytes"), total("lost_bytes"))),
                );
                // Events its full spool refused are lost as surely as those the kernel's
                // ring dropped, and for another reason: shipping fell behind.
                row.refused += total("spool_refused");
                row.push(false, (w.run)());
            }
            row.print(&mut out)?;
        }
    }
    let log = collector.stop();
    let errors = log.lines().filter(|l| l.contains(" ERROR ")).count();
    if errors > 0 {
        writeln!(
            out,
            "the shipping rows' collector logged {errors} errors:\n{log}"
        )?;
    }
    program_rows(runs, &mut out)?;
    auditd_row(runs, &mut out)?;
    pty_peer_rows(runs, &mut out)
}

/// Each kernel program's own time per run, from the kernel's run-time statistics, with the
/// agent capturing alone (`--discard`). The statistics cost two clock reads a program run,
/// so they are on only for these runs, never for the rows above.
fn program_rows(runs: usize, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("turning on the kernel's run-time statistics of BPF programs")?;
    writeln!(
        out,
        "kernel programs, agent --discard, {runs} runs: ns per program run min/median/max, \
         program runs per op"
    )?;
    for w in workloads() {
        (w.run)();
        // Keyed by load order and name: a name is cut to 15 bytes, so two can read alike.
        let mut programs: BTreeMap<(usize, String), (Vec<Duration>, u64)> = BTreeMap::new();
        for _ in 0..runs {
            let before = program_stats()?;
            let agent = Agent::start_with(Sink::Discard, &[]);
            let start = program_stats()?;
            (w.run)();
            let end = program_stats()?;
            let stopped = agent.stop();
            anyhow::ensure!(stopped.success, "agent failed:\n{}", stopped.stderr);
            let ours = end.iter().filter(|(id, _)| !before.contains_key(id));
            for (rank, (id, (name, time, count))) in ours.enumerate() {
                let (time0, count0) = start.get(id).map_or((Duration::ZERO, 0), |s| (s.1, s.2));
                let ran = count.saturating_sub(count0);
                if ran == 0 {
                    continue;
                }
                let entry = programs.entry((rank, name.clone())).or_default();
                entry
                    .0
                    .push(time.saturating_sub(time0) / u32::try_from(ran)?);
                entry.1 += ran;
            }
        }
        for ((_, name), (per_run, ran)) in programs {
            let [min, median, max] = spread(per_run);
            #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
            let per_op = ran as f64 / (w.ops as f64 * runs as f64);
            writeln!(
                out,
                "{:<24} {:<16} {:>5}/{:>5}/{:>5} ns {:>8.2} runs/op",
                w.name,
                name,
                min.as_nanos(),
                median.as_nanos(),
                max.as_nanos(),
                per_op
            )?;
        }
    }
    Ok(())
}

/// Every loaded BPF program's name, run time and run count, by id (ids grow with load order).
fn program_stats() -> anyhow::Result<BTreeMap<u32, (String, Duration, u64)>> {
    aya::programs::loaded_programs()
        .map(|p| {
            let p = p?;
            let name = p.name_as_str().unwrap_or("?").to_owned();
            Ok((p.id(), (name, p.run_time(), p.run_count())))
        })
        .collect()
}

/// How the agent runs in a row.
#[derive(Clone, Copy)]
enum Mode {
    /// Capture alone: records drained, decoded and counted.
    Discard,
    /// Capture and JSON encoding, into /dev/null.
    Stdout,
    /// As deployed: attributed, chained, spooled to disk and shipped to a live collector
    /// over mutual TLS, which stores each batch durably before it acknowledges it.
    Shipping,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Discard => "--discard",
            Self::Stdout => "--stdout",
            Self::Shipping => "shipping",
        }
    }

    /// Starts the agent this way; the deployed agent keeps one spool across its runs, as a
    /// restarted agent does.
    fn start(self, collector: &Collector, dir: &std::path::Path) -> Agent {
        match self {
            Self::Discard => Agent::start_with(Sink::Discard, &[]),
            Self::Stdout => Agent::start_with(Sink::DevNull, &[]),
            Self::Shipping => {
                Agent::shipping_with(Sink::Spool, &dir.join("spool"), &collector.url(), &[])
            }
        }
    }
}

/// A workload's detached and attached runs, and what the recorder wrote and lost meanwhile.
struct Row<'a> {
    workload: &'a Workload,
    recorder: &'a str,
    detached: Vec<Duration>,
    attached: Vec<Duration>,
    /// The writer's CPU time per run, where the workload measures it.
    cpu_detached: Vec<Duration>,
    cpu_attached: Vec<Duration>,
    /// The agent's and the collector's CPU time per attached run, where the bench starts
    /// them.
    agent_cpu: Vec<Duration>,
    collector_cpu: Vec<Duration>,
    /// What the recorder counts of its own work, where it counts it: events written,
    /// terminal bytes drained, records and bytes lost.
    events: Option<u64>,
    tty_bytes: Option<u64>,
    lost: Option<u64>,
    lost_bytes: Option<u64>,
    /// Events the agent's spool refused when full.
    refused: u64,
}

impl<'a> Row<'a> {
    fn new(workload: &'a Workload, recorder: &'a str) -> Self {
        Self {
            workload,
            recorder,
            detached: Vec::new(),
            attached: Vec::new(),
            cpu_detached: Vec::new(),
            cpu_attached: Vec::new(),
            agent_cpu: Vec::new(),
            collector_cpu: Vec::new(),
            events: None,
            tty_bytes: None,
            lost: None,
            lost_bytes: None,
            refused: 0,
        }
    }

    fn push(&mut self, attached: bool, sample: Sample) {
        let (wall, cpu) = if attached {
            (&mut self.attached, &mut self.cpu_attached)
        } else {
            (&mut self.detached, &mut self.cpu_detached)
        };
        wall.push(sample.wall);
        cpu.extend(sample.writer_cpu);
    }

    /// Adds one attached run's CPU time of the agent and of the collector (zero when it has
    /// none).
    fn recorder_cpu(&mut self, agent: Duration, collector: Duration) {
        self.agent_cpu.push(agent);
        self.collector_cpu.push(collector);
    }

    /// Adds one attached run's counts: events written and records lost, and terminal bytes
    /// drained and bytes lost where the recorder counts them.
    fn count(&mut self, events: u64, lost: u64, tty: Option<(u64, u64)>) {
        *self.events.get_or_insert(0) += events;
        *self.lost.get_or_insert(0) += lost;
        if let Some((drained, lost_bytes)) = tty {
            *self.tty_bytes.get_or_insert(0) += drained;
            *self.lost_bytes.get_or_insert(0) += lost_bytes;
        }
    }

    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    fn print(self, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        let busy: f64 = self.attached.iter().map(Duration::as_secs_f64).sum();
        let (detached, attached) = (spread(self.detached), spread(self.attached));
        let (det, att) = (detached[1].as_secs_f64(), attached[1].as_secs_f64());
        let range = |v: [Duration; 3]| {
            format!(
                "{:.3}/{:.3}/{:.3}",
                v[0].as_secs_f64(),
                v[1].as_secs_f64(),
                v[2].as_secs_f64()
            )
        };
        // When the two ranges overlap, some detached run was as slow as some attached one:
        // the machine's spread is as large as the effect, and the ratio is not a result.
        let overlap = attached[0] <= detached[2] && detached[0] <= attached[2];
        let w = self.workload;
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let per_op = |v: &[Duration]| median(v.to_vec()).as_secs_f64() * 1e9 / w.ops as f64;
        let cpu = (!self.cpu_detached.is_empty() && !self.cpu_attached.is_empty()).then(|| {
            let (d, a) = (per_op(&self.cpu_detached), per_op(&self.cpu_attached));
            format!("{d:.0}->{a:.0} ({:+.0}%)", (a / d - 1.0) * 100.0)
        });
        // The collector's part is shown only where it ran.
        let recorder_cpu = (!self.agent_cpu.is_empty()).then(|| {
            let agent = per_op(&self.agent_cpu);
            if self.collector_cpu.iter().any(|c| !c.is_zero()) {
                format!("{agent:.0}+{:.0}", per_op(&self.collector_cpu))
            } else {
                format!("{agent:.0}")
            }
        });
        writeln!(
            out,
            "{:<24} {:<14} {:>20} {:>20} {:>8.1}% {:>19} {:>13} {:>9.0} {:>8.1} {:>9} {:>8} {:>9} {:>10}  {}",
            w.name,
            self.recorder,
            range(detached),
            range(attached),
            (att / det - 1.0) * 100.0,
            or_dash(cpu),
            or_dash(recorder_cpu),
            w.ops as f64 / det,
            w.bytes as f64 / det / 1e6,
            or_dash(self.events.map(|e| format!("{:.0}", e as f64 / busy))),
            or_dash(
                self.tty_bytes
                    .map(|b| format!("{:.1}", b as f64 / busy / 1e6))
            ),
            or_dash(self.lost.map(|l| l.to_string())),
            or_dash(self.lost_bytes.map(|b| b.to_string())),
            [
                overlap.then(|| "spread > effect".to_owned()),
                (self.refused > 0)
                    .then(|| format!("{} events refused by the full spool", self.refused)),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        )?;
        Ok(())
    }
}

/// The CPU time (user and system, all threads) a process has spent so far.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    // utime and stime are fields 14 and 15 of proc(5), the 12th and 13th after the name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a stat line without its name")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("a short stat line")?.parse()?)
    };
    // SAFETY: sysconf reads a constant.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })?.max(1);
    Ok(Duration::from_nanos(
        (ticks(11)? + ticks(12)?).saturating_mul(1_000_000_000 / hz),
    ))
}

/// The exec loop under auditd as its users record execs (a syscall rule on `execve` and
/// `execveat`, the daemon writing its log), against the loop without it, alternated as the
/// agent's rows are: the peer the exec-loop target is measured against. Its events column
/// counts the `EXECVE` records in auditd's log; its lost column, what the kernel's audit
/// counter says it dropped (auditd counts no bytes).
fn auditd_row(runs: usize, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let workloads = workloads();
    let mut row = Row::new(&workloads[0], "auditd (peer)");
    // Warmed up as the agent's rows are: the first loop of a row pays for cold caches.
    (row.workload.run)();
    for _ in 0..runs {
        let auditd = Auditd::start()?;
        row.push(true, (row.workload.run)());
        let (logged, dropped) = auditd.stop()?;
        row.count(logged, dropped, None);
        row.push(false, (row.workload.run)());
    }
    row.print(out)
}

/// The pty floods recorded by the peers that record terminals in userspace: `script`
/// (util-linux), and `tlog-rec` where it is installed. Each runs `dd` writing the flood into
/// a terminal of its own and relays it to the bench's pty, logging to a file; the detached
/// runs are the same `dd` writing into the bench's pty directly. The peers count nothing, so
/// their events and losses are not shown.
fn pty_peer_rows(runs: usize, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let mut peers = vec![Peer::Script];
    if Command::new("tlog-rec").arg("--version").output().is_ok() {
        // tlog-rec registers its terminal in utmp and refuses to record without it; a
        // booted Debian host has the file (systemd-tmpfiles makes it), this machine may not.
        let utmp = std::path::Path::new("/run/utmp");
        if !utmp.exists() {
            let made = Command::new("install")
                .args(["-m", "0664", "-g", "utmp", "/dev/null"])
                .arg(utmp)
                .status()?;
            anyhow::ensure!(made.success(), "create {}: {made}", utmp.display());
        }
        peers.push(Peer::TlogRec);
    }
    for w in &workloads()[1..] {
        let size = usize::try_from(w.bytes / w.ops)?;
        for peer in &peers {
            let mut row = Row::new(w, peer.name());
            let dir = tests::Scratch::new("pty-peer");
            // A warm-up under the peer: its binary and `dd` are then cached for both sides.
            dd_flood(size, w.bytes, Some((peer, &dir)))?;
            for _ in 0..runs {
                row.push(true, dd_flood(size, w.bytes, Some((peer, &dir)))?);
                row.push(false, dd_flood(size, w.bytes, None)?);
            }
            std::fs::remove_dir_all(dir.path())?;
            row.print(out)?;
        }
    }
    Ok(())
}

enum Peer {
    Script,
    TlogRec,
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Self::Script => "script (peer)",
            Self::TlogRec => "tlog-rec (peer)",
        }
    }

    /// The peer recording `shell_command` into a file in `dir`.
    fn command(&self, shell_command: &str, dir: &std::path::Path) -> Command {
        let log = dir.join("recording");
        let mut cmd = match self {
            Self::Script => {
                let mut c = Command::new("script");
                c.args(["--quiet", "--command", shell_command]).arg(&log);
                c
            }
            Self::TlogRec => {
                let mut c = Command::new("tlog-rec");
                c.args(["--writer=file"])
                    .arg(format!("--file-path={}", log.display()))
                    .args(["/bin/sh", "-c", shell_command]);
                c
            }
        };
        cmd.stderr(std::process::Stdio::null());
        cmd
    }
}

/// `dd` writing `total` bytes in `size`-byte writes into the bench's pty, directly or under
/// a peer that records them, timed until the last byte has come out of the master (a
/// terminal that adds a carriage return to each line gives a little more).
fn dd_flood(
    size: usize,
    total: u64,
    peer: Option<(&Peer, &tests::Scratch)>,
) -> anyhow::Result<Sample> {
    // Lines of `x` (not NULs, which tlog escapes six bytes for one), cut into full blocks.
    let dd = format!(
        "yes {} | dd bs={size} count={} iflag=fullblock status=none",
        "x".repeat(1023),
        total / size as u64
    );
    let mut cmd = match peer {
        None => {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", &dd]);
            c
        }
        Some((peer, dir)) => peer.command(&dd, dir),
    };
    // Not drained to a count: a peer's terminal may add a carriage return to each line.
    let (wall, drained, status) = through_pty(None, move |slave| {
        cmd.stdin(slave.try_clone()?).stdout(slave.try_clone()?);
        cmd.status()
    });
    let status = status?;
    anyhow::ensure!(status.success(), "{dd}: {status}");
    anyhow::ensure!(
        drained >= total,
        "{dd}: {drained} bytes reached the terminal, not {total}"
    );
    Ok(Sample {
        wall,
        writer_cpu: None,
    })
}

/// auditd in the foreground with a log of its own, the backlog Debian's default rules set,
/// and the exec rule; `stop` removes the rule and puts the kernel's audit settings back as
/// they were found.
struct Auditd {
    daemon: std::process::Child,
    dir: tests::Scratch,
    before: AuditStatus,
}

const AUDIT_KEY: &str = "recorder-bench";

impl Auditd {
    fn start() -> anyhow::Result<Self> {
        let before = AuditStatus::read()?;
        anyhow::ensure!(
            before.pid == 0,
            "an audit daemon (pid {}) already runs: the peer row needs the audit subsystem to itself",
            before.pid
        );
        let dir = tests::Scratch::new("auditd");
        let conf = std::fs::read_to_string("/etc/audit/auditd.conf")
            .context("read /etc/audit/auditd.conf (`cargo xtask setup` installs auditd)")?;
        let log = dir.join("audit.log");
        let conf: String = conf
            .lines()
            .map(|line| {
                if line.starts_with("log_file") {
                    format!("log_file = {}\n", log.display())
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        let conf_path = dir.join("auditd.conf");
        std::fs::write(&conf_path, conf)?;
        std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o600))?;
        let daemon = Command::new("auditd")
            .args(["-n", "-s", "enable", "-c"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start auditd")?;
        let started = Instant::now();
        while AuditStatus::read()?.pid == 0 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "auditd did not register with the kernel in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let auditd = Self {
            daemon,
            dir,
            before,
        };
        auditctl(&["-b", "8192"])?;
        auditctl(&[
            "-a",
            "always,exit",
            "-F",
            "arch=b64",
            "-S",
            "execve,execveat",
            "-k",
            AUDIT_KEY,
        ])?;
        Ok(auditd)
    }

    /// Stops the daemon once it has written what the kernel gave it; returns the `EXECVE`
    /// records in its log and the records the kernel dropped meanwhile.
    fn stop(mut self) -> anyhow::Result<(u64, u64)> {
        auditctl(&["-D", "-k", AUDIT_KEY])?;
        let lost = AuditStatus::read()?.lost.saturating_sub(self.before.lost);
        // SIGTERM: auditd flushes its log and deregisters.
        let pid = libc::pid_t::try_from(self.daemon.id())?;
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.daemon.wait()?;
        let log = std::fs::read_to_string(self.dir.join("audit.log"))?;
        let records = log
            .lines()
            .filter(|l| l.starts_with("type=EXECVE "))
            .count();
        Ok((records as u64, lost))
    }
}

impl Drop for Auditd {
    /// Leaves the audit subsystem as it was found, on every path out (a failed `auditctl`
    /// included): no rule, no daemon, the old backlog and enabled flag.
    fn drop(&mut self) {
        let _ = auditctl(&["-D", "-k", AUDIT_KEY]);
        if matches!(self.daemon.try_wait(), Ok(None)) {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        let _ = auditctl(&["-b", &self.before.backlog_limit.to_string()]);
        let _ = auditctl(&["-e", &self.before.enabled.to_string()]);
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

/// The kernel's audit settings this benchmark changes, from `auditctl -s`.
struct AuditStatus {
    enabled: u64,
    pid: u64,
    backlog_limit: u64,
    lost: u64,
}

impl AuditStatus {
    fn read() -> anyhow::Result<Self> {
        let out = Command::new("auditctl")
            .arg("-s")
            .output()
            .context("run auditctl -s")?;
        anyhow::ensure!(out.status.success(), "auditctl -s failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .with_context(|| format!("auditctl -s gave no {name}: {text}"))
        };
        Ok(Self {
            enabled: field("enabled")?,
            pid: field("pid")?,
            backlog_limit: field("backlog_limit")?,
            lost: field("lost")?,
        })
    }
}

fn auditctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("auditctl")
        .args(args)
        .output()
        .context("run auditctl")?;
    anyhow::ensure!(
        out.status.success(),
        "auditctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
