//! `cargo xtask bench ...`: benchmarks that print figures, each against a baseline run in
//! the same session.

mod capture;
mod collector;
mod enforce;

pub use enforce::{Call, syscall_loop};

use std::time::Duration;

use clap::Subcommand;

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
    /// on `SQLite` and then on a PostgreSQL server made for the run (with two collectors on one
    /// database), PostgreSQL's rates as ratios to `SQLite`'s; then latency from a kernel event
    /// to `tail` through a real agent and collector.
    Collector {
        /// Execs timed end to end; p50 and p99 are reported.
        #[arg(long, default_value_t = 200)]
        trials: usize,
    },
    /// Evidence bundles: a 10,000-record session's bundle from a 10,000,000-record host log,
    /// its size, export time and offline verify time (two exports); then `recorder verify`
    /// and `recorder verify --local` of that store.
    Export,
    /// A fleet: simulated hosts, each on its own mutual-TLS connection, against one collector
    /// at a fixed rate for a fixed time: acked events/s, ack latency p50/p99, the collector's
    /// memory over time, and verify's verdict.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        /// Events a second per host, a multiple of 5.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Stops the collector at this second of the timed run (with `--stop-for`), and
        /// prints how long after it went on batches were acked late.
        #[arg(long, requires = "stop_for")]
        stop_at: Option<u64>,
        /// Seconds the collector stays stopped.
        #[arg(long, requires = "stop_at")]
        stop_for: Option<u64>,
    },
    /// Enforcement: expiry-to-death latency of grants with `on_expiry: kill`, and the cost of
    /// the kernel's deny check per syscall against the same agent with the map empty.
    Enforce {
        /// Grants that expire; p50 and p99 of their expiry-to-death latency are reported.
        #[arg(long, default_value_t = 50)]
        trials: usize,
    },
}

pub fn run(which: &Which) -> anyhow::Result<()> {
    match which {
        Which::Capture { runs } => capture::run(*runs),
        Which::Pipeline => crate::cargo(&["bench", "--package", "agent", "--bench", "pipeline"]),
        Which::Enforce { trials } => enforce::run(*trials),
        Which::Fleet {
            hosts,
            rate,
            seconds,
            stop_at,
            stop_for,
        } => {
            let mut args: Vec<String> = [
                "bench",
                "--package",
                "collector",
                "--bench",
                "fleet",
                "--",
                "--hosts",
                &hosts.to_string(),
                "--rate",
                &rate.to_string(),
                "--seconds",
                &seconds.to_string(),
            ]
            .map(String::from)
            .into();
            if let (Some(at), Some(seconds)) = (stop_at, stop_for) {
                args.extend(["--stop-at".into(), at.to_string()]);
                args.extend(["--stop-for".into(), seconds.to_string()]);
            }
            crate::cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())
        }
        Which::Export => {
            use_release_binaries();
            crate::cargo(&[
                "bench",
                "--package",
                "collector",
                "--bench",
                "ingest",
                "--",
                "--export",
            ])
        }
        Which::Collector { trials } => {
            // Before the stores' runs, not after: the latency part loads kernel programs.
            require_root("the collector benchmark loads kernel programs and starts PostgreSQL")?;
            collector::stores()?;
            collector::latency(*trials)
        }
    }
}

/// The middle of a benchmark's runs, as [`spread`] gives it.
pub(super) fn median(runs: Vec<Duration>) -> Duration {
    spread(runs)[1]
}

/// Min, median and max of a benchmark's runs.
pub(super) fn spread(mut runs: Vec<Duration>) -> [Duration; 3] {
    runs.sort();
    [runs[0], runs[runs.len() / 2], runs[runs.len() - 1]]
}

/// Fails, saying `why`, unless running as root.
pub(super) fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "{why}: run it as root");
    Ok(())
}

/// Points the harness at the release binaries.
pub(super) fn use_release_binaries() {
    let release = tests::workspace_root().join("target/release");
    for (var, bin) in [
        ("RECORDER_AGENT_BIN", "agent"),
        ("RECORDER_COLLECTOR_BIN", "collector"),
        ("RECORDER_OPERATOR_BIN", "recorder"),
    ] {
        // SAFETY: set before any thread that reads the environment exists.
        unsafe { std::env::set_var(var, release.join(bin)) };
    }
}

/// `p50 …, p99 …, max …` of `samples`, in milliseconds.
pub(super) fn percentile_line(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    )
}
