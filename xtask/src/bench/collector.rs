//! `cargo xtask bench collector`: the collector's ingest bench on each store, `SQLite` and
//! PostgreSQL, compared; then its end-to-end part, from a kernel event to the operator's
//! `tail`, and to a receipt at the agent covering it (a checkpoint the collector cosigned),
//! through a real agent and collector.

use std::{
    ffi::OsStr,
    path::Path,
    process::Command,
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tests::{
    agent::{Agent, receipt_above},
    collector::{Collector, scratch_dir},
    operator::Tail,
};

use super::{percentile_line, use_release_binaries};

/// The collector's ingest bench on each store, `SQLite` and then PostgreSQL (a server made
/// for the run, which ends with it), and each of PostgreSQL's medians as a ratio to
/// `SQLite`'s of the same run.
pub fn stores() -> anyhow::Result<()> {
    let dir = scratch_dir("bench-stores");
    let sqlite = ingest(&dir.join("sqlite"), None)?;
    let postgres = ingest(&dir.join("postgres"), Some(&tests::postgres::template()))?;
    println!("PostgreSQL against SQLite, medians of the same run:");
    for (name, rate) in &postgres {
        let Some((_, base)) = sqlite.iter().find(|(n, _)| n == name) else {
            continue;
        };
        println!(
            "  {name}: {rate:.0} against {base:.0} events/s, {:.2}",
            rate / base
        );
    }
    Ok(())
}

/// Runs the ingest bench, on PostgreSQL when given its URL template, and reads back the
/// medians it wrote to `figures`.
fn ingest(figures: &Path, postgres: Option<&str>) -> anyhow::Result<Vec<(String, f64)>> {
    let mut env = vec![("RECORDER_BENCH_FIGURES", figures.as_os_str())];
    env.extend(postgres.map(|url| ("RECORDER_BENCH_POSTGRES", OsStr::new(url))));
    crate::cargo_with_env(
        &["bench", "--package", "collector", "--bench", "ingest"],
        &env,
    )?;
    let text = std::fs::read_to_string(figures).context("reading the bench's figures")?;
    text.lines()
        .map(|line| {
            let (name, rate) = line
                .split_once('\t')
                .with_context(|| format!("a figure line without a tab: {line:?}"))?;
            Ok((name.to_owned(), rate.parse()?))
        })
        .collect()
}

/// Runs `/bin/true MARK` `trials` times, one at a time, through a release agent shipping to
/// a release collector, and times each from the exec's kernel timestamp to the moment
/// `tail --json` prints it. Needs root, which the caller checks before the stores' runs.
pub fn latency(trials: usize) -> anyhow::Result<()> {
    use_release_binaries();
    let dir = scratch_dir("bench-latency");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let agent = Agent::shipping(&dir.join("spool"), &url, &[]);
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
    let receipts = exec_to_receipt(&tail, &url, &dir.join("spool"), &mark, trials.min(40))?;
    drop(tail);
    let stopped = agent.stop();
    anyhow::ensure!(stopped.success, "agent failed:\n{}", stopped.stderr);
    drop(collector);
    println!(
        "end-to-end latency, kernel exec to `tail --json` line, {trials} execs one at a time: {}",
        percentile_line(latencies)
    );
    println!(
        "receipt latency, kernel exec to a cosigned checkpoint covering it at the agent, {} execs one at a time: {}",
        receipts.len(),
        percentile_line(receipts)
    );
    Ok(())
}

/// For each of `trials` execs: the time from its kernel timestamp until the agent holds a
/// receipt of at least as many leaves as the host's log had once the exec was stored, which
/// therefore covers it (an upper bound: the log may have grown past it meanwhile).
fn exec_to_receipt(
    tail: &Tail,
    url: &str,
    spool: &std::path::Path,
    mark: &str,
    trials: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(trials);
    for i in 0..trials {
        let arg = format!("{mark}-receipt-{i}");
        let line = exec_to_tail(tail, &arg, Duration::from_secs(10))?
            .with_context(|| format!("exec {arg} did not reach tail within 10 s"))?;
        let at = Duration::from_nanos(line["time_unix_nano"].as_u64().context("time_unix_nano")?);
        // The bench's collector holds this host's log only.
        let leaves = tests::operator::json_lines(url, &["verify", "--json"])
            .iter()
            .find_map(|v| v["leaves"].as_u64().zip(v["pruned"].as_u64()))
            .map(|(leaves, pruned)| leaves + pruned)
            .context("verify names no log of this host")?;
        receipt_above(spool, leaves - 1, Duration::from_secs(10))
            .with_context(|| format!("no receipt of {leaves} leaves within 10 s"))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        latencies.push(now.saturating_sub(at));
    }
    Ok(latencies)
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
