//! `cargo xtask bench capture`: each workload detached, then with the agent attached, in one
//! session; prints the slowdown, what the agent drained, and what it lost.

use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    process::Command,
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use clap::Subcommand;
use tests::{
    agent::{Agent, Sink},
    collector::{Collector, scratch_dir},
    operator::Tail,
    pty::Pty,
};

#[derive(Subcommand)]
pub enum Which {
    /// Kernel capture cost: an exec loop and pty floods of 64-byte and 4 KiB writes.
    Capture {
        /// Runs per workload and mode; the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Agent pipeline throughput: decode → attribute → model → chain → spool, one core,
    /// against raw SHA-256 in the same run.
    Pipeline,
    /// Collector: durable ingest and verify speed against the raw chain hash in the same run,
    /// then latency from a kernel event to `tail` through a real agent and collector.
    Collector {
        /// Execs timed end to end; p50 and p99 are reported.
        #[arg(long, default_value_t = 200)]
        trials: usize,
    },
}

pub fn run(which: &Which) -> anyhow::Result<()> {
    match which {
        Which::Capture { runs } => capture(*runs),
        Which::Pipeline => crate::cargo(&["bench", "--package", "agent", "--bench", "pipeline"]),
        Which::Collector { trials } => {
            crate::cargo(&["bench", "--package", "collector", "--bench", "ingest"])?;
            latency(*trials)
        }
    }
}

struct Workload {
    name: &'static str,
    /// Operations per run (execs or writes) and bytes per run.
    ops: u64,
    bytes: u64,
    run: Box<dyn Fn() -> Duration>,
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

fn exec_loop(n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        assert!(
            Command::new("/bin/true")
                .status()
                .expect("run /bin/true")
                .success()
        );
    }
    start.elapsed()
}

/// Writes `total` bytes to a pty slave in `size`-byte `write(2)` calls while a thread drains
/// the master; timed until the last byte has come out of the master.
fn pty_flood(size: usize, total: u64) -> Duration {
    let mut pty = Pty::open();
    let slave = File::from(pty.take_slave());
    let buf = vec![b'x'; size];
    let start = Instant::now();
    let drain = pty.drain_master();
    let mut written = 0u64;
    while written < total {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(slave.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        assert!(n > 0, "pty write: {}", std::io::Error::last_os_error());
        written += n.unsigned_abs() as u64;
    }
    drop(slave);
    assert_eq!(drain.join().expect("drain"), total);
    start.elapsed()
}

/// The agent's own closing totals, summed over its runs.
#[derive(Default)]
struct Totals {
    events: u64,
    tty_bytes: u64,
    lost_records: u64,
    lost_bytes: u64,
}

impl Totals {
    fn add(&mut self, stopped: &tests::agent::Output) {
        let total = |key| stopped.total(key).unwrap_or(0);
        self.events += total("events");
        self.tty_bytes += total("tty_bytes");
        self.lost_records += total("lost_records");
        self.lost_bytes += total("lost_bytes");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[expect(clippy::cast_precision_loss, reason = "rates for display")]
fn capture(runs: usize) -> anyhow::Result<()> {
    require_root("capture")?;
    let release = tests::workspace_root().join("target/release/agent");
    // SAFETY: set before any thread that reads the environment exists.
    unsafe { std::env::set_var("RECORDER_AGENT_BIN", &release) };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "capture benchmark: {runs} runs per mode, medians; agent = {}",
        release.display()
    )?;
    writeln!(
        out,
        "{:<24} {:<15} {:>11} {:>11} {:>9} {:>11} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "workload",
        "agent sink",
        "detached",
        "attached",
        "slowdown",
        "ops/s det",
        "MB/s det",
        "events/s",
        "drain MB/s",
        "lost recs",
        "lost bytes"
    )?;
    for w in workloads() {
        for (sink, label) in [(Sink::Discard, "--discard"), (Sink::DevNull, "--stdout")] {
            (w.run)();
            // Detached and attached runs alternate, so drift in this shared machine's speed
            // lands on both sides of the ratio.
            let mut detached = Vec::new();
            let mut attached = Vec::new();
            let mut totals = Totals::default();
            for _ in 0..runs {
                let agent = Agent::start_with(sink, &[]);
                attached.push((w.run)());
                let stopped = agent.stop();
                anyhow::ensure!(stopped.success, "agent failed:\n{}", stopped.stderr);
                totals.add(&stopped);
                detached.push((w.run)());
            }
            let busy: f64 = attached.iter().map(Duration::as_secs_f64).sum();
            let (detached, attached) = (median(detached), median(attached));
            writeln!(
                out,
                "{:<24} {:<15} {:>9.3} s {:>9.3} s {:>8.1}% {:>11.0} {:>10.1} {:>10.0} {:>10.1} {:>10} {:>11}",
                w.name,
                label,
                detached.as_secs_f64(),
                attached.as_secs_f64(),
                (attached.as_secs_f64() / detached.as_secs_f64() - 1.0) * 100.0,
                w.ops as f64 / detached.as_secs_f64(),
                w.bytes as f64 / detached.as_secs_f64() / 1e6,
                totals.events as f64 / busy,
                totals.tty_bytes as f64 / busy / 1e6,
                totals.lost_records,
                totals.lost_bytes,
            )?;
        }
    }
    Ok(())
}

/// Runs `/bin/true MARK` `trials` times, one at a time, through a release agent shipping to
/// a release collector, and times each from the exec's kernel timestamp to the moment
/// `tail --json` prints it.
fn latency(trials: usize) -> anyhow::Result<()> {
    require_root("latency")?;
    let release = tests::workspace_root().join("target/release");
    for (var, bin) in [
        ("RECORDER_AGENT_BIN", "agent"),
        ("RECORDER_COLLECTOR_BIN", "collector"),
        ("RECORDER_OPERATOR_BIN", "recorder"),
    ] {
        // SAFETY: set before any thread that reads the environment exists.
        unsafe { std::env::set_var(var, release.join(bin)) };
    }
    let dir = scratch_dir("bench-latency");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let spool = dir.join("spool");
    let agent = Agent::start_with(
        Sink::Spool,
        &["--spool", spool.to_str().unwrap(), "--collector", &url],
    );
    let tail = Tail::start(&url, &["--kind", "exec"]);
    let mark = tests::marker("latency");
    // Until the tail is live, an exec may come before it subscribed: repeat the first one.
    let warm = format!("{mark}-warm");
    let deadline = Instant::now() + Duration::from_secs(30);
    while exec_to_tail(&tail, &warm, Duration::from_millis(500))?.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "tail did not go live within 30 s"
        );
    }
    let mut latencies = Vec::with_capacity(trials);
    for i in 0..trials {
        let arg = format!("{mark}-{i}");
        let line = exec_to_tail(&tail, &arg, Duration::from_secs(10))?
            .with_context(|| format!("exec {arg} did not reach tail within 10 s"))?;
        let printed = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let at = line["time_unix_nano"].as_u64().context("time_unix_nano")?;
        latencies.push(printed.saturating_sub(Duration::from_nanos(at)));
    }
    drop(tail);
    let stopped = agent.stop();
    anyhow::ensure!(stopped.success, "agent failed:\n{}", stopped.stderr);
    drop(collector);
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "end-to-end latency, kernel exec to `tail --json` line, {trials} execs one at a time: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
    Ok(())
}

/// Runs `/bin/true arg` and returns its exec as `tail` prints it, if it does `within`.
fn exec_to_tail(
    tail: &Tail,
    arg: &str,
    within: Duration,
) -> anyhow::Result<Option<serde_json::Value>> {
    let deadline = Instant::now() + within;
    Command::new("/bin/true").arg(arg).status()?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tail.lines.recv_timeout(left) {
            Ok(v)
                if v["argv"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == arg)) =>
            {
                return Ok(Some(v));
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("tail ended"),
        }
    }
}

fn require_root(bench: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the {bench} benchmark loads kernel programs: run it as root"
    );
    Ok(())
}
