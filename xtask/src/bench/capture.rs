//! `cargo xtask bench capture`: each workload detached, then with the agent attached, in one
//! session; prints the slowdown, what the agent drained, and what it lost.

use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    process::Command,
    time::{Duration, Instant},
};

use tests::{
    agent::{Agent, Sink},
    pty::Pty,
};

use super::{median, require_root};

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

#[expect(clippy::cast_precision_loss, reason = "rates for display")]
pub fn run(runs: usize) -> anyhow::Result<()> {
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
